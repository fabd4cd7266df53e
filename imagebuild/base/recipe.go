// Package base is the base root filesystem every node image starts from: a Debian root
// file system tarball built once by mmdebstrap from a Recipe (cached under
// <cacheDir>/base/<recipe hash>.tar, guarded by a lock), read into an fstree.Tree, checked
// for what a node image needs, and the kernel chosen from it.
//
// recipe.go has the recipe, the cache and Build; read.go reads the tarball; check.go
// checks a tree and picks the kernel.
package base

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/etcdbake/etcdbake/internal/fileutil"
)

// recipeFormat versions the canonical form hashed by Recipe.Hash and the way
// Build turns a recipe into an mmdebstrap call. Bump it whenever either changes so
// that cached bases built the old way are not reused.
const recipeFormat = "etcdbake-base-recipe/3"

// DefaultSourceDateEpoch is the SOURCE_DATE_EPOCH of the default base recipe
// (2025-01-01T00:00:00Z): every file time in the tarball is clamped to it.
const DefaultSourceDateEpoch int64 = 1735689600

// Recipe describes how the base root file system is built by mmdebstrap:
//
//	SOURCE_DATE_EPOCH=<SourceDateEpoch> mmdebstrap --variant=<Variant> \
//	    --include=<Include...> [--components=<Components...>] \
//	    --dpkgopt=<DpkgOpts[0]> ... --customize-hook='chroot "$1" dpkg --purge <Purge...>' \
//	    --customize-hook=<prune the kernel modules of PruneModules but KeepModules> \
//	    --customize-hook=<CustomizeHooks[0]> ... \
//	    --format=tar -- <Suite> OUT.tar [<Mirror>]
type Recipe struct {
	// Suite is the Debian release ("bookworm").
	Suite string
	// Variant is mmdebstrap's package set ("minbase").
	Variant string
	// Include lists the packages installed on top of the variant (apt syntax). Their
	// order does not matter.
	Include []string
	// Components are the archive areas ("main"); empty means mmdebstrap's default (main).
	Components []string
	// Mirror is the archive URI or a one-line sources.list entry. Empty means
	// mmdebstrap's default: deb.debian.org plus, for a stable release, its updates and
	// security archives. Point it at a snapshot.debian.org URL for bit-reproducible bases.
	Mirror string
	// SourceDateEpoch is exported as SOURCE_DATE_EPOCH to mmdebstrap (file times in the
	// tarball, initramfs, shadow's last-change dates).
	SourceDateEpoch int64
	// CustomizeHooks are shell snippets passed as --customize-hook, run on the build
	// host after all packages are installed, with the root directory as "$1".
	CustomizeHooks []string
	// Purge are packages removed (dpkg --purge) once everything is installed, before the
	// customize hooks, unless Include names them; one that an installed package still
	// needs is kept (dpkg refuses to remove it).
	Purge []string
	// DpkgOpts are passed as --dpkgopt, in order (path-exclude and path-include are
	// applied in order): files dpkg does not unpack. The packages stay installed in
	// dpkg's status, so scanners still see them.
	DpkgOpts []string
	// PruneModules are directories or files under the kernel's module tree
	// (usr/lib/modules/V/kernel/<item>, e.g. "fs/xfs") whose modules are deleted once
	// everything is installed (depmod then rebuilds the indexes). A module that a kept
	// module depends on stays. The initrd is not changed.
	PruneModules []string
	// KeepModules are module names ("xfs", "nfs") kept although PruneModules covers
	// them, with the modules they depend on; the build fails if the kernel has no such
	// module.
	KeepModules []string
}

// LeanDpkgOpts leave out of the default base what an immutable appliance never reads:
// manual and info pages, documentation (but each package's copyright file), translations,
// lintian overrides. Nothing runs from them.
var LeanDpkgOpts = []string{
	"path-exclude=/usr/share/man/*",
	"path-exclude=/usr/share/info/*",
	"path-exclude=/usr/share/doc/*",
	"path-include=/usr/share/doc/*/copyright",
	"path-exclude=/usr/share/locale/*",
	"path-include=/usr/share/locale/locale.alias",
	"path-exclude=/usr/share/lintian/*",
}

// LeanPurge are packages the default base removes once it is built: the install needs
// them, the nodes never run them. usrmerge did its one conversion (and brings Perl: perl,
// libperl, perl-modules and three Perl libraries, about 48 MB); apt and what only apt
// uses: a node's root is replaced whole by an A/B update, never changed by a package
// manager. perl-base (essential, dpkg's own) stays.
var LeanPurge = []string{
	"usrmerge", "libfile-find-rule-perl", "libnumber-compare-perl", "libtext-glob-perl",
	"perl", "libperl5.36", "perl-modules-5.36",
	"apt", "libapt-pkg6.0", "gpgv", "debian-archive-keyring",
}

// LeanModules are the kernel module directories (under usr/lib/modules/V/kernel/) the
// default base leaves out: what an etcd and flannel appliance never loads. Kept: storage
// and NIC drivers, netfilter, the flannel backends (vxlan, wireguard, ipip), ext4 and
// the other local file systems, device mapper, bonding, bridges, crypto, hypervisor
// drivers. The spec's image.kernelModules keeps any of these by name.
var LeanModules = []string{
	"arch/x86/kvm",                                 // running VMs on a node
	"fs/xfs", "fs/btrfs", "fs/ceph", "fs/orangefs", // other file systems for the data partition (ext4)
	"fs/nfs", "fs/nfsd", "fs/nfs_common", "fs/lockd", "fs/smb", "net/sunrpc", "net/ceph", // network file systems, client and server
	"net/sctp", "net/tipc", "net/rds", "net/smc", "net/dccp", "net/l2tp", // other transports
	"drivers/infiniband", "drivers/nvme/host/nvme-rdma.ko", "drivers/target", "drivers/nvme/target", // RDMA, storage targets
	"drivers/block/drbd", "drivers/block/rbd.ko", "drivers/md/bcache", // replicated and cached block devices
	"drivers/comedi", "drivers/net/wwan", "drivers/net/mhi_net.ko", "drivers/bus/mhi", // lab cards, modems
	"drivers/platform/surface", "drivers/hid/surface-hid", "drivers/power/supply/surface_battery.ko", "drivers/power/supply/surface_charger.ko", // Surface laptops
	"drivers/vhost", "drivers/vfio", "drivers/xen/xen-pciback", "drivers/xen/xen-scsiback.ko", "drivers/block/xen-blkback", "drivers/net/xen-netback", // hypervisor host sides
}

// DefaultHooks are the customize hooks of DefaultRecipe.
var DefaultHooks = []string{
	// Machine- and build-specific state out; the image is shared by every node and its
	// root is read-only (machine id and hostname come from the kernel command line,
	// resolv.conf from the node's own files).
	`set -e
root="$1"
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id" "$root/etc/resolv.conf" "$root/etc/hostname"
rm -f "$root"/etc/ssh/ssh_host_*
rm -f "$root"/var/cache/apt/*.bin "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old
rm -f "$root/var/lib/systemd/random-seed" "$root/var/cache/ldconfig/aux-cache"
if [ -d "$root/var/lib/apt/lists" ]; then find "$root/var/lib/apt/lists" -type f -delete; fi
if [ -d "$root/var/log" ]; then find "$root/var/log" -type f -exec truncate -s 0 {} +; fi`,
	// DNS comes from a static resolv.conf: systemd-resolved must not sneak in.
	`if [ -e "$1/var/lib/dpkg/info/systemd-resolved.list" ]; then
  echo "etcdbake: systemd-resolved is installed in the base; it must not be" >&2
  exit 1
fi`,
}

// DefaultRecipe is a Debian bookworm minbase with systemd, the cloud kernel (and its
// stock initramfs-tools initrd), chrony, iptables, nftables, openssh-server, sudo,
// iproute2, e2fsprogs, udev, dbus, kmod,
// CA certificates, systemd-boot's EFI binary and systemd-boot (boot counting).
func DefaultRecipe() Recipe {
	return Recipe{
		Suite:   "bookworm",
		Variant: "minbase",
		Include: []string{
			"systemd-sysv",
			"linux-image-cloud-amd64",
			"chrony",
			"iptables",
			"iproute2",
			"e2fsprogs",
			"udev",
			"dbus",
			"kmod",
			"ca-certificates",
			"iputils-ping",
			// The host firewall (etcdbake-firewall.service) and key-only SSH.
			"nftables",
			"openssh-server",
			"sudo",
			"systemd-boot-efi",
			// systemd-bless-boot and its generator: boot counting for the A/B slots.
			"systemd-boot",
			// Started by udev only where a hypervisor offers its virtio port (etcdbake exec, tests).
			"qemu-guest-agent",
			// Marks the root as merged-/usr, so that usrmerge (and the Perl it brings) can
			// be purged (LeanPurge).
			"usr-is-merged",
		},
		SourceDateEpoch: DefaultSourceDateEpoch,
		CustomizeHooks:  append([]string(nil), DefaultHooks...),
		DpkgOpts:        append([]string(nil), LeanDpkgOpts...),
		Purge:           append([]string(nil), LeanPurge...),
		PruneModules:    append([]string(nil), LeanModules...),
	}
}

// canonical is the recipe in the form that is hashed.
func (r Recipe) canonical() []byte {
	inc := normaliseList(r.Include)
	comps := normaliseList(r.Components)
	hooks := r.CustomizeHooks
	if hooks == nil {
		hooks = []string{}
	}
	dpkg := r.DpkgOpts
	if dpkg == nil {
		dpkg = []string{}
	}
	b, err := json.Marshal(struct {
		Format          string   `json:"format"`
		Suite           string   `json:"suite"`
		Variant         string   `json:"variant"`
		Include         []string `json:"include"`
		Components      []string `json:"components"`
		Mirror          string   `json:"mirror"`
		SourceDateEpoch int64    `json:"source_date_epoch"`
		CustomizeHooks  []string `json:"customize_hooks"`
		DpkgOpts        []string `json:"dpkg_opts"`
		Purge           []string `json:"purge"`
		PruneModules    []string `json:"prune_modules"`
		KeepModules     []string `json:"keep_modules"`
	}{recipeFormat, r.Suite, r.Variant, inc, comps, r.Mirror, r.SourceDateEpoch, hooks, dpkg, r.purged(), normaliseList(r.PruneModules), normaliseList(r.KeepModules)})
	if err != nil {
		panic(err) // strings and ints only
	}
	return b
}

// purged is Purge without what Include asks for, normalised.
func (r Recipe) purged() []string {
	inc := normaliseList(r.Include)
	var out []string
	for _, p := range normaliseList(r.Purge) {
		if !slices.Contains(inc, p) {
			out = append(out, p)
		}
	}
	if out == nil {
		out = []string{}
	}
	return out
}

// normaliseList trims, drops empty items, sorts and de-duplicates.
func normaliseList(in []string) []string {
	out := []string{}
	seen := map[string]bool{}
	for _, s := range in {
		s = strings.TrimSpace(s)
		if s == "" || seen[s] {
			continue
		}
		seen[s] = true
		out = append(out, s)
	}
	sort.Strings(out)
	return out
}

// Hash is the hex sha256 of the canonical recipe (including the recipe format version).
// The order of Include and Components does not matter; everything else does.
func (r Recipe) Hash() string {
	sum := sha256.Sum256(r.canonical())
	return hex.EncodeToString(sum[:])
}

// Validate reports recipes mmdebstrap cannot be given safely.
func (r Recipe) Validate() error {
	var problems []string
	if r.Suite == "" || strings.HasPrefix(r.Suite, "-") || strings.ContainsAny(r.Suite, " \t\n/") {
		problems = append(problems, fmt.Sprintf("invalid suite %q", r.Suite))
	}
	if r.Variant == "" || strings.ContainsAny(r.Variant, " \t\n") {
		problems = append(problems, fmt.Sprintf("invalid variant %q", r.Variant))
	}
	for _, p := range append(append(append([]string(nil), r.Include...), r.Components...), r.Purge...) {
		if strings.ContainsAny(strings.TrimSpace(p), " \t\n,") {
			problems = append(problems, fmt.Sprintf("invalid package or component %q (one name per item)", p))
		}
	}
	for _, m := range r.PruneModules {
		if m = strings.TrimSpace(m); m == "" || !fs.ValidPath(m) || strings.ContainsAny(m, " \t\n'\"$`\\*?[") {
			problems = append(problems, fmt.Sprintf("invalid module directory %q (a path under the kernel's module tree, e.g. fs/xfs)", m))
		}
	}
	for _, m := range r.KeepModules {
		if !moduleName.MatchString(strings.TrimSpace(m)) {
			problems = append(problems, fmt.Sprintf("invalid kernel module name %q (e.g. xfs, nfsv4)", m))
		}
	}
	for _, o := range r.DpkgOpts {
		if strings.ContainsAny(o, "\n") || strings.HasPrefix(o, "-") {
			problems = append(problems, fmt.Sprintf("invalid dpkg option %q (one option per item, without --)", o))
		}
	}
	if strings.HasPrefix(r.Mirror, "-") {
		problems = append(problems, fmt.Sprintf("invalid mirror %q", r.Mirror))
	}
	if r.SourceDateEpoch < 0 {
		problems = append(problems, "negative SourceDateEpoch")
	}
	if len(problems) > 0 {
		return fmt.Errorf("base recipe: %s", strings.Join(problems, "; "))
	}
	return nil
}

// mmdebstrapArgs is the command line (without the program) building r into out.
func (r Recipe) mmdebstrapArgs(out string) []string {
	args := []string{"--variant=" + r.Variant}
	if inc := normaliseList(r.Include); len(inc) > 0 {
		args = append(args, "--include="+strings.Join(inc, ","))
	}
	if comps := normaliseList(r.Components); len(comps) > 0 {
		args = append(args, "--components="+strings.Join(comps, ","))
	}
	for _, o := range r.DpkgOpts {
		args = append(args, "--dpkgopt="+o)
	}
	if p := r.purged(); len(p) > 0 {
		args = append(args, `--customize-hook=chroot "$1" dpkg --purge `+strings.Join(p, " ")+
			` || echo "etcdbake: dpkg kept some of: `+strings.Join(p, " ")+` (still needed by an installed package)" >&2`)
	}
	if h := r.pruneHook(); h != "" {
		args = append(args, "--customize-hook="+h)
	}
	for _, h := range r.CustomizeHooks {
		args = append(args, "--customize-hook="+h)
	}
	args = append(args, "--format=tar", "--", r.Suite, out)
	if r.Mirror != "" {
		args = append(args, r.Mirror)
	}
	return args
}

// DefaultCacheDir is where bases are cached unless told otherwise:
// $ETCDBAKE_BASE_CACHE if set, else ${XDG_CACHE_HOME:-~/.cache}/etcdbake. Build
// puts the tarballs in its base/ subdirectory.
func DefaultCacheDir() (string, error) {
	if d := os.Getenv("ETCDBAKE_BASE_CACHE"); d != "" {
		return d, nil
	}
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "etcdbake"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("no cache directory: %w", err)
	}
	return filepath.Join(home, ".cache", "etcdbake"), nil
}

// Path is where Build keeps the base built from r.
func Path(cacheDir string, r Recipe) string {
	return filepath.Join(cacheDir, "base", r.Hash()+".tar")
}

// Build returns <cacheDir>/base/<hash>.tar, running mmdebstrap to build it if it is
// not there yet. The tarball is built under a temporary name in the same directory and
// renamed into place on success; a failed or cancelled build leaves nothing behind.
// Concurrent builders of the same recipe (other processes too) wait for each other
// instead of building twice. A <hash>.recipe.json next to the tarball records the recipe.
//
// Build is long because it is one sequence (cache hit, lock, re-check, stale files,
// mmdebstrap, publish) whose steps share the temporary file and its cleanup.
func Build(ctx context.Context, r Recipe, cacheDir string, progress func(string, ...any)) (string, error) {
	if progress == nil {
		progress = func(string, ...any) {}
	}
	if err := r.Validate(); err != nil {
		return "", err
	}
	if cacheDir == "" {
		return "", errors.New("Build: empty cache directory")
	}
	hash := r.Hash()
	dir := filepath.Join(cacheDir, "base")
	out := filepath.Join(dir, hash+".tar")
	if ok, err := usableFile(out); err != nil {
		return "", err
	} else if ok {
		progress("base: using cached %s", out)
		return out, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("base cache: %w", err)
	}

	lock := filepath.Join(dir, hash+".lock")
	unlock, err := fileutil.Lock(ctx, lock, func() { progress("base: waiting for another build of the same base (%s)", lock) })
	if err != nil {
		return "", fmt.Errorf("base cache: %w", err)
	}
	defer unlock()
	// Someone else may have built it while we waited for the lock.
	if ok, err := usableFile(out); err != nil {
		return "", err
	} else if ok {
		progress("base: using cached %s", out)
		return out, nil
	}
	// Temporary files of this recipe left by a builder that died (we hold the lock).
	if stale, _ := filepath.Glob(filepath.Join(dir, hash+".*.tmp.tar")); len(stale) > 0 {
		for _, f := range stale {
			os.Remove(f)
		}
		progress("base: removed %d stale temporary file(s) of an interrupted build", len(stale))
	}

	prog, err := exec.LookPath("mmdebstrap")
	if err != nil {
		return "", fmt.Errorf("building the base root filesystem needs mmdebstrap, which is not installed: run `apt-get install mmdebstrap` (as root): %w", err)
	}

	tmp, err := os.CreateTemp(dir, hash+".*.tmp.tar")
	if err != nil {
		return "", fmt.Errorf("base cache: %w", err)
	}
	tmpPath := tmp.Name()
	tmp.Close()
	keep := false
	defer func() {
		if !keep {
			os.Remove(tmpPath)
		}
	}()

	args := r.mmdebstrapArgs(tmpPath)
	cmd := exec.CommandContext(ctx, prog, args...)
	cmd.Env = append(filterEnv(os.Environ(), "SOURCE_DATE_EPOCH", "LC_ALL", "LANGUAGE"),
		"SOURCE_DATE_EPOCH="+strconv.FormatInt(r.SourceDateEpoch, 10), "LC_ALL=C.UTF-8")
	// On cancellation let mmdebstrap unmount and remove its temporary chroot (it does so
	// on SIGTERM); kill it only if it does not finish in time.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 60 * time.Second
	tail := &tailLines{max: 40, progress: progress}
	cmd.Stdout = tail
	cmd.Stderr = tail

	progress("base: building %s %s (%d extra packages) with mmdebstrap into %s", r.Suite, r.Variant, len(normaliseList(r.Include)), out)
	start := time.Now()
	runErr := cmd.Run()
	tail.flush()
	if runErr != nil {
		if ctx.Err() != nil {
			return "", fmt.Errorf("building the base: %w", ctx.Err())
		}
		return "", fmt.Errorf("mmdebstrap failed after %s: %w\nlast output:\n%s", time.Since(start).Round(time.Second), runErr, tail.String())
	}
	if ok, err := usableFile(tmpPath); err != nil || !ok {
		return "", fmt.Errorf("mmdebstrap succeeded but wrote no tarball to %s (%v)", tmpPath, err)
	}
	// CreateTemp made it 0600; the cache is shared with non-root users and tools.
	if err := os.Chmod(tmpPath, 0o644); err != nil {
		return "", err
	}
	if err := fileutil.SyncFile(tmpPath); err != nil {
		return "", err
	}
	if err := fileutil.WriteAtomic(filepath.Join(dir, hash+".recipe.json"), append(r.canonical(), '\n'), 0o644); err != nil {
		return "", fmt.Errorf("base cache: %w", err)
	}
	if err := os.Rename(tmpPath, out); err != nil {
		return "", fmt.Errorf("base cache: %w", err)
	}
	keep = true
	fileutil.SyncDir(dir)
	fi, _ := os.Stat(out)
	progress("base: built %s (%d MB) in %s", out, fi.Size()>>20, time.Since(start).Round(100*time.Millisecond))
	return out, nil
}

// usableFile reports whether p is a non-empty regular file.
func usableFile(p string) (bool, error) {
	fi, err := os.Stat(p)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	case err != nil:
		return false, err
	case !fi.Mode().IsRegular():
		return false, fmt.Errorf("%s is not a regular file", p)
	default:
		return fi.Size() > 0, nil
	}
}

// filterEnv drops the named variables from env.
func filterEnv(env []string, names ...string) []string {
	out := env[:0:0]
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		drop := false
		for _, n := range names {
			if name == n {
				drop = true
			}
		}
		if !drop {
			out = append(out, kv)
		}
	}
	return out
}

// tailLines forwards mmdebstrap's status lines to progress and keeps the last lines of
// all output for error messages.
type tailLines struct {
	max      int
	progress func(string, ...any)
	partial  []byte
	lines    []string
}

func (w *tailLines) Write(b []byte) (int, error) {
	w.partial = append(w.partial, b...)
	for {
		i := bytes.IndexAny(w.partial, "\r\n")
		if i < 0 {
			break
		}
		w.line(string(w.partial[:i]))
		w.partial = w.partial[i+1:]
	}
	return len(b), nil
}

func (w *tailLines) flush() {
	if len(w.partial) > 0 {
		w.line(string(w.partial))
		w.partial = nil
	}
}

func (w *tailLines) line(s string) {
	s = strings.TrimRight(s, " \t")
	if s == "" {
		return
	}
	if len(s) > 400 {
		s = s[:400] + "..."
	}
	w.lines = append(w.lines, s)
	if len(w.lines) > w.max {
		w.lines = w.lines[len(w.lines)-w.max:]
	}
	// mmdebstrap's own messages: "I: ...", "W: ...", "E: ...".
	if len(s) > 2 && s[1] == ':' && strings.ContainsRune("IWE", rune(s[0])) {
		w.progress("mmdebstrap: %s", firstLine(s))
	}
}

func (w *tailLines) String() string { return strings.Join(w.lines, "\n") }

func firstLine(s string) string {
	if len(s) > 160 {
		return s[:160] + "..."
	}
	return s
}

// moduleName is what KeepModules accepts: a kernel module's name as modprobe takes it.
var moduleName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`)

// pruneHook is the customize hook that deletes PruneModules' modules, except KeepModules
// and every module a kept one depends on (modules.dep lists each module's dependencies
// in full), then rebuilds the module indexes with the base's own depmod. Empty when
// nothing is pruned. Validate has made the items safe to quote.
func (r Recipe) pruneHook() string {
	prune := normaliseList(r.PruneModules)
	if len(prune) == 0 {
		return ""
	}
	keep := normaliseList(r.KeepModules)
	return `set -e
root="$1"
for mdir in "$root"/usr/lib/modules/*; do
  [ -f "$mdir/modules.dep" ] || continue
  v="${mdir##*/}"
  list="$root/tmp/etcdbake-prune-$v"
  ( cd "$mdir"; for d in '` + strings.Join(prune, "' '") + `'; do
      if [ -e "kernel/$d" ]; then find "kernel/$d" -name '*.ko*' -type f; fi
    done ) > "$list"
  ( cd "$mdir"; awk -v keep='` + strings.Join(keep, " ") + `' -v ver="$v" '
    function name(p) { sub(/.*\//, "", p); sub(/\.ko.*$/, "", p); gsub(/-/, "_", p); return p }
    BEGIN { n = split(keep, k, " "); for (i = 1; i <= n; i++) { w = k[i]; gsub(/-/, "_", w); want[w] = 1 } }
    FILENAME == ARGV[1] { pruned[$0] = 1; next }
    {
      m = $1; sub(/:$/, "", m); found[name(m)] = 1
      if (!(m in pruned) || (name(m) in want)) { need[m] = 1; for (i = 2; i <= NF; i++) need[$i] = 1 }
    }
    END {
      for (w in want) if (!(w in found)) { print "etcdbake: image.kernelModules: kernel " ver " has no module " w > "/dev/stderr"; bad = 1 }
      if (bad) exit 1
      for (p in pruned) if (!(p in need)) print p
    }' "$list" modules.dep > "$list.rm" )
  n=$(wc -l < "$list.rm")
  ( cd "$mdir"; xargs -r rm -f < "$list.rm"; find kernel -depth -type d -empty -delete )
  rm -f "$list" "$list.rm"
  chroot "$root" depmod "$v"
  echo "etcdbake: pruned $n kernel modules of $v" >&2
done`
}
