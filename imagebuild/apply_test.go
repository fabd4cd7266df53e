package imagebuild

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coreos/ignition/v2/config/v3_4/types"

	"github.com/etcdbake/etcdbake/ignition"
	"github.com/etcdbake/etcdbake/pki"
	"github.com/etcdbake/etcdbake/spec"

	"github.com/etcdbake/etcdbake/internal/testtools"
)

// ---- fixtures ------------------------------------------------------------------------

func atPut(t testing.TB, tr *Tree, e Entry) {
	t.Helper()
	if err := tr.Put(&e); err != nil {
		t.Fatal(err)
	}
}

func atDir(t testing.TB, tr *Tree, p string, mode fs.FileMode, uid, gid int) {
	atPut(t, tr, Entry{Path: p, Mode: fs.ModeDir | mode, UID: uid, GID: gid})
}

func atFile(t testing.TB, tr *Tree, p string, mode fs.FileMode, uid, gid int, data string) {
	atPut(t, tr, Entry{Path: p, Mode: mode, UID: uid, GID: gid, Data: []byte(data)})
}

func atLink(t testing.TB, tr *Tree, p, target string) {
	atPut(t, tr, Entry{Path: p, Mode: fs.ModeSymlink | 0o777, Target: target})
}

const atChronyUnit = "[Unit]\nDescription=NTP client/server\n\n[Service]\nExecStart=/usr/sbin/chronyd -F 1\n\n[Install]\nWantedBy=multi-user.target\nAlias=chrony.service\n"

// atBaseTree is a small Debian-like base: merged /usr, the account databases with
// shadow files, login.defs and useradd defaults as Debian 12 ships them (the parts that
// matter), a skeleton, and a few units.
func atBaseTree(t testing.TB) *Tree {
	t.Helper()
	tr := NewTree()
	for _, d := range []string{"etc", "etc/default", "etc/skel", "etc/systemd", "etc/systemd/system", "usr", "usr/bin", "usr/sbin", "usr/lib", "usr/lib/systemd", "usr/lib/systemd/system", "var", "var/lib", "var/log", "opt", "home", "run", "srv", "dev"} {
		atDir(t, tr, d, 0o755, 0, 0)
	}
	atDir(t, tr, "root", 0o700, 0, 0)
	atDir(t, tr, "tmp", 0o1777, 0, 0)
	atLink(t, tr, "lib", "usr/lib")
	atLink(t, tr, "bin", "usr/bin")
	atLink(t, tr, "sbin", "usr/sbin")
	atLink(t, tr, "var/run", "/run")
	atFile(t, tr, "etc/passwd", 0o644, 0, 0, "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\nsystemd-network:x:998:998:systemd Network Management:/:/usr/sbin/nologin\n")
	atFile(t, tr, "etc/group", 0o644, 0, 0, "root:x:0:\ndaemon:x:1:\nshadow:x:42:\nusers:x:100:\nsystemd-journal:x:999:\nsystemd-network:x:998:\n")
	atFile(t, tr, "etc/shadow", 0o640, 0, 42, "root:*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\nsystemd-network:!*:19000::::::\n")
	atFile(t, tr, "etc/gshadow", 0o640, 0, 42, "root:*::\ndaemon:*::\nshadow:*::\nusers:*::\nsystemd-journal:!*::\nsystemd-network:!*::\n")
	atFile(t, tr, "etc/login.defs", 0o644, 0, 0, "MAIL_DIR /var/mail\nPASS_MAX_DAYS\t99999\nPASS_MIN_DAYS\t0\nPASS_WARN_AGE\t7\nUID_MIN\t\t\t 1000\nUID_MAX\t\t\t60000\nGID_MIN\t\t\t 1000\nGID_MAX\t\t\t60000\nUMASK\t\t022\nUSERGROUPS_ENAB yes\nENCRYPT_METHOD SHA512\n")
	atFile(t, tr, "etc/default/useradd", 0o644, 0, 0, "SHELL=/bin/sh\n")
	atFile(t, tr, "etc/skel/.profile", 0o644, 0, 0, "# ~/.profile\n")
	atFile(t, tr, "etc/skel/.bashrc", 0o644, 0, 0, "# ~/.bashrc\n")
	atFile(t, tr, "etc/hostname", 0o644, 0, 0, "debian\n")
	atFile(t, tr, "usr/bin/sh", 0o755, 0, 0, "#!fake shell\n")
	atFile(t, tr, "usr/lib/systemd/system/multi-user.target", 0o644, 0, 0, "[Unit]\nDescription=Multi-User System\n")
	atFile(t, tr, "usr/lib/systemd/system/chronyd.service", 0o644, 0, 0, atChronyUnit)
	return tr
}

var atNow = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

const atSSHKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForEtcdbakeTestsOnly0000000000000 test@etcdbake"

// atRender renders the example cluster's first node as etcdbake does (inline binaries),
// with an SSH key so that the passwd section also creates a login user.
func atRender(t testing.TB) []byte {
	t.Helper()
	return atRenderAll(t)["etcd-1"]
}

// atRenderAll renders every node of the example that way.
func atRenderAll(t testing.TB) map[string][]byte {
	t.Helper()
	c, rep := spec.Parse(spec.Example)
	if rep.HasErrors() {
		t.Fatalf("example spec: %s", rep.String())
	}
	c.SSH.AuthorizedKeys = []string{atSSHKey}
	dir := t.TempDir()
	if _, err := pki.Ensure(c, filepath.Join(dir, "pki"), atNow); err != nil {
		t.Fatal(err)
	}
	set, err := pki.Load(c, filepath.Join(dir, "pki"))
	if err != nil {
		t.Fatal(err)
	}
	bins := map[string]ignition.Binary{}
	for _, name := range ignition.BinaryNames {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\necho "+name+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		b, err := ignition.LocalBinary(name, p)
		if err != nil {
			t.Fatal(err)
		}
		bins[name] = b
	}
	out, err := ignition.Render(ignition.Input{Cluster: c, PKI: set, Binaries: bins, Options: ignition.Options{Inline: true}})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func atConfig(t testing.TB, raw []byte) types.Config {
	t.Helper()
	var c types.Config
	if err := json.Unmarshal(raw, &c); err != nil {
		t.Fatal(err)
	}
	return c
}

func atJSON(t testing.TB, c types.Config) []byte {
	t.Helper()
	c.Ignition.Version = "3.4.0"
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func atPtr[T any](v T) *T { return &v }

// ---- trees on disk -------------------------------------------------------------------

// atWriteTree extracts a tree into dir (which exists): contents, modes, owners, links.
func atWriteTree(t testing.TB, tr *Tree, dir string) {
	t.Helper()
	a := &ignApplier{t: tr}
	meta := func(full string, e *Entry) {
		if err := os.Lchown(full, e.UID, e.GID); err != nil {
			t.Fatal(err)
		}
		if !e.IsSymlink() {
			if err := os.Chmod(full, e.Mode&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)); err != nil {
				t.Fatal(err)
			}
		}
	}
	var hard []*Entry
	for _, p := range tr.Paths() {
		e := tr.entries[p]
		full := filepath.Join(dir, p)
		var err error
		switch {
		case p == "":
		case e.IsDir():
			err = os.Mkdir(full, 0o700)
		case e.IsSymlink():
			err = os.Symlink(e.Target, full)
		case e.Hardlink != "":
			hard = append(hard, e)
			continue
		default:
			var data []byte
			if data, err = a.content(e); err == nil {
				err = os.WriteFile(full, data, 0o600)
			}
		}
		if err != nil {
			t.Fatal(err)
		}
		meta(full, e)
	}
	for _, e := range hard {
		if err := os.Link(filepath.Join(dir, e.Hardlink), filepath.Join(dir, e.Path)); err != nil {
			t.Fatal(err)
		}
	}
}

// atReadDir reads a directory back into a tree (hard links recorded as such).
func atReadDir(t testing.TB, dir string) *Tree {
	t.Helper()
	tr := NewTree()
	inodes := map[uint64]string{}
	err := filepath.WalkDir(dir, func(full string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, full)
		if rel == "." {
			rel = ""
		}
		st, err := os.Lstat(full)
		if err != nil {
			return err
		}
		sys := st.Sys().(*syscall.Stat_t)
		e := &Entry{Path: rel, Mode: st.Mode() & (fs.ModeType | fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky), UID: int(sys.Uid), GID: int(sys.Gid)}
		switch {
		case e.IsSymlink():
			if e.Target, err = os.Readlink(full); err != nil {
				return err
			}
		case e.IsRegular():
			if first, ok := inodes[sys.Ino]; ok && sys.Nlink > 1 {
				e.Hardlink = first
			} else {
				inodes[sys.Ino] = rel
				if e.Data, err = os.ReadFile(full); err != nil {
					return err
				}
			}
		}
		tr.entries[rel] = e
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// atSummary describes every entry: type, mode, owner, link target or link count and
// sha256 of the contents.
func atSummary(t testing.TB, tr *Tree) map[string]string {
	t.Helper()
	a := &ignApplier{t: tr}
	nlink := map[*Entry]int{}
	for _, e := range tr.entries {
		if e.IsRegular() {
			nlink[a.canonical(e)]++
		}
	}
	out := map[string]string{}
	for p, e := range tr.entries {
		switch {
		case e.IsDir():
			out[p] = fmt.Sprintf("dir %v %d:%d", e.Mode, e.UID, e.GID)
		case e.IsSymlink():
			out[p] = fmt.Sprintf("symlink -> %s %d:%d", e.Target, e.UID, e.GID)
		default:
			data, err := a.content(e)
			if err != nil {
				t.Fatal(err)
			}
			out[p] = fmt.Sprintf("file %v %d:%d links=%d sha256=%x", e.Mode, e.UID, e.GID, nlink[a.canonical(e)], sha256.Sum256(data))
		}
	}
	return out
}

// atCompare reports every path whose summary differs, except the paths in extras, which
// must exist in mine only (with the given description, when not empty).
func atCompare(t *testing.T, mine, theirs *Tree, ignore func(string) bool, extras map[string]string) {
	t.Helper()
	ms, ts := atSummary(t, mine), atSummary(t, theirs)
	var paths []string
	for p := range ms {
		paths = append(paths, p)
	}
	for p := range ts {
		if _, ok := ms[p]; !ok {
			paths = append(paths, p)
		}
	}
	sort.Strings(paths)
	bad := 0
	for _, p := range paths {
		if ignore != nil && ignore(p) {
			continue
		}
		m, inMine := ms[p]
		th, inTheirs := ts[p]
		if want, ok := extras[p]; ok {
			if !inMine || inTheirs || (want != "" && m != want) {
				t.Errorf("/%s: expected only in ApplyIgnition's tree as %q; ApplyIgnition: %q, ignition-apply: %q", p, want, m, th)
				bad++
			}
			continue
		}
		if m != th {
			bad++
			if bad <= 40 {
				what := func(s string, ok bool) string {
					if !ok {
						return "(missing)"
					}
					return s
				}
				t.Errorf("/%s differs:\n  ApplyIgnition:  %s\n  ignition-apply: %s", p, what(m, inMine), what(th, inTheirs))
			}
		}
	}
	for p := range extras {
		if _, ok := ms[p]; !ok {
			t.Errorf("/%s: expected in ApplyIgnition's tree, missing", p)
		}
	}
}

// ---- the real Ignition -------------------------------------------------------------

// atIgnitionApply finds Ignition's own ignition-apply.
func atIgnitionApply(t *testing.T) string { return testtools.IgnitionApply(t) }

// atRunIgnitionApply runs ignition-apply --offline on root with the config minus its
// passwd section (ignition-apply refuses it: "cannot apply passwd live"), umask 022.
func atRunIgnitionApply(t *testing.T, apply, root string, raw []byte) {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	delete(m, "passwd")
	b, _ := json.Marshal(m)
	cfg := filepath.Join(t.TempDir(), "config.ign")
	if err := os.WriteFile(cfg, b, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", `umask 022; exec "$0" "$@"`, apply, "--root="+root, "--offline", cfg)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ignition-apply failed: %v\n%s", err, out)
	}
}

// atIgnitionPasswd does to root what Ignition's passwd stage does, with the same
// programs and arguments (EnsureGroup/EnsureUser in internal/exec/util/passwd.go, for
// accounts that do not exist yet) and the same SSH key file (AuthorizeSSHKeys).
// SOURCE_DATE_EPOCH=0 makes useradd leave the shadow "last change" field empty. The
// backups and lock the shadow tools leave are removed.
func atIgnitionPasswd(t *testing.T, root string, p types.Passwd) {
	t.Helper()
	run := func(name string, args ...string) {
		cmd := exec.Command(name, args...)
		cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
	}
	set := func(args []string, flag string, s *string) []string {
		if s != nil && *s != "" {
			return append(args, flag, *s)
		}
		return args
	}
	isTrue := func(b *bool) bool { return b != nil && *b }
	for _, g := range p.Groups {
		args := []string{"--root", root}
		if g.Gid != nil {
			args = append(args, "--gid", fmt.Sprint(*g.Gid))
		}
		args = set(args, "--password", g.PasswordHash)
		if isTrue(g.System) {
			args = append(args, "--system")
		}
		run("groupadd", append(args, g.Name)...)
	}
	for _, u := range p.Users {
		args := []string{"--root", root}
		args = set(args, "--home-dir", u.HomeDir)
		if isTrue(u.NoCreateHome) {
			args = append(args, "--no-create-home")
		} else {
			args = append(args, "--create-home")
		}
		for _, x := range []struct {
			b    *bool
			flag string
		}{{u.NoUserGroup, "--no-user-group"}, {u.System, "--system"}, {u.NoLogInit, "--no-log-init"}} {
			if isTrue(x.b) {
				args = append(args, x.flag)
			}
		}
		pw := "*"
		if u.PasswordHash != nil && *u.PasswordHash != "" {
			pw = *u.PasswordHash
		}
		args = append(args, "--password", pw)
		if u.UID != nil {
			args = append(args, "--uid", fmt.Sprint(*u.UID))
		}
		args = set(args, "--comment", u.Gecos)
		args = set(args, "--gid", u.PrimaryGroup)
		if len(u.Groups) > 0 {
			var gs []string
			for _, g := range u.Groups {
				gs = append(gs, string(g))
			}
			args = append(args, "--groups", strings.Join(gs, ","))
		}
		args = set(args, "--shell", u.Shell)
		run("useradd", append(args, u.Name)...)
	}
	for _, u := range p.Users {
		if len(u.SSHAuthorizedKeys) == 0 {
			continue
		}
		tr := atReadDir(t, filepath.Join(root, "etc"))
		a := &ignApplier{t: tr}
		f, ok := a.lookup("passwd", u.Name)
		if !ok {
			t.Fatalf("user %s not in passwd", u.Name)
		}
		var uid, gid int
		fmt.Sscan(f[2], &uid)
		fmt.Sscan(f[3], &gid)
		var keys []string
		for _, k := range u.SSHAuthorizedKeys {
			keys = append(keys, string(k))
		}
		dir := filepath.Join(root, f[5], ".ssh", "authorized_keys.d")
		for _, d := range []string{filepath.Dir(dir), dir} {
			if _, err := os.Lstat(d); err == nil {
				continue
			}
			if err := os.Mkdir(d, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(d, uid, gid); err != nil {
				t.Fatal(err)
			}
		}
		file := filepath.Join(dir, "ignition")
		if err := os.WriteFile(file, []byte(strings.Join(keys, "\n")+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(file, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"passwd-", "group-", "shadow-", "gshadow-", ".pwd.lock"} {
		os.Remove(filepath.Join(root, "etc", name))
	}
}

func atSystemctl(t *testing.T, root string, args ...string) {
	t.Helper()
	if _, err := exec.LookPath("systemctl"); err != nil {
		t.Skip("systemctl is not installed; it is the reference for the enablement symlinks")
	}
	cmd := exec.Command("systemctl", append([]string{"--root=" + root}, args...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("systemctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func atRootDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "root")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// ---- the node config against the real Ignition -------------------------------------

// TestApplyIgnitionMatchesIgnitionApply applies a real rendered node config to a
// synthetic base with ApplyIgnition, and the same config to the same base on disk with
// what Ignition itself runs: groupadd/useradd for the passwd section (as Ignition's
// passwd stage would, since ignition-apply refuses it) and ignition-apply for the rest.
// Every entry of the two trees must match in type, mode, owner, link target and
// contents, except the enablement symlinks only ApplyIgnition makes; after `systemctl
// enable` of the enabled units on disk the trees must be identical.
func TestApplyIgnitionMatchesIgnitionApply(t *testing.T) {
	apply := atIgnitionApply(t)
	raw := atRender(t)
	cfg := atConfig(t, raw)

	mine := atBaseTree(t)
	if err := ApplyIgnition(mine, raw, ApplyOptions{}); err != nil {
		t.Fatal(err)
	}

	root := atRootDir(t)
	atWriteTree(t, atBaseTree(t), root)
	atIgnitionPasswd(t, root, cfg.Passwd)
	atRunIgnitionApply(t, apply, root, raw)

	// Everything the config names is there.
	for _, f := range cfg.Storage.Files {
		if e, ok := mine.Get(f.Path); !ok || !e.IsRegular() {
			t.Errorf("file %s not created", f.Path)
		}
	}
	for _, d := range cfg.Storage.Directories {
		if e, ok := mine.Get(d.Path); !ok || !e.IsDir() {
			t.Errorf("directory %s not created", d.Path)
		}
	}
	var enabled []string
	extras := map[string]string{"etc/systemd/system/multi-user.target.wants": "dir drwxr-xr-x 0:0"}
	for _, u := range cfg.Systemd.Units {
		if e, ok := mine.Get("etc/systemd/system/" + u.Name); !ok || string(e.Data) != *u.Contents {
			t.Errorf("unit %s not written", u.Name)
		}
		if u.Enabled != nil && *u.Enabled {
			enabled = append(enabled, u.Name)
			extras["etc/systemd/system/multi-user.target.wants/"+u.Name] = "symlink -> /etc/systemd/system/" + u.Name + " 0:0"
		}
	}
	sort.Strings(enabled)
	if want := []string{"etcd-firstboot.service", "etcd-ready.service", "etcd.service", "flanneld.service"}; strings.Join(enabled, " ") != strings.Join(want, " ") {
		t.Fatalf("enabled units %v, want %v", enabled, want)
	}
	preset, _ := mine.Get(ignPresetPath)
	if want := "enable etcd-firstboot.service\nenable etcd-ready.service\nenable etcd.service\nenable flanneld.service\n"; preset == nil || string(preset.Data) != want {
		t.Errorf("preset file:\n%v\nwant:\n%s", preset, want)
	}

	theirs := atReadDir(t, root)
	atCompare(t, mine, theirs, nil, extras)

	// The accounts, spelled out (the comparison above already holds them to
	// useradd/groupadd's result).
	for file, want := range map[string]string{
		"etc/passwd":  "etcd:x:997:997:etcd member:/var/lib/etcd:/usr/sbin/nologin\ncore:x:1000:1000::/home/core:/bin/sh\n",
		"etc/group":   "etcd:x:997:\ncore:x:1000:\n",
		"etc/shadow":  "etcd:*:::::::\ncore:*::0:99999:7:::\n",
		"etc/gshadow": "etcd:!::\ncore:!::\n",
	} {
		e, _ := mine.Get(file)
		if e == nil || !strings.HasSuffix(string(e.Data), want) {
			t.Errorf("/%s should end with\n%s", file, want)
		}
	}
	for p, want := range map[string]string{
		"home/core":                                 "dir drwxr-xr-x 1000:1000",
		"home/core/.ssh":                            "dir drwx------ 1000:1000",
		"home/core/.ssh/authorized_keys.d":          "dir drwx------ 1000:1000",
		"home/core/.ssh/authorized_keys.d/ignition": fmt.Sprintf("file -rw------- 1000:1000 links=1 sha256=%x", sha256.Sum256([]byte(atSSHKey+"\n"))),
		"var/lib/etcd":                              "dir drwx------ 997:997",
	} {
		if got := atSummary(t, mine)[p]; got != want {
			t.Errorf("/%s: %s, want %s", p, got, want)
		}
	}

	// systemctl enable on Ignition's result makes exactly ApplyIgnition's symlinks.
	atSystemctl(t, root, append([]string{"enable"}, enabled...)...)
	atCompare(t, mine, atReadDir(t, root), nil, nil)
}

// ---- units against ignition-apply and systemctl ------------------------------------

// TestApplyIgnitionUnitsMatchIgnitionApply covers the unit rules on a base with units
// already enabled, masked, static and templated: writing units and drop-ins, mask and
// unmask, disabling (ignition-apply runs systemctl disable) and the preset lines; then
// `systemctl enable` of the enabled units on Ignition's result must give ApplyIgnition's
// symlinks, including Also=, RequiredBy=, line continuations and units without contents.
func TestApplyIgnitionUnitsMatchIgnitionApply(t *testing.T) {
	apply := atIgnitionApply(t)
	base := func() *Tree {
		tr := atBaseTree(t)
		u := "usr/lib/systemd/system/"
		atLink(t, tr, "etc/systemd/system/multi-user.target.wants/chronyd.service", "/lib/systemd/system/chronyd.service")
		atLink(t, tr, "etc/systemd/system/chrony.service", "/lib/systemd/system/chronyd.service")
		atFile(t, tr, u+"static.service", 0o644, 0, 0, "[Service]\nExecStart=/bin/true\n")
		atFile(t, tr, u+"off.service", 0o644, 0, 0, "[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n")
		atFile(t, tr, u+"bar.service", 0o644, 0, 0, "[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n")
		atLink(t, tr, "etc/systemd/system/bar.service", "/dev/null")
		atFile(t, tr, u+"tmpl@.service", 0o644, 0, 0, "[Service]\nExecStart=/bin/echo %i\n[Install]\nWantedBy=multi-user.target\n")
		atFile(t, tr, u+"sshd.service", 0o644, 0, 0, "[Service]\nExecStart=/usr/sbin/sshd -D\n[Install]\nWantedBy=multi-user.target\nAlso=sshd-keygen.service\n")
		atFile(t, tr, u+"sshd-keygen.service", 0o644, 0, 0, "[Service]\nType=oneshot\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target \\\n  sshd.service\n")
		return tr
	}
	newUnit := "[Unit]\nDescription=new\n\n[Service]\nExecStart=/bin/true\n\n[Install]\nWantedBy=multi-user.target\nRequiredBy=foo.target\n"
	var c types.Config
	c.Systemd.Units = []types.Unit{
		{Name: "chronyd.service", Enabled: atPtr(false), Dropins: []types.Dropin{{Name: "10-etcdbake.conf", Contents: atPtr("[Service]\nExecStart=\nExecStart=/usr/sbin/chronyd\n")}}},
		{Name: "static.service", Enabled: atPtr(false)},
		{Name: "off.service", Enabled: atPtr(false)},
		{Name: "missing.service", Enabled: atPtr(false)},
		{Name: "new.service", Contents: atPtr(newUnit), Enabled: atPtr(true), Dropins: []types.Dropin{{Name: "empty.conf", Contents: atPtr("")}, {Name: "skipped.conf"}}},
		{Name: "bar.service", Mask: atPtr(false), Enabled: atPtr(true)},
		{Name: "foo.service", Mask: atPtr(true), Contents: atPtr("[Service]\nExecStart=/bin/true\n")},
		{Name: "sshd.service", Enabled: atPtr(true)},
	}
	raw := atJSON(t, c)

	mine := base()
	if err := ApplyIgnition(mine, raw, ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	preset, _ := mine.Get(ignPresetPath)
	if want := "enable bar.service\ndisable chronyd.service\nenable new.service\nenable sshd.service\ndisable static.service\n"; preset == nil || string(preset.Data) != want {
		t.Errorf("preset file:\n%v\nwant:\n%s", preset, want)
	}

	root := atRootDir(t)
	atWriteTree(t, base(), root)
	atRunIgnitionApply(t, apply, root, raw)
	atSystemctl(t, root, "enable", "new.service", "bar.service", "sshd.service")
	atCompare(t, mine, atReadDir(t, root), nil, nil)

	for p, want := range map[string]string{
		"etc/systemd/system/multi-user.target.wants/new.service":         "/etc/systemd/system/new.service",
		"etc/systemd/system/foo.target.requires/new.service":             "/etc/systemd/system/new.service",
		"etc/systemd/system/multi-user.target.wants/bar.service":         "/lib/systemd/system/bar.service",
		"etc/systemd/system/multi-user.target.wants/sshd-keygen.service": "/lib/systemd/system/sshd-keygen.service",
		"etc/systemd/system/sshd.service.wants/sshd-keygen.service":      "/lib/systemd/system/sshd-keygen.service",
		"etc/systemd/system/foo.service":                                 "/dev/null",
	} {
		if e, ok := mine.Get(p); !ok || !e.IsSymlink() || e.Target != want {
			t.Errorf("/%s should be a symlink to %s", p, want)
		}
	}
	for _, p := range []string{"etc/systemd/system/multi-user.target.wants/chronyd.service", "etc/systemd/system/chrony.service", "etc/systemd/system/bar.service"} {
		if _, ok := mine.Get(p); ok {
			t.Errorf("/%s should be gone", p)
		}
	}
}

// TestApplyIgnitionTemplateUnitsMatchSystemctl: enabled instances of templates, and a
// template with DefaultInstance=, get the symlinks `systemctl enable` makes, and the
// preset lines Ignition writes for them. (ignition-apply cannot be the reference here:
// with instantiated units it asks the running systemd for its version over D-Bus.)
func TestApplyIgnitionTemplateUnitsMatchSystemctl(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("writing the reference tree sets owners with chown, which needs root; run the tests as root (CI does)")
	}
	base := func() *Tree {
		tr := atBaseTree(t)
		u := "usr/lib/systemd/system/"
		atFile(t, tr, u+"tmpl@.service", 0o644, 0, 0, "[Service]\nExecStart=/bin/echo %i\n[Install]\nWantedBy=multi-user.target x-%i.target\n")
		atFile(t, tr, u+"def@.service", 0o644, 0, 0, "[Service]\nExecStart=/bin/echo %i\n[Install]\nWantedBy=multi-user.target\nDefaultInstance=main\n")
		return tr
	}
	var c types.Config
	c.Systemd.Units = []types.Unit{
		{Name: "tmpl@a.service", Enabled: atPtr(true)},
		{Name: "tmpl@b.service", Enabled: atPtr(true)},
		{Name: "def@.service", Enabled: atPtr(true)},
	}
	mine := base()
	if err := ApplyIgnition(mine, atJSON(t, c), ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	preset, _ := mine.Get(ignPresetPath)
	if want := "enable def@.service \nenable tmpl@.service a b\n"; preset == nil || string(preset.Data) != want {
		t.Errorf("preset file:\n%v\nwant:\n%q", preset, want)
	}
	root := atRootDir(t)
	atWriteTree(t, base(), root)
	atSystemctl(t, root, "enable", "tmpl@a.service", "tmpl@b.service", "def@.service")
	atCompare(t, mine, atReadDir(t, root), func(p string) bool { return strings.HasPrefix(p, "etc/systemd/system-preset") }, nil)
	for p, want := range map[string]string{
		"etc/systemd/system/multi-user.target.wants/tmpl@a.service":   "/lib/systemd/system/tmpl@.service",
		"etc/systemd/system/x-b.target.wants/tmpl@b.service":          "/lib/systemd/system/tmpl@.service",
		"etc/systemd/system/multi-user.target.wants/def@main.service": "/lib/systemd/system/def@.service",
	} {
		if e, ok := mine.Get(p); !ok || !e.IsSymlink() || e.Target != want {
			t.Errorf("/%s should be a symlink to %s", p, want)
		}
	}
}

// ---- storage edge cases against ignition-apply -------------------------------------

// TestApplyIgnitionStorageMatchesIgnitionApply covers Ignition's file system rules on an
// existing base: append to existing files (owner kept, setuid cleared by the chown),
// existing directories keeping their mode and owner, overwrite of a directory, parents
// through an absolute symlink (/var/run -> /run), symlink owners following the target,
// hard links, gzip and hash-verified contents, files created by append alone, empty
// files, owners by id and by name, and setuid/setgid/sticky in the config's modes, which
// Ignition drops for specs before 3.6.0.
func TestApplyIgnitionStorageMatchesIgnitionApply(t *testing.T) {
	apply := atIgnitionApply(t)
	base := func() *Tree {
		tr := atBaseTree(t)
		atFile(t, tr, "usr/bin/suidtool", 0o755|fs.ModeSetuid, 0, 0, "suid\n")
		atFile(t, tr, "usr/bin/sgidtool", 0o755|fs.ModeSetgid, 0, 0, "sgid\n")
		atFile(t, tr, "usr/bin/sgidnox", 0o644|fs.ModeSetgid, 0, 0, "sgid without group execute\n")
		atFile(t, tr, "usr/bin/ownedtool", 0o750, 1, 1, "daemon's\n")
		atDir(t, tr, "srv/data", 0o750, 1, 1)
		atDir(t, tr, "srv/replace", 0o700, 1, 1)
		atFile(t, tr, "srv/replace/old.txt", 0o644, 0, 0, "old\n")
		atFile(t, tr, "etc/keep.conf", 0o644, 1, 1, "kept\n")
		atFile(t, tr, "usr/bin/hl-a", 0o755, 0, 0, "hard linked\n")
		atPut(t, tr, Entry{Path: "usr/bin/hl-b", Mode: 0o755, Hardlink: "usr/bin/hl-a"})
		return tr
	}
	data := func(s string) *string { return atPtr("data:," + strings.ReplaceAll(s, "\n", "%0A")) }
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
		{Node: types.Node{Path: "/srv/new", User: types.NodeUser{ID: atPtr(1234)}, Group: types.NodeGroup{Name: atPtr("daemon")}}, DirectoryEmbedded1: types.DirectoryEmbedded1{Mode: atPtr(0o700)}},
		{Node: types.Node{Path: "/srv/replace", Overwrite: atPtr(true)}, DirectoryEmbedded1: types.DirectoryEmbedded1{Mode: atPtr(0o1777)}},
	}
	hostname := file("/etc/hostname", atPtr(0o644), data("node1\n"))
	hostname.Overwrite = atPtr(true)
	relinked := file("/usr/bin/hl-a", atPtr(0o700), data("replaced\n"))
	relinked.Overwrite = atPtr(true)
	suid := file("/usr/bin/suidtool", nil, nil)
	suid.Append = []types.Resource{{Source: data("more\n")}}
	sgid := file("/usr/bin/sgidtool", nil, nil)
	sgid.Append = []types.Resource{{Source: data("more\n")}}
	sgidnox := file("/usr/bin/sgidnox", nil, nil)
	sgidnox.Append = []types.Resource{{Source: data("more\n")}}
	gzFile := file("/opt/gz/blob", atPtr(0o640), atPtr("data:;base64,"+base64.StdEncoding.EncodeToString(gz.Bytes())))
	gzFile.Contents.Compression = atPtr("gzip")
	gzFile.Contents.Verification.Hash = atPtr("sha512-" + hex.EncodeToString(sum512[:]))
	gzFile.User.ID = atPtr(4321)
	checked := file("/etc/checked.conf", nil, data("checked\n"))
	checked.Contents.Verification.Hash = atPtr("sha256-" + hex.EncodeToString(sum256[:]))
	appended := file("/etc/appended.conf", nil, nil)
	appended.Append = []types.Resource{{Source: data("one\n")}, {Source: data("two\n")}}
	keep := file("/etc/keep.conf", atPtr(0o600), nil)
	keep.Group.ID = atPtr(5)
	c.Storage.Files = []types.File{
		hostname, relinked, suid, sgid, sgidnox, gzFile, checked, appended, keep,
		file("/var/run/etcdbake/pid.txt", nil, data("1\n")),
		file("/etc/empty.conf", atPtr(0o600), nil),
		file("/etc/modes/both", atPtr(0o6755), data("x\n")),
		file("/etc/deep/a/b/c.conf", nil, data("deep\n")),
	}
	link := func(p, target string, hard bool) types.Link {
		return types.Link{Node: types.Node{Path: p}, LinkEmbedded1: types.LinkEmbedded1{Target: atPtr(target), Hard: atPtr(hard)}}
	}
	owned := link("/etc/alt/owned", "tool", false)
	owned.User.Name = atPtr("daemon")
	c.Storage.Links = []types.Link{
		link("/etc/alt/tool", "../../usr/bin/ownedtool", false),
		link("/etc/alt/abs", "/nonexistent-etcdbake-test/x", false),
		owned,
		link("/usr/bin/ownedtool-hard", "/usr/bin/ownedtool", true),
	}
	raw := atJSON(t, c)

	mine := base()
	if err := ApplyIgnition(mine, raw, ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	root := atRootDir(t)
	atWriteTree(t, base(), root)
	atRunIgnitionApply(t, apply, root, raw)
	atCompare(t, mine, atReadDir(t, root), nil, nil)

	s := atSummary(t, mine)
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
	f := types.File{Node: types.Node{Path: "/opt/etcdbake/bin/etcd", Overwrite: atPtr(true)}}
	f.Mode = atPtr(0o755)
	f.Contents.Source = atPtr(url)
	f.Contents.Verification.Hash = atPtr("sha512-" + sum)
	c.Storage.Files = []types.File{f}
	return atJSON(t, c)
}

// TestApplyIgnitionRemoteSource: a remote binary comes from ApplyOptions.Remote, is
// verified and is referenced by path, not read into the tree.
func TestApplyIgnitionRemoteSource(t *testing.T) {
	local := filepath.Join(t.TempDir(), "etcd")
	body := []byte("#!/bin/sh\necho etcd\n")
	if err := os.WriteFile(local, body, 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha512.Sum512(body)
	url := "http://10.88.0.1:8080/binaries/etcd"
	tr := atBaseTree(t)
	if err := ApplyIgnition(tr, atBinaryConfig(t, url, hex.EncodeToString(sum[:])), ApplyOptions{Remote: map[string]string{url: local}}); err != nil {
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
	err := ApplyIgnition(atBaseTree(t), atBinaryConfig(t, url, hex.EncodeToString(want[:])), ApplyOptions{Remote: map[string]string{url: local}})
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
	err := ApplyIgnition(atBaseTree(t), atBinaryConfig(t, "https://example.invalid/etcd", strings.Repeat("0", 128)), ApplyOptions{})
	if err == nil || !strings.Contains(err.Error(), "ApplyOptions.Remote") || !strings.Contains(err.Error(), "https://example.invalid/etcd") {
		t.Fatalf("error %v, want one naming the URL and ApplyOptions.Remote", err)
	}
}

// TestApplyIgnitionRefusesMachineSections: sections that need the machine or the
// network are refused with a message naming them.
func TestApplyIgnitionRefusesMachineSections(t *testing.T) {
	cases := map[string]func(*types.Config){
		"storage.disks": func(c *types.Config) {
			c.Storage.Disks = []types.Disk{{Device: "/dev/vda", WipeTable: atPtr(true)}}
		},
		"storage.filesystems": func(c *types.Config) {
			c.Storage.Filesystems = []types.Filesystem{{Device: "/dev/vdb", Format: atPtr("ext4"), Path: atPtr("/var")}}
		},
		"kernelArguments": func(c *types.Config) {
			c.KernelArguments.ShouldExist = []types.KernelArgument{"quiet"}
		},
		"ignition.config merge/replace": func(c *types.Config) {
			c.Ignition.Config.Merge = []types.Resource{{Source: atPtr("https://example.invalid/more.ign")}}
		},
	}
	for name, mod := range cases {
		var c types.Config
		mod(&c)
		tr := atBaseTree(t)
		before := atSummary(t, tr)
		err := ApplyIgnition(tr, atJSON(t, c), ApplyOptions{})
		if err == nil || !strings.Contains(err.Error(), name) || !strings.Contains(err.Error(), "offline") {
			t.Errorf("%s: error %v, want a refusal naming it", name, err)
		}
		if fmt.Sprint(atSummary(t, tr)) != fmt.Sprint(before) {
			t.Errorf("%s: the tree was changed by a refused config", name)
		}
	}
	if err := ApplyIgnition(NewTree(), []byte(`{"ignition":{"version":"3.4.0"},"storage":{"files":[{"path":"relative"}]}}`), ApplyOptions{}); err == nil {
		t.Error("an invalid config was accepted")
	}
}

// TestApplyIgnitionExistingUsers: keys for a user of the base go to the legacy file when
// asked, owned by the user; groups gain members; changing an existing account's uid is
// refused rather than ignored; a password hash is set in etc/shadow.
func TestApplyIgnitionExistingUsers(t *testing.T) {
	var c types.Config
	c.Passwd.Users = []types.PasswdUser{{Name: "daemon", Groups: []types.Group{"users"}, PasswordHash: atPtr("$6$x$y"), SSHAuthorizedKeys: []types.SSHAuthorizedKey{atSSHKey}}}
	tr := atBaseTree(t)
	atDir(t, tr, "home/daemon", 0o750, 1, 1)
	c.Passwd.Users[0].HomeDir = atPtr("/usr/sbin")
	if err := ApplyIgnition(tr, atJSON(t, c), ApplyOptions{LegacyAuthorizedKeys: true}); err == nil || !strings.Contains(err.Error(), "home directory") {
		t.Fatalf("changing daemon's home: error %v, want a refusal", err)
	}
	c.Passwd.Users[0].HomeDir = nil
	tr = atBaseTree(t)
	atPut(t, tr, Entry{Path: "usr/sbin", Mode: fs.ModeDir | 0o755, UID: 1, GID: 1})
	if err := ApplyIgnition(tr, atJSON(t, c), ApplyOptions{LegacyAuthorizedKeys: true}); err != nil {
		t.Fatal(err)
	}
	s := atSummary(t, tr)
	for p, want := range map[string]string{
		"usr/sbin/.ssh":                 "dir drwx------ 1:1",
		"usr/sbin/.ssh/authorized_keys": fmt.Sprintf("file -rw------- 1:1 links=1 sha256=%x", sha256.Sum256([]byte(atSSHKey+"\n"))),
	} {
		if s[p] != want {
			t.Errorf("/%s: %q, want %q", p, s[p], want)
		}
	}
	for file, want := range map[string]string{"etc/group": "\nusers:x:100:daemon\n", "etc/gshadow": "\nusers:*::daemon\n", "etc/shadow": "\ndaemon:$6$x$y:19000:0:99999:7:::\n"} {
		if e, _ := tr.Get(file); e == nil || !strings.Contains(string(e.Data), want) {
			t.Errorf("/%s does not contain %q", file, want)
		}
	}
	c.Passwd.Users = []types.PasswdUser{{Name: "daemon", UID: atPtr(7)}}
	if err := ApplyIgnition(atBaseTree(t), atJSON(t, c), ApplyOptions{}); err == nil || !strings.Contains(err.Error(), "uid 1") {
		t.Errorf("changing daemon's uid: error %v, want a refusal", err)
	}
}

// TestApplyIgnitionDeterministic: the same config on the same base gives the same tree
// (same IDs, same entries).
func TestApplyIgnitionDeterministic(t *testing.T) {
	raw := atRender(t)
	var sums []map[string]string
	for range 2 {
		tr := atBaseTree(t)
		if err := ApplyIgnition(tr, raw, ApplyOptions{}); err != nil {
			t.Fatal(err)
		}
		sums = append(sums, atSummary(t, tr))
	}
	if len(sums[0]) != len(sums[1]) {
		t.Fatalf("%d entries, then %d", len(sums[0]), len(sums[1]))
	}
	for p, s := range sums[0] {
		if sums[1][p] != s {
			t.Errorf("/%s: %s, then %s", p, s, sums[1][p])
		}
	}
}

// TestApplyIgnitionIDAllocation checks the shadow-utils allocation rules on their own.
func TestApplyIgnitionIDAllocation(t *testing.T) {
	cases := []struct {
		ids       []int
		sys       bool
		preferred *int
		want      int
	}{
		{[]int{0, 1, 998}, true, nil, 997},        // below the lowest used system ID
		{[]int{0, 998, 990}, true, nil, 989},      // file order: the lowest seen
		{[]int{0, 101, 998, 999}, true, nil, 997}, // 101 used: highest free from the top
		{[]int{0, 1, 998}, true, atPtr(5), 5},     // a free preferred ID wins
		{[]int{0, 1, 998}, true, atPtr(998), 997}, // a used one does not
		{[]int{0, 65534}, false, nil, 1000},       // the first normal ID
		{[]int{0, 1000, 1005}, false, nil, 1006},  // above the highest used
	}
	for _, c := range cases {
		lo, hi, plo := 1000, 60000, 1000
		if c.sys {
			lo, hi, plo = 101, 999, 1
		}
		if got, ok := ignFindNewID(c.ids, lo, hi, c.sys, c.preferred, plo); !ok || got != c.want {
			t.Errorf("ids %v sys %v: %d, want %d", c.ids, c.sys, got, c.want)
		}
	}
}
