package binaries

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/etcdbake/etcdbake/internal/fileutil"
	"github.com/etcdbake/etcdbake/spec"
)

// ChecksumError rejects a binary (or the archive it comes in) whose sha256 is not the
// expected one. Nothing is stored when it is returned.
type ChecksumError struct {
	Name     string // binary: etcd, etcdctl or flanneld
	Source   string // release, go or file
	File     string // what was hashed: a URL, a path, an archive name
	Expected string // hex sha256 the source publishes or the spec gives
	From     string // where Expected comes from
	Actual   string // hex sha256 of what was received
}

func (e *ChecksumError) Error() string {
	return fmt.Sprintf("%s (source %s): %s has sha256 %s, but %s expects %s: rejected, nothing stored",
		e.Name, e.Source, e.File, e.Actual, e.From, e.Expected)
}

// candidate is a file in the work directory that a source produced, not yet verified.
type candidate struct {
	path     string
	source   string
	detail   string
	expected string // sha256 the file must have; empty when the source verified upstream
	from     string // where expected comes from
	module   string // for source go: the module whose version the build info must show
}

// memo keeps a result shared by several binaries of one fetch (etcd and etcdctl come
// from the same release archive).
type memo struct {
	path, detail string
	err          error
}

type fetcher struct {
	c    *Cache
	cl   *spec.Cluster
	work string
	memo map[string]*memo
	seq  int
}

// tempPath returns a fresh path in the work directory.
func (f *fetcher) tempPath(prefix string) string {
	f.seq++
	return filepath.Join(f.work, fmt.Sprintf("%s-%d", prefix, f.seq))
}

// FetchError says why no source provided a binary: one error per source tried, in
// order. errors.As finds a *ChecksumError among them.
type FetchError struct {
	Name, Version string
	Sources       []string
	Errs          []error
}

func (e *FetchError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s: no source provided a verified binary:", e.Name, e.Version)
	for i, err := range e.Errs {
		fmt.Fprintf(&b, "\n  source %s: %v", e.Sources[i], err)
	}
	return b.String()
}

func (e *FetchError) Unwrap() []error { return e.Errs }

// fetch tries the spec's sources in order for one binary and stores the first that
// verifies.
func (f *fetcher) fetch(ctx context.Context, name, version string) (Entry, error) {
	fe := &FetchError{Name: name, Version: version}
	for _, src := range sources(f.cl) {
		if err := ctx.Err(); err != nil {
			fe.Sources, fe.Errs = append(fe.Sources, src), append(fe.Errs, err)
			break
		}
		f.c.progress("%s %s: trying source %s", name, version, src)
		start := time.Now()
		e, err := f.fromSource(ctx, src, name, version)
		if err != nil {
			f.c.progress("%s %s: source %s failed: %v", name, version, src, err)
			fe.Sources, fe.Errs = append(fe.Sources, src), append(fe.Errs, err)
			continue
		}
		f.c.progress("%s %s: stored from source %s in %s (sha256 %s, %d bytes)", name, version, src, time.Since(start).Round(100*time.Millisecond), e.SHA256, e.Size)
		return e, nil
	}
	return Entry{}, fe
}

func (f *fetcher) fromSource(ctx context.Context, src, name, version string) (Entry, error) {
	var cand candidate
	var err error
	switch src {
	case spec.SourceRelease:
		cand, err = f.release(ctx, name, version)
	case spec.SourceGo:
		cand, err = f.goBuild(ctx, name, version)
	case spec.SourceFile:
		cand, err = f.file(name)
	default:
		err = fmt.Errorf("unknown source %q: use release, go or file", src)
	}
	if err != nil {
		return Entry{}, err
	}
	defer os.Remove(cand.path) // no-op once stored
	return f.accept(ctx, name, version, cand)
}

// accept verifies a candidate (sha256, build info, reported version) and stores it.
func (f *fetcher) accept(ctx context.Context, name, version string, cand candidate) (Entry, error) {
	sum, size, err := fileutil.Digest(cand.path, sha256.New())
	if err != nil {
		return Entry{}, err
	}
	if cand.expected != "" && sum != cand.expected {
		return Entry{}, &ChecksumError{Name: name, Source: cand.source, File: cand.detail, Expected: cand.expected, From: cand.from, Actual: sum}
	}
	if cand.module != "" {
		if err := checkBuildInfo(cand.path, cand.module, version); err != nil {
			return Entry{}, fmt.Errorf("%s built from source go: %w: rejected", name, err)
		}
	}
	if err := os.Chmod(cand.path, 0o755); err != nil {
		return Entry{}, err
	}
	if err := runVersion(ctx, name, cand.path, version); err != nil {
		if errors.Is(err, errCannotRun) {
			f.c.progress("%s %s: %v; its version is not checked", name, version, err)
		} else {
			return Entry{}, fmt.Errorf("%s (source %s, sha256 %s): %w: rejected, nothing stored", name, cand.source, sum, err)
		}
	}
	return f.c.store(cand.path, Entry{
		Name: name, Version: version, SHA256: sum, Size: size,
		Source: cand.source, Detail: cand.detail, Fetched: time.Now().UTC().Truncate(time.Second),
	})
}

// file copies binaries.files[name] into the work directory; accept checks its sha256.
func (f *fetcher) file(name string) (candidate, error) {
	lb, ok := f.cl.Binary.Files[name]
	if !ok {
		return candidate{}, fmt.Errorf("binaries.files has no %s entry: add one with path and sha256", name)
	}
	want := strings.ToLower(strings.TrimSpace(lb.SHA256))
	if !isSHA256(want) {
		return candidate{}, fmt.Errorf("binaries.files.%s.sha256 %q is not a sha256 (64 hex digits)", name, lb.SHA256)
	}
	src, err := os.Open(lb.Path)
	if err != nil {
		return candidate{}, fmt.Errorf("binaries.files.%s: %w", name, err)
	}
	defer src.Close()
	if st, err := src.Stat(); err != nil {
		return candidate{}, err
	} else if !st.Mode().IsRegular() {
		return candidate{}, fmt.Errorf("binaries.files.%s: %s is not a regular file", name, lb.Path)
	}
	tmp := f.tempPath(name)
	if _, err := copyToFile(tmp, src, maxBinary); err != nil {
		return candidate{}, fmt.Errorf("copying %s: %w", lb.Path, err)
	}
	return candidate{path: tmp, source: spec.SourceFile, detail: lb.Path, expected: want, from: "binaries.files." + name + ".sha256"}, nil
}

const maxBinary = 512 << 20

// copyToFile writes at most limit bytes of r into a new file at path and returns their
// sha256. The file is synced; on error it is removed.
func copyToFile(path string, r io.Reader, limit int64) (string, error) {
	out, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(out, h), io.LimitReader(r, limit+1))
	if err == nil && n > limit {
		err = fmt.Errorf("larger than %d MiB", limit>>20)
	}
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// errCannotRun means this host cannot execute the (linux/amd64) binary to ask its version.
var errCannotRun = errors.New("this host is not linux/amd64 and cannot run the binary")

// versionArgs ask each program for its version without side effects.
var versionArgs = map[string][]string{
	"etcd":     {"--version"}, // "etcd Version: 3.6.16"
	"etcdctl":  {"version"},   // "etcdctl version: 3.6.16"
	"flanneld": {"--version"}, // "v0.28.7"
}

// runVersion runs the binary with its version flag in a clean environment and checks
// that the output names version (with or without the leading v).
func runVersion(ctx context.Context, name, path, version string) error {
	if runtime.GOOS != "linux" || runtime.GOARCH != "amd64" {
		return errCannotRun
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	dir, err := os.MkdirTemp("", "etcdbake-version-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	var buf bytes.Buffer
	var runErr error
	for try := 0; ; try++ {
		cmd := exec.CommandContext(ctx, path, versionArgs[name]...)
		cmd.Dir = dir
		cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=" + dir}
		buf.Reset()
		cmd.Stdout, cmd.Stderr = &buf, &buf
		cmd.WaitDelay = 5 * time.Second
		runErr = cmd.Run()
		// A child forked elsewhere in this process may briefly hold the just-written
		// file open (golang.org/issue/22315): the kernel then refuses to execute it.
		if !errors.Is(runErr, syscall.ETXTBSY) || try == 10 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	out := strings.TrimSpace(buf.String())
	if len(out) > 400 {
		out = out[:400] + "..."
	}
	if runErr != nil {
		return fmt.Errorf("`%s %s` failed: %v (output %q)", name, strings.Join(versionArgs[name], " "), runErr, out)
	}
	v := strings.TrimPrefix(version, "v")
	re := regexp.MustCompile(`(?m)(^|[^0-9A-Za-z.])v?` + regexp.QuoteMeta(v) + `($|[^0-9A-Za-z.]|\.$)`)
	if !re.MatchString(out) {
		return fmt.Errorf("`%s %s` does not report version %s: it printed %q", name, strings.Join(versionArgs[name], " "), version, out)
	}
	return nil
}
