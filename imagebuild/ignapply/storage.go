package ignapply

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
	"strings"

	"github.com/coreos/ignition/v2/config/v3_4/types"
	"github.com/vincent-petithory/dataurl"

	"github.com/etcdbake/etcdbake/imagebuild/fstree"
)

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
		p, err := a.t.Resolve(n.Path, false)
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
		p, err := a.t.Resolve(n.path, false)
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
	e, ok := a.t.Lookup(p)
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
	e, exists := a.t.Lookup(p)
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
		e, ok := a.t.Lookup(p)
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
	if e, ok := a.t.Lookup(p); ok {
		switch {
		case hard:
			tp, err := a.t.Resolve(target, false)
			if err != nil {
				return fmt.Errorf("error resolving target path of hard link %s: %w", l.Path, err)
			}
			te, ok := a.t.Lookup(tp)
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
		if err := a.t.Put(&fstree.Entry{Path: p, Mode: fs.ModeSymlink | 0o777, Target: target}); err != nil {
			return err
		}
		return a.setPermissions(nil, l.Node, p)
	}
	tp, err := a.t.Resolve(target, false)
	if err != nil {
		return fmt.Errorf("failed to create link %q: %w", l.Path, err)
	}
	te, ok := a.t.Lookup(tp)
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
		return a.t.Put(&fstree.Entry{Path: p, Mode: te.Mode, UID: te.UID, GID: te.GID, Hardlink: a.canonical(te).Path})
	default:
		return fmt.Errorf("failed to create link %q: %s is a special file", l.Path, target)
	}
}

// ---- fetching ------------------------------------------------------------------------

// fetch returns a resource's contents, decompressed and verified. With allowSource an
// uncompressed local file (from Options.Remote) is returned by path instead.
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
	gz := compression == "gzip"
	sum, err := newIgnHash(file, r.Verification)
	if err != nil {
		return nil, "", err
	}
	u, err := url.Parse(src)
	if err != nil {
		return nil, "", fmt.Errorf("file %s: source %q: %w", file, src, err)
	}
	switch u.Scheme {
	case "":
		// Ignition writes nothing (an empty file).
		b, err := ignDecode(bytes.NewReader(nil), gz, sum)
		if err != nil {
			return nil, "", fmt.Errorf("file %s: %w", file, err)
		}
		return b, "", sum.check(file, "the empty source")
	case "data":
		d, err := dataurl.DecodeString(u.String())
		if err != nil {
			return nil, "", fmt.Errorf("file %s: bad data URL: %w", file, err)
		}
		b, err := ignDecode(bytes.NewReader(d.Data), gz, sum)
		if err != nil {
			return nil, "", fmt.Errorf("file %s: decompressing its data URL: %w", file, err)
		}
		return b, "", sum.check(file, "its data URL")
	case "http", "https", "tftp", "s3", "gs", "arn":
		return a.fetchLocal(file, src, gz, allowSource, sum)
	default:
		return nil, "", fmt.Errorf("file %s: source %q: unsupported URL scheme %q", file, src, u.Scheme)
	}
}

// fetchLocal reads a remote source from its local copy (Options.Remote); with
// allowSource and no compression it is verified and returned by path.
func (a *ignApplier) fetchLocal(file, src string, gz, allowSource bool, sum *ignHash) ([]byte, string, error) {
	local, ok := a.o.Remote[src]
	if !ok {
		return nil, "", fmt.Errorf("file %s: source %s would be fetched from the network, which an offline build cannot do: provide it as a local file (Options.Remote)", file, src)
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
	if !gz && allowSource {
		if sum != nil {
			if _, err := io.Copy(sum.h, f); err != nil {
				return nil, "", fmt.Errorf("file %s: reading %s: %w", file, local, err)
			}
			if err := sum.check(file, what); err != nil {
				return nil, "", err
			}
		}
		abs, err := filepath.Abs(local)
		if err != nil {
			return nil, "", err
		}
		return nil, abs, nil
	}
	b, err := ignDecode(f, gz, sum)
	if err != nil {
		return nil, "", fmt.Errorf("file %s: reading %s: %w", file, what, err)
	}
	return b, "", sum.check(file, what)
}

// ignHash is a resource's verification hash: the digest being computed and the value
// the config wants. A nil *ignHash (no verification) accepts anything.
type ignHash struct {
	h          hash.Hash
	algo, want string
}

func newIgnHash(file string, v types.Verification) (*ignHash, error) {
	if v.Hash == nil {
		return nil, nil
	}
	algo, want, ok := strings.Cut(*v.Hash, "-")
	x := &ignHash{algo: algo, want: strings.ToLower(want)}
	switch {
	case !ok:
		return nil, fmt.Errorf("file %s: malformed verification hash %q", file, *v.Hash)
	case algo == "sha512":
		x.h = sha512.New()
	case algo == "sha256":
		x.h = sha256.New()
	default:
		return nil, fmt.Errorf("file %s: unsupported verification hash %q (sha512 or sha256)", file, algo)
	}
	return x, nil
}

// check compares the digest of what was read with the config's.
func (x *ignHash) check(file, what string) error {
	if x == nil {
		return nil
	}
	if got := hex.EncodeToString(x.h.Sum(nil)); got != x.want {
		return fmt.Errorf("file %s: the contents of %s do not match the config's verification hash: expected %s-%s, got %s-%s", file, what, x.algo, x.want, x.algo, got)
	}
	return nil
}

// ignDecode reads rd, gunzipped when gz, into memory, feeding the verification hash
// (which covers the decompressed contents, as in Ignition).
func ignDecode(rd io.Reader, gz bool, sum *ignHash) ([]byte, error) {
	if gz {
		zr, err := gzip.NewReader(rd)
		if err != nil {
			return nil, err
		}
		defer zr.Close()
		rd = zr
	}
	var buf bytes.Buffer
	var w io.Writer = &buf
	if sum != nil {
		w = io.MultiWriter(&buf, sum.h)
	}
	if _, err := io.Copy(w, rd); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
