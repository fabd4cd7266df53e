// Package binaries is the verified binary cache behind `etcdbake fetch`: it puts the
// pinned etcd, etcdctl and flanneld into a cache directory, each checked by sha256, from
// the sources the spec lists (official release, a build from the Go module proxy, or
// local files), and records what it holds so the image build can use the files and
// describe them (SBOM).
//
// Layout of the cache directory:
//
//	<dir>/<name>/<version>/<name>        the binary (mode 0755)
//	<dir>/<name>/<version>/entry.json    its record (see Entry)
//
// A binary is moved into place only after it has verified, and its record is written
// last, so an interrupted fetch never leaves something that reads as a cache entry.
// Reading an entry re-hashes the file and compares it with the record.
package binaries

import (
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/etcdbake/etcdbake/internal/fileutil"
	"github.com/etcdbake/etcdbake/spec"
)

// Names are the binaries the cache holds, in fetch order.
var Names = []string{"etcd", "etcdctl", "flanneld"}

const manifestName = "entry.json"

// manifestFormat is written into every record; a record of another format is not read.
const manifestFormat = 1

// ErrNotCached is wrapped by Lookup when the cache has no record of a binary.
var ErrNotCached = errors.New("not in the binary cache")

// ErrCorrupt is wrapped by Lookup when a record exists but the file does not match it.
var ErrCorrupt = errors.New("cache entry does not verify")

// DefaultCacheDir is $XDG_CACHE_HOME/etcdbake, or ~/.cache/etcdbake when XDG_CACHE_HOME
// is unset or not absolute (the XDG spec says relative values are ignored).
func DefaultCacheDir() (string, error) {
	if x := os.Getenv("XDG_CACHE_HOME"); x != "" && filepath.IsAbs(x) {
		return filepath.Join(x, "etcdbake"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("cannot find the binary cache: set XDG_CACHE_HOME or HOME (%v)", err)
	}
	return filepath.Join(home, ".cache", "etcdbake"), nil
}

// Cache is a binary cache directory.
type Cache struct {
	Dir string
	// Progress receives one line per step (sources tried, failures, results). It may be
	// nil; the package itself never prints.
	Progress func(format string, args ...any)
}

// Entry is one cached binary and its provenance.
type Entry struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	// SHA256 is the hex sha256 of the cached file itself.
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
	// Source is release, go or file.
	Source string `json:"source"`
	// Detail says where exactly the file came from: for release the URL (and the verified
	// checksum of the archive it was taken from), for go module@version and the Go
	// toolchain, for file the original path.
	Detail  string    `json:"detail"`
	Fetched time.Time `json:"fetched"`
	// Path is the cached file (not stored in the record).
	Path string `json:"-"`
}

type manifest struct {
	Format int `json:"format"`
	Entry
}

// SHA512 returns the hex sha512 of the cached file (Ignition verifies files by sha512).
// The file's sha256 is checked against the record in the same pass.
func (e Entry) SHA512() (string, error) {
	f, err := os.Open(e.Path)
	if err != nil {
		return "", fmt.Errorf("%s %s: %w", e.Name, e.Version, err)
	}
	defer f.Close()
	h256, h512 := sha256.New(), sha512.New()
	if _, err := io.Copy(io.MultiWriter(h256, h512), f); err != nil {
		return "", fmt.Errorf("%s %s: reading %s: %w", e.Name, e.Version, e.Path, err)
	}
	if got := hex.EncodeToString(h256.Sum(nil)); got != e.SHA256 {
		return "", fmt.Errorf("%w: %s has sha256 %s but its record says %s: it changed after it was fetched; run `etcdbake fetch` again", ErrCorrupt, e.Path, got, e.SHA256)
	}
	return hex.EncodeToString(h512.Sum(nil)), nil
}

func (c *Cache) progress(format string, args ...any) {
	if c.Progress != nil {
		c.Progress(format, args...)
	}
}

// versionFor returns the pinned version of a binary.
func versionFor(cl *spec.Cluster, name string) string {
	if name == "flanneld" {
		return cl.Flannel.Version
	}
	return cl.Etcd.Version
}

func checkName(name string) error {
	if !slices.Contains(Names, name) && name != FirstbootName {
		return fmt.Errorf("unknown binary %q: the cache holds %s", name, strings.Join(Names, ", "))
	}
	return nil
}

func checkVersion(name, version string) error {
	if version == "" || version == "." || version == ".." || strings.ContainsAny(version, `/\`+"\x00") {
		return fmt.Errorf("%s: %q is not a version", name, version)
	}
	return nil
}

func (c *Cache) entryDir(name, version string) string {
	return filepath.Join(c.Dir, name, version)
}

// Lookup returns the cached, verified entry for name at version. It fails, wrapping
// ErrNotCached, when the cache has no record, and wrapping ErrCorrupt when the file is
// missing or its sha256 or size differ from the record.
func (c *Cache) Lookup(name, version string) (Entry, error) {
	if err := checkName(name); err != nil {
		return Entry{}, err
	}
	if err := checkVersion(name, version); err != nil {
		return Entry{}, err
	}
	dir := c.entryDir(name, version)
	data, err := os.ReadFile(filepath.Join(dir, manifestName))
	if errors.Is(err, fs.ErrNotExist) {
		return Entry{}, fmt.Errorf("%s %s is %w %s: run `etcdbake fetch`", name, version, ErrNotCached, c.Dir)
	}
	if err != nil {
		return Entry{}, fmt.Errorf("reading the cache record of %s %s: %w", name, version, err)
	}
	var m manifest
	if err := json.Unmarshal(data, &m); err != nil || m.Format != manifestFormat {
		return Entry{}, fmt.Errorf("%w: the record %s is unreadable (format %d, %v): delete %s and run `etcdbake fetch`", ErrCorrupt, filepath.Join(dir, manifestName), m.Format, err, dir)
	}
	e := m.Entry
	if e.Name != name || e.Version != version || !isSHA256(e.SHA256) {
		return Entry{}, fmt.Errorf("%w: the record %s describes %s %s (sha256 %q), not %s %s: delete %s and run `etcdbake fetch`", ErrCorrupt, filepath.Join(dir, manifestName), e.Name, e.Version, e.SHA256, name, version, dir)
	}
	e.Path = filepath.Join(dir, name)
	sum, size, err := fileutil.Digest(e.Path, sha256.New())
	if errors.Is(err, fs.ErrNotExist) {
		return Entry{}, fmt.Errorf("%w: %s is recorded but the file %s is missing: run `etcdbake fetch`", ErrCorrupt, name, e.Path)
	}
	if err != nil {
		return Entry{}, fmt.Errorf("%s %s: %w", name, version, err)
	}
	if sum != e.SHA256 || size != e.Size {
		return Entry{}, fmt.Errorf("%w: the cached file %s has sha256 %s (%d bytes) but its record says %s (%d bytes): it was modified after it was fetched; run `etcdbake fetch` to replace it", ErrCorrupt, e.Path, sum, size, e.SHA256, e.Size)
	}
	return e, nil
}

// LookupAll returns the verified entries of all binaries at the spec's versions, in the
// order of Names. An entry only counts when the spec still allows where it came from
// (its source is listed, and for source file its sha256 is the one the spec gives).
func (c *Cache) LookupAll(cl *spec.Cluster) ([]Entry, error) {
	var out []Entry
	var errs []error
	for _, name := range Names {
		e, err := c.Lookup(name, versionFor(cl, name))
		if err == nil {
			err = allowed(e, cl)
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, e)
	}
	if len(errs) > 0 {
		return out, errors.Join(errs...)
	}
	return out, nil
}

func sources(cl *spec.Cluster) []string {
	if len(cl.Binary.Sources) == 0 {
		return spec.DefaultSources
	}
	return cl.Binary.Sources
}

// allowed reports whether a cached entry satisfies the spec's binaries section.
func allowed(e Entry, cl *spec.Cluster) error {
	src := sources(cl)
	if !slices.Contains(src, e.Source) {
		return fmt.Errorf("cached %s %s came from source %s, which binaries.sources [%s] no longer lists: run `etcdbake fetch`", e.Name, e.Version, e.Source, strings.Join(src, ", "))
	}
	if e.Source == spec.SourceFile {
		f, ok := cl.Binary.Files[e.Name]
		if !ok {
			return fmt.Errorf("cached %s %s came from a local file, but binaries.files has no %s now: run `etcdbake fetch`", e.Name, e.Version, e.Name)
		}
		if !strings.EqualFold(f.SHA256, e.SHA256) {
			return fmt.Errorf("cached %s %s has sha256 %s but binaries.files.%s.sha256 is %s: run `etcdbake fetch`", e.Name, e.Version, e.SHA256, e.Name, strings.ToLower(f.SHA256))
		}
	}
	return nil
}

// Fetch makes sure the pinned etcd, etcdctl and flanneld are in the cache and returns
// their entries in the order of Names. A binary already cached (and verified, and still
// allowed by the spec) is kept; otherwise the spec's sources are tried in order, each
// failure is reported through Progress and the next source is tried. The error lists
// every binary no source could provide, with each source's reason.
func (c *Cache) Fetch(ctx context.Context, cl *spec.Cluster) ([]Entry, error) {
	if c.Dir == "" {
		return nil, errors.New("no cache directory given")
	}
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating the binary cache: %w", err)
	}
	unlock, err := fileutil.Lock(ctx, filepath.Join(c.Dir, ".lock"), func() {
		c.progress("waiting for another etcdbake fetch using %s", c.Dir)
	})
	if err != nil {
		return nil, fmt.Errorf("locking the binary cache: %w", err)
	}
	defer unlock()
	c.removeStaleWork()
	work, err := os.MkdirTemp(c.Dir, ".fetch-")
	if err != nil {
		return nil, fmt.Errorf("creating a work directory in the cache: %w", err)
	}
	defer os.RemoveAll(work)
	f := &fetcher{c: c, cl: cl, work: work, memo: map[string]*memo{}}

	var out []Entry
	var errs []error
	for _, name := range Names {
		if err := ctx.Err(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
			break
		}
		version := versionFor(cl, name)
		if err := checkVersion(name, version); err != nil {
			errs = append(errs, err)
			continue
		}
		e, err := c.Lookup(name, version)
		if err == nil {
			err = allowed(e, cl)
		}
		if err == nil {
			c.progress("%s %s: cached (source %s, sha256 %s)", name, version, e.Source, e.SHA256)
			out = append(out, e)
			continue
		}
		if !errors.Is(err, ErrNotCached) {
			c.progress("%s %s: %v; fetching it again", name, version, err)
		}
		e, err = f.fetch(ctx, name, version)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, e)
	}
	if len(errs) > 0 {
		return out, errors.Join(errs...)
	}
	return out, nil
}

// removeStaleWork deletes work directories that interrupted fetches left behind.
func (c *Cache) removeStaleWork() {
	old, _ := filepath.Glob(filepath.Join(c.Dir, ".fetch-*"))
	for _, d := range old {
		if st, err := os.Stat(d); err == nil && time.Since(st.ModTime()) > 24*time.Hour {
			os.RemoveAll(d)
		}
	}
}

// store moves a verified binary (a file in the work directory, same file system) into
// its entry directory and writes its record. The old record is removed first and the new
// one is written last, so no interruption pairs a record with the wrong file.
func (c *Cache) store(tmp string, e Entry) (Entry, error) {
	dir := c.entryDir(e.Name, e.Version)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Entry{}, err
	}
	mpath := filepath.Join(dir, manifestName)
	if err := os.Remove(mpath); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return Entry{}, err
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return Entry{}, err
	}
	e.Path = filepath.Join(dir, e.Name)
	if err := os.Rename(tmp, e.Path); err != nil {
		return Entry{}, err
	}
	data, err := json.MarshalIndent(manifest{Format: manifestFormat, Entry: e}, "", "  ")
	if err != nil {
		return Entry{}, err
	}
	if err := fileutil.WriteAtomic(mpath, append(data, '\n'), 0o644); err != nil {
		return Entry{}, err
	}
	fileutil.SyncDir(dir)
	return e, nil
}

func isSHA256(s string) bool {
	if len(s) != 64 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil && strings.ToLower(s) == s
}
