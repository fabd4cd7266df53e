// Package ignapply is the offline Ignition applier: what Ignition's files stage (v2.25.0)
// does to the real root on first boot, done to an image tree (fstree.Tree) at build time,
// plus what a read-only root needs on top (enablement symlinks instead of presets applied
// at boot).
//
// The rules follow Ignition's internal/exec/stages/files and internal/exec/util, the
// shadow-utils programs Ignition runs for the passwd section (useradd, groupadd,
// userdel, groupdel of Debian 12, shadow 4.13) and systemctl of Debian 12 (systemd 252)
// for enablement. Deliberate differences are listed on Apply. The process
// umask Ignition runs with is taken to be 022.
//
// apply.go has the entry point, the refusals, path resolution, contents and hard links,
// owners and modes; storage.go the storage section (and fetching sources), passwd.go the
// passwd section, ids.go the numbers useradd chooses (IDs, the shadow day, subordinate
// id ranges), units.go the systemd section.
package ignapply

import (
	"fmt"
	"io/fs"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	v34 "github.com/coreos/ignition/v2/config/v3_4"
	"github.com/coreos/ignition/v2/config/v3_4/types"

	"github.com/etcdbake/etcdbake/imagebuild/fstree"
)

// Options: how remote sources are resolved offline.
type Options struct {
	// Remote maps a source URL (exactly as written in the config) to a local file; when
	// the config gives a verification hash (sha512 or sha256) the file's (decompressed)
	// contents must match it. Uncompressed files are referenced (Entry.Source), not read
	// into memory.
	Remote map[string]string
	// LegacyAuthorizedKeys writes SSH keys to ~/.ssh/authorized_keys, as an Ignition
	// built with WRITE_AUTHORIZED_KEYS_FRAGMENT=false does. By default they go to
	// ~/.ssh/authorized_keys.d/ignition like upstream Ignition's default build, which
	// OpenSSH reads only when sshd_config names that directory (Fedora CoreOS and Flatcar
	// do; Debian's default sshd_config does not).
	LegacyAuthorizedKeys bool
	// Time is the build's time. useradd writes the day it runs (days since the epoch,
	// from SOURCE_DATE_EPOCH when set) as the shadow "last change" field of the accounts
	// it adds; Apply writes Time's day, so the same inputs give the same image. The zero
	// Time leaves the field empty, as useradd does with SOURCE_DATE_EPOCH=0 (which
	// disables password aging for the account).
	Time time.Time
	// HardLinks says the tree goes to a writer that keeps hard links. Without it a hard
	// link in the config (storage.links with hard: true) is refused: the image's ext4
	// writer (go-diskfs) cannot make hard links and would write a second copy, where
	// Ignition makes one file with two names.
	HardLinks bool
}

// Apply applies an Ignition 3.4.0 config (raw JSON) to the tree, as Ignition's
// files stage would on first boot:
//
//   - passwd.groups, then passwd.users, as groupadd/useradd --root would add them: lines
//     appended to etc/group (and etc/gshadow) and etc/passwd (and etc/shadow when it
//     exists; otherwise the password field of etc/passwd holds the hash). IDs not given
//     are allocated by shadow-utils' algorithm (find_new_uid/find_new_gid): system
//     accounts take the ID below the lowest one already used in SYS_*ID_MIN..SYS_*ID_MAX
//     (login.defs, defaults 101..999), scanning the file in order, else the highest free
//     one; other accounts take the ID above the highest used in *ID_MIN..*ID_MAX (1000..
//     60000). A user without primaryGroup gets a group of its own name (USERGROUPS_ENAB),
//     with gid = uid when free. Passwords are "*" unless passwordHash is set; the shadow
//     "last change" field is the day of Options.Time (useradd writes the day it runs;
//     empty for the zero Time, as useradd with SOURCE_DATE_EPOCH=0), and for accounts
//     that are not system ones min/max/warn come from login.defs' PASS_MIN_DAYS,
//     PASS_MAX_DAYS and PASS_WARN_AGE. When the tree has etc/subuid (etc/subgid), a new
//     account that is not a system one, with no uid given or one in UID_MIN..UID_MAX,
//     gets SUB_UID_COUNT (65536) subordinate ids there: the first free hole from
//     SUB_UID_MIN up to SUB_UID_MAX, the existing lines sorted, as shadow 4.13's
//     find_new_sub_uids does. Homes (unless
//     noCreateHome) are created as useradd --create-home does: mode HOME_MODE or 0777 &^
//     UMASK, owned by the user, etc/skel copied in with its modes (shadow 4.13 in a
//     chroot without /proc leaves skel directories 0700 and stops copying; we do not).
//     sshAuthorizedKeys go to <home>/.ssh/authorized_keys.d/ignition (see
//     Options.LegacyAuthorizedKeys), owned by the user, directories 0700, file 0600.
//     shouldExist: false deletes the account (with its subordinate id ranges) as userdel
//     --remove / groupdel would.
//     Accounts that already exist are left as they are, except that passwordHash and
//     sshAuthorizedKeys are applied and listed groups gain the user as a member (Ignition
//     would run usermod); a request to change an existing account's uid, gid, primary
//     group, home, shell or gecos is an error rather than silently ignored.
//   - storage.directories, files and links, shallowest first, hard links last (refused
//     unless Options.HardLinks: the image's ext4 writer would make them copies), with
//     Ignition's rules: paths are resolved through symlinks inside the tree; overwrite
//     removes what is there first; a new file is 0644 and a new directory (and every
//     missing parent) 0755, root-owned; an existing node keeps its mode and owner unless
//     the config sets them (setuid, setgid and sticky in a config mode are dropped, as
//     Ignition does for specs before 3.6.0); owners by id or by name (looked up in the
//     tree's etc/passwd and etc/group, after the passwd section); changing the owner of a regular file
//     clears setuid (and setgid with group execute) as chown(2) does; contents from data
//     URLs (gzip compression honoured) or, for other URLs, from Options.Remote,
//     checked against the verification hash; append; a symlink is owned like its target
//     unless the config says otherwise.
//   - systemd.units: the unit and its drop-ins written under etc/systemd/system (0644),
//     mask as a symlink to /dev/null, and enabled recorded in
//     etc/systemd/system-preset/20-ignition.preset exactly as Ignition writes it. Since a
//     read-only root cannot apply presets at boot, enabled: true also creates the
//     symlinks `systemctl enable` would (WantedBy=, RequiredBy=, UpheldBy=, Alias=, Also=,
//     DefaultInstance=, read from the unit in etc/systemd/system, usr/local/lib, lib or
//     usr/lib systemd/system, in that order as systemd 252 on Debian searches them; the
//     link points at the unit file by that path). enabled: false removes the enablement
//     symlinks in etc/systemd/system as `systemctl disable` does; the "disable" preset
//     line is written, as Ignition does, only when the unit was enabled or static (for
//     instances never: Ignition's systemctl query fails for "name@.service inst").
//     Enabling a unit that has no unit file in the image, or is masked, is an error.
//
// Sections that need the machine (storage.disks, raid, filesystems, luks,
// kernelArguments) or the network (ignition.config merge/replace) are refused.
func Apply(t *fstree.Tree, raw []byte, o Options) error {
	cfg, rep, err := v34.Parse(raw)
	if err != nil {
		if len(rep.Entries) > 0 {
			return fmt.Errorf("invalid Ignition config: %w:\n%s", err, rep.String())
		}
		return fmt.Errorf("invalid Ignition config: %w", err)
	}
	if rep.IsFatal() {
		return fmt.Errorf("invalid Ignition config:\n%s", rep.String())
	}
	if err := ignRefuse(cfg); err != nil {
		return err
	}
	if err := ignRefuseHardLinks(cfg, o); err != nil {
		return err
	}
	a := &ignApplier{t: t, o: o}
	if err := a.passwd(cfg.Passwd); err != nil {
		return fmt.Errorf("passwd: %w", err)
	}
	if err := a.storage(cfg.Storage); err != nil {
		return fmt.Errorf("storage: %w", err)
	}
	if err := a.units(cfg.Systemd.Units); err != nil {
		return fmt.Errorf("systemd: %w", err)
	}
	return nil
}

func ignRefuse(c types.Config) error {
	var what []string
	if len(c.Storage.Disks) > 0 {
		what = append(what, "storage.disks")
	}
	if len(c.Storage.Raid) > 0 {
		what = append(what, "storage.raid")
	}
	if len(c.Storage.Filesystems) > 0 {
		what = append(what, "storage.filesystems")
	}
	if len(c.Storage.Luks) > 0 {
		what = append(what, "storage.luks")
	}
	if len(c.KernelArguments.ShouldExist) > 0 || len(c.KernelArguments.ShouldNotExist) > 0 {
		what = append(what, "kernelArguments")
	}
	if len(c.Ignition.Config.Merge) > 0 || c.Ignition.Config.Replace.Source != nil {
		what = append(what, "ignition.config merge/replace")
	}
	if len(what) == 0 {
		return nil
	}
	return fmt.Errorf("the Ignition config uses %s, which cannot be applied to a disk image offline "+
		"(etcdbake lays out the disk and the kernel command line itself, and fetches nothing at build time); "+
		"remove it from the Butane fragments: only passwd, storage.files/directories/links and systemd.units are applied",
		strings.Join(what, ", "))
}

// ignRefuseHardLinks refuses the config's hard links unless the tree's writer keeps
// them (Options.HardLinks): a copy would be a different file system from Ignition's.
func ignRefuseHardLinks(c types.Config, o Options) error {
	if o.HardLinks {
		return nil
	}
	for i, l := range c.Storage.Links {
		if l.Hard == nil || !*l.Hard {
			continue
		}
		target := ""
		if l.Target != nil {
			target = *l.Target
		}
		return fmt.Errorf("storage.links[%d] %s: a hard link (hard: true) to %s cannot be written to the disk image: "+
			"etcdbake's ext4 writer makes no hard links and would write a second copy, where Ignition makes one file with two names; "+
			"use a symbolic link (drop hard: true) or, if a copy is what you want, a second storage.files entry with the same contents",
			i, l.Path, target)
	}
	return nil
}

type ignApplier struct {
	t *fstree.Tree
	o Options
}

// ---- paths -------------------------------------------------------------------------

// follow returns the entry p finally names (symlinks followed), like stat(2).
func (a *ignApplier) follow(p string) (*fstree.Entry, bool) {
	rp, err := a.t.Resolve(p, true)
	if err != nil {
		return nil, false
	}
	e, ok := a.t.Lookup(rp)
	return e, ok
}

// mkdirAll creates the missing directories of the resolved path p, 0755 and root-owned.
func (a *ignApplier) mkdirAll(p string) error {
	return a.t.MkdirAll(p)
}

func ignDepth(p string) int {
	if p == "" {
		return 0
	}
	return strings.Count(p, "/") + 1
}

// ---- contents and hard links -------------------------------------------------------

// canonical returns the entry holding the contents of a regular file (itself, or the
// one it is a hard link of).
func (a *ignApplier) canonical(e *fstree.Entry) *fstree.Entry {
	if e.Hardlink != "" {
		if c, ok := a.t.Lookup(e.Hardlink); ok {
			return c
		}
	}
	return e
}

func (a *ignApplier) content(e *fstree.Entry) ([]byte, error) {
	c := a.canonical(e)
	if c.Source != "" {
		b, err := os.ReadFile(c.Source)
		if err != nil {
			return nil, fmt.Errorf("/%s: %w", e.Path, err)
		}
		return b, nil
	}
	return c.Data, nil
}

// inode returns every entry sharing e's inode (e and its hard links), in path order.
func (a *ignApplier) inode(e *fstree.Entry) []*fstree.Entry {
	if !e.IsRegular() {
		return []*fstree.Entry{e}
	}
	c := a.canonical(e)
	out := []*fstree.Entry{c}
	for _, x := range a.t.All() {
		if x != c && x.Hardlink == c.Path {
			out = append(out, x)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out
}

// setContent replaces a regular file's contents in place (mode, owner and hard links
// kept).
func (a *ignApplier) setContent(e *fstree.Entry, data []byte) {
	c := a.canonical(e)
	c.Data = data
	c.Source = ""
}

// release prepares the removal or replacement of the entries at and below p: hard links
// elsewhere that point into them take over the contents.
func (a *ignApplier) release(p string) {
	gone := func(q string) bool { return q == p || p == "" || strings.HasPrefix(q, p+"/") }
	heirs := map[string]string{} // old canonical -> new canonical
	for _, q := range a.t.Paths() {
		x, _ := a.t.Lookup(q)
		if x.Hardlink == "" || gone(q) || !gone(x.Hardlink) {
			continue
		}
		if heir, ok := heirs[x.Hardlink]; ok {
			x.Hardlink = heir
			continue
		}
		old, _ := a.t.Lookup(x.Hardlink)
		heirs[x.Hardlink] = q
		x.Hardlink = ""
		if old != nil {
			x.Data, x.Source = old.Data, old.Source
		}
	}
}

func (a *ignApplier) remove(p string) {
	if _, ok := a.t.Lookup(p); !ok {
		return
	}
	a.release(p)
	a.t.Remove(p)
}

// replace puts e where another entry may be (like rename(2) over it).
func (a *ignApplier) replace(e *fstree.Entry) error {
	if old, ok := a.t.Lookup(fstree.Clean(e.Path)); ok {
		if old.IsDir() && !e.IsDir() {
			return fmt.Errorf("/%s is a directory", fstree.Clean(e.Path))
		}
		a.release(fstree.Clean(e.Path))
	}
	return a.t.Put(e)
}

// newFile writes a new root-owned 0644 file at the resolved path p, creating its parents
// (Ignition writes a temporary file, chmods it to 0644 and renames it into place).
func (a *ignApplier) newFile(p string, data []byte, source string) error {
	if err := a.mkdirAll(path.Dir(p)); err != nil {
		return err
	}
	return a.replace(&fstree.Entry{Path: p, Mode: 0o644, Data: data, Source: source})
}

// ---- owners and modes --------------------------------------------------------------

// ignFileMode converts an Ignition mode (POSIX bits) to an fs.FileMode.
func ignFileMode(m int) fs.FileMode {
	r := fs.FileMode(m & 0o777)
	if m&0o4000 != 0 {
		r |= fs.ModeSetuid
	}
	if m&0o2000 != 0 {
		r |= fs.ModeSetgid
	}
	if m&0o1000 != 0 {
		r |= fs.ModeSticky
	}
	return r
}

// ignSpecMode drops setuid, setgid and sticky from a file or directory mode, as Ignition
// does when it translates a config older than spec 3.6.0 (all that v3_4 parses): the
// bits are "not supported or functional" there and Ignition masks them out.
func ignSpecMode(m *int) *int {
	if m == nil {
		return nil
	}
	v := *m &^ 0o7000
	return &v
}

// lookup finds name in a colon-separated database of the tree (etc/passwd, etc/group)
// and returns its fields.
func (a *ignApplier) lookup(db, name string) ([]string, bool) {
	e, ok := a.follow(db)
	if !ok || !e.IsRegular() {
		return nil, false
	}
	b, err := a.content(e)
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

func (a *ignApplier) userID(name string) (int, error) {
	f, ok := a.lookup("etc/passwd", name)
	if !ok {
		return 0, fmt.Errorf("no such user %q in the image's /etc/passwd", name)
	}
	return strconv.Atoi(f[2])
}

func (a *ignApplier) groupID(name string) (int, error) {
	f, ok := a.lookup("etc/group", name)
	if !ok {
		return 0, fmt.Errorf("no such group %q in the image's /etc/group", name)
	}
	return strconv.Atoi(f[2])
}

// setPermissions is Ignition's SetPermissions: the owner defaults to that of what the
// path finally names (0:0 if nothing), is set with lchown, then the mode if given.
func (a *ignApplier) setPermissions(mode *int, n types.Node, p string) error {
	uid, gid := 0, 0
	if t, ok := a.follow(p); ok {
		uid, gid = t.UID, t.GID
	}
	var err error
	if n.User.ID != nil {
		uid = *n.User.ID
	} else if n.User.Name != nil && *n.User.Name != "" {
		if uid, err = a.userID(*n.User.Name); err != nil {
			return fmt.Errorf("owner of %s: %w", n.Path, err)
		}
	}
	if n.Group.ID != nil {
		gid = *n.Group.ID
	} else if n.Group.Name != nil && *n.Group.Name != "" {
		if gid, err = a.groupID(*n.Group.Name); err != nil {
			return fmt.Errorf("group of %s: %w", n.Path, err)
		}
	}
	e, ok := a.t.Lookup(p)
	if !ok {
		return fmt.Errorf("%s vanished", n.Path)
	}
	for _, x := range a.inode(e) {
		x.UID, x.GID = uid, gid
		if x.IsRegular() {
			// chown(2) of a regular file clears setuid, and setgid with group execute,
			// even for root.
			x.Mode &^= fs.ModeSetuid
			if x.Mode&0o010 != 0 {
				x.Mode &^= fs.ModeSetgid
			}
		}
		if mode != nil {
			x.Mode = x.Mode.Type() | ignFileMode(*mode)
		}
	}
	return nil
}
