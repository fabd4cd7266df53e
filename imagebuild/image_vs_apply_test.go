package imagebuild

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/ext4"
	"github.com/etcdbake/etcdbake/imagebuild/base"
	"github.com/etcdbake/etcdbake/imagebuild/fstree"
	"github.com/etcdbake/etcdbake/imagebuild/internal/imagetest"
	"github.com/etcdbake/etcdbake/internal/testtools"
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
//
// The other way round, every path the image has that the base does not (or has otherwise)
// and Ignition did not make must be in imageOnly, etcdbake's own OS configuration, and
// every imageOnly pattern must be used.
func TestImageMatchesIgnitionApply(t *testing.T) {
	baseTree := imagetest.BaseTree(t)
	for _, d := range []string{"boot", "usr/lib/systemd/boot", "usr/lib/systemd/boot/efi", "var/lib/dpkg", "var/log/journal"} {
		imagetest.Dir(t, baseTree, d, 0o755, 0, 0)
	}
	for p, data := range testBootFiles {
		imagetest.File(t, baseTree, p, 0o755, 0, 0, data)
	}
	imagetest.File(t, baseTree, "usr/lib/systemd/system-generators/systemd-gpt-auto-generator", 0o755, 0, 0, "#!generator\n")
	if err := base.Check(baseTree); err != nil {
		t.Fatalf("test baseTree: %v", err)
	}
	compareWithIgnitionApply(t, baseTree, 115)
}

// TestImageMatchesIgnitionApplyOnTheRealBase is the same comparison on the default Debian
// base (built, or taken from the cache, by base.Build as `etcdbake image` does).
func TestImageMatchesIgnitionApplyOnTheRealBase(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the real base is hundreds of megabytes")
	}
	cache, err := base.DefaultCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := exec.LookPath("mmdebstrap"); err != nil {
		if _, err := os.Stat(filepath.Join(cache, "base", base.DefaultRecipe().Hash()+".tar")); err != nil {
			testtools.Missing(t, "mmdebstrap or a cached default base (make setup)")
		}
	}
	tarPath, err := base.Build(context.Background(), base.DefaultRecipe(), cache, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	baseTree, err := base.Read(tarPath)
	if err != nil {
		t.Fatal(err)
	}
	// Fewer changes than on the synthetic base: the real one has some of the directories.
	out, root := compareWithIgnitionApply(t, baseTree, 106)
	// The SBOM lists exactly the packages dpkg itself says the base has installed.
	checkSBOMPackages(t, filepath.Join(out, "etcd-1"+SBOMSuffix), root)
}

// compareWithIgnitionApply is the comparison of TestImageMatchesIgnitionApply on a base,
// where Ignition adds or changes wantChanged paths. It returns the images' directory and
// the directory Ignition's own result is in.
func compareWithIgnitionApply(t *testing.T, baseTree *fstree.Tree, wantChanged int) (out, root string) {
	imagetest.Tool(t, "sgdisk", "gdisk")
	apply := imagetest.IgnitionApply(t)
	configs := imagetest.RenderAll(t)
	raw := configs["etcd-1"]
	cfg := imagetest.Config(t, raw)

	// Ignition's result on disk.
	root = imagetest.RootDir(t)
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
	out = filepath.Join(t.TempDir(), "images")
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
	imgRoot := readExt4Tree(t, partition(t, filepath.Join(out, "etcd-1.raw"), m, RootLabel(SlotA)))
	imgNode := readExt4Tree(t, partition(t, filepath.Join(out, "etcd-1.raw"), m, NodeLabel(SlotA)))
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
	if len(changed) != wantChanged {
		t.Errorf("Ignition added or changed %d paths, want %d (the README gives the synthetic base's count; update both if the configs changed)", len(changed), wantChanged)
	}
	ms := imagetest.Summary(t, mine)
	bad := 0
	for _, p := range changed {
		if ms[p] != after[p] {
			bad++
			t.Errorf("/%s:\n  image:          %s\n  ignition-apply: %s", p, ms[p], after[p])
		}
	}
	for p := range before {
		if slices.Contains(shadowBackups, p) {
			continue // the reference's useradd rewrote them; imagetest removes them as noise
		}
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
	// The other way: what the image has beyond the base that Ignition did not make.
	img := fstree.NewTree()
	imgRoot.Walk(func(e *fstree.Entry) error {
		p := e.Path
		if p == "var" || strings.HasPrefix(p, "var/") {
			return nil // the data partition's mount point; the node sees the factory copy
		}
		if rel, ok := strings.CutPrefix(p, factoryVar+"/"); ok {
			p = path.Join("var", rel)
		} else if p == factoryVar {
			p = "var"
		}
		if eff, ok := effective(p); ok {
			c := *eff
			c.Path = p
			img.Set(&c)
		}
		return nil
	})
	imgSum := imagetest.Summary(t, img)
	isChanged := map[string]bool{}
	for _, p := range changed {
		isChanged[p] = true
	}
	used := map[string]int{}
	var extra, unlinked []string
	for p, s := range imgSum {
		if before[p] == s || isChanged[p] {
			continue
		}
		// The image writer stores hard links as separate copies (a known limit): same
		// content, another link count.
		if b, ok := before[p]; ok && linkCount.ReplaceAllString(b, "") == linkCount.ReplaceAllString(s, "") {
			unlinked = append(unlinked, p)
			continue
		}
		extra = append(extra, p)
		if pat := matchImageOnly(p); pat != "" {
			used[pat]++
		} else if !slices.Contains(imageOnlyParents, p) {
			t.Errorf("/%s is in the image, not in the base, and Ignition did not make it: add it to imageOnly with the reason, or remove it from the image (%s)", p, s)
		}
	}
	for pat, why := range imageOnly {
		if used[pat] == 0 {
			t.Errorf("imageOnly %q (%s) matches nothing in the image: remove it", pat, why)
		}
	}
	t.Logf("%d paths added or changed by Ignition, %d differ in the image; by section %v; %d per-node files reached through /node; %d paths only in the image, all etcdbake's own (%v); %d hard-linked files of the base stored as copies", len(changed), bad, sections, len(m.PerNode), len(extra), used, len(unlinked))
	if sections["enablement links"] == 0 || sections["units and drop-ins"] == 0 || sections["passwd"] == 0 || sections["storage"] == 0 {
		t.Errorf("a section is missing from the comparison: %v", sections)
	}
	return out, root
}

// imageOnly are the paths (exact, or a prefix ending in "/") that etcdbake's image has and
// Ignition does not make: the immutable-root layout (osconfig), with why. Each must be in
// every image.
var imageOnly = map[string]string{
	"etc/fstab":                        "mounts /var (data), the ESP and /tmp",
	"etc/machine-id":                   "empty: systemd makes the machine ID at first boot",
	"etc/resolv.conf":                  "the spec's DNS servers",
	"etc/systemd/journald.conf.d/":     "persistent journal on the data partition",
	"etc/tmpfiles.d/etcdbake-var.conf": "restores /var from the factory copy on a blank data partition",
	"usr/lib/systemd/system/etcdbake-var-factory.service":                                 "applies those lines on a blank data partition before etcd's chain",
	"etc/systemd/system/local-fs.target.wants/etcdbake-var-factory.service":               "before local-fs.target",
	"etc/systemd/system/systemd-networkd.service.d/":                                      "networkd waits for /node (the node's .network file)",
	"etc/systemd/system/multi-user.target.wants/systemd-networkd.service":                 "networkd brings up the static address",
	"etc/systemd/system/sockets.target.wants/systemd-networkd.socket":                     "networkd's socket",
	"etc/systemd/system/network-online.target.wants/systemd-networkd-wait-online.service": "network-online means the address is up",
	"node": "mount point of the node partition",
	"efi":  "mount point of the ESP (systemd-bless-boot, slot updates)",
	"usr/lib/systemd/system-generators/etcdbake-node-generator":                     "mounts the booted slot's node partition at /node",
	"usr/lib/systemd/system/etcdbake-verify-boot.service":                           "verifies a new slot's boot before it is blessed",
	"usr/lib/systemd/system/etcdbake-boot-deadline.service":                         "reboots a new slot that was not blessed in time",
	"etc/systemd/system/boot-complete.target.requires/etcdbake-verify-boot.service": "boot counting waits for the verify gate",
	"etc/systemd/system/sysinit.target.wants/etcdbake-boot-deadline.service":        "the deadline runs on every boot-counted boot",
	"usr/lib/systemd/system/etcdbake-rollout.service":                               "the rollout agent (A/B slots only)",
	"etc/systemd/system/multi-user.target.wants/etcdbake-rollout.service":           "the rollout agent runs after the health gate",
}

func init() {
	for _, u := range MaskedUnits {
		imageOnly["etc/systemd/system/"+u] = "masked: a unit of the base the appliance never runs (MaskedUnits)"
	}
	imageOnly[GeneratorMaskDir+"/"] = "masked: generators of the base with nothing to do on the image (MaskedGenerators)"
}

// shadowBackups are shadow-utils' backup and lock files.
var shadowBackups = []string{"etc/passwd-", "etc/group-", "etc/shadow-", "etc/gshadow-", "etc/subuid-", "etc/subgid-", "etc/.pwd.lock"}

// linkCount is the link count in an imagetest.Summary line.
var linkCount = regexp.MustCompile(` links=[0-9]+`)

// imageOnlyParents are directories the image adds when the base lacks them (parents of
// imageOnly paths and of the factory copy of /var, the /tmp mount point).
var imageOnlyParents = []string{"etc/systemd/journald.conf.d", "etc/systemd/system/systemd-networkd.service.d",
	"etc/systemd/system/sockets.target.wants", "etc/systemd/system/network-online.target.wants", "etc/tmpfiles.d",
	"tmp", "usr/share", "usr/share/factory", "etc/systemd/system/boot-complete.target.requires",
	"etc/systemd/system/sysinit.target.wants", "usr/lib/systemd/system-generators", GeneratorMaskDir, "etc/systemd/system/local-fs.target.wants"}

// matchImageOnly is the imageOnly pattern p matches, or "".
func matchImageOnly(p string) string {
	if _, ok := imageOnly[p]; ok {
		return p
	}
	for pat := range imageOnly {
		if strings.HasSuffix(pat, "/") && strings.HasPrefix(p, pat) {
			return pat
		}
	}
	return ""
}

// readExt4Tree reads an ext4 image back with go-diskfs into a tree.
// readExt4File reads a file with go-diskfs. go-diskfs v1.7's reader panics on some
// files that e2fsck finds sound (a 13 MB hwdb.bin in one extent starting at block
// 65536: "makeslice: len out of range"); those are read with e2fsprogs' debugfs instead.
func readExt4File(t *testing.T, fsys *ext4.FileSystem, img, p string) (b []byte, err error) {
	func() {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("go-diskfs panicked: %v", r)
			}
		}()
		b, err = fsys.ReadFile(p)
	}()
	if err == nil {
		return b, nil
	}
	t.Logf("/%s: %v; reading it with debugfs", p, err)
	var stderr bytes.Buffer
	cmd := exec.Command("debugfs", "-R", "cat /"+p, img)
	cmd.Stderr = &stderr
	if b, err = cmd.Output(); err != nil {
		return nil, fmt.Errorf("debugfs: %v %s", err, stderr.String())
	}
	return b, nil
}

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
				if e.Data, err = readExt4File(t, fsys, img, p); err != nil {
					t.Fatalf("%s: read /%s (%d bytes): %v", img, p, fi.Size(), err)
				}
			}
			tr.Set(e)
		}
	}
	walk("")
	return tr
}
