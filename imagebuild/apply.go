package imagebuild

// The offline Ignition applier: what Ignition's files stage (v2.25.0) does to the real
// root on first boot, done to an image Tree at build time, plus what a read-only root
// needs on top (enablement symlinks instead of presets applied at boot).
//
// The rules follow Ignition's internal/exec/stages/files and internal/exec/util, the
// shadow-utils programs Ignition runs for the passwd section (useradd, groupadd,
// userdel, groupdel of Debian 12, shadow 4.13) and systemctl of Debian 12 (systemd 252)
// for enablement. Deliberate differences are listed on ApplyIgnition. The process
// umask Ignition runs with is taken to be 022.

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	v34 "github.com/coreos/ignition/v2/config/v3_4"
	"github.com/coreos/ignition/v2/config/v3_4/types"
	"github.com/vincent-petithory/dataurl"
)

// ApplyOptions: how remote sources are resolved offline.
type ApplyOptions struct {
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
}

// ApplyIgnition applies an Ignition 3.4.0 config (raw JSON) to the tree, as Ignition's
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
//     "last change" field is left empty (so the result does not depend on the build date;
//     useradd writes the day, or empty with SOURCE_DATE_EPOCH=0). Homes (unless
//     noCreateHome) are created as useradd --create-home does: mode HOME_MODE or 0777 &^
//     UMASK, owned by the user, etc/skel copied in with its modes (shadow 4.13 in a
//     chroot without /proc leaves skel directories 0700 and stops copying; we do not).
//     sshAuthorizedKeys go to <home>/.ssh/authorized_keys.d/ignition (see
//     ApplyOptions.LegacyAuthorizedKeys), owned by the user, directories 0700, file 0600. shouldExist: false deletes the
//     account as userdel --remove / groupdel would.
//     Accounts that already exist are left as they are, except that passwordHash and
//     sshAuthorizedKeys are applied and listed groups gain the user as a member (Ignition
//     would run usermod); a request to change an existing account's uid, gid, primary
//     group, home, shell or gecos is an error rather than silently ignored.
//   - storage.directories, files and links, shallowest first, hard links last, with
//     Ignition's rules: paths are resolved through symlinks inside the tree; overwrite
//     removes what is there first; a new file is 0644 and a new directory (and every
//     missing parent) 0755, root-owned; an existing node keeps its mode and owner unless
//     the config sets them (setuid, setgid and sticky in a config mode are dropped, as
//     Ignition does for specs before 3.6.0); owners by id or by name (looked up in the
//     tree's etc/passwd and etc/group, after the passwd section); changing the owner of a regular file
//     clears setuid (and setgid with group execute) as chown(2) does; contents from data
//     URLs (gzip compression honoured) or, for other URLs, from ApplyOptions.Remote,
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
func ApplyIgnition(t *Tree, raw []byte, o ApplyOptions) error {
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

type ignApplier struct {
	t *Tree
	o ApplyOptions
}

// ---- paths -------------------------------------------------------------------------

// ignResolve resolves p in the tree as the kernel would with the tree as the root:
// symlinks in every component but the last are followed (the last too with followLast),
// absolute targets are taken relative to the tree's root and ".." never leaves it.
// Components that do not exist are kept as written. The result is a clean tree path.
func ignResolve(t *Tree, p string, followLast bool) (string, error) {
	rest := strings.Split(strings.TrimLeft(p, "/"), "/")
	cur := ""
	hops := 0
	for len(rest) > 0 {
		c := rest[0]
		rest = rest[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if d := path.Dir(cur); d != "." {
				cur = d
			} else {
				cur = ""
			}
			continue
		}
		next := c
		if cur != "" {
			next = cur + "/" + c
		}
		e, ok := t.entries[next]
		if !ok {
			cur = next
			continue
		}
		last := !hasComponent(rest)
		if e.IsSymlink() && (!last || followLast) {
			hops++
			if hops > 40 {
				return "", fmt.Errorf("/%s: too many levels of symbolic links", Clean(p))
			}
			if strings.HasPrefix(e.Target, "/") {
				cur = ""
			}
			rest = append(strings.Split(e.Target, "/"), rest...)
			continue
		}
		if !last && !e.IsDir() {
			return "", fmt.Errorf("/%s: /%s is not a directory", Clean(p), next)
		}
		cur = next
	}
	return cur, nil
}

// hasComponent reports whether rest names anything beyond "" and "." (a trailing slash
// or "/." does not make the previous component a non-final one for symlink purposes).
func hasComponent(rest []string) bool {
	for _, c := range rest {
		if c != "" && c != "." {
			return true
		}
	}
	return false
}

// follow returns the entry p finally names (symlinks followed), like stat(2).
func (a *ignApplier) follow(p string) (*Entry, bool) {
	rp, err := ignResolve(a.t, p, true)
	if err != nil {
		return nil, false
	}
	e, ok := a.t.entries[rp]
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
func (a *ignApplier) canonical(e *Entry) *Entry {
	if e.Hardlink != "" {
		if c, ok := a.t.entries[e.Hardlink]; ok {
			return c
		}
	}
	return e
}

func (a *ignApplier) content(e *Entry) ([]byte, error) {
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
func (a *ignApplier) inode(e *Entry) []*Entry {
	if !e.IsRegular() {
		return []*Entry{e}
	}
	c := a.canonical(e)
	out := []*Entry{c}
	for _, x := range a.t.entries {
		if x != c && x.Hardlink == c.Path {
			out = append(out, x)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out
}

// setContent replaces a regular file's contents in place (mode, owner and hard links
// kept).
func (a *ignApplier) setContent(e *Entry, data []byte) {
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
		x := a.t.entries[q]
		if x.Hardlink == "" || gone(q) || !gone(x.Hardlink) {
			continue
		}
		if heir, ok := heirs[x.Hardlink]; ok {
			x.Hardlink = heir
			continue
		}
		old := a.t.entries[x.Hardlink]
		heirs[x.Hardlink] = q
		x.Hardlink = ""
		if old != nil {
			x.Data, x.Source = old.Data, old.Source
		}
	}
}

func (a *ignApplier) remove(p string) {
	if _, ok := a.t.entries[p]; !ok {
		return
	}
	a.release(p)
	a.t.Remove(p)
}

// replace puts e where another entry may be (like rename(2) over it).
func (a *ignApplier) replace(e *Entry) error {
	if old, ok := a.t.entries[Clean(e.Path)]; ok {
		if old.IsDir() && !e.IsDir() {
			return fmt.Errorf("/%s is a directory", Clean(e.Path))
		}
		a.release(Clean(e.Path))
	}
	return a.t.Put(e)
}

// newFile writes a new root-owned 0644 file at the resolved path p, creating its parents
// (Ignition writes a temporary file, chmods it to 0644 and renames it into place).
func (a *ignApplier) newFile(p string, data []byte, source string) error {
	if err := a.mkdirAll(path.Dir(p)); err != nil {
		return err
	}
	return a.replace(&Entry{Path: p, Mode: 0o644, Data: data, Source: source})
}

// ---- fetching ------------------------------------------------------------------------

// fetch returns a resource's contents, decompressed and verified. With allowSource an
// uncompressed local file (from ApplyOptions.Remote) is returned by path instead.
func (a *ignApplier) fetch(file string, r types.Resource, allowSource bool) ([]byte, string, error) {
	src := ""
	if r.Source != nil {
		src = *r.Source
	}
	compression := ""
	if r.Compression != nil {
		compression = *r.Compression
	}
	if compression != "" && compression != "gzip" {
		return nil, "", fmt.Errorf("file %s: compression %q is not supported (only gzip)", file, compression)
	}
	var h hash.Hash
	var algo, want string
	if r.Verification.Hash != nil {
		var ok bool
		algo, want, ok = strings.Cut(*r.Verification.Hash, "-")
		switch {
		case !ok:
			return nil, "", fmt.Errorf("file %s: malformed verification hash %q", file, *r.Verification.Hash)
		case algo == "sha512":
			h = sha512.New()
		case algo == "sha256":
			h = sha256.New()
		default:
			return nil, "", fmt.Errorf("file %s: unsupported verification hash %q (sha512 or sha256)", file, algo)
		}
		want = strings.ToLower(want)
	}
	verify := func(what string) error {
		if h == nil {
			return nil
		}
		if got := hex.EncodeToString(h.Sum(nil)); got != want {
			return fmt.Errorf("file %s: the contents of %s do not match the config's verification hash: expected %s-%s, got %s-%s", file, what, algo, want, algo, got)
		}
		return nil
	}
	decode := func(rd io.Reader) ([]byte, error) {
		if compression == "gzip" {
			zr, err := gzip.NewReader(rd)
			if err != nil {
				return nil, err
			}
			defer zr.Close()
			rd = zr
		}
		var buf bytes.Buffer
		var w io.Writer = &buf
		if h != nil {
			w = io.MultiWriter(&buf, h)
		}
		if _, err := io.Copy(w, rd); err != nil {
			return nil, err
		}
		return buf.Bytes(), nil
	}

	u, err := url.Parse(src)
	if err != nil {
		return nil, "", fmt.Errorf("file %s: source %q: %w", file, src, err)
	}
	switch u.Scheme {
	case "":
		// Ignition writes nothing (an empty file).
		b, err := decode(bytes.NewReader(nil))
		if err != nil {
			return nil, "", fmt.Errorf("file %s: %w", file, err)
		}
		return b, "", verify("the empty source")
	case "data":
		d, err := dataurl.DecodeString(u.String())
		if err != nil {
			return nil, "", fmt.Errorf("file %s: bad data URL: %w", file, err)
		}
		b, err := decode(bytes.NewReader(d.Data))
		if err != nil {
			return nil, "", fmt.Errorf("file %s: decompressing its data URL: %w", file, err)
		}
		return b, "", verify("its data URL")
	case "http", "https", "tftp", "s3", "gs", "arn":
	default:
		return nil, "", fmt.Errorf("file %s: source %q: unsupported URL scheme %q", file, src, u.Scheme)
	}
	local, ok := a.o.Remote[src]
	if !ok {
		return nil, "", fmt.Errorf("file %s: source %s would be fetched from the network, which an offline build cannot do: provide it as a local file (ApplyOptions.Remote)", file, src)
	}
	f, err := os.Open(local)
	if err != nil {
		return nil, "", fmt.Errorf("file %s: local copy of %s: %w", file, src, err)
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		return nil, "", fmt.Errorf("file %s: local copy of %s (%s) is not a regular file", file, src, local)
	}
	what := fmt.Sprintf("%s (local copy %s)", src, local)
	if compression == "" && allowSource {
		if h != nil {
			if _, err := io.Copy(h, f); err != nil {
				return nil, "", fmt.Errorf("file %s: reading %s: %w", file, local, err)
			}
			if err := verify(what); err != nil {
				return nil, "", err
			}
		}
		abs, err := filepath.Abs(local)
		if err != nil {
			return nil, "", err
		}
		return nil, abs, nil
	}
	b, err := decode(f)
	if err != nil {
		return nil, "", fmt.Errorf("file %s: reading %s: %w", file, what, err)
	}
	return b, "", verify(what)
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
	e, ok := a.t.entries[p]
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

// ---- storage -------------------------------------------------------------------------

type ignNode struct {
	path string // resolved tree path
	node types.Node
	dir  *types.Directory
	file *types.File
	link *types.Link
}

func (a *ignApplier) storage(s types.Storage) error {
	var entries, hard []ignNode
	seen := map[string]string{}
	add := func(n types.Node, what string) (string, error) {
		p, err := ignResolve(a.t, n.Path, false)
		if err != nil {
			return "", fmt.Errorf("%s %s: %w", what, n.Path, err)
		}
		if p == "" {
			return "", fmt.Errorf("%s %s: cannot replace the root directory", what, n.Path)
		}
		if other, ok := seen[p]; ok {
			return "", fmt.Errorf("%s at %s resolved to /%s after symlink chasing, but another entry with path %s also resolves there", what, n.Path, p, other)
		}
		seen[p] = n.Path
		return p, nil
	}
	for i := range s.Directories {
		d := &s.Directories[i]
		p, err := add(d.Node, "directory")
		if err != nil {
			return err
		}
		entries = append(entries, ignNode{path: p, node: d.Node, dir: d})
	}
	for i := range s.Files {
		f := &s.Files[i]
		p, err := add(f.Node, "file")
		if err != nil {
			return err
		}
		entries = append(entries, ignNode{path: p, node: f.Node, file: f})
	}
	for i := range s.Links {
		l := &s.Links[i]
		p, err := add(l.Node, "link")
		if err != nil {
			return err
		}
		n := ignNode{path: p, node: l.Node, link: l}
		if l.Hard != nil && *l.Hard {
			hard = append(hard, n)
		} else {
			entries = append(entries, n)
		}
	}
	sort.SliceStable(entries, func(i, j int) bool { return ignDepth(entries[i].path) < ignDepth(entries[j].path) })
	entries = append(entries, hard...)

	for _, n := range entries {
		// The kernel follows symlinks created since the list was made.
		p, err := ignResolve(a.t, n.path, false)
		if err != nil {
			return fmt.Errorf("%s: %w", n.node.Path, err)
		}
		if n.node.Overwrite != nil && *n.node.Overwrite {
			a.remove(p)
		}
		switch {
		case n.dir != nil:
			err = a.createDir(n.dir, p)
		case n.file != nil:
			err = a.createFile(n.file, p)
		default:
			err = a.createLink(n.link, p)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (a *ignApplier) createDir(d *types.Directory, p string) error {
	e, ok := a.t.entries[p]
	switch {
	case !ok:
		if err := a.mkdirAll(p); err != nil {
			return fmt.Errorf("failed to create directory %s: %w", d.Path, err)
		}
	case !e.IsDir():
		return fmt.Errorf("error creating directory %s: a non-directory already exists and overwrite is false", d.Path)
	}
	return a.setPermissions(ignSpecMode(d.Mode), d.Node, p)
}

func (a *ignApplier) createFile(f *types.File, p string) error {
	e, exists := a.t.entries[p]
	contents := f.Contents
	switch {
	case !exists && contents.Source == nil:
		empty := ""
		contents.Source = &empty
	case !exists:
	case !e.IsRegular():
		return fmt.Errorf("error creating file %q: a non regular file exists there already and overwrite is false", f.Path)
	case contents.Source != nil:
		return fmt.Errorf("error creating file %q: a file exists there already and overwrite is false", f.Path)
	}
	if contents.Source != nil {
		data, source, err := a.fetch(f.Path, contents, len(f.Append) == 0)
		if err != nil {
			return err
		}
		if err := a.newFile(p, data, source); err != nil {
			return fmt.Errorf("failed to create file %q: %w", f.Path, err)
		}
	}
	for _, r := range f.Append {
		data, _, err := a.fetch(f.Path, r, false)
		if err != nil {
			return err
		}
		e, ok := a.t.entries[p]
		if !ok {
			// O_CREAT with 0644.
			if err := a.newFile(p, data, ""); err != nil {
				return fmt.Errorf("failed to create file %q: %w", f.Path, err)
			}
			continue
		}
		if !e.IsRegular() {
			return fmt.Errorf("can only append to files: %q", f.Path)
		}
		old, err := a.content(e)
		if err != nil {
			return err
		}
		a.setContent(e, append(append([]byte(nil), old...), data...))
	}
	return a.setPermissions(ignSpecMode(f.Mode), f.Node, p)
}

func (a *ignApplier) createLink(l *types.Link, p string) error {
	hard := l.Hard != nil && *l.Hard
	target := ""
	if l.Target != nil {
		target = *l.Target
	}
	if e, ok := a.t.entries[p]; ok {
		switch {
		case hard:
			tp, err := ignResolve(a.t, target, false)
			if err != nil {
				return fmt.Errorf("error resolving target path of hard link %s: %w", l.Path, err)
			}
			te, ok := a.t.entries[tp]
			if !ok {
				return fmt.Errorf("error creating hard link %s: target %s does not exist", l.Path, target)
			}
			if e != te && !(e.IsRegular() && te.IsRegular() && a.canonical(e) == a.canonical(te)) {
				return fmt.Errorf("error creating hard link %s: a file already exists at that path but is not the target and overwrite is false", l.Path)
			}
			return nil
		case e.IsSymlink():
			if path.Clean(e.Target) != path.Clean(target) {
				return fmt.Errorf("error creating symlink %s: a symlink exists at that path but points to %s, not %s and overwrite is false", l.Path, e.Target, target)
			}
			return nil
		default:
			return fmt.Errorf("error creating symlink %s: a non-symlink already exists at that path and overwrite is false", l.Path)
		}
	}
	if err := a.mkdirAll(path.Dir(p)); err != nil {
		return fmt.Errorf("failed to create link %q: could not create leading directories: %w", l.Path, err)
	}
	if !hard {
		if err := a.t.Put(&Entry{Path: p, Mode: fs.ModeSymlink | 0o777, Target: target}); err != nil {
			return err
		}
		return a.setPermissions(nil, l.Node, p)
	}
	tp, err := ignResolve(a.t, target, false)
	if err != nil {
		return fmt.Errorf("failed to create link %q: %w", l.Path, err)
	}
	te, ok := a.t.entries[tp]
	if !ok {
		return fmt.Errorf("failed to create link %q: target %s does not exist", l.Path, target)
	}
	switch {
	case te.IsDir():
		return fmt.Errorf("failed to create link %q: %s is a directory", l.Path, target)
	case te.IsSymlink():
		c := *te
		c.Path = p
		return a.t.Put(&c)
	case te.IsRegular():
		return a.t.Put(&Entry{Path: p, Mode: te.Mode, UID: te.UID, GID: te.GID, Hardlink: a.canonical(te).Path})
	default:
		return fmt.Errorf("failed to create link %q: %s is a special file", l.Path, target)
	}
}

// ---- passwd --------------------------------------------------------------------------

// ignDB is one of etc/passwd, etc/shadow, etc/group, etc/gshadow.
type ignDB struct {
	path   string // resolved tree path
	exists bool
	lines  []string
	dirty  bool
}

func (a *ignApplier) loadDB(name string) (*ignDB, error) {
	p, err := ignResolve(a.t, name, true)
	if err != nil {
		return nil, err
	}
	db := &ignDB{path: p}
	e, ok := a.t.entries[p]
	if !ok {
		return db, nil
	}
	if !e.IsRegular() {
		return nil, fmt.Errorf("/%s is not a regular file", name)
	}
	b, err := a.content(e)
	if err != nil {
		return nil, err
	}
	db.exists = true
	if s := strings.TrimSuffix(string(b), "\n"); s != "" {
		db.lines = strings.Split(s, "\n")
	}
	return db, nil
}

func (db *ignDB) find(name string) int {
	if db == nil {
		return -1
	}
	for i, l := range db.lines {
		if n, _, ok := strings.Cut(l, ":"); ok && n == name {
			return i
		}
	}
	return -1
}

func (db *ignDB) fields(i int, n int) []string {
	f := strings.Split(db.lines[i], ":")
	for len(f) < n {
		f = append(f, "")
	}
	return f
}

func (db *ignDB) set(i int, f []string) {
	db.lines[i] = strings.Join(f, ":")
	db.dirty = true
}

func (db *ignDB) add(f ...string) {
	db.lines = append(db.lines, strings.Join(f, ":"))
	db.dirty = true
}

func (db *ignDB) del(i int) {
	db.lines = append(db.lines[:i], db.lines[i+1:]...)
	db.dirty = true
}

// ids returns the numeric field of every record, in file order.
func (db *ignDB) ids() []int {
	var out []int
	for _, l := range db.lines {
		f := strings.Split(l, ":")
		if len(f) < 3 {
			continue
		}
		if id, err := strconv.Atoi(f[2]); err == nil && id >= 0 {
			out = append(out, id)
		}
	}
	return out
}

func (db *ignDB) byID(id int) int {
	for i, l := range db.lines {
		f := strings.Split(l, ":")
		if len(f) >= 3 && f[2] == strconv.Itoa(id) {
			return i
		}
	}
	return -1
}

func (a *ignApplier) saveDB(db *ignDB, create bool) error {
	if db == nil || !db.dirty {
		return nil
	}
	data := []byte{}
	if len(db.lines) > 0 {
		data = []byte(strings.Join(db.lines, "\n") + "\n")
	}
	if e, ok := a.t.entries[db.path]; ok {
		a.setContent(e, data)
		return nil
	}
	if !create {
		return nil
	}
	return a.newFile(db.path, data, "")
}

// ignDefs reads KEY VALUE (login.defs) or KEY=VALUE (default/useradd) settings.
func (a *ignApplier) ignDefs(name string) map[string]string {
	m := map[string]string{}
	e, ok := a.follow(name)
	if !ok || !e.IsRegular() {
		return m
	}
	b, err := a.content(e)
	if err != nil {
		return m
	}
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			words := strings.Fields(line)
			if len(words) < 2 {
				continue
			}
			k, v = words[0], words[1]
		}
		m[strings.TrimSpace(k)] = strings.Trim(strings.TrimSpace(v), `"`)
	}
	return m
}

type ignAccounts struct {
	passwd, shadow, group, gshadow *ignDB
	defs, udefs                    map[string]string
}

func (ac *ignAccounts) num(key string, def int) int {
	if v, ok := ac.defs[key]; ok {
		if n, err := strconv.ParseInt(v, 0, 64); err == nil {
			return int(n)
		}
	}
	return def
}

// ignFindNewID is shadow-utils' find_new_uid/find_new_gid (4.13): ids are the IDs in use
// in file order.
func ignFindNewID(ids []int, lo, hi int, sys bool, preferred *int, preferredLo int) (int, bool) {
	used := map[int]bool{}
	for _, id := range ids {
		used[id] = true
	}
	free := func(id int) bool { return !used[id] && id != 65535 && id != 1<<32-1 }
	if preferred != nil && *preferred >= preferredLo && *preferred <= hi && free(*preferred) {
		return *preferred, true
	}
	lowest, highest := hi, lo
	for _, id := range ids {
		if id <= lowest && id >= lo {
			lowest = id - 1
		}
		if id >= highest && id <= hi {
			highest = id + 1
		}
	}
	if sys {
		if lowest < lo {
			lowest = hi
		}
		for id := lowest; id >= lo; id-- {
			if free(id) {
				return id, true
			}
		}
		if lowest != hi {
			for id := hi; id >= lo; id-- {
				if free(id) {
					return id, true
				}
			}
		}
		return 0, false
	}
	if highest > hi {
		highest = lo
	}
	for id := highest; id <= hi; id++ {
		if free(id) {
			return id, true
		}
	}
	if highest != lo {
		for id := lo; id <= hi; id++ {
			if free(id) {
				return id, true
			}
		}
	}
	return 0, false
}

func (ac *ignAccounts) newGID(sys bool, preferred *int) (int, error) {
	lo, hi, plo := ac.num("GID_MIN", 1000), ac.num("GID_MAX", 60000), 0
	if sys {
		hi = ac.num("SYS_GID_MAX", ac.num("GID_MIN", 1000)-1)
		lo, plo = ac.num("SYS_GID_MIN", 101), 1
	} else {
		plo = lo
	}
	id, ok := ignFindNewID(ac.group.ids(), lo, hi, sys, preferred, plo)
	if !ok {
		return 0, fmt.Errorf("no free group ID in %d..%d", lo, hi)
	}
	return id, nil
}

func (ac *ignAccounts) newUID(sys bool) (int, error) {
	lo, hi := ac.num("UID_MIN", 1000), ac.num("UID_MAX", 60000)
	if sys {
		hi = ac.num("SYS_UID_MAX", ac.num("UID_MIN", 1000)-1)
		lo = ac.num("SYS_UID_MIN", 101)
	}
	id, ok := ignFindNewID(ac.passwd.ids(), lo, hi, sys, nil, lo)
	if !ok {
		return 0, fmt.Errorf("no free user ID in %d..%d", lo, hi)
	}
	return id, nil
}

// findGroup finds a group by name or, for a number, by gid (as useradd -g/-G accept).
func (ac *ignAccounts) findGroup(g string) int {
	if i := ac.group.find(g); i >= 0 {
		return i
	}
	if n, err := strconv.Atoi(g); err == nil {
		return ac.group.byID(n)
	}
	return -1
}

func (a *ignApplier) passwd(p types.Passwd) error {
	if len(p.Users) == 0 && len(p.Groups) == 0 {
		return nil
	}
	ac := &ignAccounts{defs: a.ignDefs("etc/login.defs"), udefs: a.ignDefs("etc/default/useradd")}
	var err error
	for _, x := range []struct {
		db   **ignDB
		name string
	}{{&ac.passwd, "etc/passwd"}, {&ac.shadow, "etc/shadow"}, {&ac.group, "etc/group"}, {&ac.gshadow, "etc/gshadow"}} {
		if *x.db, err = a.loadDB(x.name); err != nil {
			return err
		}
	}
	for _, g := range p.Groups {
		if err := a.ensureGroup(ac, g); err != nil {
			return fmt.Errorf("group %q: %w", g.Name, err)
		}
	}
	var homes []func() error
	for _, u := range p.Users {
		mk, err := a.ensureUser(ac, u)
		if err != nil {
			return fmt.Errorf("user %q: %w", u.Name, err)
		}
		if mk != nil {
			homes = append(homes, mk)
		}
	}
	for _, x := range []struct {
		db     *ignDB
		create bool
	}{{ac.passwd, true}, {ac.shadow, false}, {ac.group, true}, {ac.gshadow, false}} {
		if err := a.saveDB(x.db, x.create); err != nil {
			return err
		}
	}
	for _, mk := range homes {
		if err := mk(); err != nil {
			return err
		}
	}
	for _, u := range p.Users {
		if u.ShouldExist != nil && !*u.ShouldExist || len(u.SSHAuthorizedKeys) == 0 {
			continue
		}
		if err := a.authorizeKeys(ac, u); err != nil {
			return fmt.Errorf("user %q: %w", u.Name, err)
		}
	}
	return nil
}

func (a *ignApplier) ensureGroup(ac *ignAccounts, g types.PasswdGroup) error {
	i := ac.group.find(g.Name)
	if g.ShouldExist != nil && !*g.ShouldExist {
		if i < 0 {
			return nil
		}
		gid := ac.group.fields(i, 4)[2]
		for j := range ac.passwd.lines {
			if f := ac.passwd.fields(j, 7); f[3] == gid {
				return fmt.Errorf("cannot remove the group: it is the primary group of user %s", f[0])
			}
		}
		ac.group.del(i)
		if j := ac.gshadow.find(g.Name); j >= 0 {
			ac.gshadow.del(j)
		}
		return nil
	}
	if i >= 0 {
		f := ac.group.fields(i, 4)
		if g.Gid != nil && strconv.Itoa(*g.Gid) != f[2] {
			return fmt.Errorf("it already exists with gid %s; changing it to %d (groupmod) is not supported offline", f[2], *g.Gid)
		}
		if g.PasswordHash != nil && *g.PasswordHash != "" {
			if j := ac.gshadow.find(g.Name); ac.gshadow.exists && j >= 0 {
				gf := ac.gshadow.fields(j, 4)
				gf[1] = *g.PasswordHash
				ac.gshadow.set(j, gf)
			} else {
				f[1] = *g.PasswordHash
				ac.group.set(i, f)
			}
		}
		return nil
	}
	var gid int
	if g.Gid != nil {
		gid = *g.Gid
		if j := ac.group.byID(gid); j >= 0 {
			return fmt.Errorf("gid %d is already used by group %s", gid, ac.group.fields(j, 4)[0])
		}
	} else {
		var err error
		if gid, err = ac.newGID(g.System != nil && *g.System, nil); err != nil {
			return err
		}
	}
	pw := "!"
	if g.PasswordHash != nil && *g.PasswordHash != "" {
		pw = *g.PasswordHash
	}
	a.addGroup(ac, g.Name, gid, pw)
	return nil
}

func (a *ignApplier) addGroup(ac *ignAccounts, name string, gid int, pw string) {
	if ac.gshadow.exists {
		ac.group.add(name, "x", strconv.Itoa(gid), "")
		ac.gshadow.add(name, pw, "", "")
		return
	}
	if pw == "!" {
		pw = "x"
	}
	ac.group.add(name, pw, strconv.Itoa(gid), "")
}

// addMember adds user to a group's member list (etc/group and etc/gshadow).
func (a *ignApplier) addMember(ac *ignAccounts, gi int, user string) {
	f := ac.group.fields(gi, 4)
	if !ignHasMember(f[3], user) {
		f[3] = ignAddMember(f[3], user)
		ac.group.set(gi, f)
	}
	if j := ac.gshadow.find(f[0]); j >= 0 {
		sf := ac.gshadow.fields(j, 4)
		if !ignHasMember(sf[3], user) {
			sf[3] = ignAddMember(sf[3], user)
			ac.gshadow.set(j, sf)
		}
	}
}

func ignHasMember(list, user string) bool {
	for _, m := range strings.Split(list, ",") {
		if m == user {
			return true
		}
	}
	return false
}

func ignAddMember(list, user string) string {
	if list == "" {
		return user
	}
	return list + "," + user
}

func ignDropMember(list, user string) (string, bool) {
	var keep []string
	found := false
	for _, m := range strings.Split(list, ",") {
		if m == user {
			found = true
		} else if m != "" {
			keep = append(keep, m)
		}
	}
	return strings.Join(keep, ","), found
}

// ensureUser adds (or checks, or deletes) one user; it returns the home creation to do
// once the databases are written.
func (a *ignApplier) ensureUser(ac *ignAccounts, u types.PasswdUser) (func() error, error) {
	i := ac.passwd.find(u.Name)
	if u.ShouldExist != nil && !*u.ShouldExist {
		if i >= 0 {
			a.deleteUser(ac, i)
		}
		return nil, nil
	}
	if i >= 0 {
		return nil, a.existingUser(ac, i, u)
	}

	sys := u.System != nil && *u.System
	var uid int
	if u.UID != nil {
		uid = *u.UID
		if j := ac.passwd.byID(uid); j >= 0 {
			return nil, fmt.Errorf("uid %d is already used by user %s", uid, ac.passwd.fields(j, 7)[0])
		}
	} else {
		var err error
		if uid, err = ac.newUID(sys); err != nil {
			return nil, err
		}
	}
	var gid int
	switch {
	case u.PrimaryGroup != nil && *u.PrimaryGroup != "":
		gi := ac.findGroup(*u.PrimaryGroup)
		if gi < 0 {
			return nil, fmt.Errorf("primary group %q does not exist", *u.PrimaryGroup)
		}
		gid, _ = strconv.Atoi(ac.group.fields(gi, 4)[2])
	case u.NoUserGroup != nil && *u.NoUserGroup || strings.EqualFold(ac.defs["USERGROUPS_ENAB"], "no"):
		gid = 100
		if g, ok := ac.udefs["GROUP"]; ok {
			if gi := ac.findGroup(g); gi >= 0 {
				gid, _ = strconv.Atoi(ac.group.fields(gi, 4)[2])
			}
		}
	default:
		if ac.group.find(u.Name) >= 0 {
			return nil, fmt.Errorf("group %s exists - if you want to add this user to that group, set primaryGroup", u.Name)
		}
		var err error
		if gid, err = ac.newGID(sys, &uid); err != nil {
			return nil, err
		}
		a.addGroup(ac, u.Name, gid, "!")
	}
	var groups []int
	for _, g := range u.Groups {
		gi := ac.findGroup(string(g))
		if gi < 0 {
			return nil, fmt.Errorf("group %q does not exist", g)
		}
		groups = append(groups, gi)
	}

	home := ""
	if u.HomeDir != nil && *u.HomeDir != "" {
		home = *u.HomeDir
	} else {
		base := "/home"
		if h, ok := ac.udefs["HOME"]; ok && h != "" {
			base = h
		}
		home = path.Join(base, u.Name)
	}
	shell := "/bin/sh"
	if s, ok := ac.udefs["SHELL"]; ok {
		shell = s
	}
	if u.Shell != nil && *u.Shell != "" {
		shell = *u.Shell
	}
	gecos := ""
	if u.Gecos != nil {
		gecos = *u.Gecos
	}
	pw := "*"
	if u.PasswordHash != nil && *u.PasswordHash != "" {
		pw = *u.PasswordHash
	}
	if ac.shadow.exists {
		ac.passwd.add(u.Name, "x", strconv.Itoa(uid), strconv.Itoa(gid), gecos, home, shell)
		aging := func(key string) string {
			if sys {
				return ""
			}
			if v, ok := ac.defs[key]; ok {
				if n, err := strconv.Atoi(v); err == nil && n >= 0 {
					return strconv.Itoa(n)
				}
			}
			return ""
		}
		inactive := ""
		if v, ok := ac.udefs["INACTIVE"]; ok {
			if n, err := strconv.Atoi(v); err == nil && n >= 0 {
				inactive = strconv.Itoa(n)
			}
		}
		ac.shadow.add(u.Name, pw, "", aging("PASS_MIN_DAYS"), aging("PASS_MAX_DAYS"), aging("PASS_WARN_AGE"), inactive, "", "")
	} else {
		ac.passwd.add(u.Name, pw, strconv.Itoa(uid), strconv.Itoa(gid), gecos, home, shell)
	}
	for _, gi := range groups {
		a.addMember(ac, gi, u.Name)
	}
	if u.NoCreateHome != nil && *u.NoCreateHome {
		return nil, nil
	}
	homeMode := fs.FileMode(0o777 &^ ac.num("UMASK", 0o22))
	if v, ok := ac.defs["HOME_MODE"]; ok {
		if n, err := strconv.ParseUint(v, 8, 32); err == nil {
			homeMode = fs.FileMode(n & 0o777)
		}
	}
	return func() error { return a.createHome(home, uid, gid, homeMode) }, nil
}

// existingUser applies what is supported offline to a user already in the base.
func (a *ignApplier) existingUser(ac *ignAccounts, i int, u types.PasswdUser) error {
	f := ac.passwd.fields(i, 7)
	differs := func(what string, want *string, have string) error {
		if want != nil && *want != "" && *want != have {
			return fmt.Errorf("it already exists in the base with %s %q; changing it to %q (usermod) is not supported offline", what, have, *want)
		}
		return nil
	}
	if u.UID != nil && strconv.Itoa(*u.UID) != f[2] {
		return fmt.Errorf("it already exists in the base with uid %s; changing it to %d (usermod) is not supported offline", f[2], *u.UID)
	}
	if u.PrimaryGroup != nil && *u.PrimaryGroup != "" {
		gi := ac.findGroup(*u.PrimaryGroup)
		if gi < 0 {
			return fmt.Errorf("primary group %q does not exist", *u.PrimaryGroup)
		}
		if gid := ac.group.fields(gi, 4)[2]; gid != f[3] {
			return fmt.Errorf("it already exists in the base with gid %s; changing its primary group to %s (usermod) is not supported offline", f[3], *u.PrimaryGroup)
		}
	}
	for _, err := range []error{differs("gecos", u.Gecos, f[4]), differs("home directory", u.HomeDir, f[5]), differs("shell", u.Shell, f[6])} {
		if err != nil {
			return err
		}
	}
	for _, g := range u.Groups {
		gi := ac.findGroup(string(g))
		if gi < 0 {
			return fmt.Errorf("group %q does not exist", g)
		}
		a.addMember(ac, gi, u.Name)
	}
	if u.PasswordHash != nil {
		pw := *u.PasswordHash
		if pw == "" {
			pw = "*"
		}
		if j := ac.shadow.find(u.Name); ac.shadow.exists && j >= 0 {
			sf := ac.shadow.fields(j, 9)
			sf[1] = pw
			ac.shadow.set(j, sf)
		} else {
			f[1] = pw
			ac.passwd.set(i, f)
		}
	}
	return nil
}

// deleteUser is userdel --remove: the account, its memberships, its own group (when
// nobody else uses it) and its home directory and mail spool.
func (a *ignApplier) deleteUser(ac *ignAccounts, i int) {
	f := ac.passwd.fields(i, 7)
	name, gid, home := f[0], f[3], f[5]
	ac.passwd.del(i)
	if j := ac.shadow.find(name); j >= 0 {
		ac.shadow.del(j)
	}
	for j := range ac.group.lines {
		gf := ac.group.fields(j, 4)
		if l, ok := ignDropMember(gf[3], name); ok {
			gf[3] = l
			ac.group.set(j, gf)
		}
	}
	if ac.gshadow != nil {
		for j := range ac.gshadow.lines {
			sf := ac.gshadow.fields(j, 4)
			l2, ok2 := ignDropMember(sf[2], name)
			l3, ok3 := ignDropMember(sf[3], name)
			if ok2 || ok3 {
				sf[2], sf[3] = l2, l3
				ac.gshadow.set(j, sf)
			}
		}
	}
	if !strings.EqualFold(ac.defs["USERGROUPS_ENAB"], "no") {
		if gi := ac.group.find(name); gi >= 0 {
			gf := ac.group.fields(gi, 4)
			inUse := gf[2] != gid || gf[3] != ""
			for j := range ac.passwd.lines {
				if ac.passwd.fields(j, 7)[3] == gf[2] {
					inUse = true
				}
			}
			if !inUse {
				ac.group.del(gi)
				if j := ac.gshadow.find(name); j >= 0 {
					ac.gshadow.del(j)
				}
			}
		}
	}
	for _, p := range []string{home, "/var/mail/" + name} {
		if rp, err := ignResolve(a.t, p, true); err == nil && rp != "" {
			a.remove(rp)
		}
	}
}

// createHome is useradd --create-home: missing parents 0755 root, the home itself owned
// by the user, /etc/skel copied in. An existing home is left alone.
func (a *ignApplier) createHome(home string, uid, gid int, mode fs.FileMode) error {
	p, err := ignResolve(a.t, home, true)
	if err != nil {
		return fmt.Errorf("home %s: %w", home, err)
	}
	if p == "" {
		return nil
	}
	if _, ok := a.t.entries[p]; ok {
		return nil
	}
	if err := a.mkdirAll(path.Dir(p)); err != nil {
		return fmt.Errorf("home %s: %w", home, err)
	}
	if err := a.t.Put(&Entry{Path: p, Mode: fs.ModeDir | mode, UID: uid, GID: gid}); err != nil {
		return err
	}
	skel, err := ignResolve(a.t, "etc/skel", true)
	if err != nil {
		return nil
	}
	if e, ok := a.t.entries[skel]; !ok || !e.IsDir() {
		return nil
	}
	for _, q := range a.t.Paths() {
		rel, ok := strings.CutPrefix(q, skel+"/")
		if !ok {
			continue
		}
		src := a.t.entries[q]
		c := Entry{Path: p + "/" + rel, Mode: src.Mode, UID: uid, GID: gid, Target: src.Target}
		if src.IsRegular() {
			s := a.canonical(src)
			c.Data, c.Source = s.Data, s.Source
		}
		if err := a.t.Put(&c); err != nil {
			return err
		}
	}
	return nil
}

// authorizeKeys writes the user's keys as Ignition does, as the user: missing
// directories 0700, the file 0600.
func (a *ignApplier) authorizeKeys(ac *ignAccounts, u types.PasswdUser) error {
	i := ac.passwd.find(u.Name)
	if i < 0 {
		return fmt.Errorf("unable to lookup user %q", u.Name)
	}
	f := ac.passwd.fields(i, 7)
	uid, _ := strconv.Atoi(f[2])
	gid, _ := strconv.Atoi(f[3])
	keys := make([]string, len(u.SSHAuthorizedKeys))
	for k, key := range u.SSHAuthorizedKeys {
		keys[k] = string(key)
	}
	ks := strings.Join(keys, "\n")
	if !strings.HasSuffix(ks, "\n") {
		ks += "\n"
	}
	rel := ".ssh/authorized_keys.d/ignition"
	if a.o.LegacyAuthorizedKeys {
		rel = ".ssh/authorized_keys"
	}
	file := path.Join(f[5], rel)
	dir, err := ignResolve(a.t, path.Dir(file), true)
	if err != nil {
		return fmt.Errorf("failed to set SSH key: %w", err)
	}
	// Create the missing directories as the user would.
	var missing []string
	for d := dir; d != ""; d = path.Dir(d) {
		if e, ok := a.t.entries[d]; ok {
			if !e.IsDir() {
				return fmt.Errorf("failed to set SSH key: /%s is not a directory", d)
			}
			if len(missing) > 0 && uid != 0 && (e.UID != uid || e.Mode&0o200 == 0) {
				return fmt.Errorf("failed to set SSH key: /%s does not exist and user %s may not create it in /%s (does the home directory %s exist?)", missing[len(missing)-1], u.Name, d, f[5])
			}
			break
		}
		missing = append(missing, d)
		if path.Dir(d) == "." {
			break
		}
	}
	for k := len(missing) - 1; k >= 0; k-- {
		if err := a.t.Put(&Entry{Path: missing[k], Mode: fs.ModeDir | 0o700, UID: uid, GID: gid}); err != nil {
			return err
		}
	}
	p := dir + "/" + path.Base(file)
	if e, ok := a.follow(p); ok && e.IsRegular() {
		a.setContent(e, []byte(ks))
		return nil
	}
	p, err = ignResolve(a.t, p, true)
	if err != nil {
		return err
	}
	return a.replace(&Entry{Path: p, Mode: 0o600, UID: uid, GID: gid, Data: []byte(ks)})
}

// ---- systemd -------------------------------------------------------------------------

const (
	ignUnitDir    = "etc/systemd/system"
	ignPresetPath = "etc/systemd/system-preset/20-ignition.preset"
)

// ignUnitSearch is systemd 252's search path on Debian 12, without the runtime and
// generator directories (empty in an image).
var ignUnitSearch = []string{"etc/systemd/system", "usr/local/lib/systemd/system", "lib/systemd/system", "usr/lib/systemd/system"}

// writeUnitFile writes a unit or drop-in (a new root-owned 0644 file, renamed into place).
func (a *ignApplier) writeUnitFile(p string, contents string) error {
	rp, err := ignResolve(a.t, p, false)
	if err != nil {
		return err
	}
	return a.newFile(rp, []byte(contents), "")
}

type ignPreset struct {
	unit      string
	enabled   bool
	instance  bool
	instances []string
}

func (a *ignApplier) units(units []types.Unit) error {
	presets := map[string]*ignPreset{}
	for _, u := range units {
		for _, d := range u.Dropins {
			if d.Contents == nil {
				continue
			}
			if err := a.writeUnitFile(ignUnitDir+"/"+u.Name+".d/"+d.Name, *d.Contents); err != nil {
				return fmt.Errorf("unit %s: drop-in %s: %w", u.Name, d.Name, err)
			}
		}
		if u.Contents != nil && *u.Contents != "" {
			if err := a.writeUnitFile(ignUnitDir+"/"+u.Name, *u.Contents); err != nil {
				return fmt.Errorf("unit %s: %w", u.Name, err)
			}
		}
		if u.Enabled != nil {
			id := "disabled"
			if *u.Enabled {
				id = "enabled"
			}
			if strings.Contains(u.Name, "@") {
				tmpl, inst, err := ignInstance(u.Name)
				if err != nil {
					return fmt.Errorf("unit %s: %w", u.Name, err)
				}
				key := tmpl + "-" + id
				if p, ok := presets[key]; ok {
					p.instances = append(p.instances, inst)
				} else {
					presets[key] = &ignPreset{unit: tmpl, enabled: *u.Enabled, instance: true, instances: []string{inst}}
				}
			} else {
				presets[u.Name+"-"+id] = &ignPreset{unit: u.Name, enabled: *u.Enabled}
			}
		}
		if u.Mask != nil {
			p, err := ignResolve(a.t, ignUnitDir+"/"+u.Name, false)
			if err != nil {
				return fmt.Errorf("unit %s: %w", u.Name, err)
			}
			if *u.Mask {
				if err := a.mkdirAll(path.Dir(p)); err != nil {
					return fmt.Errorf("unit %s: %w", u.Name, err)
				}
				a.remove(p)
				if err := a.t.Put(&Entry{Path: p, Mode: fs.ModeSymlink | 0o777, Target: "/dev/null"}); err != nil {
					return err
				}
			} else if e, ok := a.t.entries[p]; ok && e.IsSymlink() && e.Target == "/dev/null" {
				a.remove(p)
			}
		}
	}

	keys := make([]string, 0, len(presets))
	for k := range presets {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		p := presets[k]
		line := p.unit
		if p.instance {
			line += " " + strings.Join(p.instances, " ")
		}
		if p.enabled {
			if err := a.appendPreset("enable " + line); err != nil {
				return err
			}
			continue
		}
		if p.instance {
			// Ignition asks systemctl about "name@.service inst", which fails, so it
			// writes nothing; the instances' symlinks still go.
			for _, inst := range p.instances {
				if err := a.disableUnit(ignInstanceName(p.unit, inst)); err != nil {
					return err
				}
			}
			continue
		}
		on, err := a.isEnabled(p.unit)
		if err != nil {
			return err
		}
		if !on {
			continue
		}
		if err := a.disableUnit(p.unit); err != nil {
			return err
		}
		if err := a.appendPreset("disable " + line); err != nil {
			return err
		}
	}

	done := map[string]bool{}
	for _, u := range units {
		if u.Enabled == nil || !*u.Enabled || done[u.Name] {
			continue
		}
		done[u.Name] = true
		if err := a.enableUnit(u.Name, map[string]bool{}); err != nil {
			return err
		}
	}
	return nil
}

// ignInstance splits echo@bar.service into echo@.service and bar, as Ignition does.
func ignInstance(name string) (string, string, error) {
	at := strings.Index(name, "@")
	dot := strings.LastIndex(name, ".")
	if at < 0 || dot < 0 || dot < at {
		return "", "", fmt.Errorf("invalid instantiated unit name %q", name)
	}
	return name[:at+1] + name[dot:], name[at+1 : dot], nil
}

func ignInstanceName(tmpl, inst string) string {
	at := strings.Index(tmpl, "@")
	return tmpl[:at+1] + inst + tmpl[at+1:]
}

func (a *ignApplier) appendPreset(line string) error {
	p, err := ignResolve(a.t, ignPresetPath, false)
	if err != nil {
		return err
	}
	if e, ok := a.follow(p); ok {
		if !e.IsRegular() {
			return fmt.Errorf("/%s is not a regular file", ignPresetPath)
		}
		old, err := a.content(e)
		if err != nil {
			return err
		}
		a.setContent(e, append(append([]byte(nil), old...), line+"\n"...))
		return nil
	}
	if p, err = ignResolve(a.t, p, true); err != nil {
		return err
	}
	return a.newFile(p, []byte(line+"\n"), "")
}

// ignUnit is a unit file found on the search path.
type ignUnit struct {
	path   string // as systemd names it, e.g. lib/systemd/system/chrony.service
	data   []byte
	masked bool
}

// findUnit looks name up as systemctl does; an instance falls back to its template.
func (a *ignApplier) findUnit(name string) (ignUnit, bool, error) {
	names := []string{name}
	if strings.Contains(name, "@") {
		if tmpl, inst, err := ignInstance(name); err == nil && inst != "" {
			names = append(names, tmpl)
		}
	}
	for _, n := range names {
		for _, dir := range ignUnitSearch {
			sp := dir + "/" + n
			rp, err := ignResolve(a.t, sp, false)
			if err != nil {
				continue
			}
			e, ok := a.t.entries[rp]
			if !ok {
				continue
			}
			if e.IsSymlink() {
				if e.Target == "/dev/null" {
					return ignUnit{path: sp, masked: true}, true, nil
				}
				if e, ok = a.follow(rp); !ok {
					continue
				}
			}
			if !e.IsRegular() {
				continue
			}
			b, err := a.content(e)
			if err != nil {
				return ignUnit{}, false, err
			}
			return ignUnit{path: sp, data: b}, true, nil
		}
	}
	return ignUnit{}, false, nil
}

// ignInstall is a unit's [Install] section.
type ignInstall struct {
	wantedBy, requiredBy, upheldBy, alias, also []string
	defaultInstance                             string
}

func ignParseInstall(data []byte) ignInstall {
	var in ignInstall
	section := ""
	lines := strings.Split(string(data), "\n")
	for k := 0; k < len(lines); k++ {
		line := strings.TrimSpace(lines[k])
		for strings.HasSuffix(line, "\\") && k+1 < len(lines) {
			k++
			next := strings.TrimSpace(lines[k])
			if strings.HasPrefix(next, "#") || strings.HasPrefix(next, ";") {
				continue
			}
			line = strings.TrimSuffix(line, "\\") + " " + next
		}
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		if line[0] == '[' {
			section = strings.Trim(line, "[]")
			continue
		}
		if section != "Install" {
			continue
		}
		key, val, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		key, val = strings.TrimSpace(key), strings.TrimSpace(val)
		var list *[]string
		switch key {
		case "WantedBy":
			list = &in.wantedBy
		case "RequiredBy":
			list = &in.requiredBy
		case "UpheldBy":
			list = &in.upheldBy
		case "Alias":
			list = &in.alias
		case "Also":
			list = &in.also
		case "DefaultInstance":
			in.defaultInstance = val
			continue
		default:
			continue
		}
		if val == "" {
			*list = nil
			continue
		}
		*list = append(*list, strings.Fields(val)...)
	}
	return in
}

// ignSpecifiers expands the specifiers systemctl expands in [Install] for unit name.
func ignSpecifiers(s, name string) string {
	if !strings.Contains(s, "%") {
		return s
	}
	prefix, inst := strings.TrimSuffix(name, path.Ext(name)), ""
	if at := strings.Index(name, "@"); at >= 0 {
		prefix = name[:at]
		inst = strings.TrimSuffix(name[at+1:], path.Ext(name))
	}
	var b strings.Builder
	for k := 0; k < len(s); k++ {
		if s[k] != '%' || k+1 == len(s) {
			b.WriteByte(s[k])
			continue
		}
		k++
		switch s[k] {
		case 'n':
			b.WriteString(name)
		case 'N':
			b.WriteString(strings.TrimSuffix(name, path.Ext(name)))
		case 'p':
			b.WriteString(prefix)
		case 'i', 'I':
			b.WriteString(inst)
		case '%':
			b.WriteByte('%')
		default:
			b.WriteByte('%')
			b.WriteByte(s[k])
		}
	}
	return b.String()
}

// enableUnit creates the symlinks `systemctl enable name` would.
func (a *ignApplier) enableUnit(name string, visited map[string]bool) error {
	if visited[name] {
		return nil
	}
	visited[name] = true
	u, ok, err := a.findUnit(name)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("unit %s is enabled but there is no unit file for it in the image (/etc/systemd/system, /usr/local/lib/systemd/system, /lib/systemd/system, /usr/lib/systemd/system)", name)
	}
	if u.masked {
		return fmt.Errorf("unit %s is enabled but masked (/%s -> /dev/null)", name, u.path)
	}
	in := ignParseInstall(u.data)
	link := name
	if tmpl, inst, err := ignInstance(name); err == nil && inst == "" && tmpl == name {
		if in.defaultInstance == "" {
			return nil // a template without DefaultInstance: systemctl enables nothing
		}
		link = ignInstanceName(name, in.defaultInstance)
	}
	target := "/" + u.path
	for _, dep := range []struct {
		list   []string
		suffix string
	}{{in.wantedBy, ".wants"}, {in.requiredBy, ".requires"}, {in.upheldBy, ".upholds"}} {
		for _, t := range dep.list {
			t = ignSpecifiers(t, link)
			if err := a.symlink(ignUnitDir+"/"+t+dep.suffix+"/"+link, target, true); err != nil {
				return fmt.Errorf("enabling %s: %w", name, err)
			}
		}
	}
	for _, al := range in.alias {
		al = ignSpecifiers(al, link)
		if al == link {
			continue
		}
		if err := a.symlink(ignUnitDir+"/"+al, target, false); err != nil {
			return fmt.Errorf("enabling %s: %w", name, err)
		}
	}
	for _, also := range in.also {
		if err := a.enableUnit(ignSpecifiers(also, link), visited); err != nil {
			return err
		}
	}
	return nil
}

func (a *ignApplier) symlink(p, target string, force bool) error {
	rp, err := ignResolve(a.t, p, false)
	if err != nil {
		return err
	}
	if e, ok := a.t.entries[rp]; ok {
		switch {
		case e.IsSymlink() && e.Target == target:
			return nil
		case e.IsSymlink() && force:
		case e.IsSymlink():
			if x, ok := a.follow(rp); ok {
				if y, ok := a.follow(target); ok && x == y {
					return nil
				}
			}
			return fmt.Errorf("/%s already exists and points to %s, not %s", rp, e.Target, target)
		default:
			return fmt.Errorf("/%s already exists and is not a symlink", rp)
		}
		a.remove(rp)
	}
	if err := a.mkdirAll(path.Dir(rp)); err != nil {
		return err
	}
	return a.t.Put(&Entry{Path: rp, Mode: fs.ModeSymlink | 0o777, Target: target})
}

// enablementLinks lists the symlinks under etc/systemd/system that `systemctl disable`
// removes for the units in names: those named after one of them or pointing to one,
// except mask links.
func (a *ignApplier) enablementLinks(names map[string]bool) []string {
	dir, err := ignResolve(a.t, ignUnitDir, true)
	if err != nil {
		return nil
	}
	var out []string
	for _, q := range a.t.Paths() {
		if !strings.HasPrefix(q, dir+"/") {
			continue
		}
		e := a.t.entries[q]
		if !e.IsSymlink() || e.Target == "/dev/null" {
			continue
		}
		if names[path.Base(q)] || names[path.Base(e.Target)] {
			out = append(out, q)
		}
	}
	return out
}

// isEnabled answers as `systemctl is-enabled` succeeds: enabled, static or indirect.
func (a *ignApplier) isEnabled(name string) (bool, error) {
	u, ok, err := a.findUnit(name)
	if err != nil || !ok || u.masked {
		return false, err
	}
	if len(a.enablementLinks(map[string]bool{name: true})) > 0 {
		return true, nil
	}
	in := ignParseInstall(u.data)
	return len(in.wantedBy)+len(in.requiredBy)+len(in.upheldBy)+len(in.alias) == 0, nil
}

// disableUnit removes the symlinks `systemctl disable name` would (Also= included).
func (a *ignApplier) disableUnit(name string) error {
	names := map[string]bool{}
	var walk func(string) error
	walk = func(n string) error {
		if names[n] {
			return nil
		}
		names[n] = true
		u, ok, err := a.findUnit(n)
		if err != nil || !ok || u.masked {
			return err
		}
		for _, also := range ignParseInstall(u.data).also {
			if err := walk(ignSpecifiers(also, n)); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk(name); err != nil {
		return err
	}
	for _, q := range a.enablementLinks(names) {
		a.remove(q)
	}
	return nil
}
