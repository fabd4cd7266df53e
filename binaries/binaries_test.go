package binaries

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/etcdbake/etcdbake/internal/fileutil"
	"github.com/etcdbake/etcdbake/spec"
)

const (
	etcdV    = "v3.6.16"
	flannelV = "v0.28.7"
)

// testCluster parses the built-in example (etcd v3.6.16, flannel v0.28.7) and lets the
// test change the binaries section.
func testCluster(t *testing.T, sources ...string) *spec.Cluster {
	t.Helper()
	cl, rep := spec.Parse(spec.Example)
	if cl == nil || rep.HasErrors() {
		t.Fatalf("example spec: %s", rep.String())
	}
	if cl.Etcd.Version != etcdV || cl.Flannel.Version != flannelV {
		t.Fatalf("example pins etcd %s, flannel %s; the tests expect %s and %s", cl.Etcd.Version, cl.Flannel.Version, etcdV, flannelV)
	}
	cl.Binary.Sources = sources
	return cl
}

type progressLog struct {
	t     *testing.T
	mu    sync.Mutex
	lines []string
}

func (p *progressLog) printf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	line := fmt.Sprintf(format, args...)
	p.lines = append(p.lines, line)
	p.t.Logf("progress: %s", line)
}

func (p *progressLog) contains(s string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, l := range p.lines {
		if strings.Contains(l, s) {
			return true
		}
	}
	return false
}

func newCache(t *testing.T, dir string) (*Cache, *progressLog) {
	p := &progressLog{t: t}
	return &Cache{Dir: dir, Progress: p.printf}, p
}

// Fake programs: shell scripts that answer the version question like the real ones.
func fakeEtcd(v string) []byte {
	return []byte("#!/bin/sh\necho 'etcd Version: " + strings.TrimPrefix(v, "v") + "'\necho 'Git SHA: fake'\n")
}
func fakeEtcdctl(v string) []byte {
	return []byte("#!/bin/sh\necho 'etcdctl version: " + strings.TrimPrefix(v, "v") + "'\necho 'API version: 3.6'\n")
}
func fakeFlanneld(v string) []byte { return []byte("#!/bin/sh\necho " + v + " >&2\n") }

func sha(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

func writeExec(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// localFiles writes the three fake programs and returns binaries.files for them.
func localFiles(t *testing.T, etcdVersion string) (map[string]spec.LocalBinary, map[string][]byte) {
	dir := t.TempDir()
	content := map[string][]byte{"etcd": fakeEtcd(etcdVersion), "etcdctl": fakeEtcdctl(etcdVersion), "flanneld": fakeFlanneld(flannelV)}
	files := map[string]spec.LocalBinary{}
	for name, data := range content {
		files[name] = spec.LocalBinary{Path: writeExec(t, dir, name, data), SHA256: sha(data)}
	}
	return files, content
}

// regularFiles lists every regular file under dir (the cache must hold nothing after a
// rejection, not even temporary files; the lock file is not content).
func regularFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() && p != filepath.Join(dir, ".lock") {
			out = append(out, p)
		}
		return nil
	})
	return out
}

func checkEntry(t *testing.T, c *Cache, e Entry, name, version, source string, content []byte) {
	t.Helper()
	if e.Name != name || e.Version != version || e.Source != source {
		t.Fatalf("entry = %+v, want %s %s from %s", e, name, version, source)
	}
	if e.SHA256 != sha(content) || e.Size != int64(len(content)) {
		t.Fatalf("%s: entry sha256 %s size %d, want %s %d", name, e.SHA256, e.Size, sha(content), len(content))
	}
	got, err := os.ReadFile(e.Path)
	if err != nil || !bytes.Equal(got, content) {
		t.Fatalf("%s: cached file %s differs from the source (%v)", name, e.Path, err)
	}
	if st, _ := os.Stat(e.Path); st.Mode().Perm()&0o111 == 0 {
		t.Fatalf("%s: cached file is not executable: %v", name, st.Mode())
	}
	l, err := c.Lookup(name, version)
	if err != nil {
		t.Fatalf("Lookup %s: %v", name, err)
	}
	if l != e {
		t.Fatalf("Lookup %s = %+v, Fetch returned %+v", name, l, e)
	}
	// The record on disk, as the SBOM writer will read it.
	var m map[string]any
	data, err := os.ReadFile(filepath.Join(c.Dir, name, version, "entry.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{"name": name, "version": version, "sha256": sha(content), "size": float64(len(content)), "source": source, "detail": e.Detail, "format": float64(1)} {
		if m[k] != want {
			t.Fatalf("%s record: %s = %v, want %v (record %s)", name, k, m[k], want, data)
		}
	}
	if ts, err := time.Parse(time.RFC3339, fmt.Sprint(m["fetched"])); err != nil || time.Since(ts) > time.Hour || time.Since(ts) < -time.Minute {
		t.Fatalf("%s record: fetched = %v (%v)", name, m["fetched"], err)
	}
}

func TestFileSource(t *testing.T) {
	t.Parallel()
	cl := testCluster(t, spec.SourceFile)
	files, content := localFiles(t, etcdV)
	cl.Binary.Files = files
	c, p := newCache(t, t.TempDir())

	entries, err := c.Fetch(context.Background(), cl)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 3 {
		t.Fatalf("got %d entries", len(entries))
	}
	for i, name := range Names {
		version := etcdV
		if name == "flanneld" {
			version = flannelV
		}
		checkEntry(t, c, entries[i], name, version, spec.SourceFile, content[name])
		if entries[i].Detail != files[name].Path {
			t.Fatalf("%s detail = %q, want the local path", name, entries[i].Detail)
		}
		s512, err := entries[i].SHA512()
		want := sha512.Sum512(content[name])
		if err != nil || s512 != hex.EncodeToString(want[:]) {
			t.Fatalf("%s SHA512 = %s, %v", name, s512, err)
		}
	}

	// A second fetch keeps the verified entries.
	again, err := c.Fetch(context.Background(), cl)
	if err != nil {
		t.Fatal(err)
	}
	for i := range again {
		if again[i] != entries[i] {
			t.Fatalf("second fetch replaced %s: %+v vs %+v", Names[i], again[i], entries[i])
		}
	}
	if !p.contains("etcd " + etcdV + ": cached (source file") {
		t.Fatalf("second fetch did not report the cached entry")
	}
	all, err := c.LookupAll(cl)
	if err != nil || len(all) != 3 {
		t.Fatalf("LookupAll = %d entries, %v", len(all), err)
	}
}

func TestFileSourceBadChecksum(t *testing.T) {
	t.Parallel()
	cl := testCluster(t, spec.SourceFile)
	files, content := localFiles(t, etcdV)
	bad := sha([]byte("something else"))
	f := files["flanneld"]
	f.SHA256 = strings.ToUpper(bad) // the spec accepts either case
	files["flanneld"] = f
	cl.Binary.Files = files
	dir := t.TempDir()
	c, _ := newCache(t, dir)

	entries, err := c.Fetch(context.Background(), cl)
	if err == nil {
		t.Fatal("fetch accepted a file with the wrong sha256")
	}
	var ce *ChecksumError
	if !errors.As(err, &ce) {
		t.Fatalf("error is not a ChecksumError: %v", err)
	}
	actual := sha(content["flanneld"])
	for _, want := range []string{"flanneld", "source file", bad, actual, f.Path, "rejected"} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("error does not name %q: %v", want, err)
		}
	}
	if len(entries) != 2 {
		t.Fatalf("etcd and etcdctl should still be stored, got %d entries", len(entries))
	}
	if _, err := c.Lookup("flanneld", flannelV); !errors.Is(err, ErrNotCached) || !strings.Contains(err.Error(), "etcdbake fetch") {
		t.Fatalf("Lookup of the rejected binary: %v", err)
	}
	if files := regularFiles(t, filepath.Join(dir, "flanneld")); len(files) != 0 {
		t.Fatalf("rejected binary left files: %v", files)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".fetch-*")); len(left) != 0 {
		t.Fatalf("work directory left behind: %v", left)
	}
}

// releaseServer serves etcd's and flannel's release layouts under /etcd and /flannel.
type releaseServer struct {
	etcdArchive, etcdSums, flanneld, flannelSums []byte
	flannelSumsName                              string
	truncate                                     bool // cut the etcd archive short
}

func (rs *releaseServer) start(t *testing.T) *httptest.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("/etcd/"+etcdV+"/etcd-"+etcdV+"-linux-amd64.tar.gz", func(w http.ResponseWriter, r *http.Request) {
		if rs.truncate {
			w.Header().Set("Content-Length", fmt.Sprint(len(rs.etcdArchive)))
			w.Write(rs.etcdArchive[:len(rs.etcdArchive)/2])
			return // the server closes the connection: the client sees an unexpected EOF
		}
		w.Write(rs.etcdArchive)
	})
	mux.HandleFunc("/etcd/"+etcdV+"/SHA256SUMS", func(w http.ResponseWriter, r *http.Request) { w.Write(rs.etcdSums) })
	mux.HandleFunc("/flannel/"+flannelV+"/flanneld-amd64", func(w http.ResponseWriter, r *http.Request) { w.Write(rs.flanneld) })
	if rs.flannelSumsName != "" {
		mux.HandleFunc("/flannel/"+flannelV+"/"+rs.flannelSumsName, func(w http.ResponseWriter, r *http.Request) { w.Write(rs.flannelSums) })
	}
	srv := httptest.NewServer(mux) // listens on 127.0.0.1
	t.Cleanup(srv.Close)
	return srv
}

func etcdTarball(t *testing.T, etcd, etcdctl []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	dir := "etcd-" + etcdV + "-linux-amd64/"
	add := func(name string, data []byte, mode int64) {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: mode, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write(data)
	}
	tw.WriteHeader(&tar.Header{Name: dir, Mode: 0o755, Typeflag: tar.TypeDir})
	add(dir+"README.md", []byte("etcd\n"), 0o644)
	add(dir+"etcd", etcd, 0o755)
	add(dir+"etcdctl", etcdctl, 0o755)
	add(dir+"etcdutl", []byte("#!/bin/sh\n"), 0o755)
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	zw.Close()
	return buf.Bytes()
}

// goodRelease builds a release whose published checksums are right.
func goodRelease(t *testing.T, etcdVersion string) (*releaseServer, map[string][]byte) {
	content := map[string][]byte{"etcd": fakeEtcd(etcdVersion), "etcdctl": fakeEtcdctl(etcdVersion), "flanneld": fakeFlanneld(flannelV)}
	arch := etcdTarball(t, content["etcd"], content["etcdctl"])
	rs := &releaseServer{
		etcdArchive: arch,
		etcdSums: []byte(sha([]byte("other")) + "  etcd-" + etcdV + "-darwin-amd64.zip\n" +
			sha(arch) + "  etcd-" + etcdV + "-linux-amd64.tar.gz\n"),
		flanneld:        content["flanneld"],
		flannelSumsName: "sha256sum.txt",
		flannelSums:     []byte(sha([]byte("arm")) + "  dist/flanneld-arm64\n" + sha(content["flanneld"]) + "  dist/flanneld-amd64\n"),
	}
	return rs, content
}

func releaseCluster(t *testing.T, srv *httptest.Server, sources ...string) *spec.Cluster {
	cl := testCluster(t, sources...)
	cl.Binary.EtcdReleaseURL = srv.URL + "/etcd/" // a trailing slash is accepted
	cl.Binary.FlannelReleaseURL = srv.URL + "/flannel"
	return cl
}

func TestReleaseSource(t *testing.T) {
	t.Parallel()
	rs, content := goodRelease(t, etcdV)
	srv := rs.start(t)
	cl := releaseCluster(t, srv, spec.SourceRelease)
	c, _ := newCache(t, t.TempDir())

	entries, err := c.Fetch(context.Background(), cl)
	if err != nil {
		t.Fatal(err)
	}
	archiveURL := srv.URL + "/etcd/" + etcdV + "/etcd-" + etcdV + "-linux-amd64.tar.gz"
	for i, name := range Names {
		version, detail := etcdV, archiveURL
		if name == "flanneld" {
			version, detail = flannelV, srv.URL+"/flannel/"+flannelV+"/flanneld-amd64"
		}
		checkEntry(t, c, entries[i], name, version, spec.SourceRelease, content[name])
		if !strings.HasPrefix(entries[i].Detail, detail) {
			t.Fatalf("%s detail = %q, want it to start with %s", name, entries[i].Detail, detail)
		}
	}
	if !strings.Contains(entries[0].Detail, sha(rs.etcdArchive)) {
		t.Fatalf("etcd detail does not record the archive's sha256: %s", entries[0].Detail)
	}
}

func TestReleaseFlannelChecksumFallbackName(t *testing.T) {
	t.Parallel()
	rs, content := goodRelease(t, etcdV)
	rs.flannelSumsName = "SHA256SUMS"
	rs.flannelSums = []byte(sha(content["flanneld"]) + " *flanneld-amd64\n")
	srv := rs.start(t)
	c, _ := newCache(t, t.TempDir())
	entries, err := c.Fetch(context.Background(), releaseCluster(t, srv, spec.SourceRelease))
	if err != nil {
		t.Fatal(err)
	}
	checkEntry(t, c, entries[2], "flanneld", flannelV, spec.SourceRelease, content["flanneld"])
}

func TestReleaseBadChecksum(t *testing.T) {
	t.Parallel()
	rs, content := goodRelease(t, etcdV)
	wrongEtcd, wrongFlannel := sha([]byte("tampered archive")), sha([]byte("tampered flanneld"))
	rs.etcdSums = []byte(wrongEtcd + "  etcd-" + etcdV + "-linux-amd64.tar.gz\n")
	rs.flannelSums = []byte(wrongFlannel + "  flanneld-amd64\n")
	srv := rs.start(t)
	dir := t.TempDir()
	c, _ := newCache(t, dir)

	entries, err := c.Fetch(context.Background(), releaseCluster(t, srv, spec.SourceRelease))
	if err == nil || len(entries) != 0 {
		t.Fatalf("fetch accepted binaries with wrong checksums: %d entries, %v", len(entries), err)
	}
	msg := err.Error()
	for _, want := range []string{
		"etcd " + etcdV, "etcdctl " + etcdV, "flanneld " + flannelV, "source release",
		wrongEtcd, sha(rs.etcdArchive), wrongFlannel, sha(content["flanneld"]), "rejected",
	} {
		if !strings.Contains(msg, want) {
			t.Fatalf("error does not name %q:\n%s", want, msg)
		}
	}
	for _, name := range Names {
		if _, err := c.Lookup(name, versionFor(testCluster(t), name)); !errors.Is(err, ErrNotCached) {
			t.Fatalf("Lookup %s after rejection: %v", name, err)
		}
	}
	if files := regularFiles(t, dir); len(files) != 0 {
		t.Fatalf("rejected downloads left files in the cache: %v", files)
	}
}

func TestReleasePartialDownload(t *testing.T) {
	t.Parallel()
	rs, _ := goodRelease(t, etcdV)
	rs.truncate = true
	srv := rs.start(t)
	dir := t.TempDir()
	c, _ := newCache(t, dir)
	entries, err := c.Fetch(context.Background(), releaseCluster(t, srv, spec.SourceRelease))
	if err == nil || !strings.Contains(err.Error(), "etcd-"+etcdV+"-linux-amd64.tar.gz") {
		t.Fatalf("truncated download: %v", err)
	}
	if len(entries) != 1 || entries[0].Name != "flanneld" {
		t.Fatalf("only flanneld should be cached, got %+v", entries)
	}
	if files := regularFiles(t, filepath.Join(dir, "etcd")); len(files) != 0 {
		t.Fatalf("a partial download became a cache file: %v", files)
	}
	if files := regularFiles(t, filepath.Join(dir, "etcdctl")); len(files) != 0 {
		t.Fatalf("a partial download became a cache file: %v", files)
	}
}

func TestReleaseWrongVersion(t *testing.T) {
	t.Parallel()
	// Checksums match, but the archive holds another etcd than the pinned one.
	rs, _ := goodRelease(t, "v3.5.21")
	srv := rs.start(t)
	dir := t.TempDir()
	c, _ := newCache(t, dir)
	_, err := c.Fetch(context.Background(), releaseCluster(t, srv, spec.SourceRelease))
	if err == nil || !strings.Contains(err.Error(), "does not report version "+etcdV) || !strings.Contains(err.Error(), "3.5.21") {
		t.Fatalf("wrong version accepted or badly reported: %v", err)
	}
	if files := regularFiles(t, filepath.Join(dir, "etcd")); len(files) != 0 {
		t.Fatalf("wrong version stored: %v", files)
	}
}

func TestReleaseFlannelWithoutChecksum(t *testing.T) {
	t.Parallel()
	rs, _ := goodRelease(t, etcdV)
	rs.flannelSumsName = "" // the release publishes no checksum list
	srv := rs.start(t)
	c, _ := newCache(t, t.TempDir())
	entries, err := c.Fetch(context.Background(), releaseCluster(t, srv, spec.SourceRelease))
	if err == nil || !strings.Contains(err.Error(), "publishes no checksum") || !strings.Contains(err.Error(), "sha256sum.txt, SHA256SUMS") {
		t.Fatalf("unverifiable flanneld: %v", err)
	}
	if len(entries) != 2 {
		t.Fatalf("etcd and etcdctl should be cached, got %d", len(entries))
	}
}

func TestFallbackToNextSource(t *testing.T) {
	t.Parallel()
	// Release server that answers 404 for everything, then nothing listening at all.
	srv := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(srv.Close)
	cl := releaseCluster(t, srv, spec.SourceRelease, spec.SourceFile)
	cl.Binary.FlannelReleaseURL = "http://127.0.0.1:1" // connection refused
	files, content := localFiles(t, etcdV)
	cl.Binary.Files = files
	c, p := newCache(t, t.TempDir())

	start := time.Now()
	entries, err := c.Fetch(context.Background(), cl)
	if err != nil {
		t.Fatal(err)
	}
	if time.Since(start) > 30*time.Second {
		t.Fatalf("failing release source took %s", time.Since(start))
	}
	for i, name := range Names {
		version := etcdV
		if name == "flanneld" {
			version = flannelV
		}
		checkEntry(t, c, entries[i], name, version, spec.SourceFile, content[name])
	}
	for _, want := range []string{"etcd " + etcdV + ": source release failed", "HTTP 404", "flanneld " + flannelV + ": source release failed", "trying source file"} {
		if !p.contains(want) {
			t.Fatalf("progress does not report %q", want)
		}
	}
}

func TestAllSourcesFail(t *testing.T) {
	t.Parallel()
	cl := testCluster(t, spec.SourceRelease, spec.SourceFile)
	cl.Binary.EtcdReleaseURL = "http://127.0.0.1:1"
	cl.Binary.FlannelReleaseURL = "http://127.0.0.1:1"
	c, _ := newCache(t, t.TempDir())
	_, err := c.Fetch(context.Background(), cl)
	if err == nil {
		t.Fatal("fetch succeeded without any source")
	}
	for _, want := range []string{"etcd " + etcdV + ": no source", "source release:", "source file: binaries.files has no etcd entry"} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("error does not say %q:\n%v", want, err)
		}
	}
}

func TestTampering(t *testing.T) {
	t.Parallel()
	cl := testCluster(t, spec.SourceFile)
	files, content := localFiles(t, etcdV)
	cl.Binary.Files = files
	c, p := newCache(t, t.TempDir())
	entries, err := c.Fetch(context.Background(), cl)
	if err != nil {
		t.Fatal(err)
	}
	etcd := entries[0]

	// Same size, one byte changed: only the hash can tell.
	data := bytes.Clone(content["etcd"])
	data[len(data)-2] ^= 1
	if err := os.WriteFile(etcd.Path, data, 0o755); err != nil {
		t.Fatal(err)
	}
	_, err = c.Lookup("etcd", etcdV)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), etcd.Path) || !strings.Contains(err.Error(), sha(data)) {
		t.Fatalf("Lookup of a modified file: %v", err)
	}
	if _, err := c.LookupAll(cl); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("LookupAll of a modified file: %v", err)
	}
	if _, err := etcd.SHA512(); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("SHA512 of a modified file: %v", err)
	}

	// A deleted file is reported too.
	os.Remove(entries[1].Path)
	if _, err := c.Lookup("etcdctl", etcdV); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("Lookup of a deleted file: %v", err)
	}

	// Fetch reports the damage and replaces both.
	if _, err := c.Fetch(context.Background(), cl); err != nil {
		t.Fatal(err)
	}
	if !p.contains("was modified after it was fetched; run `etcdbake fetch` to replace it; fetching it again") {
		t.Fatal("fetch did not report the modified entry")
	}
	if _, err := c.LookupAll(cl); err != nil {
		t.Fatalf("after refetch: %v", err)
	}
}

func TestLookupAllFollowsSpec(t *testing.T) {
	t.Parallel()
	cl := testCluster(t, spec.SourceFile)
	files, _ := localFiles(t, etcdV)
	cl.Binary.Files = files
	c, _ := newCache(t, t.TempDir())
	if _, err := c.Fetch(context.Background(), cl); err != nil {
		t.Fatal(err)
	}

	other := testCluster(t, spec.SourceRelease, spec.SourceGo)
	if _, err := c.LookupAll(other); err == nil || !strings.Contains(err.Error(), "no longer lists") {
		t.Fatalf("entries from a source the spec dropped were accepted: %v", err)
	}
	pinned := testCluster(t, spec.SourceFile)
	pinned.Binary.Files = map[string]spec.LocalBinary{}
	for k, v := range files {
		pinned.Binary.Files[k] = v
	}
	f := pinned.Binary.Files["etcdctl"]
	f.SHA256 = sha([]byte("a newer build"))
	pinned.Binary.Files["etcdctl"] = f
	if _, err := c.LookupAll(pinned); err == nil || !strings.Contains(err.Error(), "binaries.files.etcdctl.sha256") {
		t.Fatalf("entry with another sha256 than the spec's was accepted: %v", err)
	}
	newer := testCluster(t, spec.SourceFile)
	newer.Binary.Files = files
	newer.Etcd.Version = "v3.6.17"
	if _, err := c.LookupAll(newer); !errors.Is(err, ErrNotCached) || !strings.Contains(err.Error(), "etcdbake fetch") {
		t.Fatalf("other version: %v", err)
	}
	if _, err := c.Lookup("etcd", "../etcdctl"); err == nil {
		t.Fatal("a version with a path separator was accepted")
	}
	if _, err := c.Lookup("kubelet", etcdV); err == nil {
		t.Fatal("an unknown binary was accepted")
	}
}

func TestDefaultCacheDir(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", "/x/cache")
	if d, err := DefaultCacheDir(); err != nil || d != "/x/cache/etcdbake" {
		t.Fatalf("with XDG_CACHE_HOME: %s %v", d, err)
	}
	t.Setenv("XDG_CACHE_HOME", "")
	t.Setenv("HOME", "/home/u")
	if d, err := DefaultCacheDir(); err != nil || d != "/home/u/.cache/etcdbake" {
		t.Fatalf("without XDG_CACHE_HOME: %s %v", d, err)
	}
	t.Setenv("XDG_CACHE_HOME", "relative")
	if d, err := DefaultCacheDir(); err != nil || d != "/home/u/.cache/etcdbake" {
		t.Fatalf("relative XDG_CACHE_HOME: %s %v", d, err)
	}
}

func TestFindSum(t *testing.T) {
	list := []byte("# comment\n" + sha([]byte("a")) + "  a.tar.gz\n" + strings.ToUpper(sha([]byte("b"))) + " *./dist/b\n\n")
	if s, err := findSum(list, "b"); err != nil || s != sha([]byte("b")) {
		t.Fatalf("findSum b = %s, %v", s, err)
	}
	if _, err := findSum(list, "c"); err == nil {
		t.Fatal("found a sum for a file not listed")
	}
	if _, err := findSum(append(list, []byte(sha([]byte("x"))+"  a.tar.gz\n")...), "a.tar.gz"); err == nil {
		t.Fatal("conflicting sums accepted")
	}
}

// TestGoSource builds the real etcd, etcdctl and flanneld at the example's pins from the
// Go module proxy. Set ETCDBAKE_TEST_CACHE to a directory to keep (and reuse) the result.
func TestGoSource(t *testing.T) {
	dir := os.Getenv("ETCDBAKE_TEST_CACHE")
	if dir == "" {
		dir = t.TempDir()
	}
	cl := testCluster(t, spec.SourceGo)
	c, _ := newCache(t, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	start := time.Now()
	entries, err := c.Fetch(ctx, cl)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("fetch from source go took %s", time.Since(start).Round(time.Second))

	want := map[string]struct{ module, args, out string }{
		"etcd":     {"go.etcd.io/etcd/server/v3@" + etcdV, "--version", "etcd Version: 3.6.16"},
		"etcdctl":  {"go.etcd.io/etcd/etcdctl/v3@" + etcdV, "version", "etcdctl version: 3.6.16"},
		"flanneld": {"github.com/flannel-io/flannel@" + flannelV, "--version", flannelV},
	}
	for i, name := range Names {
		e := entries[i]
		w := want[name]
		if e.Name != name || e.Source != spec.SourceGo || !strings.HasPrefix(e.Detail, w.module+" built by go") {
			t.Fatalf("%s entry = %+v", name, e)
		}
		if l, err := c.Lookup(name, e.Version); err != nil || l != e {
			t.Fatalf("Lookup %s: %v", name, err)
		}
		out, err := exec.Command(e.Path, w.args).CombinedOutput()
		if err != nil || !strings.Contains(string(out), w.out) {
			t.Fatalf("%s %s: %v\n%s", name, w.args, err, out)
		}
		mod, ver, _ := strings.Cut(w.module, "@")
		if err := checkBuildInfo(e.Path, mod, ver); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		t.Logf("%s: %d bytes, sha256 %s, %s; %s", name, e.Size, e.SHA256, e.Detail, strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0]))
	}
}

func TestFetchWaitsForOtherFetch(t *testing.T) {
	t.Parallel()
	cl := testCluster(t, spec.SourceFile)
	cl.Binary.Files, _ = localFiles(t, etcdV)
	dir := t.TempDir()
	unlock, err := fileutil.Lock(context.Background(), filepath.Join(dir, ".lock"), nil) // as another fetch holds it
	if err != nil {
		t.Fatal(err)
	}
	c, p := newCache(t, dir)

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := c.Fetch(ctx, cl); !errors.Is(err, context.DeadlineExceeded) || !p.contains("waiting for another etcdbake fetch") {
		t.Fatalf("fetch while the cache is locked: %v", err)
	}

	done := make(chan error, 1)
	go func() { _, err := c.Fetch(context.Background(), cl); done <- err }()
	time.Sleep(700 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("fetch did not wait for the lock: %v", err)
	default:
	}
	unlock()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
