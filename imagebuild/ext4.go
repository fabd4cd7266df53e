package imagebuild

import (
	"fmt"
	"io"
	"io/fs"
	"os"
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
	err = t.Walk(func(e *Entry) error {
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
			if !o.Time.IsZero() {
				if err := fsys.Chtimes(p, o.Time, o.Time, o.Time); err != nil {
					return fmt.Errorf("chtimes %s: %w", p, err)
				}
			}
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
		if err := fsys.Chmod(p, e.Mode&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)); err != nil {
			return fmt.Errorf("chmod %s: %w", p, err)
		}
		if err := fsys.Chown(p, e.UID, e.GID); err != nil {
			return fmt.Errorf("chown %s: %w", p, err)
		}
		if !o.Time.IsZero() {
			if err := fsys.Chtimes(p, o.Time, o.Time, o.Time); err != nil {
				return fmt.Errorf("chtimes %s: %w", p, err)
			}
		}
		return nil
	})
	if err != nil {
		return st, err
	}
	if root, ok := t.Get(""); ok {
		_ = fsys.Chmod("/", root.Mode.Perm())
	}
	if err := fsys.Close(); err != nil {
		return st, err
	}
	if !o.Time.IsZero() {
		if err := stampExt4(f, 0, o.Time); err != nil {
			return st, fmt.Errorf("%s: %w", path, err)
		}
	}
	return st, f.Sync()
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
