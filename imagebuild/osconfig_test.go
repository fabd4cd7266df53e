package imagebuild

import (
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

	"github.com/coreos/ignition/v2/config/v3_4/types"
	"github.com/etcdbake/etcdbake/imagebuild/fstree"
	"github.com/etcdbake/etcdbake/imagebuild/ignapply"
	"github.com/etcdbake/etcdbake/imagebuild/internal/imagetest"
	"github.com/etcdbake/etcdbake/internal/testtools"
)

// varFixture is a node's tree with entries of every kind under /var, from the base and
// from the config: directories (one setgid), a regular file directly under /var (the
// Fedora CoreOS docs' /var/helloworld, owned by a user), a symlink (dangling at boot,
// owned by a user) and a hard link; the base's /var/run comes from systemd's own
// tmpfiles.d line. It returns the tree after ReadOnlyRoot, the /var that the node's
// tree held before (summarised, symlink targets absolute) and etcdbake's tmpfiles.d
// lines.
func varFixture(t *testing.T) (*fstree.Tree, map[string]string, string) {
	tr := imagetest.BaseTree(t)
	imagetest.File(t, tr, "usr/lib/tmpfiles.d/var.conf", 0o644, 0, 0, "q /var 0755 - - -\nL /var/run - - - - ../run\nd /var/lib 0755 - - -\n")
	imagetest.Dir(t, tr, "var/mail", fs.ModeSetgid|0o775, 0, 100)
	imagetest.File(t, tr, "var/lib/dpkg/status", 0o644, 0, 0, "Package: base-files\n")
	imagetest.File(t, tr, "var/lib/hl-a", 0o600, 1, 1, "two names\n")
	imagetest.Put(t, tr, fstree.Entry{Path: "var/lib/hl-b", Mode: 0o600, UID: 1, GID: 1, Hardlink: "var/lib/hl-a"})
	var c types.Config
	c.Storage.Files = []types.File{{
		Node:          types.Node{Path: "/var/helloworld", Overwrite: imagetest.Ptr(true), User: types.NodeUser{Name: imagetest.Ptr("daemon")}},
		FileEmbedded1: types.FileEmbedded1{Mode: imagetest.Ptr(0o644), Contents: types.Resource{Source: imagetest.Ptr("data:,Hello%2C%20world!")}},
	}}
	c.Storage.Directories = []types.Directory{{Node: types.Node{Path: "/var/srv-data"}, DirectoryEmbedded1: types.DirectoryEmbedded1{Mode: imagetest.Ptr(0o750)}}}
	c.Storage.Links = []types.Link{{Node: types.Node{Path: "/var/current", User: types.NodeUser{Name: imagetest.Ptr("daemon")}}, LinkEmbedded1: types.LinkEmbedded1{Target: imagetest.Ptr("/opt/app")}}}
	if err := ignapply.Apply(tr, imagetest.JSON(t, c), ignapply.Options{}); err != nil {
		t.Fatal(err)
	}
	want := imagetest.Summary(t, absTargets(varTree(tr)))
	if want["helloworld"] == "" || want["srv-data"] == "" || want["current"] == "" {
		t.Fatalf("the config was not applied: %v", want)
	}
	if err := ReadOnlyRoot(tr, []string{"192.0.2.53"}); err != nil {
		t.Fatal(err)
	}
	conf, err := tr.ReadFile("etc/tmpfiles.d/etcdbake-var.conf")
	if err != nil {
		t.Fatal(err)
	}
	return tr, want, string(conf)
}

// TestReadOnlyRootRestoresAllOfVar: everything a node's tree holds under /var reaches
// the booted node, where /var is a blank data partition. ReadOnlyRoot moves /var to the
// factory copy; a tmpfiles.d line restores /var/helloworld from there, and running the
// tree's tmpfiles.d lines for /var (etcdbake's, and systemd's own `L` line for
// /var/run) on an empty /var, as systemd-tmpfiles does at boot, gives back the same
// entries with the same type, mode, owner, link target and contents.
func TestReadOnlyRootRestoresAllOfVar(t *testing.T) {
	tr, want, conf := varFixture(t)
	if line := "C /var/helloworld - - - - /" + factoryVar + "/helloworld"; !strings.Contains(conf, "\n"+line+"\n") {
		t.Errorf("no tmpfiles line %q restores /var/helloworld:\n%s", line, conf)
	}
	if strings.Contains(conf, " /var/run ") {
		t.Errorf("/var/run is systemd's own (L line in var.conf), but etcdbake restores it too (a duplicate line):\n%s", conf)
	}
	for p := range tr.All() {
		if strings.HasPrefix(p, "var/") {
			t.Errorf("/%s is still in the root, under the data partition's mount point", p)
		}
	}
	compareVar(t, want, imagetest.Summary(t, absTargets(runTmpfilesOnBlankVar(t, tr))))
	t.Logf("tmpfiles lines:\n%s", conf)
}

// TestReadOnlyRootVarWithSystemdTmpfiles is the same check with the real
// systemd-tmpfiles --create (systemd 252, as on the node) on the tree extracted to disk
// with an empty /var; it must also succeed (a failing run fails the boot's
// systemd-tmpfiles-setup.service).
func TestReadOnlyRootVarWithSystemdTmpfiles(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("extracting the tree with its owners needs root")
	}
	tool, err := exec.LookPath("systemd-tmpfiles")
	if err != nil {
		testtools.Missing(t, "systemd-tmpfiles (Debian package systemd)")
	}
	tr, want, _ := varFixture(t)
	root := imagetest.RootDir(t)
	imagetest.WriteTree(t, tr, root)
	if out, err := exec.Command(tool, "--create", "--root="+root).CombinedOutput(); err != nil {
		t.Fatalf("systemd-tmpfiles --create: %v\n%s", err, out)
	}
	compareVar(t, want, imagetest.Summary(t, absTargets(imagetest.ReadDir(t, filepath.Join(root, "var")))))

	// On a blank data partition the image's own unit applies etcdbake's lines alone,
	// before local-fs.target (so before etcd's chain makes /var/lib/etcdbake, which
	// would make `C /var/lib` skip the copy): run its ExecStart as it is written.
	u, ok := tr.Get("usr/lib/systemd/system/" + VarFactoryUnit)
	if !ok {
		t.Fatalf("the tree has no %s", VarFactoryUnit)
	}
	unit := string(u.Data)
	for _, line := range []string{"ConditionPathExists=!/var/lib", "RequiresMountsFor=/var", "Before=local-fs.target systemd-tmpfiles-setup.service shutdown.target", "DefaultDependencies=no"} {
		if !strings.Contains(unit, "\n"+line+"\n") {
			t.Errorf("%s lacks %q:\n%s", VarFactoryUnit, line, unit)
		}
	}
	if l, ok := tr.Get("etc/systemd/system/local-fs.target.wants/" + VarFactoryUnit); !ok || l.Target != "/usr/lib/systemd/system/"+VarFactoryUnit {
		t.Errorf("%s is not wanted by local-fs.target", VarFactoryUnit)
	}
	m := regexp.MustCompile(`\nExecStart=systemd-tmpfiles (.+)\n`).FindStringSubmatch(unit)
	if m == nil {
		t.Fatalf("%s does not run systemd-tmpfiles:\n%s", VarFactoryUnit, unit)
	}
	root2 := imagetest.RootDir(t)
	imagetest.WriteTree(t, tr, root2)
	// systemd-tmpfiles 252 does not look up a named config file under --root.
	var args []string
	for _, a := range strings.Fields(m[1]) {
		if strings.HasSuffix(a, ".conf") {
			a = filepath.Join(root2, a)
		}
		args = append(args, a)
	}
	args = append(args, "--root="+root2)
	if out, err := exec.Command(tool, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s's systemd-tmpfiles %v: %v\n%s", VarFactoryUnit, args, err, out)
	}
	got := imagetest.Summary(t, absTargets(imagetest.ReadDir(t, filepath.Join(root2, "var"))))
	for _, p := range []string{"helloworld", "lib/dpkg/status", "lib/hl-a"} {
		if got[p] == "" || got[p] != want[p] {
			t.Errorf("%s restored /var/%s as %q, want %q", VarFactoryUnit, p, got[p], want[p])
		}
	}
}

func compareVar(t *testing.T, want, got map[string]string) {
	t.Helper()
	var paths []string
	for p := range want {
		paths = append(paths, p)
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			paths = append(paths, p)
		}
	}
	sort.Strings(paths)
	for _, p := range paths {
		if got[p] != want[p] {
			t.Errorf("/var/%s on the booted node: %q, in the node's tree: %q", p, got[p], want[p])
		}
	}
}

// tmpfilesVarLines returns the fields of the tree's tmpfiles.d lines for paths under
// /var, parents first: files by name, /etc over /usr/lib; the first line for a path wins,
// as systemd-tmpfiles ignores later conflicting ones.
func tmpfilesVarLines(t *testing.T, tr *fstree.Tree) [][]string {
	t.Helper()
	files := map[string]string{}
	for _, dir := range []string{"usr/lib/tmpfiles.d", "etc/tmpfiles.d"} {
		for p, e := range tr.All() {
			if path.Dir(p) == dir && e.IsRegular() {
				files[path.Base(p)] = p
			}
		}
	}
	var names []string
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	lines := map[string][]string{}
	for _, n := range names {
		data, err := tr.ReadFile(files[n])
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(data), "\n") {
			f := strings.Fields(l)
			if len(f) < 2 || strings.HasPrefix(f[0], "#") || !strings.HasPrefix(f[1]+"/", "/var/") {
				continue
			}
			if _, ok := lines[f[1]]; !ok {
				lines[f[1]] = f
			}
		}
	}
	var order []string
	for p := range lines {
		order = append(order, p)
	}
	sort.Strings(order)
	out := make([][]string, len(order))
	for i, p := range order {
		out[i] = lines[p]
	}
	return out
}

// runTmpfilesOnBlankVar returns the /var a first boot ends with: the tree's tmpfiles.d
// lines for /var (tmpfilesVarLines) run on an empty directory. Only the line types the
// image uses are understood.
func runTmpfilesOnBlankVar(t *testing.T, tr *fstree.Tree) *fstree.Tree {
	t.Helper()
	id := func(db, name string) int {
		data, _ := tr.ReadFile(db)
		for _, l := range strings.Split(string(data), "\n") {
			if f := strings.Split(l, ":"); len(f) > 2 && f[0] == name {
				n, _ := strconv.Atoi(f[2])
				return n
			}
		}
		t.Fatalf("%s: no %s", db, name)
		return 0
	}
	v := fstree.NewTree()
	for _, f := range tmpfilesVarLines(t, tr) {
		rel := strings.TrimPrefix(strings.TrimPrefix(f[1], "/var"), "/")
		old, exists := v.Get(rel)
		switch f[0] {
		case "q":
		case "L":
			if !exists {
				e := fstree.Entry{Path: rel, Mode: fs.ModeSymlink | 0o777, Target: f[6]}
				if f[3] != "-" {
					e.UID = id("etc/passwd", f[3])
				}
				if f[4] != "-" {
					e.GID = id("etc/group", f[4])
				}
				imagetest.Put(t, v, e)
			}
		case "d":
			mode, _ := strconv.ParseUint(f[2], 8, 32)
			e := fstree.Entry{Path: rel, Mode: fs.ModeDir | fs.FileMode(mode)}
			if f[3] != "-" {
				e.UID = id("etc/passwd", f[3])
			}
			if f[4] != "-" {
				e.GID = id("etc/group", f[4])
			}
			if !exists {
				imagetest.Put(t, v, e)
			} else {
				old.Mode, old.UID, old.GID = e.Mode, e.UID, e.GID
			}
		case "C":
			if exists && !(old.IsDir() && isEmptyDir(v, rel)) {
				continue
			}
			src := strings.TrimPrefix(f[6], "/")
			if _, ok := tr.Get(src); !ok {
				t.Errorf("tmpfiles line %q: the source does not exist in the image", strings.Join(f, " "))
				continue
			}
			for q, e := range tr.All() {
				if q != src && !strings.HasPrefix(q, src+"/") {
					continue
				}
				c := *e
				c.Path = path.Join(rel, strings.TrimPrefix(q, src))
				if c.IsRegular() {
					data, err := tr.Contents(e)
					if err != nil {
						t.Fatal(err)
					}
					c.Data, c.Source, c.Hardlink = data, "", ""
					if h, ok := strings.CutPrefix(e.Hardlink, src+"/"); ok {
						c.Hardlink = path.Join(rel, h) // copied as a hard link (COPY_HARDLINKS)
					}
				}
				v.Set(&c)
			}
		default:
			t.Fatalf("tmpfiles line %q: type %s not simulated", strings.Join(f, " "), f[0])
		}
	}
	return v
}

// varTree is the tree's /var re-rooted, hard links included.
func varTree(tr *fstree.Tree) *fstree.Tree {
	v := fstree.NewTree()
	for p, e := range tr.All() {
		if rel, ok := strings.CutPrefix(p, "var/"); ok {
			c := *e
			c.Path = rel
			if h, ok := strings.CutPrefix(e.Hardlink, "var/"); ok {
				c.Hardlink = h
			}
			v.Set(&c)
		} else if p == "var" {
			c := *e
			c.Path = ""
			v.Set(&c)
		}
	}
	return v
}

// absTargets makes the relative symlink targets of a tree of /var absolute, so that
// systemd's "L /var/run - - - - ../run" and the base's /var/run -> /run compare equal.
func absTargets(v *fstree.Tree) *fstree.Tree {
	for p, e := range v.All() {
		if e.IsSymlink() && !strings.HasPrefix(e.Target, "/") {
			e.Target = path.Join("/var", path.Dir(p), e.Target)
		}
	}
	return v
}

func isEmptyDir(t *fstree.Tree, p string) bool {
	for q := range t.All() {
		if strings.HasPrefix(q, p+"/") {
			return false
		}
	}
	return true
}

// TestReadOnlyRootTmpfilesMasked: a symlink under /var counts as made by the image's
// tmpfiles.d only while that line is in effect: masking systemd's var.conf with a link
// to /dev/null in /etc/tmpfiles.d (or overriding it without the line) makes etcdbake
// restore /var/run itself.
func TestReadOnlyRootTmpfilesMasked(t *testing.T) {
	for name, etc := range map[string]*fstree.Entry{
		"masked":     {Path: "etc/tmpfiles.d/var.conf", Mode: fs.ModeSymlink | 0o777, Target: "/dev/null"},
		"overridden": {Path: "etc/tmpfiles.d/var.conf", Mode: 0o644, Data: []byte("d /var/lib 0755 - - -\n")},
		"in effect":  nil,
	} {
		tr := imagetest.BaseTree(t)
		imagetest.File(t, tr, "usr/lib/tmpfiles.d/var.conf", 0o644, 0, 0, "L /var/run - - - - ../run\n")
		if etc != nil {
			imagetest.Put(t, tr, *etc)
		}
		if err := ReadOnlyRoot(tr, nil); err != nil {
			t.Fatal(err)
		}
		conf, _ := tr.ReadFile("etc/tmpfiles.d/etcdbake-var.conf")
		if got, want := strings.Contains(string(conf), "\nL /var/run - root root - /run\n"), etc != nil; got != want {
			t.Errorf("%s: etcdbake restores /var/run: %v, want %v:\n%s", name, got, want, conf)
		}
	}
}

// TestReadOnlyRootMasksUnits: the units the appliance never needs are links to /dev/null
// (systemd's mask) in /etc/systemd/system.
func TestReadOnlyRootMasksUnits(t *testing.T) {
	tr, _, _ := varFixture(t)
	if len(MaskedUnits) == 0 {
		t.Fatal("no masked units")
	}
	for _, u := range append([]string{"e2scrub_reap.service", "apt-daily.timer"}, MaskedUnits...) {
		e, ok := tr.Get("etc/systemd/system/" + u)
		if !ok || e.Mode&fs.ModeSymlink == 0 || e.Target != "/dev/null" {
			t.Errorf("%s: %+v, want a link to /dev/null", u, e)
		}
	}
}

// TestReadOnlyRootMasksIdleGenerators: a generator is masked only when the root gives it
// nothing to do: crypttab keeps the cryptsetup generator, a SysV script without a native
// unit keeps the sysv generator; generators the base lacks are not masked.
func TestReadOnlyRootMasksIdleGenerators(t *testing.T) {
	gens := []string{"systemd-bless-boot-generator", "systemd-cryptsetup-generator", "systemd-fstab-generator",
		"systemd-gpt-auto-generator", "systemd-rc-local-generator", "systemd-sysv-generator", "systemd-veritysetup-generator"}
	fixture := func(extra ...string) *fstree.Tree {
		tr, _, _ := varFixture(t)
		for _, g := range gens {
			imagetest.File(t, tr, "usr/lib/systemd/system-generators/"+g, 0o755, 0, 0, "#!generator\n")
		}
		imagetest.File(t, tr, "etc/init.d/ssh", 0o755, 0, 0, "#!/bin/sh\n")
		imagetest.File(t, tr, "usr/lib/systemd/system/ssh.service", 0o644, 0, 0, "[Service]\n")
		imagetest.File(t, tr, "etc/init.d/hwclock.sh", 0o755, 0, 0, "#!/bin/sh\n")
		imagetest.Link(t, tr, "usr/lib/systemd/system/hwclock.service", "/dev/null")
		for _, p := range extra {
			imagetest.File(t, tr, p, 0o755, 0, 0, "x\n")
		}
		return tr
	}
	masked := func(tr *fstree.Tree) []string {
		if err := ReadOnlyRoot(tr, nil); err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, g := range gens {
			if e, ok := tr.Get(GeneratorMaskDir + "/" + g); ok {
				if !e.IsSymlink() || e.Target != "/dev/null" {
					t.Errorf("%s: %+v, want a link to /dev/null", g, e)
				}
				got = append(got, g)
			}
		}
		return got
	}
	want := []string{"systemd-cryptsetup-generator", "systemd-gpt-auto-generator", "systemd-rc-local-generator", "systemd-sysv-generator", "systemd-veritysetup-generator"}
	if got := masked(fixture()); !slices.Equal(got, want) {
		t.Errorf("masked %v, want %v", got, want)
	}
	want = []string{"systemd-gpt-auto-generator", "systemd-rc-local-generator", "systemd-veritysetup-generator"}
	if got := masked(fixture("etc/crypttab", "etc/init.d/custom-daemon")); !slices.Equal(got, want) {
		t.Errorf("with crypttab and a SysV-only script: masked %v, want %v", got, want)
	}
}
