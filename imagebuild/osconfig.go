package imagebuild

import (
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strings"

	"github.com/etcdbake/etcdbake/imagebuild/fstree"
)

// Partition labels (GPT names) the booted system mounts by. The slots' root and node
// partitions are named by RootLabel and NodeLabel.
const (
	LabelESP  = "esp"
	LabelData = "data"
)

// MaskedUnits are the base's units that the Debian images mask: apt's and dpkg's timers
// (the root is read-only; updates are releases), e2scrub (LVM snapshots: there is no LVM)
// and the modprobe@ units for modules nothing on a node uses (DRM for logind's seats,
// FUSE, configfs, loop, device mapper). The console's getty, systemd-pstore and fstrim
// stay.
var MaskedUnits = []string{
	"apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer",
	"e2scrub_all.timer", "e2scrub_reap.service",
	"modprobe@drm.service", "modprobe@fuse.service", "modprobe@configfs.service",
	"modprobe@loop.service", "modprobe@dm_mod.service",
}

// idleGenerators are the base's systemd generators that find nothing to do on an etcdbake
// image, each with the file of the root that would give it work ("" for none). systemd
// runs every generator before it loads a unit, so each one delays the whole boot: 0.15 to
// 1.1 s each on a node emulated with TCG (systemd-veritysetup-generator the slowest). The
// image masks a generator (a link to /dev/null in /etc/systemd/system-generators) only
// when that file is absent. The kernel command line is etcdbake's own, so it has no
// luks.*, roothash=, resume= or root=gpt-auto for them either; gpt-auto also finds every
// partition it could mount (/var, /efi) already in fstab. The bless-boot, debug, fstab,
// getty, run and etcdbake generators stay.
var idleGenerators = []struct{ name, needs string }{
	{"systemd-cryptsetup-generator", "etc/crypttab"},
	{"systemd-veritysetup-generator", "etc/veritytab"},
	{"systemd-integritysetup-generator", "etc/integritytab"},
	{"systemd-rc-local-generator", "etc/rc.local"},
	{"systemd-system-update-generator", "system-update"},
	{"systemd-hibernate-resume-generator", ""},
	{"systemd-gpt-auto-generator", ""},
}

// GeneratorMaskDir is where the image masks generators.
const GeneratorMaskDir = "etc/systemd/system-generators"

// MaskedGenerators are the generators of idleGenerators the tree lets the image mask,
// plus systemd-sysv-generator when every SysV script in /etc/init.d has a native unit (or
// a mask) of the same name, which the generator then skips.
func MaskedGenerators(t *fstree.Tree) []string {
	var names []string
	for _, g := range idleGenerators {
		if _, ok := t.Follow("lib/systemd/system-generators/" + g.name); !ok {
			continue // not in this base
		}
		if _, ok := t.Get(g.needs); g.needs != "" && ok {
			continue
		}
		names = append(names, g.name)
	}
	if _, ok := t.Follow("lib/systemd/system-generators/systemd-sysv-generator"); ok && sysvAllNative(t) {
		names = append(names, "systemd-sysv-generator")
	}
	sort.Strings(names)
	return names
}

// sysvAllNative says whether every script in /etc/init.d has a unit of its name.
func sysvAllNative(t *fstree.Tree) bool {
	for _, p := range t.Paths() {
		dir, name := path.Split(p)
		if dir != "etc/init.d/" || name == "README" || strings.HasPrefix(name, ".") {
			continue
		}
		unit := strings.TrimSuffix(name, ".sh") + ".service"
		found := false
		for _, d := range []string{"etc/systemd/system/", "lib/systemd/system/", "usr/lib/systemd/system/"} {
			if _, ok := t.Lookup(d + unit); ok {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// factoryVar keeps the base's /var content in the read-only root; systemd-tmpfiles copies
// what is missing onto the data partition mounted at /var.
const factoryVar = "usr/share/factory/var"

// ReadOnlyRoot adapts a node's tree (base with its Ignition config applied) to boot with
// a read-only root, a per-node partition at /node, a data partition at /var and the ESP
// at /efi. The
// changes are the same on every node except resolv.conf, so they end up in the shared
// root, and resolv.conf in the node's partition.
func ReadOnlyRoot(t *fstree.Tree, dns []string) error {
	if err := varToFactory(t); err != nil {
		return err
	}
	put := func(p string, mode fs.FileMode, data string) error {
		return t.Put(&fstree.Entry{Path: p, Mode: mode, Data: []byte(data)})
	}
	for _, d := range []string{"var", NodeMount, "tmp"} {
		if err := t.Put(&fstree.Entry{Path: d, Mode: fs.ModeDir | dirMode(d)}); err != nil {
			return err
		}
	}
	// /node is the booted slot's node partition, mounted by NodeGenerator's unit (the
	// root is shared by both slots). The ESP is mounted on demand (an automount that lets
	// go after a minute) for systemd-bless-boot and the slots' updates; passno 0: the base
	// has no fsck.vfat.
	fstab := "# etcdbake: read-only root, data partition, ESP; /node comes from " + path.Base(NodeGenerator) + "\n" +
		"PARTLABEL=" + LabelData + " /var ext4 defaults,x-systemd.makefs 0 2\n" +
		"PARTLABEL=" + LabelESP + " /" + ESPMount + " vfat noauto,x-systemd.automount,x-systemd.idle-timeout=60,umask=0077,nosuid,nodev,noexec 0 0\n" +
		"tmpfs /tmp tmpfs mode=1777,nosuid,nodev 0 0\n"
	if err := put("etc/fstab", 0o644, fstab); err != nil {
		return err
	}
	if err := put("etc/systemd/journald.conf.d/etcdbake.conf", 0o644, "[Journal]\nStorage=persistent\n"); err != nil {
		return err
	}
	// systemd-networkd brings up the static address; it starts before local file systems,
	// so it must wait for /node, where the node's .network file lives.
	if err := put("etc/systemd/system/systemd-networkd.service.d/10-etcdbake-node.conf", 0o644, "[Unit]\nRequiresMountsFor=/"+NodeMount+"\n"); err != nil {
		return err
	}
	for link, target := range map[string]string{
		"etc/systemd/system/multi-user.target.wants/systemd-networkd.service":                 "/lib/systemd/system/systemd-networkd.service",
		"etc/systemd/system/sockets.target.wants/systemd-networkd.socket":                     "/lib/systemd/system/systemd-networkd.socket",
		"etc/systemd/system/network-online.target.wants/systemd-networkd-wait-online.service": "/lib/systemd/system/systemd-networkd-wait-online.service",
	} {
		if err := t.Put(&fstree.Entry{Path: link, Mode: fs.ModeSymlink | 0o777, Target: target}); err != nil {
			return err
		}
	}
	// Units of the Debian base that an appliance with a read-only root never needs and
	// that cost a TCG boot CPU time while etcd's chain waits: masked (a link to
	// /dev/null), so neither their wants links nor another unit's Wants= start them.
	for _, u := range MaskedUnits {
		if err := t.Put(&fstree.Entry{Path: "etc/systemd/system/" + u, Mode: fs.ModeSymlink | 0o777, Target: "/dev/null"}); err != nil {
			return err
		}
	}
	for _, g := range MaskedGenerators(t) {
		if err := t.Put(&fstree.Entry{Path: GeneratorMaskDir + "/" + g, Mode: fs.ModeSymlink | 0o777, Target: "/dev/null"}); err != nil {
			return err
		}
	}
	var resolv strings.Builder
	resolv.WriteString("# etcdbake: resolvers from the spec (nodes[].dns)\n")
	for _, d := range dns {
		fmt.Fprintf(&resolv, "nameserver %s\n", d)
	}
	if err := put("etc/resolv.conf", 0o644, resolv.String()); err != nil {
		return err
	}
	// The machine ID comes from the kernel command line (systemd.machine_id=).
	return put("etc/machine-id", 0o444, "")
}

// varToFactory moves the tree's /var to the factory copy and writes the tmpfiles.d lines
// that restore it onto the blank data partition at boot.
func varToFactory(t *fstree.Tree) error {
	// /var: saved to the factory dir, restored by tmpfiles on first boot: a line for
	// every entry directly under /var (what has none is not on the node): `C` for
	// directories and files, `L` for symlinks (`C` would stat the source through the
	// link and fail the boot's tmpfiles run when the target does not exist yet), except
	// symlinks the image's tmpfiles.d already makes (systemd's /var/run, /var/lock).
	// What the node config created under /var (etcd's data dir, etcd-firstboot's state)
	// is recreated with the same mode and owner on every boot.
	made := tmpfilesSymlinks(t)
	var lines []string
	lines = append(lines, "# etcdbake: /var is the data partition; restore the image's /var content on first boot")
	for _, p := range t.Paths() {
		e, _ := t.Get(p)
		rel, ok := strings.CutPrefix(p, "var/")
		if !ok || strings.Contains(rel, "/") {
			continue
		}
		switch target, ok := made["/"+p]; {
		case !e.IsSymlink():
			lines = append(lines, fmt.Sprintf("C /var/%s - - - - /%s/%s", rel, factoryVar, rel))
		case !ok || absTarget("/"+p, e.Target) != target:
			lines = append(lines, fmt.Sprintf("L /var/%s - %s %s - %s", rel, ownerName(t, e.UID, "etc/passwd"), ownerName(t, e.GID, "etc/group"), e.Target))
		}
	}
	for _, p := range []string{"var/lib/etcd", "var/lib/etcdbake"} {
		if e, ok := t.Get(p); ok && e.IsDir() {
			lines = append(lines, fmt.Sprintf("d /%s %04o %s %s -", p, e.Mode.Perm(), ownerName(t, e.UID, "etc/passwd"), ownerName(t, e.GID, "etc/group")))
		}
	}
	for _, p := range t.Paths() {
		e, _ := t.Get(p)
		if rel, ok := strings.CutPrefix(p, "var/"); ok {
			c := *e
			c.Path = path.Join(factoryVar, rel)
			t.Set(&c)
			t.Delete(p)
			e = &c
		}
		// A hard link keeps pointing at the entry holding its contents.
		if rel, ok := strings.CutPrefix(e.Hardlink, "var/"); ok {
			e.Hardlink = path.Join(factoryVar, rel)
		}
	}
	if err := t.MkdirAll(factoryVar); err != nil {
		return err
	}
	if err := t.Put(&fstree.Entry{Path: varTmpfiles, Mode: 0o644, Data: []byte(strings.Join(lines, "\n") + "\n")}); err != nil {
		return err
	}
	// On a blank data partition the lines must run before anything makes a directory
	// in /var: etcd's chain starts before systemd-tmpfiles-setup, and a StateDirectory=
	// it makes (/var/lib/etcdbake) would make `C /var/lib` skip the whole factory copy.
	if err := t.Put(&fstree.Entry{Path: "usr/lib/systemd/system/" + VarFactoryUnit, Mode: 0o644, Data: []byte(varFactoryService)}); err != nil {
		return err
	}
	return t.Put(&fstree.Entry{Path: "etc/systemd/system/local-fs.target.wants/" + VarFactoryUnit, Mode: fs.ModeSymlink | 0o777, Target: "/usr/lib/systemd/system/" + VarFactoryUnit})
}

// varTmpfiles holds the tmpfiles.d lines that restore /var from the factory copy.
const varTmpfiles = "etc/tmpfiles.d/etcdbake-var.conf"

// VarFactoryUnit restores /var from the factory copy on a blank data partition (a
// replaced disk; an image's own partition has its /var already), right after /var is
// mounted and before local-fs.target, so before etcd's chain and everything else that
// makes directories in /var. systemd-tmpfiles-setup applies the same lines again later
// (nothing left to do).
const VarFactoryUnit = "etcdbake-var-factory.service"

const varFactoryService = `[Unit]
Description=etcdbake: restore /var from the image's factory copy on a blank data partition
Documentation=file:///` + varTmpfiles + `
DefaultDependencies=no
RequiresMountsFor=/var
ConditionPathExists=!/var/lib
Conflicts=shutdown.target
Before=local-fs.target systemd-tmpfiles-setup.service shutdown.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=systemd-tmpfiles --create /` + varTmpfiles + `
`

func dirMode(d string) fs.FileMode {
	if d == "tmp" {
		return 0o777 | fs.ModeSticky
	}
	return 0o755
}

// ownerName maps a numeric id back to its name in the tree's passwd or group file, so
// tmpfiles lines stay right if the IDs differ on another base.
func ownerName(t *fstree.Tree, id int, file string) string {
	e, ok := t.Get(file)
	if !ok {
		return fmt.Sprint(id)
	}
	data, err := t.Contents(e)
	if err != nil {
		return fmt.Sprint(id)
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Split(line, ":")
		if len(f) >= 3 && f[2] == fmt.Sprint(id) {
			return f[0]
		}
	}
	return fmt.Sprint(id)
}

// tmpfilesSymlinks returns the symlinks (path -> absolute target) that the image's own
// tmpfiles.d lines make directly under /var, such as systemd's "L /var/run - - - - ../run".
// Configuration files are read as systemd-tmpfiles does: by name, one in etc/tmpfiles.d
// overriding (or, as a link to /dev/null, masking) one of the same name in
// usr/local/lib/tmpfiles.d or usr/lib/tmpfiles.d; for a path, the first line in name
// order counts (later ones are ignored as duplicates).
func tmpfilesSymlinks(t *fstree.Tree) map[string]string {
	files := map[string]*fstree.Entry{}
	for _, dir := range []string{"usr/lib/tmpfiles.d", "usr/local/lib/tmpfiles.d", "etc/tmpfiles.d"} {
		rd, err := t.Resolve(dir, true)
		if err != nil {
			continue
		}
		for p, e := range t.All() {
			if path.Dir(p) == rd && strings.HasSuffix(p, ".conf") {
				files[path.Base(p)] = e
			}
		}
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	first := map[string]bool{}
	out := map[string]string{}
	for _, n := range names {
		e, ok := t.Follow(files[n].Path)
		if !ok || !e.IsRegular() {
			continue // masked
		}
		data, err := t.Contents(e)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			f := strings.Fields(line)
			if len(f) < 2 || strings.HasPrefix(f[0], "#") {
				continue
			}
			p := path.Clean(f[1])
			if path.Dir(p) != "/var" || first[p] {
				continue
			}
			first[p] = true
			if strings.HasPrefix(f[0], "L") && len(f) >= 7 && f[6] != "-" {
				out[p] = absTarget(p, f[6])
			}
		}
	}
	return out
}

// absTarget is a symlink's target as an absolute path (relative to the link's directory).
func absTarget(link, target string) string {
	if strings.HasPrefix(target, "/") {
		return path.Clean(target)
	}
	return path.Join(path.Dir(link), target)
}
