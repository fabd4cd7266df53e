package binaries

import (
	"bufio"
	"context"
	"crypto/sha256"
	"debug/buildinfo"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	"github.com/etcdbake/etcdbake/internal/fileutil"
	"github.com/etcdbake/etcdbake/spec"
)

// etcd-firstboot runs on every node and reads the settings etcdbake writes, so the one
// baked into the configs must come from the same etcdbake. What "the same" can mean
// depends on what etcdbake's build information holds:
//   - a released etcdbake (a tag or pseudo-version as module version, as
//     `go install .../cmd/etcdbake@VERSION` stamps it): etcd-firstboot's module version
//     must be the same;
//   - a development build ("(devel)", `go build` or `make build` in a checkout) stamped
//     with a VCS revision: etcd-firstboot must carry the same revision;
//   - a development build without one (-buildvcs=false, a worktree, a test binary): the
//     Go toolchain and the versions of every dependency module both use must be the
//     same, which catches a stale etcd-firstboot after go.mod or Go changed, but not
//     after a change to etcdbake's own code (make build rebuilds both together);
//   - with no build information at all, etcd-firstboot is accepted with a warning.
const (
	// FirstbootName is etcd-firstboot's file name in the cache, next to etcdbake and on
	// the nodes.
	FirstbootName = "etcd-firstboot"
	// Module is etcdbake's module; FirstbootPackage is etcd-firstboot's main package in it.
	Module           = "github.com/etcdbake/etcdbake"
	FirstbootPackage = Module + "/cmd/etcd-firstboot"
	// SourceLocal marks an etcd-firstboot built from a local checkout of Module.
	SourceLocal = "local"
	// develVersion is the cache's version directory for development builds.
	develVersion = "devel"
)

var firstbootProgram = goProgram{module: Module, pkg: FirstbootPackage, installed: FirstbootName, cgo: "0"}

// Build identifies a Go program from its build information.
type Build struct {
	// Path is the main package, Module the main module.
	Path, Module string
	// Version is the main module's version: a tag, a pseudo-version (both can be fetched
	// from the module proxy), or "(devel)" for a build in a checkout (with "+dirty" when
	// the go command stamped a modified tree).
	Version string
	// Revision and Modified are the VCS stamp (vcs.revision, vcs.modified); Revision is
	// empty when the go command did not stamp one.
	Revision string
	Modified bool
	// GoVersion is the toolchain; GOOS, GOARCH and CGO are the build settings.
	GoVersion, GOOS, GOARCH, CGO string
	// Deps maps each dependency module to its version ("=> path version" when replaced).
	Deps map[string]string
}

// BuildOf extracts a Build from Go build information.
func BuildOf(bi *debug.BuildInfo) Build {
	b := Build{Path: bi.Path, Module: bi.Main.Path, Version: bi.Main.Version, GoVersion: bi.GoVersion, Deps: map[string]string{}}
	for _, d := range bi.Deps {
		v := d.Version
		if d.Replace != nil {
			v += " => " + d.Replace.Path + " " + d.Replace.Version
		}
		b.Deps[d.Path] = v
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			b.Revision = s.Value
		case "vcs.modified":
			b.Modified = s.Value == "true"
		case "GOOS":
			b.GOOS = s.Value
		case "GOARCH":
			b.GOARCH = s.Value
		case "CGO_ENABLED":
			b.CGO = s.Value
		}
	}
	return b
}

// SelfBuild is the running program's Build (an empty Version when it has none).
func SelfBuild() Build {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return Build{}
	}
	return BuildOf(bi)
}

var moduleVersion = regexp.MustCompile(`^v[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$`)

// Released reports whether Version is a module version the module proxy can serve (a tag
// or pseudo-version of an unmodified tree), as `go install ...@VERSION` stamps it.
func (b Build) Released() bool { return moduleVersion.MatchString(b.Version) }

// Describe is the version in words: "v1.2.0", or "(devel) at revision abc123 (modified)".
func (b Build) Describe() string {
	if b.Version == "" {
		return "unknown"
	}
	s := b.Version
	if b.Revision != "" {
		s += " at revision " + b.Revision
		if b.Modified {
			s += " (modified)"
		}
	}
	return s
}

// FirstbootError says why a file cannot be baked as etcd-firstboot, and how to get the
// right one.
type FirstbootError struct {
	// Label says where the file came from ("--firstboot", "the etcd-firstboot next to
	// etcdbake"); empty means "etcd-firstboot".
	Label, Path, Problem, Fix string
}

func (e *FirstbootError) Error() string {
	label := e.Label
	if label == "" {
		label = "etcd-firstboot"
	}
	return fmt.Sprintf("%s %s %s; to fix it, %s", label, e.Path, e.Problem, e.Fix)
}

// FirstbootFix says how to get the etcd-firstboot that matches want, placed in dir (the
// directory of etcdbake; empty when unknown).
func FirstbootFix(want Build, dir string) string {
	if want.Released() {
		gobin := ""
		if dir != "" {
			gobin = "GOBIN=" + dir + " "
		}
		return fmt.Sprintf("build the matching one with `%sCGO_ENABLED=0 GOOS=linux GOARCH=amd64 go install %s@%s` (it lands next to etcdbake), or leave out --firstboot and etcdbake builds it itself", gobin, FirstbootPackage, want.Version)
	}
	return "run `make build` in the etcdbake checkout (it puts etcdbake and a static etcd-firstboot in bin/), or build it there with `CGO_ENABLED=0 go build -o bin/etcd-firstboot ./cmd/etcd-firstboot`"
}

// CheckFirstboot checks that path is an etcd-firstboot the nodes can run and that matches
// want (see the package's note on versions): a regular file, a linux/amd64 ELF executable,
// statically linked, built from FirstbootPackage, of want's version. It returns the
// file's Build, and a warning when the version could not be compared. The error is a
// *FirstbootError.
func CheckFirstboot(path string, want Build) (Build, string, error) {
	bad := func(format string, args ...any) (Build, string, error) {
		return Build{}, "", &FirstbootError{Path: path, Problem: fmt.Sprintf(format, args...), Fix: FirstbootFix(want, "")}
	}
	st, err := os.Stat(path)
	if err != nil {
		return bad("cannot be read (%v)", errors.Unwrap(err))
	}
	if st.IsDir() {
		return bad("is a directory, not the etcd-firstboot program")
	}
	if !st.Mode().IsRegular() {
		return bad("is not a regular file (%s)", st.Mode().Type())
	}
	f, err := elf.Open(path)
	if err != nil {
		return bad("is not a Linux executable (not an ELF file: %s)", describeFile(path))
	}
	defer f.Close()
	bi, err := buildinfo.ReadFile(path)
	if err != nil {
		return bad("is not a Go program (it has no Go build information)")
	}
	got := BuildOf(bi)
	if got.Path != FirstbootPackage {
		return bad("is %s (the Go program %s), not etcd-firstboot (%s)", filepath.Base(got.Path), got.Path, FirstbootPackage)
	}
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 || (got.GOOS != "" && got.GOOS != "linux") {
		return bad("is built for %s/%s (%s), but the nodes are linux/amd64 (GOOS=linux GOARCH=amd64)", got.GOOS, got.GOARCH, f.Machine)
	}
	if dyn := dynamicLinking(f); dyn != "" {
		return bad("is dynamically linked (%s, CGO_ENABLED=%s), but it runs on the nodes before anything else and must not depend on their C library: it must be static (CGO_ENABLED=0)", dyn, got.CGO)
	}
	problem, warn := compareBuilds(got, want)
	if problem != "" {
		return bad("%s", problem)
	}
	if warn != "" {
		warn = fmt.Sprintf("etcd-firstboot %s (version %s) is used without a version check: %s; build both from the same tree (make build)", path, got.Describe(), warn)
	}
	return got, warn, nil
}

// compareBuilds decides whether etcd-firstboot's build got matches etcdbake's want (see
// the note at the top of this file). It returns what is wrong, or why the two could not
// be compared, or neither.
func compareBuilds(got, want Build) (problem, warning string) {
	switch {
	case want.Released():
		if got.Version != want.Version {
			return fmt.Sprintf("is version %s, but this etcdbake is %s: the two must be the same version (they share the node settings format)", got.Describe(), want.Version), ""
		}
	case want.Revision != "" && got.Revision != "":
		if want.Revision != got.Revision {
			return fmt.Sprintf("was built from revision %s, but this etcdbake from revision %s: build both from the same tree", got.Revision, want.Revision), ""
		}
	case want.GoVersion != "" && len(want.Deps) > 0:
		if d := sameDeps(got, want); d != "" {
			return d + ": the two come from different trees, build both from the same one", ""
		}
	default:
		return "", fmt.Sprintf("etcdbake (version %s) carries no build information to compare it with", want.Describe())
	}
	return "", ""
}

// sameDeps compares two development builds without VCS revisions as far as their build
// information allows: the Go toolchain and the version of every dependency module both
// use. It returns the first difference in words, or "".
func sameDeps(got, want Build) string {
	if got.GoVersion != want.GoVersion {
		return fmt.Sprintf("was built with %s, but this etcdbake with %s", got.GoVersion, want.GoVersion)
	}
	var diff []string
	for _, path := range slices.Sorted(maps.Keys(got.Deps)) {
		if wv, ok := want.Deps[path]; ok && wv != got.Deps[path] {
			diff = append(diff, fmt.Sprintf("%s %s where this etcdbake has %s", path, got.Deps[path], wv))
		}
	}
	if len(diff) > 3 {
		diff = append(diff[:3], fmt.Sprintf("and %d more", len(diff)-3))
	}
	if len(diff) > 0 {
		return "uses " + strings.Join(diff, ", ")
	}
	return ""
}

// dynamicLinking names what makes f dynamically linked (an interpreter, needed shared
// libraries), or returns "" for a static executable.
func dynamicLinking(f *elf.File) string {
	var why []string
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b, _ := io.ReadAll(io.LimitReader(p.Open(), 256))
			why = append(why, "interpreter "+strings.TrimRight(string(b), "\x00"))
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		why = append(why, "needs "+strings.Join(libs, ", "))
	}
	return strings.Join(why, ", ")
}

// describeFile says what a non-ELF file starts with, for the error.
func describeFile(path string) string {
	fh, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer fh.Close()
	head := make([]byte, 64)
	n, _ := io.ReadFull(fh, head)
	head = head[:n]
	switch {
	case n == 0:
		return "it is empty"
	case strings.HasPrefix(string(head), "#!"):
		line, _, _ := strings.Cut(string(head), "\n")
		return "it is a script, " + line
	}
	for _, c := range head {
		if c < 0x09 || (c > 0x0d && c < 0x20) {
			return fmt.Sprintf("it starts with the bytes % x", head[:min(n, 8)])
		}
	}
	line, _, _ := strings.Cut(string(head), "\n")
	return fmt.Sprintf("it is text starting %q", line)
}

// FindCheckout returns the root of a checkout of Module that contains one of dirs (the
// nearest go.mod up from each declaring module Module), or "".
func FindCheckout(dirs ...string) string {
	for _, d := range dirs {
		if d == "" {
			continue
		}
		d, err := filepath.Abs(d)
		if err != nil {
			continue
		}
		for {
			if mod := modulePath(filepath.Join(d, "go.mod")); mod != "" {
				if mod == Module {
					return d
				}
				break // the nearest go.mod belongs to another module
			}
			parent := filepath.Dir(d)
			if parent == d {
				break
			}
			d = parent
		}
	}
	return ""
}

func modulePath(gomod string) string {
	f, err := os.Open(gomod)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "module "); ok {
			return strings.Trim(strings.TrimSpace(rest), `"`)
		}
	}
	return ""
}

// Firstboot returns the etcd-firstboot that matches want (etcdbake's own Build) from the
// cache, building it with the go command when it is not there: a released etcdbake's
// from the module proxy (`go install FirstbootPackage@VERSION`, checked by the checksum
// database like every module), a development build's from checkout (the
// root of a checkout of Module, see FindCheckout; it is rebuilt on every call, which the
// go command's build cache makes quick, because a checkout changes under the same
// version). Either is built static (CGO_ENABLED=0) for linux/amd64, checked with
// CheckFirstboot and stored like the other binaries (etcd-firstboot/<version>/ with its
// record; "devel" for development builds). Without a go command, or for a development
// build without a checkout, the error says exactly what to run.
func (c *Cache) Firstboot(ctx context.Context, want Build, checkout string) (Entry, error) {
	if c.Dir == "" {
		return Entry{}, errors.New("no cache directory given")
	}
	version := want.Version
	if want.Released() {
		if e, err := c.Lookup(FirstbootName, version); err == nil {
			if _, _, err := CheckFirstboot(e.Path, want); err == nil {
				c.progress("%s %s: cached (sha256 %s)", FirstbootName, version, e.SHA256)
				return e, nil
			}
		}
	} else {
		version = develVersion
		if checkout == "" {
			return Entry{}, fmt.Errorf("no etcd-firstboot next to etcdbake, and this etcdbake is a development build (%s) with no checkout of %s around it (looked up from the current directory and from etcdbake's) to build one from: %s; or pass --firstboot PATH", want.Describe(), Module, FirstbootFix(want, ""))
		}
	}
	gocmd, err := exec.LookPath("go")
	if err != nil {
		return Entry{}, fmt.Errorf("no etcd-firstboot next to etcdbake and no go command on PATH to build the matching one: %s; or pass --firstboot PATH", FirstbootFix(want, ""))
	}
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return Entry{}, fmt.Errorf("creating the binary cache: %w", err)
	}
	unlock, err := fileutil.Lock(ctx, filepath.Join(c.Dir, ".lock"), func() {
		c.progress("waiting for another etcdbake using %s", c.Dir)
	})
	if err != nil {
		return Entry{}, fmt.Errorf("locking the binary cache: %w", err)
	}
	defer unlock()
	work, err := os.MkdirTemp(c.Dir, ".fetch-")
	if err != nil {
		return Entry{}, fmt.Errorf("creating a work directory in the cache: %w", err)
	}
	defer os.RemoveAll(work)
	f := &fetcher{c: c, work: work, memo: map[string]*memo{}}
	out := f.tempPath(FirstbootName)
	env := goEnv(firstbootProgram)
	var what, source, detail string
	var build func() error
	if want.Released() {
		what = fmt.Sprintf("%s %s: building %s@%s from source with the go command", FirstbootName, version, FirstbootPackage, version)
		source, detail = spec.SourceGo, FirstbootPackage+"@"+version
		build = func() error {
			return f.runBuild(ctx, gocmd, env, firstbootProgram, FirstbootName, version, "-s -w", out)
		}
	} else {
		what = fmt.Sprintf("%s (development build): building ./cmd/etcd-firstboot in %s with the go command", FirstbootName, checkout)
		source, detail = SourceLocal, "go build ./cmd/etcd-firstboot in "+checkout
		build = func() error {
			return runGo(ctx, gocmd, checkout, env, "build", "-trimpath", "-ldflags=-s -w", "-o", out, "./cmd/etcd-firstboot")
		}
	}
	if err := Timed(c.Progress, what, build); err != nil {
		return Entry{}, fmt.Errorf("building etcd-firstboot: %w", err)
	}
	got, _, err := CheckFirstboot(out, want) // the caller checks again and reports warnings
	if err != nil {
		return Entry{}, fmt.Errorf("the etcd-firstboot just built is rejected, nothing stored: %w", err)
	}
	sum, size, err := fileutil.Digest(out, sha256.New())
	if err != nil {
		return Entry{}, err
	}
	e, err := c.store(out, Entry{
		Name: FirstbootName, Version: version, SHA256: sum, Size: size, Source: source,
		Detail: detail + " by " + got.GoVersion + " with CGO_ENABLED=0", Fetched: time.Now().UTC().Truncate(time.Second),
	})
	if err != nil {
		return Entry{}, err
	}
	c.progress("%s %s: stored (sha256 %s, %d bytes)", FirstbootName, version, sum, size)
	return e, nil
}
