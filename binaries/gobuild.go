package binaries

import (
	"bytes"
	"context"
	"debug/buildinfo"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/etcdbake/etcdbake/spec"
)

// goProgram says how source go builds one binary from the Go module proxy.
type goProgram struct {
	// module is the module the pinned version selects; the built binary's build info
	// must show it at that version.
	module string
	// main is the main package of a throwaway module (etcd's own root module carries
	// replace directives, so `go install` refuses it). Empty means `go install
	// module@version` builds the binary directly.
	main string
	// pkg is the main package `go install` builds when it is not the module itself.
	pkg string
	// installed is the name `go install` gives the binary.
	installed string
	// ldflagX names a variable set to the version with -X (what the release build does).
	ldflagX string
	// cgo is the CGO_ENABLED setting; empty keeps the user's.
	cgo string
	// nosumdb lists module path prefixes the checksum database does not answer for.
	nosumdb []string
}

// target is what `go install` builds: the main package, at the module's version.
func (p goProgram) target() string {
	if p.pkg != "" {
		return p.pkg
	}
	return p.module
}

var goPrograms = map[string]goProgram{
	"etcd": {
		module: "go.etcd.io/etcd/server/v3",
		main: `package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
`,
		cgo: "0",
	},
	"etcdctl": {
		module: "go.etcd.io/etcd/etcdctl/v3",
		main: `package main

import "go.etcd.io/etcd/etcdctl/v3/ctlv3"

func main() { ctlv3.MustStart() }
`,
		cgo: "0",
	},
	"flanneld": {
		module:    "github.com/flannel-io/flannel",
		installed: "flannel",
		ldflagX:   "github.com/flannel-io/flannel/pkg/version.Version",
		// flannel's release enables cgo on amd64 (its UDP backend needs it); the user's
		// setting is kept. The result links glibc dynamically, as on the Debian base.
		nosumdb: []string{"github.com/flannel-io", "github.com/tencentcloud"},
	},
}

// goBuild builds the pinned version with the go command, using the user's module and
// build caches, into the work directory.
func (f *fetcher) goBuild(ctx context.Context, name, version string) (candidate, error) {
	p, ok := goPrograms[name]
	if !ok {
		return candidate{}, fmt.Errorf("no Go build is known for %s", name)
	}
	gocmd, err := exec.LookPath("go")
	if err != nil {
		return candidate{}, errors.New("the go command is not on PATH (install Go 1.24 or newer to build from the Go module proxy)")
	}
	ldflags := "-s -w"
	if p.ldflagX != "" {
		ldflags += " -X " + p.ldflagX + "=" + version
	}
	env := goEnv(p)
	out := f.tempPath(name)
	what := fmt.Sprintf("%s %s: building %s@%s from source with the go command (a first build takes minutes)", name, version, p.module, version)
	if err := Timed(f.c.Progress, what, func() error { return f.runBuild(ctx, gocmd, env, p, name, version, ldflags, out) }); err != nil {
		return candidate{}, err
	}
	detail := p.module + "@" + version
	if bi, err := buildinfo.ReadFile(out); err == nil {
		detail += " built by " + bi.GoVersion
		for _, s := range bi.Settings {
			if s.Key == "CGO_ENABLED" {
				detail += " with CGO_ENABLED=" + s.Value
			}
		}
	}
	return candidate{path: out, source: spec.SourceGo, detail: detail, module: p.module}, nil
}

// runBuild runs the go command for p: `go install module@version` into a private GOBIN,
// or `go get` + `go build` in a throwaway module whose main is p.main. The binary ends up
// at out.
func (f *fetcher) runBuild(ctx context.Context, gocmd string, env []string, p goProgram, name, version, ldflags, out string) error {
	if p.main == "" {
		if runtime.GOOS != "linux" || runtime.GOARCH != "amd64" {
			return fmt.Errorf("`go install %s@%s` cannot cross-compile into a chosen directory: build %s on a linux/amd64 host, or use source release or file", p.target(), version, name)
		}
		gobin := f.tempPath("gobin")
		if err := os.Mkdir(gobin, 0o755); err != nil {
			return err
		}
		env = append(env, "GOBIN="+gobin)
		if err := runGo(ctx, gocmd, f.work, env, "install", "-trimpath", "-ldflags="+ldflags, p.target()+"@"+version); err != nil {
			return err
		}
		if err := os.Rename(filepath.Join(gobin, p.installed), out); err != nil {
			return fmt.Errorf("go install left no %s: %w", p.installed, err)
		}
	} else {
		mod := f.tempPath(name + "-module")
		if err := os.Mkdir(mod, 0o755); err != nil {
			return err
		}
		gomod := "module etcdbake.local/build/" + name + "\n\ngo 1.24\n"
		if err := os.WriteFile(filepath.Join(mod, "go.mod"), []byte(gomod), 0o644); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(mod, "main.go"), []byte(p.main), 0o644); err != nil {
			return err
		}
		if err := runGo(ctx, gocmd, mod, env, "get", p.module+"@"+version); err != nil {
			return err
		}
		if err := runGo(ctx, gocmd, mod, env, "build", "-mod=mod", "-trimpath", "-ldflags="+ldflags, "-o", out, "."); err != nil {
			return err
		}
	}
	return nil
}

// goEnv is the user's environment with the settings a reproducible build of p needs:
// no workspace, linux/amd64, p's cgo setting, and p's GONOSUMDB prefixes added to the
// user's (checksums stay on for everything else).
func goEnv(p goProgram) []string {
	var env []string
	nosumdb := os.Getenv("GONOSUMDB")
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "GOWORK", "GOOS", "GOARCH", "GOBIN", "GONOSUMDB":
			continue
		case "CGO_ENABLED":
			if p.cgo != "" {
				continue
			}
		}
		env = append(env, kv)
	}
	env = append(env, "GOWORK=off", "GOOS=linux", "GOARCH=amd64")
	if p.cgo != "" {
		env = append(env, "CGO_ENABLED="+p.cgo)
	}
	if len(p.nosumdb) > 0 {
		list := strings.Join(p.nosumdb, ",")
		if nosumdb != "" {
			list = nosumdb + "," + list
		}
		nosumdb = list
	}
	if nosumdb != "" {
		env = append(env, "GONOSUMDB="+nosumdb)
	}
	return env
}

func runGo(ctx context.Context, gocmd, dir string, env []string, args ...string) error {
	cmd := exec.CommandContext(ctx, gocmd, args...)
	cmd.Dir = dir
	cmd.Env = env
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("`go %s` failed: %v\n%s", strings.Join(args, " "), err, tail(buf.String(), 20))
	}
	return nil
}

func tail(s string, lines int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > lines {
		l = append([]string{"..."}, l[len(l)-lines:]...)
	}
	return "    " + strings.Join(l, "\n    ")
}

// checkBuildInfo checks that the binary was built from module at version (as the main
// module or an unreplaced dependency).
func checkBuildInfo(path, module, version string) error {
	bi, err := buildinfo.ReadFile(path)
	if err != nil {
		return fmt.Errorf("no Go build information: %v", err)
	}
	if bi.Main.Path == module {
		if bi.Main.Version != version {
			return fmt.Errorf("build information shows %s %s, not %s", module, bi.Main.Version, version)
		}
		return nil
	}
	for _, d := range bi.Deps {
		if d.Path != module {
			continue
		}
		if d.Replace != nil {
			return fmt.Errorf("build information shows %s replaced by %s %s", module, d.Replace.Path, d.Replace.Version)
		}
		if d.Version != version {
			return fmt.Errorf("build information shows %s %s, not %s", module, d.Version, version)
		}
		return nil
	}
	return fmt.Errorf("build information does not list %s", module)
}
