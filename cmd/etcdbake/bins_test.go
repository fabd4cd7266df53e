package main

import (
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coreos/ignition/v2/config/v3_4/types"

	"github.com/etcdbake/etcdbake/binaries"
	"github.com/etcdbake/etcdbake/internal/testtools"
	"github.com/etcdbake/etcdbake/spec"
)

// Programs built once for all tests of the package (see goBuildOnce), removed by TestMain.
var (
	builtDir  string
	builtMu   sync.Mutex
	builtOnce = map[string]*builtResult{}
)

type builtResult struct {
	once sync.Once
	path string
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if builtDir != "" {
		os.RemoveAll(builtDir)
	}
	os.Exit(code)
}

// goBuildOnce builds pkg (relative to the checkout) with the given environment once per
// test process and returns the program's path.
func goBuildOnce(t *testing.T, name, pkg string, env ...string) string {
	t.Helper()
	builtMu.Lock()
	if builtDir == "" {
		d, err := os.MkdirTemp("", "etcdbake-cli-test-")
		if err != nil {
			builtMu.Unlock()
			t.Fatal(err)
		}
		builtDir = d
	}
	r := builtOnce[name]
	if r == nil {
		r = &builtResult{}
		builtOnce[name] = r
	}
	builtMu.Unlock()
	r.once.Do(func() {
		root := binaries.FindCheckout(".")
		if root == "" {
			r.err = errors.New("the tests do not run inside the etcdbake checkout")
			return
		}
		r.path = filepath.Join(builtDir, name)
		cmd := exec.Command("go", "build", "-trimpath", "-o", r.path, pkg)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), env...)
		if out, err := cmd.CombinedOutput(); err != nil {
			r.err = fmt.Errorf("building %s: %v\n%s", pkg, err, out)
		}
	})
	if r.err != nil {
		t.Fatal(r.err)
	}
	return r.path
}

// staticFirstboot is a real static etcd-firstboot built from this checkout, as
// `make build` builds it.
func staticFirstboot(t *testing.T) string {
	return goBuildOnce(t, "etcd-firstboot", "./cmd/etcd-firstboot", "CGO_ENABLED=0")
}

// binSpec is the example with fake etcd, etcdctl and flanneld from source file (see
// fakeBinaries) in a new directory; it returns the spec, OUT and the cache directory.
func binSpec(t *testing.T) (dir, specPath, out, cache string) {
	t.Helper()
	dir = t.TempDir()
	specPath = filepath.Join(dir, "cluster.yaml")
	if err := os.WriteFile(specPath, []byte(fakeBinaries(t, dir)), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir, specPath, filepath.Join(dir, "out"), filepath.Join(dir, "cache")
}

// ignBinaries reads the binaries a rendered config downloads: path on the node -> (source,
// "sha512-<hex>").
func ignBinaries(t *testing.T, path string) map[string][2]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var cfg types.Config
	if err := json.Unmarshal(b, &cfg); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	out := map[string][2]string{}
	for _, f := range cfg.Storage.Files {
		name, ok := strings.CutPrefix(f.Path, spec.BinDir+"/")
		if !ok || f.Contents.Source == nil || f.Contents.Verification.Hash == nil {
			continue
		}
		out[name] = [2]string{*f.Contents.Source, *f.Contents.Verification.Hash}
	}
	return out
}

func sha512File(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	s := sha512.Sum512(b)
	return hex.EncodeToString(s[:])
}

// TestIgnitionPublishesBinaries: with --binaries-url, ignition lays out the four files the
// configs download under OUT/binaries/, each with the sha512 the configs check, and says
// what to publish where.
func TestIgnitionPublishesBinaries(t *testing.T) {
	_, specPath, out, cache := binSpec(t)
	fb := staticFirstboot(t)
	const url = "http://10.88.0.1:8080/bin/"
	stdout, stderr, err := run(t, time.Now(), "ignition", "-f", specPath, "--out", out, "--cache", cache, "--firstboot", fb, "--binaries-url", url)
	if err != nil {
		t.Fatalf("ignition: %v\n%s\n%s", err, stdout, stderr)
	}
	pubDir := filepath.Join(out, "binaries")
	for _, node := range []string{"etcd-1", "etcd-2", "etcd-3"} {
		bins := ignBinaries(t, filepath.Join(out, "ignition", node+".ign"))
		if len(bins) != 4 {
			t.Fatalf("%s downloads %d binaries, want 4: %v", node, len(bins), bins)
		}
		for name, b := range bins {
			wantURL := "http://10.88.0.1:8080/bin/" + name
			if b[0] != wantURL {
				t.Errorf("%s: %s comes from %s, want %s", node, name, b[0], wantURL)
			}
			local := filepath.Join(pubDir, name)
			if got := "sha512-" + sha512File(t, local); got != b[1] {
				t.Errorf("%s: %s has %s, the config checks %s", node, local, got, b[1])
			}
			line := wantURL + " -> " + local
			if !strings.Contains(stdout, line) || !strings.Contains(stdout, strings.TrimPrefix(b[1], "sha512-")) {
				t.Errorf("the output does not name %q with its sha512:\n%s", line, stdout)
			}
		}
	}
	for _, want := range []string{"publish " + pubDir + "/ as it is at http://10.88.0.1:8080/bin/", "`etcdbake serve`", "/binaries/NAME"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("the output lacks %q:\n%s", want, stdout)
		}
	}
	entries, _ := os.ReadDir(pubDir)
	if len(entries) != 4 {
		t.Errorf("%s holds %d entries, want the 4 binaries only", pubDir, len(entries))
	}

	// A file changed in OUT/binaries is replaced with the right one on the next run.
	if err := os.WriteFile(filepath.Join(pubDir, "etcd"), []byte("not etcd"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, _, err := run(t, time.Now(), "ignition", "-f", specPath, "--out", out, "--cache", cache, "--firstboot", fb, "--binaries-url", url); err != nil {
		t.Fatal(err)
	}
	want := ignBinaries(t, filepath.Join(out, "ignition", "etcd-1.ign"))["etcd"][1]
	if got := "sha512-" + sha512File(t, filepath.Join(pubDir, "etcd")); got != want {
		t.Errorf("a changed OUT/binaries/etcd was not replaced: %s, want %s", got, want)
	}

}

// TestIgnitionInlineProgress: --inline-binaries says what it is doing and how long it took.
func TestIgnitionInlineProgress(t *testing.T) {
	_, specPath, out, cache := binSpec(t)
	_, stderr, err := run(t, time.Now(), "ignition", "-f", specPath, "--out", out, "--cache", cache, "--firstboot", staticFirstboot(t), "--inline-binaries")
	if err != nil {
		t.Fatalf("ignition: %v\n%s", err, stderr)
	}
	re := regexp.MustCompile(`(?m)^ignition: inlining 4 binaries \(\d+ MiB, gzip\) into 3 node configs \.\.\.\n(.*\n)*ignition: inlining 4 binaries .*: done in [0-9.]+m?s\n`)
	if !re.MatchString(stderr) {
		t.Errorf("no inlining progress with the elapsed time on stderr:\n%s", stderr)
	}
	// Inline configs need nothing published, so nothing is laid out.
	if _, err := os.Stat(filepath.Join(out, "binaries")); !os.IsNotExist(err) {
		t.Errorf("--inline-binaries laid out %s/binaries", out)
	}
}

// TestFirstbootChecked: --firstboot refuses what is not a static linux/amd64
// etcd-firstboot of etcdbake's version, saying what is wrong and how to fix it, before
// anything is written; a static build of ./cmd/etcd-firstboot is accepted.
func TestFirstbootChecked(t *testing.T) {
	self := goBuildOnce(t, "etcdbake", "./cmd/etcdbake")
	dynamic := goBuildOnce(t, "etcd-firstboot-dynamic", "./cmd/etcd-firstboot", "CGO_ENABLED=1")
	if out, _ := exec.Command("file", dynamic).Output(); len(out) > 0 && !strings.Contains(string(out), "dynamically linked") {
		t.Fatalf("the cgo build of etcd-firstboot is not dynamically linked: %s", out)
	}
	script := filepath.Join(t.TempDir(), "etcd-firstboot")
	os.WriteFile(script, []byte("#!/bin/sh\n"), 0o755)
	cases := []struct{ name, file, want string }{
		{"a text file", "/etc/hostname", "--firstboot /etc/hostname is not a Linux executable (not an ELF file"},
		{"a script", script, "is not a Linux executable (not an ELF file: it is a script, #!/bin/sh)"},
		{"etcdbake itself", self, "is etcdbake (the Go program github.com/etcdbake/etcdbake/cmd/etcdbake), not etcd-firstboot"},
		{"a dynamic build", dynamic, "is dynamically linked (interpreter /lib64/ld-linux-x86-64.so.2"},
		{"a directory", t.TempDir(), "is a directory"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, specPath, out, cache := binSpec(t)
			_, _, err := run(t, time.Now(), "ignition", "-f", specPath, "--out", out, "--cache", cache, "--firstboot", tc.file, "--binaries-url", "http://10.88.0.1:8080/bin")
			var fe *binaries.FirstbootError
			if !errors.As(err, &fe) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want a *binaries.FirstbootError saying %q", err, tc.want)
			}
			if !strings.Contains(err.Error(), "to fix it, run `make build`") {
				t.Errorf("the error does not say how to fix it: %v", err)
			}
			var ee *exitError
			if errors.As(err, &ee) {
				t.Errorf("exit code %d; a bad flag value exits 1 as the other flag errors do", ee.code)
			}
			if _, err := os.Stat(out); !os.IsNotExist(err) {
				t.Errorf("a refused --firstboot left %s", out)
			}
		})
	}
	t.Run("static build accepted", func(t *testing.T) {
		_, specPath, out, cache := binSpec(t)
		fb := staticFirstboot(t)
		stdout, stderr, err := run(t, time.Now(), "ignition", "-f", specPath, "--out", out, "--cache", cache, "--firstboot", fb, "--binaries-url", "http://10.88.0.1:8080/bin")
		if err != nil {
			t.Fatalf("ignition: %v\n%s\n%s", err, stdout, stderr)
		}
		if got, want := ignBinaries(t, filepath.Join(out, "ignition", "etcd-1.ign"))["etcd-firstboot"][1], "sha512-"+sha512File(t, fb); got != want {
			t.Errorf("the config checks %s, the file has %s", got, want)
		}
		// The test binary is a development build without a VCS revision, built with the
		// same Go and dependencies: accepted without a warning.
		if strings.Contains(stderr, "warning") {
			t.Errorf("a warning for a matching etcd-firstboot:\n%s", stderr)
		}
	})
	t.Run("version of a released etcdbake", func(t *testing.T) {
		released(t, binaries.Build{Path: "github.com/etcdbake/etcdbake/cmd/etcdbake", Module: binaries.Module, Version: "v1.4.2"})
		_, specPath, out, cache := binSpec(t)
		_, _, err := run(t, time.Now(), "ignition", "-f", specPath, "--out", out, "--cache", cache, "--firstboot", staticFirstboot(t), "--binaries-url", "http://10.88.0.1:8080/bin")
		want := "is version (devel), but this etcdbake is v1.4.2: the two must be the same version"
		fix := "CGO_ENABLED=0 GOOS=linux GOARCH=amd64 go install github.com/etcdbake/etcdbake/cmd/etcd-firstboot@v1.4.2"
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), fix) {
			t.Fatalf("got %v, want %q and the fix %q", err, want, fix)
		}
	})
	t.Run("development build from another tree", func(t *testing.T) {
		self := binaries.SelfBuild()
		self.Deps = maps.Clone(self.Deps)
		self.Deps["go.etcd.io/etcd/client/v3"] = "v3.5.21"
		released(t, self)
		_, specPath, out, cache := binSpec(t)
		_, _, err := run(t, time.Now(), "ignition", "-f", specPath, "--out", out, "--cache", cache, "--firstboot", staticFirstboot(t), "--binaries-url", "http://10.88.0.1:8080/bin")
		want := "uses go.etcd.io/etcd/client/v3 v3.6.16 where this etcdbake has v3.5.21: the two come from different trees"
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("got %v, want %q", err, want)
		}
	})
	t.Run("no build information to compare", func(t *testing.T) {
		released(t, binaries.Build{})
		_, specPath, out, cache := binSpec(t)
		_, stderr, err := run(t, time.Now(), "ignition", "-f", specPath, "--out", out, "--cache", cache, "--firstboot", staticFirstboot(t), "--binaries-url", "http://10.88.0.1:8080/bin")
		if err != nil {
			t.Fatalf("refused: %v", err)
		}
		if !strings.Contains(stderr, "etcdbake: warning: etcd-firstboot "+staticFirstboot(t)+" (version (devel)) is used without a version check: etcdbake (version unknown) carries no build information") {
			t.Errorf("no warning about the unchecked version:\n%s", stderr)
		}
	})
}

// released makes etcdbake's own build information b for one test.
func released(t *testing.T, b binaries.Build) {
	old := selfBuild
	selfBuild = func() binaries.Build { return b }
	t.Cleanup(func() { selfBuild = old })
}

// TestFirstbootBuilt: with no --firstboot and none next to etcdbake (the test binary's
// directory has none), a development build builds the matching etcd-firstboot from its
// checkout with the go command, for real, into the binary cache, reporting it; the
// configs carry that file. Without a go command the error says exactly what to run.
func TestFirstbootBuilt(t *testing.T) {
	if firstbootNextToSelf() != "" {
		t.Fatalf("an etcd-firstboot lies next to the test binary (%s)", selfDir())
	}
	if _, err := exec.LookPath("go"); err != nil {
		testtools.Missing(t, "the go command")
	}
	dir, specPath, out, cache := binSpec(t)
	stdout, stderr, err := run(t, time.Now(), "ignition", "-f", specPath, "--out", out, "--cache", cache, "--binaries-url", "http://10.88.0.1:8080/bin")
	if err != nil {
		t.Fatalf("ignition: %v\n%s\n%s", err, stdout, stderr)
	}
	checkout := binaries.FindCheckout(".")
	for _, want := range []string{
		"fetch: etcd-firstboot (development build): building ./cmd/etcd-firstboot in " + checkout + " with the go command ...\n",
		"fetch: etcd-firstboot (development build): building ./cmd/etcd-firstboot in " + checkout + " with the go command: done in ",
		"fetch: etcd-firstboot devel: stored (sha256 ",
	} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
	c := &binaries.Cache{Dir: cache}
	e, err := c.Lookup(binaries.FirstbootName, "devel")
	if err != nil {
		t.Fatalf("the built etcd-firstboot is not a verified cache entry: %v", err)
	}
	if e.Source != binaries.SourceLocal || !strings.Contains(e.Detail, "CGO_ENABLED=0") {
		t.Errorf("cache record: source %s, detail %q", e.Source, e.Detail)
	}
	if _, _, err := binaries.CheckFirstboot(e.Path, binaries.SelfBuild()); err != nil {
		t.Errorf("the built etcd-firstboot does not pass the check: %v", err)
	}
	if got, want := ignBinaries(t, filepath.Join(out, "ignition", "etcd-1.ign"))["etcd-firstboot"][1], "sha512-"+sha512File(t, e.Path); got != want {
		t.Errorf("the config checks %s, the cached etcd-firstboot has %s", got, want)
	}

	// fetch lists it with the other binaries.
	stdout, _, err = run(t, time.Now(), "fetch", "-f", specPath, "--cache", cache)
	if err != nil {
		t.Fatalf("fetch: %v", err)
	}
	if !regexp.MustCompile(`(?m)^etcd-firstboot\s+\(devel\)\s+local\s+[0-9a-f]{64}\s+` + regexp.QuoteMeta(e.Path) + `$`).MatchString(stdout) {
		t.Errorf("fetch does not list the etcd-firstboot it would bake:\n%s", stdout)
	}

	// No go command: the exact command to run.
	t.Setenv("PATH", filepath.Join(dir, "empty"))
	for _, tc := range []struct {
		self binaries.Build
		want string
	}{
		{binaries.SelfBuild(), "run `make build` in the etcdbake checkout"},
		{binaries.Build{Module: binaries.Module, Version: "v1.4.2"}, "`CGO_ENABLED=0 GOOS=linux GOARCH=amd64 go install github.com/etcdbake/etcdbake/cmd/etcd-firstboot@v1.4.2`"},
	} {
		released(t, tc.self)
		_, _, err = run(t, time.Now(), "ignition", "-f", specPath, "--out", filepath.Join(dir, "out2"), "--cache", filepath.Join(dir, "cache2"), "--binaries-url", "http://10.88.0.1:8080/bin")
		if err == nil || !strings.Contains(err.Error(), "no go command on PATH") || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s without a go command: got %v, want the command %q", tc.self.Version, err, tc.want)
		}
	}
}

// TestVersion: `etcdbake version` and `etcdbake --version` print etcdbake's version, the
// versions of the libraries it was built with (as go.mod requires them) and the
// etcd-firstboot it would bake; run as the real program laid out as `make build` does.
func TestVersion(t *testing.T) {
	dir := t.TempDir()
	self := testtools.BuildCLI(t, dir)
	gomod, err := os.ReadFile(filepath.Join(binaries.FindCheckout("."), "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	var outs []string
	for _, args := range [][]string{{"version"}, {"--version"}} {
		cmd := exec.Command(self, append(args, "--cache="+filepath.Join(dir, "cache"))...)
		cmd.Dir = dir
		b, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("etcdbake %s: %v\n%s", args[0], err, b)
		}
		out := string(b)
		outs = append(outs, out)
		if !strings.HasPrefix(out, "etcdbake (devel)\n") {
			t.Errorf("etcdbake %s does not start with its version:\n%s", args[0], out)
		}
		for _, l := range builtWith {
			m := regexp.MustCompile(`(?m)^\s+` + regexp.QuoteMeta(l.module) + ` (v\S+)`).FindStringSubmatch(string(gomod))
			if m == nil {
				t.Fatalf("go.mod does not require %s", l.module)
			}
			if want := l.name + " " + l.module + " " + m[1]; !strings.Contains(strings.Join(strings.Fields(out), " "), want) {
				t.Errorf("etcdbake %s lacks %q:\n%s", args[0], want, out)
			}
		}
		if want := filepath.Join(dir, "etcd-firstboot") + " (devel) (next to etcdbake; static linux/amd64)"; !strings.Contains(out, want) {
			t.Errorf("etcdbake %s does not name the etcd-firstboot it bakes (%q):\n%s", args[0], want, out)
		}
	}
	if outs[0] != outs[1] {
		t.Errorf("version and --version differ:\n%s\n%s", outs[0], outs[1])
	}
	// A wrong etcd-firstboot next to etcdbake is reported as not usable.
	os.WriteFile(filepath.Join(dir, "etcd-firstboot"), []byte("#!/bin/sh\n"), 0o755)
	b, _ := exec.Command(self, "version").CombinedOutput()
	if !strings.Contains(string(b), "(next to etcdbake) is NOT usable: ") || !strings.Contains(string(b), "not an ELF file") {
		t.Errorf("version with a script as etcd-firstboot:\n%s", b)
	}
}
