// Package imagetest holds the fixtures the image build's tests share: a small Debian-like
// base tree, the example cluster's rendered node configs, and Ignition's own
// ignition-apply, useradd and systemctl run on a tree written to disk, to compare with.
// Only tests import it.
package imagetest

import (
	"crypto/sha256"
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
	"github.com/etcdbake/etcdbake/imagebuild/fstree"
	"github.com/etcdbake/etcdbake/pki"
	"github.com/etcdbake/etcdbake/spec"

	"github.com/etcdbake/etcdbake/internal/testtools"
)

// ---- fixtures ------------------------------------------------------------------------

func Put(t testing.TB, tr *fstree.Tree, e fstree.Entry) {
	t.Helper()
	if err := tr.Put(&e); err != nil {
		t.Fatal(err)
	}
}

func Dir(t testing.TB, tr *fstree.Tree, p string, mode fs.FileMode, uid, gid int) {
	Put(t, tr, fstree.Entry{Path: p, Mode: fs.ModeDir | mode, UID: uid, GID: gid})
}

func File(t testing.TB, tr *fstree.Tree, p string, mode fs.FileMode, uid, gid int, data string) {
	Put(t, tr, fstree.Entry{Path: p, Mode: mode, UID: uid, GID: gid, Data: []byte(data)})
}

func Link(t testing.TB, tr *fstree.Tree, p, target string) {
	Put(t, tr, fstree.Entry{Path: p, Mode: fs.ModeSymlink | 0o777, Target: target})
}

const ChronyUnit = "[Unit]\nDescription=NTP client/server\n\n[Service]\nExecStart=/usr/sbin/chronyd -F 1\n\n[Install]\nWantedBy=multi-user.target\nAlias=chrony.service\n"

// BaseTree is a small Debian-like base: merged /usr, the account databases with
// shadow files, login.defs and useradd defaults as Debian 12 ships them (the parts that
// matter), a skeleton, and a few units.
func BaseTree(t testing.TB) *fstree.Tree {
	t.Helper()
	tr := fstree.NewTree()
	for _, d := range []string{"etc", "etc/default", "etc/skel", "etc/systemd", "etc/systemd/system", "usr", "usr/bin", "usr/sbin", "usr/lib", "usr/lib/systemd", "usr/lib/systemd/system", "var", "var/lib", "var/log", "opt", "home", "run", "srv", "dev"} {
		Dir(t, tr, d, 0o755, 0, 0)
	}
	Dir(t, tr, "root", 0o700, 0, 0)
	Dir(t, tr, "tmp", 0o1777, 0, 0)
	Link(t, tr, "lib", "usr/lib")
	Link(t, tr, "bin", "usr/bin")
	Link(t, tr, "sbin", "usr/sbin")
	Link(t, tr, "var/run", "/run")
	File(t, tr, "etc/passwd", 0o644, 0, 0, "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\nsystemd-network:x:998:998:systemd Network Management:/:/usr/sbin/nologin\n")
	File(t, tr, "etc/group", 0o644, 0, 0, "root:x:0:\ndaemon:x:1:\nshadow:x:42:\nusers:x:100:\nsystemd-journal:x:999:\nsystemd-network:x:998:\n")
	File(t, tr, "etc/shadow", 0o640, 0, 42, "root:*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\nsystemd-network:!*:19000::::::\n")
	File(t, tr, "etc/gshadow", 0o640, 0, 42, "root:*::\ndaemon:*::\nshadow:*::\nusers:*::\nsystemd-journal:!*::\nsystemd-network:!*::\n")
	File(t, tr, "etc/login.defs", 0o644, 0, 0, "MAIL_DIR /var/mail\nPASS_MAX_DAYS\t99999\nPASS_MIN_DAYS\t0\nPASS_WARN_AGE\t7\nUID_MIN\t\t\t 1000\nUID_MAX\t\t\t60000\nGID_MIN\t\t\t 1000\nGID_MAX\t\t\t60000\nUMASK\t\t022\nUSERGROUPS_ENAB yes\nENCRYPT_METHOD SHA512\n")
	File(t, tr, "etc/default/useradd", 0o644, 0, 0, "SHELL=/bin/sh\n")
	File(t, tr, "etc/skel/.profile", 0o644, 0, 0, "# ~/.profile\n")
	File(t, tr, "etc/skel/.bashrc", 0o644, 0, 0, "# ~/.bashrc\n")
	File(t, tr, "etc/hostname", 0o644, 0, 0, "debian\n")
	File(t, tr, "usr/bin/sh", 0o755, 0, 0, "#!fake shell\n")
	File(t, tr, "usr/lib/systemd/system/multi-user.target", 0o644, 0, 0, "[Unit]\nDescription=Multi-User System\n")
	File(t, tr, "usr/lib/systemd/system/chronyd.service", 0o644, 0, 0, ChronyUnit)
	return tr
}

var Now = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

const SSHKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForEtcdbakeTestsOnly0000000000000 test@etcdbake"

// Render renders the example cluster's first node as etcdbake does (inline binaries),
// with an SSH key so that the passwd section also creates a login user.
func Render(t testing.TB) []byte {
	t.Helper()
	return RenderAll(t)["etcd-1"]
}

// RenderAll renders every node of the example that way.
func RenderAll(t testing.TB) map[string][]byte {
	t.Helper()
	c, rep := spec.Parse(spec.Example)
	if rep.HasErrors() {
		t.Fatalf("example spec: %s", rep.String())
	}
	c.SSH.AuthorizedKeys = []string{SSHKey}
	dir := t.TempDir()
	if _, err := pki.Ensure(c, filepath.Join(dir, "pki"), Now); err != nil {
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

func Config(t testing.TB, raw []byte) types.Config {
	t.Helper()
	var c types.Config
	if err := json.Unmarshal(raw, &c); err != nil {
		t.Fatal(err)
	}
	return c
}

func JSON(t testing.TB, c types.Config) []byte {
	t.Helper()
	c.Ignition.Version = "3.4.0"
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func Ptr[T any](v T) *T { return &v }

// ---- trees on disk -------------------------------------------------------------------

// WriteTree extracts a tree into dir (which exists): contents, modes, owners, links.
func WriteTree(t testing.TB, tr *fstree.Tree, dir string) {
	t.Helper()
	meta := func(full string, e *fstree.Entry) {
		if err := os.Lchown(full, e.UID, e.GID); err != nil {
			t.Fatal(err)
		}
		if !e.IsSymlink() {
			if err := os.Chmod(full, e.Mode&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)); err != nil {
				t.Fatal(err)
			}
		}
	}
	var hard []*fstree.Entry
	for _, p := range tr.Paths() {
		e, _ := tr.Lookup(p)
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
			if data, err = tr.Contents(e); err == nil {
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

// ReadDir reads a directory back into a tree (hard links recorded as such).
func ReadDir(t testing.TB, dir string) *fstree.Tree {
	t.Helper()
	tr := fstree.NewTree()
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
		e := &fstree.Entry{Path: rel, Mode: st.Mode() & (fs.ModeType | fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky), UID: int(sys.Uid), GID: int(sys.Gid)}
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
		tr.Set(e)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// Summary describes every entry: type, mode, owner, link target or link count and
// sha256 of the contents.
func Summary(t testing.TB, tr *fstree.Tree) map[string]string {
	t.Helper()
	nlink := map[*fstree.Entry]int{}
	for _, e := range tr.All() {
		if e.IsRegular() {
			nlink[tr.DataOf(e)]++
		}
	}
	out := map[string]string{}
	for p, e := range tr.All() {
		switch {
		case e.IsDir():
			out[p] = fmt.Sprintf("dir %v %d:%d", e.Mode, e.UID, e.GID)
		case e.IsSymlink():
			out[p] = fmt.Sprintf("symlink -> %s %d:%d", e.Target, e.UID, e.GID)
		default:
			data, err := tr.Contents(e)
			if err != nil {
				t.Fatal(err)
			}
			out[p] = fmt.Sprintf("file %v %d:%d links=%d sha256=%x", e.Mode, e.UID, e.GID, nlink[tr.DataOf(e)], sha256.Sum256(data))
		}
	}
	return out
}

// Compare reports every path whose summary differs, except the paths in extras, which
// must exist in mine only (with the given description, when not empty).
func Compare(t *testing.T, mine, theirs *fstree.Tree, ignore func(string) bool, extras map[string]string) {
	t.Helper()
	ms, ts := Summary(t, mine), Summary(t, theirs)
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
				t.Errorf("/%s: expected only in Apply's tree as %q; Apply: %q, ignition-apply: %q", p, want, m, th)
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
				t.Errorf("/%s differs:\n  Apply:  %s\n  ignition-apply: %s", p, what(m, inMine), what(th, inTheirs))
			}
		}
	}
	for p := range extras {
		if _, ok := ms[p]; !ok {
			t.Errorf("/%s: expected in Apply's tree, missing", p)
		}
	}
}

// ---- the real Ignition -------------------------------------------------------------

// IgnitionApply finds Ignition's own ignition-apply.
func IgnitionApply(t *testing.T) string { return testtools.IgnitionApply(t) }

// RunIgnitionApply runs ignition-apply --offline on root with the config minus its
// passwd section (ignition-apply refuses it: "cannot apply passwd live"), umask 022.
func RunIgnitionApply(t *testing.T, apply, root string, raw []byte) {
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

// IgnitionPasswd does to root what Ignition's passwd stage does, with the same
// programs and arguments (EnsureGroup/EnsureUser in internal/exec/util/passwd.go, for
// accounts that do not exist yet) and the same SSH key file (AuthorizeSSHKeys).
// SOURCE_DATE_EPOCH=0 makes useradd leave the shadow "last change" field empty. The
// backups and lock the shadow tools leave are removed.
func IgnitionPasswd(t *testing.T, root string, p types.Passwd) {
	t.Helper()
	IgnitionPasswdAt(t, root, p, time.Unix(0, 0))
}

// IgnitionPasswdAt is IgnitionPasswd with useradd's clock at when (SOURCE_DATE_EPOCH):
// the shadow "last change" field is when's day (empty for the epoch itself).
//
// It is long because it mirrors Ignition's argument building for groupadd and useradd in
// one piece, to be compared with it.
func IgnitionPasswdAt(t *testing.T, root string, p types.Passwd, when time.Time) {
	t.Helper()
	run := func(name string, args ...string) {
		cmd := exec.Command(name, args...)
		cmd.Env = append(os.Environ(), fmt.Sprintf("SOURCE_DATE_EPOCH=%d", when.Unix()))
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
		tr := ReadDir(t, filepath.Join(root, "etc"))
		f, ok := lookup(tr, "passwd", u.Name)
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
	for _, name := range []string{"passwd-", "group-", "shadow-", "gshadow-", "subuid-", "subgid-", ".pwd.lock"} {
		os.Remove(filepath.Join(root, "etc", name))
	}
}

func Systemctl(t *testing.T, root string, args ...string) {
	t.Helper()
	if _, err := exec.LookPath("systemctl"); err != nil {
		t.Skip("systemctl is not installed; it is the reference for the enablement symlinks")
	}
	cmd := exec.Command("systemctl", append([]string{"--root=" + root}, args...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("systemctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func RootDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "root")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// ---- the node config against the real Ignition -------------------------------------

// lookup returns the fields of name's line in the account database db of tr.
func lookup(tr *fstree.Tree, db, name string) ([]string, bool) {
	e, ok := tr.Follow(db)
	if !ok || !e.IsRegular() {
		return nil, false
	}
	b, err := tr.Contents(e)
	if err != nil {
		return nil, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Split(line, ":")
		if len(f) >= 4 && f[0] == name {
			return f, true
		}
	}
	return nil, false
}

// Tool returns the path of an external program a test uses as an oracle. Tests never
// install anything: when it is missing, testtools.Missing names the Debian package and
// the make target that installs it (a failure under `make test`, a skip otherwise).
func Tool(t testing.TB, tool, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		testtools.Missing(t, tool+" (Debian package "+pkg+")")
	}
	return p
}
