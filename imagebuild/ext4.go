package imagebuild

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"time"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/ext4"
	"github.com/google/uuid"
)

// Ext4Options describe one ext4 file system image.
type Ext4Options struct {
	Label string
	UUID  string // filesystem UUID (derived from cluster and node names)
	// Time is stamped on every inode, for reproducible images.
	Time time.Time
	// Meter, if set, is told how many of the tree's entries are written.
	Meter func(done, total int64)
}

// Ext4Stats says what the writer could not represent (go-diskfs has no device nodes and
// no hard links: hard links become copies, devices are left to devtmpfs at run time).
type Ext4Stats struct {
	Files, Dirs, Symlinks int
	HardlinksCopied       int
	Skipped               []string
	Bytes                 int64
}

// WriteExt4 writes the tree as an ext4 file system into a new image file of the given
// size, with go-diskfs.
func WriteExt4(path string, size int64, t *Tree, o Ext4Options) (Ext4Stats, error) {
	var st Ext4Stats
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|os.O_TRUNC, 0o644)
	if err != nil {
		return st, err
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return st, err
	}
	params := &ext4.Params{VolumeName: o.Label}
	if o.UUID != "" {
		u, err := uuid.Parse(o.UUID)
		if err != nil {
			return st, fmt.Errorf("ext4 UUID %q: %w", o.UUID, err)
		}
		params.UUID = &u
	}
	// The directory hash seed comes from uuid's random source: seed it from the file
	// system's identity so the same input gives the same bytes (see ext4stamp.go).
	restore := seededUUIDs("ext4/" + o.UUID + "/" + o.Label)
	fsys, err := ext4.Create(file.New(f, false), size, 0, 512, params)
	restore()
	if err != nil {
		return st, fmt.Errorf("creating ext4 (%d bytes): %w", size, err)
	}
	// go-diskfs makes the root directory 0755 root:root and cannot change it (Chmod
	// and Chown refuse "/"): a tree that wants another root is refused.
	if root, ok := t.Get(""); ok && (root.Mode.Perm() != 0o755 || root.UID != 0 || root.GID != 0) {
		return st, fmt.Errorf("the tree's root is %v %d:%d; the ext4 writer can only make 0755 0:0", root.Mode.Perm(), root.UID, root.GID)
	}
	total, done := int64(t.Len()), int64(0)
	err = t.Walk(func(e *Entry) error {
		if done++; o.Meter != nil && (done%256 == 0 || done == total) {
			o.Meter(done, total)
		}
		if e.Path == "" {
			return nil
		}
		p := e.Path
		switch {
		case e.IsDir():
			if err := fsys.Mkdir(p); err != nil {
				return fmt.Errorf("mkdir %s: %w", p, err)
			}
			st.Dirs++
		case e.IsSymlink():
			if err := fsys.Symlink(e.Target, p); err != nil {
				return fmt.Errorf("symlink %s: %w", p, err)
			}
			st.Symlinks++
			// go-diskfs gives symlinks the parent's owner; modes are always 0777.
			return nil
		case e.IsRegular():
			data, err := t.contents(e)
			if err != nil {
				return err
			}
			if e.Hardlink != "" {
				st.HardlinksCopied++
			}
			fh, err := fsys.OpenFile(p, os.O_CREATE|os.O_RDWR)
			if err != nil {
				return fmt.Errorf("create %s: %w", p, err)
			}
			if len(data) > 0 {
				if _, err := fh.Write(data); err != nil {
					return fmt.Errorf("write %s: %w", p, err)
				}
			}
			if err := fh.Close(); err != nil {
				return fmt.Errorf("close %s: %w", p, err)
			}
			st.Files++
			st.Bytes += int64(len(data))
		default:
			st.Skipped = append(st.Skipped, p)
			return nil
		}
		// go-diskfs gives a new entry its parent's permission bits and owner; each Chmod
		// and Chown is another path lookup (the bulk of the writer's time), so they are
		// made only where the entry differs. Times are set by stampExt4 at the end.
		inherit := parentOf(t, p)
		if mode := e.Mode & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky); mode != inherit.Mode.Perm() {
			if err := fsys.Chmod(p, mode); err != nil {
				return fmt.Errorf("chmod %s: %w", p, err)
			}
		}
		if e.UID != inherit.UID || e.GID != inherit.GID {
			if err := fsys.Chown(p, e.UID, e.GID); err != nil {
				return fmt.Errorf("chown %s: %w", p, err)
			}
		}
		return nil
	})
	if err != nil {
		return st, err
	}
	if err := fsys.Close(); err != nil {
		return st, err
	}
	if !o.Time.IsZero() {
		if err := stampExt4(f, 0, o.Time); err != nil {
			return st, fmt.Errorf("%s: %w", path, err)
		}
	}
	// No fsync: the file is an intermediate that Build copies into each disk image.
	return st, f.Close()
}

// parentOf is the entry of p's directory, or the root as go-diskfs makes it (0755 0:0)
// for top-level entries.
func parentOf(t *Tree, p string) *Entry {
	if dir := path.Dir(p); dir != "." {
		if e, ok := t.Get(dir); ok {
			return e
		}
	}
	return &Entry{Mode: fs.ModeDir | 0o755}
}

// contents returns a regular file's bytes (from memory, a local source file, or the entry
// it is a hard link of).
func (t *Tree) contents(e *Entry) ([]byte, error) {
	if e.Hardlink != "" {
		if o, ok := t.Get(e.Hardlink); ok && o != e && o.Hardlink == "" {
			return t.contents(o)
		}
	}
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
