package imagebuild

// The base root filesystem: a Debian root file system tarball built once by mmdebstrap
// (cached under <cacheDir>/base/<recipe hash>.tar), read into a Tree and checked for what
// a node image needs.

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// baseRecipeFormat versions the canonical form hashed by BaseRecipe.Hash and the way
// BuildBase turns a recipe into an mmdebstrap call. Bump it whenever either changes so
// that cached bases built the old way are not reused.
const baseRecipeFormat = "etcdbake-base-recipe/1"

// DefaultSourceDateEpoch is the SOURCE_DATE_EPOCH of the default base recipe
// (2025-01-01T00:00:00Z): every file time in the tarball is clamped to it.
const DefaultSourceDateEpoch int64 = 1735689600

// BaseRecipe describes how the base root file system is built by mmdebstrap:
//
//	SOURCE_DATE_EPOCH=<SourceDateEpoch> mmdebstrap --variant=<Variant> \
//	    --include=<Include...> [--components=<Components...>] \
//	    --customize-hook=<CustomizeHooks[0]> ... --format=tar -- <Suite> OUT.tar [<Mirror>]
type BaseRecipe struct {
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
}

// DefaultBaseHooks are the customize hooks of DefaultBaseRecipe.
var DefaultBaseHooks = []string{
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

// DefaultBaseRecipe is a Debian bookworm minbase with systemd, the cloud kernel (and its
// stock initramfs-tools initrd), chrony, iptables, iproute2, e2fsprogs, udev, dbus, kmod,
// CA certificates and systemd-boot's EFI binary.
func DefaultBaseRecipe() BaseRecipe {
	return BaseRecipe{
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
			"systemd-boot-efi",
			// Started by udev only where a hypervisor offers its virtio port (etcdbake exec, tests).
			"qemu-guest-agent",
		},
		SourceDateEpoch: DefaultSourceDateEpoch,
		CustomizeHooks:  append([]string(nil), DefaultBaseHooks...),
	}
}

// canonical is the recipe in the form that is hashed.
func (r BaseRecipe) canonical() []byte {
	inc := normaliseList(r.Include)
	comps := normaliseList(r.Components)
	hooks := r.CustomizeHooks
	if hooks == nil {
		hooks = []string{}
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
	}{baseRecipeFormat, r.Suite, r.Variant, inc, comps, r.Mirror, r.SourceDateEpoch, hooks})
	if err != nil {
		panic(err) // strings and ints only
	}
	return b
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
func (r BaseRecipe) Hash() string {
	sum := sha256.Sum256(r.canonical())
	return hex.EncodeToString(sum[:])
}

// Validate reports recipes mmdebstrap cannot be given safely.
func (r BaseRecipe) Validate() error {
	var problems []string
	if r.Suite == "" || strings.HasPrefix(r.Suite, "-") || strings.ContainsAny(r.Suite, " \t\n/") {
		problems = append(problems, fmt.Sprintf("invalid suite %q", r.Suite))
	}
	if r.Variant == "" || strings.ContainsAny(r.Variant, " \t\n") {
		problems = append(problems, fmt.Sprintf("invalid variant %q", r.Variant))
	}
	for _, p := range append(append([]string(nil), r.Include...), r.Components...) {
		if strings.ContainsAny(strings.TrimSpace(p), " \t\n,") {
			problems = append(problems, fmt.Sprintf("invalid package or component %q (one name per item)", p))
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
func (r BaseRecipe) mmdebstrapArgs(out string) []string {
	args := []string{"--variant=" + r.Variant}
	if inc := normaliseList(r.Include); len(inc) > 0 {
		args = append(args, "--include="+strings.Join(inc, ","))
	}
	if comps := normaliseList(r.Components); len(comps) > 0 {
		args = append(args, "--components="+strings.Join(comps, ","))
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

// DefaultBaseCacheDir is where bases are cached unless told otherwise:
// $ETCDBAKE_BASE_CACHE if set, else ${XDG_CACHE_HOME:-~/.cache}/etcdbake. BuildBase
// puts the tarballs in its base/ subdirectory.
func DefaultBaseCacheDir() (string, error) {
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

// BasePath is where BuildBase keeps the base built from r.
func BasePath(cacheDir string, r BaseRecipe) string {
	return filepath.Join(cacheDir, "base", r.Hash()+".tar")
}

// BuildBase returns <cacheDir>/base/<hash>.tar, running mmdebstrap to build it if it is
// not there yet. The tarball is built under a temporary name in the same directory and
// renamed into place on success; a failed or cancelled build leaves nothing behind.
// Concurrent builders of the same recipe (other processes too) wait for each other
// instead of building twice. A <hash>.recipe.json next to the tarball records the recipe.
func BuildBase(ctx context.Context, r BaseRecipe, cacheDir string, progress func(string, ...any)) (string, error) {
	if progress == nil {
		progress = func(string, ...any) {}
	}
	if err := r.Validate(); err != nil {
		return "", err
	}
	if cacheDir == "" {
		return "", errors.New("BuildBase: empty cache directory")
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

	unlock, err := lockFile(ctx, filepath.Join(dir, hash+".lock"), progress)
	if err != nil {
		return "", err
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
	if err := syncFile(tmpPath); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, hash+".recipe.json"), append(r.canonical(), '\n'), 0o644); err != nil {
		return "", fmt.Errorf("base cache: %w", err)
	}
	if err := os.Rename(tmpPath, out); err != nil {
		return "", fmt.Errorf("base cache: %w", err)
	}
	keep = true
	syncDir(dir)
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

func syncFile(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

func syncDir(p string) {
	if d, err := os.Open(p); err == nil {
		d.Sync()
		d.Close()
	}
}

// lockFile takes an exclusive flock on p, polling so that ctx can interrupt the wait.
func lockFile(ctx context.Context, p string, progress func(string, ...any)) (func(), error) {
	f, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("base cache lock: %w", err)
	}
	told := false
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			f.Close()
			return nil, fmt.Errorf("base cache lock %s: %w", p, err)
		}
		if !told {
			progress("base: waiting for another build of the same base (%s)", p)
			told = true
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
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

// BaseStats counts what ReadBase found, including what the Tree cannot hold.
type BaseStats struct {
	Dirs, Files, Symlinks, Hardlinks int
	// Bytes is the total size of regular files (hard links counted once).
	Bytes int64
	// Devices (character and block), FIFOs and other unsupported entries are skipped;
	// Skipped names them ("dev/null (char device)").
	Devices, FIFOs, Other int
	Skipped               []string
	// XattrFiles counts entries whose extended attributes (file capabilities, ACLs)
	// were dropped, the Tree does not hold them; XattrPaths names them.
	XattrFiles int
	XattrPaths []string
}

// ReadBase reads a base root file system tarball (plain tar or gzip-compressed) into a
// Tree. Device nodes and FIFOs are skipped (see ReadBaseStats).
func ReadBase(tarPath string) (*Tree, error) {
	t, _, err := ReadBaseStats(tarPath)
	return t, err
}

// ReadBaseStats is ReadBase also returning what was read and skipped.
func ReadBaseStats(tarPath string) (*Tree, *BaseStats, error) {
	f, err := os.Open(tarPath)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 1<<20)
	magic, _ := br.Peek(4)
	var r io.Reader = br
	switch {
	case len(magic) >= 2 && magic[0] == 0x1f && magic[1] == 0x8b:
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", tarPath, err)
		}
		defer zr.Close()
		r = zr
	case bytes.Equal(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return nil, nil, fmt.Errorf("%s: zstd-compressed tarballs are not supported; decompress it (zstd -d) or use a plain or gzip tarball", tarPath)
	case bytes.HasPrefix(magic, []byte{0xfd, '7', 'z', 'X'}):
		return nil, nil, fmt.Errorf("%s: xz-compressed tarballs are not supported; decompress it (xz -d) or use a plain or gzip tarball", tarPath)
	}
	t, st, err := readBaseTar(r)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", tarPath, err)
	}
	return t, st, nil
}

// tarPath validates and cleans a member name: no absolute paths, no "..".
func cleanTarName(name string) (string, error) {
	if strings.HasPrefix(name, "/") {
		return "", fmt.Errorf("absolute path %q in tarball", name)
	}
	for _, c := range strings.Split(name, "/") {
		if c == ".." {
			return "", fmt.Errorf("path %q in tarball escapes the root", name)
		}
	}
	if strings.ContainsRune(name, 0) {
		return "", fmt.Errorf("path %q in tarball contains NUL", name)
	}
	return Clean(name), nil
}

func readBaseTar(r io.Reader) (*Tree, *BaseStats, error) {
	t := NewTree()
	st := &BaseStats{}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, nil, err
		}
		if hdr.Typeflag == tar.TypeXGlobalHeader {
			continue
		}
		name, err := cleanTarName(hdr.Name)
		if err != nil {
			return nil, nil, err
		}
		perm := fs.FileMode(hdr.Mode) & fs.ModePerm
		if hdr.Mode&0o4000 != 0 {
			perm |= fs.ModeSetuid
		}
		if hdr.Mode&0o2000 != 0 {
			perm |= fs.ModeSetgid
		}
		if hdr.Mode&0o1000 != 0 {
			perm |= fs.ModeSticky
		}
		e := &Entry{Path: name, Mode: perm, UID: hdr.Uid, GID: hdr.Gid}
		skip := func(kind string, n *int) {
			*n++
			st.Skipped = append(st.Skipped, fmt.Sprintf("%s (%s)", displayPath(name), kind))
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			e.Mode |= fs.ModeDir
			st.Dirs++
		case tar.TypeReg, tar.TypeRegA, tar.TypeCont, tar.TypeGNUSparse:
			if name == "" {
				return nil, nil, fmt.Errorf("regular file %q at the root", hdr.Name)
			}
			data, err := readData(tr, hdr.Size)
			if err != nil {
				return nil, nil, fmt.Errorf("reading %s: %w", hdr.Name, err)
			}
			e.Data = data
			st.Files++
			st.Bytes += int64(len(data))
		case tar.TypeSymlink:
			if hdr.Linkname == "" {
				return nil, nil, fmt.Errorf("symlink %q has an empty target", hdr.Name)
			}
			e.Mode = fs.ModeSymlink | 0o777
			e.Target = hdr.Linkname
			st.Symlinks++
		case tar.TypeLink:
			target, err := cleanTarName(hdr.Linkname)
			if err != nil {
				return nil, nil, fmt.Errorf("hard link %q: %w", hdr.Name, err)
			}
			te, ok := t.Get(target)
			if !ok || target == name || target == "" {
				return nil, nil, fmt.Errorf("hard link %q to %q: target not found earlier in the tarball", hdr.Name, hdr.Linkname)
			}
			if !te.IsRegular() {
				return nil, nil, fmt.Errorf("hard link %q to %q, which is not a regular file", hdr.Name, hdr.Linkname)
			}
			// The link shares its target's inode: same metadata and content. Data is
			// shared too, so writers that cannot make hard links write a copy.
			e.Mode, e.UID, e.GID = te.Mode, te.UID, te.GID
			e.Data, e.Source = te.Data, te.Source
			if te.Hardlink != "" {
				target = te.Hardlink
			}
			e.Hardlink = target
			st.Hardlinks++
		case tar.TypeChar:
			skip("char device", &st.Devices)
			continue
		case tar.TypeBlock:
			skip("block device", &st.Devices)
			continue
		case tar.TypeFifo:
			skip("fifo", &st.FIFOs)
			continue
		default:
			skip(fmt.Sprintf("tar type %q", hdr.Typeflag), &st.Other)
			continue
		}
		for k := range hdr.PAXRecords {
			if strings.HasPrefix(k, "SCHILY.xattr.") || strings.HasPrefix(k, "LIBARCHIVE.xattr.") {
				st.XattrFiles++
				st.XattrPaths = append(st.XattrPaths, displayPath(name))
				break
			}
		}
		if err := t.Put(e); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", hdr.Name, err)
		}
	}
	return t, st, nil
}

func displayPath(p string) string {
	if p == "" {
		return "/"
	}
	return p
}

// readData reads a member's content without trusting its declared size for allocation.
func readData(r io.Reader, size int64) ([]byte, error) {
	if size <= 0 {
		// A sparse or zero-length member; read whatever there is.
		b, err := io.ReadAll(r)
		if len(b) == 0 {
			return nil, err
		}
		return b, err
	}
	if size <= 64<<20 {
		b := make([]byte, size)
		_, err := io.ReadFull(r, b)
		return b, err
	}
	var buf bytes.Buffer
	buf.Grow(64 << 20)
	_, err := io.Copy(&buf, r)
	return buf.Bytes(), err
}

// lookupFollow returns the entry at p, following symbolic links in every component
// including the last (at most 40 of them, like Linux). Absolute link targets are taken
// relative to the tree's root, and ".." never leaves it.
func lookupFollow(t *Tree, p string) (*Entry, bool) {
	e, _, ok := resolveIn(t, p, true)
	return e, ok
}

// resolveIn resolves p in t (the same resolution the Ignition applier uses); with
// followLast false a final symlink is returned itself. It returns the entry and its real
// path.
func resolveIn(t *Tree, p string, followLast bool) (*Entry, string, bool) {
	rp, err := ignResolve(t, p, followLast)
	if err != nil {
		return nil, "", false
	}
	e, ok := t.entries[rp]
	return e, rp, ok
}

// BaseProblem is one thing a base lacks.
type BaseProblem struct {
	What    string // e.g. "chronyd (usr/sbin/chronyd)"
	Purpose string // what the image needs it for
	Package string // the Debian package providing it
}

// BaseCheckError lists everything a base lacks.
type BaseCheckError struct {
	Problems []BaseProblem
}

func (e *BaseCheckError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "the base root filesystem lacks %d required item(s):", len(e.Problems))
	for _, p := range e.Problems {
		fmt.Fprintf(&b, "\n  - %s: %s (Debian package %s)", p.What, p.Purpose, p.Package)
	}
	return b.String()
}

// baseRequirement is a file the base must hold, at one of several paths.
type baseRequirement struct {
	name    string
	paths   []string
	purpose string
	pkg     string
}

var baseRequirements = []baseRequirement{
	{"systemd", []string{"usr/lib/systemd/systemd", "lib/systemd/systemd"}, "the service manager run as PID 1", "systemd"},
	{"init", []string{"sbin/init", "usr/sbin/init"}, "the program the kernel starts (a link to systemd)", "systemd-sysv"},
	{"chronyd", []string{"usr/sbin/chronyd"}, "keeps the node's clock in sync (etcd leases and TLS need sane time)", "chrony"},
	{"iptables", []string{"usr/sbin/iptables", "sbin/iptables"}, "packet filter rules (flannel's masquerading and forwarding)", "iptables"},
	{"mkfs.ext4", []string{"sbin/mkfs.ext4", "usr/sbin/mkfs.ext4"}, "formats the writable /var partition on first boot (x-systemd.makefs)", "e2fsprogs"},
	{"systemd-boot EFI binary", []string{"usr/lib/systemd/boot/efi/systemd-bootx64.efi"}, "the UEFI boot loader copied to the ESP as EFI/BOOT/BOOTX64.EFI", "systemd-boot-efi"},
	{"passwd database", []string{"etc/passwd"}, "user accounts", "base-passwd"},
	{"group database", []string{"etc/group"}, "groups", "base-passwd"},
}

// runtimeRequirements are what CheckBaseFull adds: what a booted node needs to bring up
// its network (the cloud kernel has virtio_net, vxlan, overlay and netfilter as modules).
var runtimeRequirements = []baseRequirement{
	{"ip", []string{"usr/bin/ip", "bin/ip", "usr/sbin/ip", "sbin/ip"}, "network configuration", "iproute2"},
	{"udevadm", []string{"usr/bin/udevadm", "bin/udevadm"}, "device manager that loads the virtio network driver and other modules", "udev"},
	{"modprobe", []string{"usr/sbin/modprobe", "sbin/modprobe", "usr/bin/kmod", "bin/kmod"}, "loads kernel modules (virtio_net, vxlan, overlay, netfilter are modules)", "kmod"},
}

// CheckBase checks that t is a usable base: a kernel with its matching initrd, systemd
// as init, chronyd, iptables, mkfs.ext4, systemd-boot's EFI binary and the user and group
// databases. Paths are looked up following symbolic links, so merged-/usr trees
// (sbin -> usr/sbin) pass. The one error returned (a *BaseCheckError) names everything
// missing, what it is for and the Debian package providing it.
func CheckBase(t *Tree) error {
	return checkBase(t, false)
}

// CheckBaseFull is CheckBase plus what a booted node needs at run time: the kernel's
// modules directory (usr/lib/modules/VERSION), ip, udevadm and modprobe.
func CheckBaseFull(t *Tree) error {
	return checkBase(t, true)
}

func checkBase(t *Tree, full bool) error {
	var problems []BaseProblem
	if kernel, _, err := KernelAndInitrd(t); err != nil {
		var ke *kernelError
		if !errors.As(err, &ke) {
			return err
		}
		problems = append(problems, ke.problems...)
	} else if full {
		ver := strings.TrimPrefix(kernel, "boot/vmlinuz-")
		if !hasDir(t, "usr/lib/modules/"+ver) && !hasDir(t, "lib/modules/"+ver) {
			problems = append(problems, BaseProblem{
				What:    fmt.Sprintf("kernel modules (usr/lib/modules/%s)", ver),
				Purpose: "drivers the kernel loads at boot (virtio_net, vxlan, overlay, netfilter)",
				Package: "linux-image-cloud-amd64",
			})
		}
	}
	reqs := baseRequirements
	if full {
		reqs = append(append([]baseRequirement(nil), baseRequirements...), runtimeRequirements...)
	}
	for _, req := range reqs {
		found := false
		for _, p := range req.paths {
			if e, ok := lookupFollow(t, p); ok && e.IsRegular() {
				found = true
				break
			}
		}
		if !found {
			problems = append(problems, BaseProblem{
				What:    fmt.Sprintf("%s (%s)", req.name, strings.Join(req.paths, " or ")),
				Purpose: req.purpose,
				Package: req.pkg,
			})
		}
	}
	if len(problems) > 0 {
		return &BaseCheckError{Problems: problems}
	}
	return nil
}

func hasDir(t *Tree, p string) bool {
	e, ok := lookupFollow(t, p)
	return ok && e.IsDir()
}

type kernelError struct{ problems []BaseProblem }

func (e *kernelError) Error() string { return (&BaseCheckError{e.problems}).Error() }

// KernelAndInitrd returns the tree paths of the newest kernel boot/vmlinuz-VERSION that
// has a matching boot/initrd.img-VERSION (both regular files, possibly reached through
// symbolic links).
func KernelAndInitrd(t *Tree) (kernel, initrd string, err error) {
	var versions []string
	boot, bootPath, ok := resolveIn(t, "boot", true)
	if ok && boot.IsDir() {
		prefix := "boot/vmlinuz-"
		if bootPath != "boot" {
			prefix = bootPath + "/vmlinuz-"
		}
		for p := range t.entries {
			v, ok := strings.CutPrefix(p, prefix)
			if !ok || v == "" || strings.Contains(v, "/") {
				continue
			}
			if e, ok := lookupFollow(t, "boot/vmlinuz-"+v); ok && e.IsRegular() {
				versions = append(versions, v)
			}
		}
	}
	sort.Slice(versions, func(i, j int) bool { return compareVersions(versions[i], versions[j]) > 0 })
	for _, v := range versions {
		if e, ok := lookupFollow(t, "boot/initrd.img-"+v); ok && e.IsRegular() {
			return "boot/vmlinuz-" + v, "boot/initrd.img-" + v, nil
		}
	}
	if len(versions) == 0 {
		return "", "", &kernelError{[]BaseProblem{
			{What: "Linux kernel (boot/vmlinuz-*)", Purpose: "the kernel systemd-boot starts", Package: "linux-image-cloud-amd64"},
			{What: "initrd (boot/initrd.img-* matching the kernel)", Purpose: "the initramfs that finds and mounts the root partition", Package: "initramfs-tools, a dependency of linux-image-cloud-amd64"},
		}}
	}
	var want []string
	for _, v := range versions {
		want = append(want, "boot/initrd.img-"+v)
	}
	return "", "", &kernelError{[]BaseProblem{{
		What:    fmt.Sprintf("initrd matching the kernel (%s)", strings.Join(want, " or ")),
		Purpose: "the initramfs that finds and mounts the root partition",
		Package: "initramfs-tools; run update-initramfs -c -k VERSION in the base",
	}}}
}

// compareVersions orders kernel version strings: runs of digits compare numerically,
// everything else bytewise ("6.1.0-28-cloud-amd64" > "6.1.0-9-cloud-amd64").
func compareVersions(a, b string) int {
	for a != "" && b != "" {
		da, db := isDigit(a[0]), isDigit(b[0])
		if da && db {
			na, ra := splitRun(a, true)
			nb, rb := splitRun(b, true)
			na2, nb2 := strings.TrimLeft(na, "0"), strings.TrimLeft(nb, "0")
			if len(na2) != len(nb2) {
				return cmpInt(len(na2), len(nb2))
			}
			if c := strings.Compare(na2, nb2); c != 0 {
				return c
			}
			a, b = ra, rb
			continue
		}
		if da != db {
			// digits sort after non-digits
			if da {
				return 1
			}
			return -1
		}
		sa, ra := splitRun(a, false)
		sb, rb := splitRun(b, false)
		if c := strings.Compare(sa, sb); c != 0 {
			return c
		}
		a, b = ra, rb
	}
	return cmpInt(len(a), len(b))
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func splitRun(s string, digits bool) (string, string) {
	i := 0
	for i < len(s) && isDigit(s[i]) == digits {
		i++
	}
	return s[:i], s[i:]
}

func cmpInt(a, b int) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
