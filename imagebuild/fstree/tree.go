// Package fstree is the in-memory file system tree every stage of an image build works
// on: the base is read into a Tree, the Ignition applier changes it, the read-only-root
// configuration adapts it, and the disk writers turn it into file systems.
package fstree

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"iter"
	"os"
	"path"
	"sort"
	"strings"
)

// Entry is one file system object of an image tree. Paths are clean, relative to the
// root, without a leading slash ("etc/passwd"); the root itself is "".
type Entry struct {
	Path string
	// Mode holds the type bits (fs.ModeDir, fs.ModeSymlink; none for regular files) and
	// the permission bits including setuid/setgid/sticky.
	Mode     fs.FileMode
	UID, GID int
	// Data is a regular file's content, unless Source names a local file to read it from
	// (large binaries are not held in memory).
	Data   []byte
	Source string
	// Target is a symbolic link's target.
	Target string
	// Hardlink names the entry this one is a hard link of (regular files only).
	Hardlink string
}

// IsDir, IsSymlink and IsRegular classify the entry.
func (e *Entry) IsDir() bool     { return e.Mode&fs.ModeDir != 0 }
func (e *Entry) IsSymlink() bool { return e.Mode&fs.ModeSymlink != 0 }
func (e *Entry) IsRegular() bool { return e.Mode.Type() == 0 }

// Tree is an in-memory file system tree (metadata, small contents, references to large
// ones). The base is read into a Tree, Ignition is applied to it, and writers turn it
// into file systems.
type Tree struct {
	entries map[string]*Entry
}

// NewTree returns a tree holding only the root directory.
func NewTree() *Tree {
	return &Tree{entries: map[string]*Entry{"": {Path: "", Mode: fs.ModeDir | 0o755}}}
}

// Clean normalises a path to the tree's form ("/etc//x/" -> "etc/x").
func Clean(p string) string {
	p = path.Clean("/" + p)
	return strings.TrimPrefix(p, "/")
}

// Get returns the entry at p.
func (t *Tree) Get(p string) (*Entry, bool) {
	e, ok := t.entries[Clean(p)]
	return e, ok
}

// Put adds or replaces an entry. Missing parent directories are created (0755, root);
// a parent that exists and is not a directory is an error.
func (t *Tree) Put(e *Entry) error {
	e.Path = Clean(e.Path)
	if e.Path == "" {
		if !e.IsDir() {
			return fmt.Errorf("the root must be a directory")
		}
		t.entries[""] = e
		return nil
	}
	if err := t.MkdirAll(path.Dir(e.Path)); err != nil {
		return err
	}
	if old, ok := t.entries[e.Path]; ok && old.IsDir() && !e.IsDir() {
		t.removeChildren(e.Path)
	}
	t.entries[e.Path] = e
	return nil
}

// MkdirAll creates p and its parents as root-owned 0755 directories where missing.
func (t *Tree) MkdirAll(p string) error {
	p = Clean(p)
	if p == "" || p == "." {
		return nil
	}
	if e, ok := t.entries[p]; ok {
		if !e.IsDir() {
			return fmt.Errorf("%s exists and is not a directory", p)
		}
		return nil
	}
	if err := t.MkdirAll(path.Dir(p)); err != nil {
		return err
	}
	t.entries[p] = &Entry{Path: p, Mode: fs.ModeDir | 0o755}
	return nil
}

// Remove deletes p and everything below it.
func (t *Tree) Remove(p string) {
	p = Clean(p)
	t.removeChildren(p)
	if p != "" {
		delete(t.entries, p)
	}
}

func (t *Tree) removeChildren(p string) {
	prefix := p + "/"
	for k := range t.entries {
		if strings.HasPrefix(k, prefix) || (p == "" && k != "") {
			delete(t.entries, k)
		}
	}
}

// Paths returns every path in lexical order, so parents come before their children.
func (t *Tree) Paths() []string {
	out := make([]string, 0, len(t.entries))
	for k := range t.entries {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Walk calls fn for every entry, parents first, in a stable order.
func (t *Tree) Walk(fn func(*Entry) error) error {
	for _, p := range t.Paths() {
		if err := fn(t.entries[p]); err != nil {
			return err
		}
	}
	return nil
}

// Len is the number of entries including the root.
func (t *Tree) Len() int { return len(t.entries) }

// Subtree returns a new tree with the entries below prefix, re-rooted there.
func (t *Tree) Subtree(prefix string) *Tree {
	prefix = Clean(prefix)
	out := NewTree()
	for p, e := range t.entries {
		rel, ok := strings.CutPrefix(p, prefix+"/")
		if p == prefix {
			c := *e
			c.Path = ""
			out.entries[""] = &c
			continue
		}
		if !ok {
			continue
		}
		c := *e
		c.Path = rel
		out.entries[rel] = &c
	}
	return out
}

// ReadFile returns a regular file's contents.
func (t *Tree) ReadFile(p string) ([]byte, error) {
	e, ok := t.Get(p)
	if !ok || !e.IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file in the tree", p)
	}
	return t.Contents(e)
}

// Lookup returns the entry stored at p exactly as given (p must already be clean; no
// cleaning, unlike Get).
func (t *Tree) Lookup(p string) (*Entry, bool) {
	e, ok := t.entries[p]
	return e, ok
}

// Set stores e at e.Path as it is: no cleaning, no parent directories created, children
// of a replaced directory kept. It is for code that moves entries around and restores
// the invariants itself; Put is the safe way to add an entry.
func (t *Tree) Set(e *Entry) { t.entries[e.Path] = e }

// Delete removes the entry at p only (not what is below it; see Remove).
func (t *Tree) Delete(p string) { delete(t.entries, p) }

// All yields every entry in no particular order (see Walk for a stable order).
func (t *Tree) All() iter.Seq2[string, *Entry] {
	return func(yield func(string, *Entry) bool) {
		for p, e := range t.entries {
			if !yield(p, e) {
				return
			}
		}
	}
}

// Clone returns a copy of the tree whose entries can be changed independently (file
// contents are shared: entries are replaced, never edited in place, by the appliers).
func (t *Tree) Clone() *Tree {
	out := &Tree{entries: make(map[string]*Entry, len(t.entries))}
	for k, e := range t.entries {
		c := *e
		out.entries[k] = &c
	}
	return out
}

// DataOf is the entry that holds a regular file's contents: the entry a hard link points
// to (the image gets a copy), or e itself.
func (t *Tree) DataOf(e *Entry) *Entry {
	if e.Hardlink != "" {
		if o, ok := t.Get(e.Hardlink); ok && o != e && o.Hardlink == "" {
			return o
		}
	}
	return e
}

// Size is a regular file's length in bytes (see Contents).
func (t *Tree) Size(e *Entry) (int64, error) {
	e = t.DataOf(e)
	if e.Source != "" {
		st, err := os.Stat(e.Source)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", e.Path, err)
		}
		return st.Size(), nil
	}
	return int64(len(e.Data)), nil
}

// Contents returns a regular file's bytes (from memory, a local source file, or the entry
// it is a hard link of).
func (t *Tree) Contents(e *Entry) ([]byte, error) {
	e = t.DataOf(e)
	if e.Source != "" {
		f, err := os.Open(e.Source)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", e.Path, err)
		}
		defer f.Close()
		return io.ReadAll(f)
	}
	return e.Data, nil
}

// Digest is the sha256 (hex) of everything a file system writer takes from the tree:
// every entry's path, type and permission bits, owner, link target and contents, in
// path order. Two trees with the same digest make the same file system.
func (t *Tree) Digest() (string, error) {
	h := sha256.New()
	for _, p := range t.Paths() {
		e := t.entries[p]
		fmt.Fprintf(h, "%q %o %d %d %q %q\n", e.Path, uint32(e.Mode), e.UID, e.GID, e.Target, e.Hardlink)
		if !e.IsRegular() || e.Hardlink != "" {
			continue
		}
		if e.Source == "" {
			fmt.Fprintf(h, "%d\n", len(e.Data))
			h.Write(e.Data)
			continue
		}
		f, err := os.Open(e.Source)
		if err != nil {
			return "", fmt.Errorf("%s: %w", e.Path, err)
		}
		st, err := f.Stat()
		if err == nil {
			fmt.Fprintf(h, "%d\n", st.Size()) // the length first, as for Data
			_, err = io.Copy(h, f)
		}
		f.Close()
		if err != nil {
			return "", fmt.Errorf("%s: %w", e.Path, err)
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
