package imagebuild

import (
	"context"
	"encoding/json"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/ext4"
	"github.com/etcdbake/etcdbake/imagebuild/base"
	"github.com/etcdbake/etcdbake/imagebuild/fstree"
	"github.com/etcdbake/etcdbake/imagebuild/internal/imagetest"
)

// TestImageMatchesIgnitionApply is the one-source-of-truth check on the finished disk:
// the example's node configs are built into images (two nodes, so the split into the
// shared root and /node is exercised), and the first node's image is read back with
// go-diskfs. Ignition's own ignition-apply (with useradd/groupadd for the passwd section
// and `systemctl enable` for the enablement, as Ignition does at first boot) applies the
// same config to the same base extracted on disk. Every path that Ignition added or
// changed must look the same in the image (type, mode, owner, link target, sha256),
// following the root's links into /node and the factory copy of /var. (One long
// function: the reference on disk, the images, and the comparison share its state.)
func TestImageMatchesIgnitionApply(t *testing.T) {
	imagetest.Tool(t, "sgdisk", "gdisk")
	apply := imagetest.IgnitionApply(t)
	configs := imagetest.RenderAll(t)
	raw := configs["etcd-1"]
	cfg := imagetest.Config(t, raw)

	baseTree := imagetest.BaseTree(t)
	for _, d := range []string{"boot", "usr/lib/systemd/boot", "usr/lib/systemd/boot/efi", "var/lib/dpkg", "var/log/journal"} {
		imagetest.Dir(t, baseTree, d, 0o755, 0, 0)
	}
	for p, data := range testBootFiles {
		imagetest.File(t, baseTree, p, 0o755, 0, 0, data)
	}
	if err := base.Check(baseTree); err != nil {
		t.Fatalf("test baseTree: %v", err)
	}

	// Ignition's result on disk.
	root := imagetest.RootDir(t)
	imagetest.WriteTree(t, baseTree, root)
	// useradd's clock and the build's are the same day (the shadow "last change" field).
	t.Setenv("SOURCE_DATE_EPOCH", strconv.FormatInt(imagetest.Now.Unix(), 10))
	imagetest.IgnitionPasswdAt(t, root, cfg.Passwd, imagetest.Now)
	imagetest.RunIgnitionApply(t, apply, root, raw)
	var enabled []string
	for _, u := range cfg.Systemd.Units {
		if u.Enabled != nil && *u.Enabled {
			enabled = append(enabled, u.Name)
		}
	}
	imagetest.Systemctl(t, root, append([]string{"enable"}, enabled...)...)
	theirs := imagetest.ReadDir(t, root)

	// The images.
	out := filepath.Join(t.TempDir(), "images")
	var nodes []NodeInput
	for _, n := range []string{"etcd-1", "etcd-2"} {
		nodes = append(nodes, NodeInput{Name: n, Config: configs[n]})
	}
	if _, err := Build(context.Background(), BuildOptions{Cluster: "example", Nodes: nodes, Base: baseTree, OutDir: out, Formats: []string{"raw"}}); err != nil {
		t.Fatal(err)
	}
	var m Manifest
	mb, err := os.ReadFile(filepath.Join(out, "etcd-1.manifest.json"))
	if err != nil || json.Unmarshal(mb, &m) != nil {
		t.Fatalf("manifest: %v", err)
	}
	imgRoot := readExt4Tree(t, partition(t, filepath.Join(out, "etcd-1.raw"), m, LabelRoot))
	imgNode := readExt4Tree(t, partition(t, filepath.Join(out, "etcd-1.raw"), m, LabelNode))
	if len(m.PerNode) == 0 {
		t.Fatal("no per-node files: the split into /node is not exercised")
	}

	// What the node sees at p: /var's content comes from the factory copy, and a root
	// link into /node stands for the node partition's entry.
	effective := func(p string) (*fstree.Entry, bool) {
		if rel, ok := strings.CutPrefix(p, "var/"); ok {
			p = path.Join(factoryVar, rel)
		}
		e, ok := imgRoot.Get(p)
		if ok && e.IsSymlink() && strings.HasPrefix(e.Target, "/"+NodeMount+"/") {
			return imgNode.Get(strings.TrimPrefix(e.Target, "/"+NodeMount+"/"))
		}
		return e, ok
	}

	before, after := imagetest.Summary(t, baseTree), imagetest.Summary(t, theirs)
	mine := fstree.NewTree()
	var changed []string
	for p, s := range after {
		if before[p] == s {
			continue
		}
		changed = append(changed, p)
		if e, ok := effective(p); ok {
			c := *e
			c.Path = p
			mine.Set(&c)
		}
	}
	sort.Strings(changed)
	ms := imagetest.Summary(t, mine)
	bad := 0
	for _, p := range changed {
		if ms[p] != after[p] {
			bad++
			t.Errorf("/%s:\n  image:          %s\n  ignition-apply: %s", p, ms[p], after[p])
		}
	}
	for p := range before {
		if _, ok := after[p]; !ok {
			if _, ok := effective(p); ok {
				t.Errorf("/%s: removed by Ignition, still in the image", p)
			}
		}
	}
	sections := map[string]int{}
	for _, p := range changed {
		switch {
		case strings.Contains(p, ".wants/"):
			sections["enablement links"]++
		case strings.HasPrefix(p, "etc/systemd/system/"):
			sections["units and drop-ins"]++
		case p == "etc/passwd" || p == "etc/group" || p == "etc/shadow" || p == "etc/gshadow" || strings.HasPrefix(p, "home/"):
			sections["passwd"]++
		default:
			sections["storage"]++
		}
	}
	t.Logf("%d paths added or changed by Ignition, %d differ in the image; by section %v; %d per-node files reached through /node", len(changed), bad, sections, len(m.PerNode))
	if sections["enablement links"] == 0 || sections["units and drop-ins"] == 0 || sections["passwd"] == 0 || sections["storage"] == 0 {
		t.Errorf("a section is missing from the comparison: %v", sections)
	}
}

// readExt4Tree reads an ext4 image back with go-diskfs into a tree.
func readExt4Tree(t *testing.T, img string) *fstree.Tree {
	t.Helper()
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	fsys, err := ext4.Read(file.New(f, true), st.Size(), 0, 512)
	if err != nil {
		t.Fatalf("reading %s: %v", img, err)
	}
	tr := fstree.NewTree()
	var walk func(dir string)
	walk = func(dir string) {
		name := dir
		if name == "" {
			name = "." // io/fs paths: no leading slash
		}
		ents, err := fsys.ReadDir(name)
		if err != nil {
			t.Fatalf("%s: readdir /%s: %v", img, dir, err)
		}
		for _, de := range ents {
			name := de.Name()
			if name == "." || name == ".." || (dir == "" && name == "lost+found") {
				continue
			}
			p := path.Join(dir, name)
			// The entry's type from the directory, permissions and owner from the inode
			// (go-diskfs's DirEntry.Info carries the type only).
			fi, err := fsys.Stat(p)
			if err != nil {
				t.Fatalf("%s: stat /%s: %v", img, p, err)
			}
			sys, ok := fi.Sys().(*ext4.StatT)
			if !ok {
				t.Fatalf("%s: /%s: no ext4 metadata", img, p)
			}
			mode := de.Type()&fs.ModeType | fi.Mode()&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)
			e := &fstree.Entry{Path: p, Mode: mode, UID: int(sys.UID), GID: int(sys.GID)}
			switch {
			case e.IsDir():
				tr.Set(e)
				walk(p)
				continue
			case e.IsSymlink():
				e.Target = sys.LinkTarget
			default:
				if e.Data, err = fsys.ReadFile(p); err != nil {
					t.Fatalf("%s: read /%s: %v", img, p, err)
				}
			}
			tr.Set(e)
		}
	}
	walk("")
	return tr
}
