package ignapply

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/coreos/ignition/v2/config/v3_4/types"
	"github.com/etcdbake/etcdbake/imagebuild/fstree"
	"github.com/etcdbake/etcdbake/imagebuild/internal/imagetest"
)

// TestApplyIgnitionStorageMatchesIgnitionApply covers Ignition's file system rules on an
// existing base: append to existing files (owner kept, setuid cleared by the chown),
// existing directories keeping their mode and owner, overwrite of a directory, parents
// through an absolute symlink (/var/run -> /run), symlink owners following the target,
// hard links, gzip and hash-verified contents, files created by append alone, empty
// files, owners by id and by name, and setuid/setgid/sticky in the config's modes, which
// Ignition drops for specs before 3.6.0. It is long because it is one config holding
// every case, applied once by each side (ignition-apply is the slow part).
func TestApplyIgnitionStorageMatchesIgnitionApply(t *testing.T) {
	apply := imagetest.IgnitionApply(t)
	base := func() *fstree.Tree {
		tr := imagetest.BaseTree(t)
		imagetest.File(t, tr, "usr/bin/suidtool", 0o755|fs.ModeSetuid, 0, 0, "suid\n")
		imagetest.File(t, tr, "usr/bin/sgidtool", 0o755|fs.ModeSetgid, 0, 0, "sgid\n")
		imagetest.File(t, tr, "usr/bin/sgidnox", 0o644|fs.ModeSetgid, 0, 0, "sgid without group execute\n")
		imagetest.File(t, tr, "usr/bin/ownedtool", 0o750, 1, 1, "daemon's\n")
		imagetest.Dir(t, tr, "srv/data", 0o750, 1, 1)
		imagetest.Dir(t, tr, "srv/replace", 0o700, 1, 1)
		imagetest.File(t, tr, "srv/replace/old.txt", 0o644, 0, 0, "old\n")
		imagetest.File(t, tr, "etc/keep.conf", 0o644, 1, 1, "kept\n")
		imagetest.File(t, tr, "usr/bin/hl-a", 0o755, 0, 0, "hard linked\n")
		imagetest.Put(t, tr, fstree.Entry{Path: "usr/bin/hl-b", Mode: 0o755, Hardlink: "usr/bin/hl-a"})
		return tr
	}
	data := func(s string) *string { return imagetest.Ptr("data:," + strings.ReplaceAll(s, "\n", "%0A")) }
	blob := bytes.Repeat([]byte("etcdbake "), 1000)
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(blob)
	zw.Close()
	sum512 := sha512.Sum512(blob)
	sum256 := sha256.Sum256([]byte("checked\n"))
	file := func(p string, mode *int, src *string) types.File {
		return types.File{Node: types.Node{Path: p}, FileEmbedded1: types.FileEmbedded1{Mode: mode, Contents: types.Resource{Source: src}}}
	}
	var c types.Config
	c.Storage.Directories = []types.Directory{
		{Node: types.Node{Path: "/srv/data"}},
		{Node: types.Node{Path: "/srv/new", User: types.NodeUser{ID: imagetest.Ptr(1234)}, Group: types.NodeGroup{Name: imagetest.Ptr("daemon")}}, DirectoryEmbedded1: types.DirectoryEmbedded1{Mode: imagetest.Ptr(0o700)}},
		{Node: types.Node{Path: "/srv/replace", Overwrite: imagetest.Ptr(true)}, DirectoryEmbedded1: types.DirectoryEmbedded1{Mode: imagetest.Ptr(0o1777)}},
	}
	hostname := file("/etc/hostname", imagetest.Ptr(0o644), data("node1\n"))
	hostname.Overwrite = imagetest.Ptr(true)
	relinked := file("/usr/bin/hl-a", imagetest.Ptr(0o700), data("replaced\n"))
	relinked.Overwrite = imagetest.Ptr(true)
	suid := file("/usr/bin/suidtool", nil, nil)
	suid.Append = []types.Resource{{Source: data("more\n")}}
	sgid := file("/usr/bin/sgidtool", nil, nil)
	sgid.Append = []types.Resource{{Source: data("more\n")}}
	sgidnox := file("/usr/bin/sgidnox", nil, nil)
	sgidnox.Append = []types.Resource{{Source: data("more\n")}}
	gzFile := file("/opt/gz/blob", imagetest.Ptr(0o640), imagetest.Ptr("data:;base64,"+base64.StdEncoding.EncodeToString(gz.Bytes())))
	gzFile.Contents.Compression = imagetest.Ptr("gzip")
	gzFile.Contents.Verification.Hash = imagetest.Ptr("sha512-" + hex.EncodeToString(sum512[:]))
	gzFile.User.ID = imagetest.Ptr(4321)
	checked := file("/etc/checked.conf", nil, data("checked\n"))
	checked.Contents.Verification.Hash = imagetest.Ptr("sha256-" + hex.EncodeToString(sum256[:]))
	appended := file("/etc/appended.conf", nil, nil)
	appended.Append = []types.Resource{{Source: data("one\n")}, {Source: data("two\n")}}
	keep := file("/etc/keep.conf", imagetest.Ptr(0o600), nil)
	keep.Group.ID = imagetest.Ptr(5)
	c.Storage.Files = []types.File{
		hostname, relinked, suid, sgid, sgidnox, gzFile, checked, appended, keep,
		file("/var/run/etcdbake/pid.txt", nil, data("1\n")),
		file("/etc/empty.conf", imagetest.Ptr(0o600), nil),
		file("/etc/modes/both", imagetest.Ptr(0o6755), data("x\n")),
		file("/etc/deep/a/b/c.conf", nil, data("deep\n")),
	}
	link := func(p, target string, hard bool) types.Link {
		return types.Link{Node: types.Node{Path: p}, LinkEmbedded1: types.LinkEmbedded1{Target: imagetest.Ptr(target), Hard: imagetest.Ptr(hard)}}
	}
	owned := link("/etc/alt/owned", "tool", false)
	owned.User.Name = imagetest.Ptr("daemon")
	c.Storage.Links = []types.Link{
		link("/etc/alt/tool", "../../usr/bin/ownedtool", false),
		link("/etc/alt/abs", "/nonexistent-etcdbake-test/x", false),
		owned,
		link("/usr/bin/ownedtool-hard", "/usr/bin/ownedtool", true),
	}
	raw := imagetest.JSON(t, c)

	mine := base()
	if err := Apply(mine, raw, Options{HardLinks: true}); err != nil {
		t.Fatal(err)
	}
	root := imagetest.RootDir(t)
	imagetest.WriteTree(t, base(), root)
	imagetest.RunIgnitionApply(t, apply, root, raw)
	imagetest.Compare(t, mine, imagetest.ReadDir(t, root), nil, nil)

	s := imagetest.Summary(t, mine)
	for p, want := range map[string]string{
		"usr/bin/suidtool":     "file -rwxr-xr-x",
		"usr/bin/sgidtool":     "file -rwxr-xr-x",
		"usr/bin/sgidnox":      "file grw-r--r--",
		"srv/data":             "dir drwxr-x--- 1:1",
		"srv/new":              "dir drwx------ 1234:1",
		"srv/replace":          "dir drwxrwxrwx 0:0",
		"run/etcdbake/pid.txt": "file -rw-r--r-- 0:0",
		"etc/alt/tool":         "symlink -> ../../usr/bin/ownedtool 1:1",
		"etc/alt/owned":        "symlink -> tool 1:1",
		"etc/keep.conf":        "file -rw------- 1:5",
		"usr/bin/ownedtool":    "file -rwxr-x--- 1:1 links=2",
		"etc/modes/both":       "file -rwxr-xr-x 0:0",
		"usr/bin/hl-a":         "file -rwx------ 0:0 links=1",
		"usr/bin/hl-b":         fmt.Sprintf("file -rwxr-xr-x 0:0 links=1 sha256=%x", sha256.Sum256([]byte("hard linked\n"))),
	} {
		if !strings.HasPrefix(s[p], want) {
			t.Errorf("/%s: %q, want %q...", p, s[p], want)
		}
	}
	if _, ok := mine.Get("srv/replace/old.txt"); ok {
		t.Error("overwrite of /srv/replace kept its contents")
	}
}

// ---- unit tests --------------------------------------------------------------------

func atBinaryConfig(t *testing.T, url string, sum string) []byte {
	var c types.Config
	f := types.File{Node: types.Node{Path: "/opt/etcdbake/bin/etcd", Overwrite: imagetest.Ptr(true)}}
	f.Mode = imagetest.Ptr(0o755)
	f.Contents.Source = imagetest.Ptr(url)
	f.Contents.Verification.Hash = imagetest.Ptr("sha512-" + sum)
	c.Storage.Files = []types.File{f}
	return imagetest.JSON(t, c)
}

// TestApplyIgnitionRemoteSource: a remote binary comes from Options.Remote, is
// verified and is referenced by path, not read into the tree.
func TestApplyIgnitionRemoteSource(t *testing.T) {
	local := filepath.Join(t.TempDir(), "etcd")
	body := []byte("#!/bin/sh\necho etcd\n")
	if err := os.WriteFile(local, body, 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha512.Sum512(body)
	url := "http://10.88.0.1:8080/binaries/etcd"
	tr := imagetest.BaseTree(t)
	if err := Apply(tr, atBinaryConfig(t, url, hex.EncodeToString(sum[:])), Options{Remote: map[string]string{url: local}}); err != nil {
		t.Fatal(err)
	}
	e, ok := tr.Get("opt/etcdbake/bin/etcd")
	if !ok || !e.IsRegular() || e.Source != local || e.Data != nil || e.Mode != 0o755 || e.UID != 0 || e.GID != 0 {
		t.Fatalf("entry %+v, want a root-owned 0755 file with Source %s", e, local)
	}
	if d, _ := tr.Get("opt/etcdbake/bin"); d == nil || d.Mode != fs.ModeDir|0o755 {
		t.Errorf("parent directory %+v, want 0755", d)
	}
}

// TestApplyIgnitionRemoteBadHash: a local copy that does not match the config's hash is
// an error naming the file and both hashes.
func TestApplyIgnitionRemoteBadHash(t *testing.T) {
	local := filepath.Join(t.TempDir(), "etcd")
	if err := os.WriteFile(local, []byte("tampered\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	want := sha512.Sum512([]byte("the real etcd\n"))
	got := sha512.Sum512([]byte("tampered\n"))
	url := "https://example.invalid/etcd"
	err := Apply(imagetest.BaseTree(t), atBinaryConfig(t, url, hex.EncodeToString(want[:])), Options{Remote: map[string]string{url: local}})
	if err == nil {
		t.Fatal("a hash mismatch was accepted")
	}
	for _, s := range []string{"/opt/etcdbake/bin/etcd", url, "expected sha512-" + hex.EncodeToString(want[:]), "got sha512-" + hex.EncodeToString(got[:])} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not mention %q", err, s)
		}
	}
}

// TestApplyIgnitionRemoteMissing: a remote source without a local copy is refused.
func TestApplyIgnitionRemoteMissing(t *testing.T) {
	err := Apply(imagetest.BaseTree(t), atBinaryConfig(t, "https://example.invalid/etcd", strings.Repeat("0", 128)), Options{})
	if err == nil || !strings.Contains(err.Error(), "Options.Remote") || !strings.Contains(err.Error(), "https://example.invalid/etcd") {
		t.Fatalf("error %v, want one naming the URL and Options.Remote", err)
	}
}

// TestApplyIgnitionHardLinks: a config's hard link is one file with two names (the tree
// records the second name as a link to the first, so both share contents, mode and
// owner) when the tree's writer keeps hard links; otherwise (the image's ext4 writer
// cannot) it is refused before anything is applied, with an error naming the link and
// the way out, rather than becoming a copy.
func TestApplyIgnitionHardLinks(t *testing.T) {
	var c types.Config
	c.Passwd.Users = []types.PasswdUser{{Name: "alice"}}
	c.Storage.Files = []types.File{{Node: types.Node{Path: "/opt/tool"}, FileEmbedded1: types.FileEmbedded1{Mode: imagetest.Ptr(0o755), Contents: types.Resource{Source: imagetest.Ptr("data:,tool")}}}}
	c.Storage.Links = []types.Link{{Node: types.Node{Path: "/usr/local/bin/tool"}, LinkEmbedded1: types.LinkEmbedded1{Target: imagetest.Ptr("/opt/tool"), Hard: imagetest.Ptr(true)}}}
	raw := imagetest.JSON(t, c)

	tr := imagetest.BaseTree(t)
	before := imagetest.Summary(t, tr)
	err := Apply(tr, raw, Options{})
	if err == nil {
		t.Fatal("a hard link was accepted for a writer that cannot make hard links (it would become a copy)")
	}
	for _, s := range []string{"storage.links", "/usr/local/bin/tool", "hard: true", "copy"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not mention %q", err, s)
		}
	}
	if after := imagetest.Summary(t, tr); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Error("the refused config changed the tree")
	}

	tr = imagetest.BaseTree(t)
	if err := Apply(tr, raw, Options{HardLinks: true}); err != nil {
		t.Fatal(err)
	}
	l, _ := tr.Get("usr/local/bin/tool")
	f, _ := tr.Get("opt/tool")
	if l == nil || f == nil || tr.DataOf(l) != f || tr.DataOf(f) != f {
		t.Fatalf("link %+v, file %+v: want the link to share the file's data", l, f)
	}
	s := imagetest.Summary(t, tr)
	if want := fmt.Sprintf("file -rwxr-xr-x 0:0 links=2 sha256=%x", sha256.Sum256([]byte("tool"))); s["usr/local/bin/tool"] != want || s["opt/tool"] != want {
		t.Errorf("link %q, file %q: want both %q", s["usr/local/bin/tool"], s["opt/tool"], want)
	}
}
