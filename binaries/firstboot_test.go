package binaries

import (
	"archive/zip"
	"context"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/etcdbake/etcdbake/internal/testtools"
)

// TestTimedHeartbeat: a long step is announced, reported every HeartbeatInterval while it
// runs, and ended with its elapsed time; nothing is reported after the end.
func TestTimedHeartbeat(t *testing.T) {
	old := HeartbeatInterval
	HeartbeatInterval = 20 * time.Millisecond
	defer func() { HeartbeatInterval = old }()
	p := &progressLog{t: t}
	err := Timed(p.printf, "etcd v3.6.16: building", func() error { time.Sleep(130 * time.Millisecond); return nil })
	if err != nil {
		t.Fatal(err)
	}
	n := len(p.lines)
	time.Sleep(60 * time.Millisecond)
	if len(p.lines) != n {
		t.Errorf("reported after the end: %q", p.lines[n:])
	}
	if n < 5 || p.lines[0] != "etcd v3.6.16: building ..." {
		t.Fatalf("want a start line and heartbeats, got %q", p.lines)
	}
	still := regexp.MustCompile(`^etcd v3\.6\.16: building: still running \([0-9.]+m?s\)$`)
	for _, l := range p.lines[1 : n-1] {
		if !still.MatchString(l) {
			t.Errorf("heartbeat %q", l)
		}
	}
	if !regexp.MustCompile(`^etcd v3\.6\.16: building: done in 1[0-9]{2}ms$`).MatchString(p.lines[n-1]) {
		t.Errorf("last line %q, want the elapsed time", p.lines[n-1])
	}
	p.lines = nil
	if err := Timed(p.printf, "x", func() error { return io.EOF }); err != io.EOF {
		t.Errorf("Timed returned %v, want fn's error", err)
	}
	if len(p.lines) != 2 || !strings.HasPrefix(p.lines[1], "x: failed after ") {
		t.Errorf("a failed step: %q", p.lines)
	}
}

// TestGoSourceProgress: fetch from source go is no longer silent while the go command
// runs: a stand-in go command that takes its time shows the start line, heartbeats and
// the elapsed time for each binary.
func TestGoSourceProgress(t *testing.T) {
	old := HeartbeatInterval
	HeartbeatInterval = 100 * time.Millisecond
	defer func() { HeartbeatInterval = old }()
	bin := t.TempDir()
	// Writes whatever -o names (go build) or GOBIN/flannel (go install) after a while.
	writeExec(t, bin, "go", []byte(`#!/bin/sh
sleep 0.35
out=""
while [ $# -gt 0 ]; do [ "$1" = "-o" ] && out="$2"; shift; done
[ -n "$out" ] && echo fake > "$out"
[ -n "$GOBIN" ] && echo fake > "$GOBIN/flannel"
exit 0
`))
	t.Setenv("PATH", bin+":/usr/bin:/bin")
	c, p := newCache(t, t.TempDir())
	_, err := c.Fetch(context.Background(), testCluster(t, "go"))
	if err == nil {
		t.Fatal("the stand-in go command's output was accepted")
	}
	for _, want := range []string{
		"etcd v3.6.16: building go.etcd.io/etcd/server/v3@v3.6.16 from source with the go command (a first build takes minutes) ...",
		"etcd v3.6.16: building go.etcd.io/etcd/server/v3@v3.6.16 from source with the go command (a first build takes minutes): still running (",
		"etcd v3.6.16: building go.etcd.io/etcd/server/v3@v3.6.16 from source with the go command (a first build takes minutes): done in ",
		"flanneld v0.28.7: building github.com/flannel-io/flannel@v0.28.7 from source with the go command (a first build takes minutes): done in ",
	} {
		if !p.contains(want) {
			t.Errorf("no progress line %q", want)
		}
	}
}

// checkout is the root of this repository.
func checkout(t *testing.T) string {
	t.Helper()
	root := FindCheckout(".")
	if root == "" {
		t.Fatal("the tests do not run inside the etcdbake checkout")
	}
	return root
}

// TestCheckFirstboot: what the check accepts and refuses, with the reasons.
func TestCheckFirstboot(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		testtools.Missing(t, "the go command")
	}
	dir := t.TempDir()
	build := func(name, pkg string, env ...string) string {
		out := filepath.Join(dir, name)
		cmd := exec.Command("go", "build", "-trimpath", "-o", out, pkg)
		cmd.Dir = checkout(t)
		cmd.Env = append(os.Environ(), env...)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", pkg, err, b)
		}
		return out
	}
	static := build("static", "./cmd/etcd-firstboot", "CGO_ENABLED=0")
	arm := build("arm64", "./cmd/etcd-firstboot", "CGO_ENABLED=0", "GOARCH=arm64")
	dev := Build{Module: Module, Version: "(devel)"}
	got, warn, err := CheckFirstboot(static, dev)
	if err != nil || got.Path != FirstbootPackage || got.CGO != "0" || !strings.Contains(warn, "without a version check") {
		t.Errorf("a static development build for a development etcdbake: %+v %q %v", got, warn, err)
	}
	if _, _, err := CheckFirstboot(arm, dev); err == nil || !strings.Contains(err.Error(), "is built for linux/arm64 (EM_AARCH64), but the nodes are linux/amd64") {
		t.Errorf("an arm64 build: %v", err)
	}
	if _, _, err := CheckFirstboot(static, Build{Module: Module, Version: "v1.2.3"}); err == nil ||
		!strings.Contains(err.Error(), "is version (devel), but this etcdbake is v1.2.3") ||
		!strings.Contains(err.Error(), "go install github.com/etcdbake/etcdbake/cmd/etcd-firstboot@v1.2.3") {
		t.Errorf("a development build for a released etcdbake: %v", err)
	}
	for v, want := range map[string]bool{"v1.2.3": true, "v0.0.0-20261203072000-a6d71a0abcde": true, "(devel)": false, "v1.2.3+dirty": false, "": false} {
		if (Build{Version: v}).Released() != want {
			t.Errorf("Build{Version: %q}.Released() = %v", v, !want)
		}
	}
}

// TestFirstbootFromModuleProxy builds etcd-firstboot as a released etcdbake does, for
// real: `go install .../cmd/etcd-firstboot@VERSION` through a module proxy. The proxy is
// a directory holding this checkout as version v0.0.1-test (file:// GOPROXY, the
// dependencies from the local module cache); the result is checked, stored in the cache
// with its record, and found there the second time without building.
func TestFirstbootFromModuleProxy(t *testing.T) {
	if testing.Short() {
		t.Skip("builds etcd-firstboot through a module proxy")
	}
	if _, err := exec.LookPath("go"); err != nil {
		testtools.Missing(t, "the go command")
	}
	const version = "v0.0.1-test"
	root := checkout(t)
	goenv, err := exec.Command("go", "env", "GOMODCACHE", "GOPROXY").Output()
	if err != nil {
		t.Fatal(err)
	}
	modcache, upstream, _ := strings.Cut(strings.TrimSpace(string(goenv)), "\n")
	proxy := t.TempDir()
	vdir := filepath.Join(proxy, Module, "@v")
	os.MkdirAll(vdir, 0o755)
	gomod, _ := os.ReadFile(filepath.Join(root, "go.mod"))
	os.WriteFile(filepath.Join(vdir, "list"), []byte(version+"\n"), 0o644)
	os.WriteFile(filepath.Join(vdir, version+".info"), []byte(`{"Version":"`+version+`","Time":"2026-12-01T00:00:00Z"}`), 0o644)
	os.WriteFile(filepath.Join(vdir, version+".mod"), gomod, 0o644)
	moduleZip(t, root, Module+"@"+version, filepath.Join(vdir, version+".zip"))

	// A private module cache (the shared one keeps no fake version of this module),
	// filled from the shared one's downloads; removed with `go clean -modcache` since the
	// go command makes it read-only.
	mc := t.TempDir()
	t.Cleanup(func() {
		cmd := exec.Command("go", "clean", "-modcache")
		cmd.Env = append(os.Environ(), "GOMODCACHE="+mc)
		cmd.Run()
	})
	t.Setenv("GOMODCACHE", mc)
	// The upstream proxy last: the checksum database of the dependencies is reached
	// through it.
	t.Setenv("GOPROXY", "file://"+proxy+",file://"+filepath.Join(modcache, "cache", "download")+","+upstream)
	t.Setenv("GONOSUMDB", Module) // the fake version is in no checksum database
	t.Setenv("GOFLAGS", "-modcacherw")

	want := Build{Path: Module + "/cmd/etcdbake", Module: Module, Version: version}
	c, p := newCache(t, t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	e, err := c.Firstboot(ctx, want, "")
	if err != nil {
		t.Fatalf("Firstboot: %v", err)
	}
	if !p.contains("etcd-firstboot " + version + ": building " + FirstbootPackage + "@" + version + " from source with the go command: done in ") {
		t.Errorf("no build progress")
	}
	checkFirstbootEntry(t, c, e, version)
	if e.Source != "go" || !strings.HasPrefix(e.Detail, FirstbootPackage+"@"+version+" by go") {
		t.Errorf("record: source %q detail %q", e.Source, e.Detail)
	}
	p.lines = nil
	again, err := c.Firstboot(ctx, want, "")
	if err != nil || again.SHA256 != e.SHA256 || !p.contains(": cached (sha256 "+e.SHA256) || p.contains("building") {
		t.Errorf("second call: %v %+v %q", err, again, p.lines)
	}
}

func checkFirstbootEntry(t *testing.T, c *Cache, e Entry, version string) {
	t.Helper()
	if e.Path != filepath.Join(c.Dir, FirstbootName, version, FirstbootName) {
		t.Errorf("stored at %s", e.Path)
	}
	looked, err := c.Lookup(FirstbootName, version)
	if err != nil || looked.SHA256 != e.SHA256 {
		t.Errorf("Lookup: %v %+v", err, looked)
	}
	got, _, err := CheckFirstboot(e.Path, Build{Module: Module, Version: version})
	if err != nil && version != develVersion {
		t.Errorf("the stored etcd-firstboot fails the check: %v", err)
	}
	if version != develVersion && got.Version != version {
		t.Errorf("its build information shows version %q", got.Version)
	}
}

// moduleZip writes dir as the module zip of modVersion (module@version), the layout a
// module proxy serves: every regular file under the module's prefix, without VCS data,
// build outputs or nested modules.
func moduleZip(t *testing.T, dir, modVersion, out string) {
	t.Helper()
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	zw := zip.NewWriter(f)
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if d.IsDir() {
			if rel != "." && (strings.HasPrefix(d.Name(), ".") || d.Name() == "bin" || d.Name() == "out") {
				return filepath.SkipDir
			}
			if _, err := os.Stat(filepath.Join(p, "go.mod")); err == nil && rel != "." {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() {
			return nil
		}
		w, err := zw.Create(modVersion + "/" + filepath.ToSlash(rel))
		if err != nil {
			return err
		}
		src, err := os.Open(p)
		if err != nil {
			return err
		}
		defer src.Close()
		_, err = io.Copy(w, src)
		return err
	})
	if err == nil {
		err = zw.Close()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
}

// TestFirstbootFromCheckout: a development etcdbake's etcd-firstboot is built from the
// checkout (static, checked) and stored as etcd-firstboot/devel; without a checkout the
// error says what to run.
func TestFirstbootFromCheckout(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		testtools.Missing(t, "the go command")
	}
	c, p := newCache(t, t.TempDir())
	dev := Build{Module: Module, Version: "(devel)"}
	e, err := c.Firstboot(context.Background(), dev, checkout(t))
	if err != nil {
		t.Fatal(err)
	}
	checkFirstbootEntry(t, c, e, develVersion)
	if e.Source != SourceLocal || !p.contains("building ./cmd/etcd-firstboot in "+checkout(t)+" with the go command: done in ") {
		t.Errorf("source %s, progress %q", e.Source, p.lines)
	}
	if _, err := c.Firstboot(context.Background(), dev, ""); err == nil || !strings.Contains(err.Error(), "no checkout of github.com/etcdbake/etcdbake") || !strings.Contains(err.Error(), "make build") {
		t.Errorf("without a checkout: %v", err)
	}
	if FindCheckout(t.TempDir()) != "" {
		t.Errorf("FindCheckout found a checkout in an empty directory")
	}
}

// TestCompareBuilds: which etcd-firstboot matches which etcdbake (see the note in
// firstboot.go), from their build information alone.
func TestCompareBuilds(t *testing.T) {
	deps := map[string]string{"go.etcd.io/etcd/client/v3": "v3.6.16", "gopkg.in/yaml.v3": "v3.0.1"}
	dev := Build{Version: "(devel)", GoVersion: "go1.26.8", Deps: deps}
	cases := []struct {
		name          string
		got, want     Build
		problem, warn string
	}{
		{"same release", Build{Version: "v1.2.3"}, Build{Version: "v1.2.3"}, "", ""},
		{"other release", Build{Version: "v1.2.2"}, Build{Version: "v1.2.3"}, "is version v1.2.2, but this etcdbake is v1.2.3", ""},
		{"development build for a release", dev, Build{Version: "v1.2.3"}, "is version (devel), but this etcdbake is v1.2.3", ""},
		{"same revision", Build{Version: "(devel)", Revision: "abc"}, Build{Version: "(devel)", Revision: "abc"}, "", ""},
		{"other revision", Build{Version: "(devel)", Revision: "abd"}, Build{Version: "(devel)", Revision: "abc", GoVersion: "go1.26.8", Deps: deps}, "was built from revision abd, but this etcdbake from revision abc", ""},
		{"same dependencies", dev, dev, "", ""},
		{"more dependencies in etcdbake", dev, Build{Version: "(devel)", GoVersion: "go1.26.8", Deps: map[string]string{"go.etcd.io/etcd/client/v3": "v3.6.16", "github.com/coreos/butane": "v0.26.0"}}, "", ""},
		{"other dependency version", dev, Build{Version: "(devel)", GoVersion: "go1.26.8", Deps: map[string]string{"go.etcd.io/etcd/client/v3": "v3.6.15"}},
			"uses go.etcd.io/etcd/client/v3 v3.6.16 where this etcdbake has v3.6.15: the two come from different trees", ""},
		{"other Go", dev, Build{Version: "(devel)", GoVersion: "go1.26.7", Deps: deps}, "was built with go1.26.8, but this etcdbake with go1.26.7", ""},
		{"nothing to compare", dev, Build{}, "", "etcdbake (version unknown) carries no build information to compare it with"},
	}
	for _, tc := range cases {
		problem, warn := compareBuilds(tc.got, tc.want)
		if (tc.problem == "") != (problem == "") || !strings.Contains(problem, tc.problem) || (tc.warn == "") != (warn == "") || !strings.Contains(warn, tc.warn) {
			t.Errorf("%s: got problem %q warning %q, want %q and %q", tc.name, problem, warn, tc.problem, tc.warn)
		}
	}
}
