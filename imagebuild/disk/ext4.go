package disk

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"sort"
	"time"

	"github.com/diskfs/go-diskfs/filesystem/ext4"
	"github.com/etcdbake/etcdbake/imagebuild/fstree"
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
	// Settled, if set, says which entries are the same in every image made from the same
	// base (the base's own files). They are written first and the others after them, so
	// an image that changes only the others keeps every settled file's blocks where they
	// were: a node staging it copies those pieces from its running slot.
	Settled func(*fstree.Entry) bool
}

// Ext4Stats says what the writer could not represent (go-diskfs has no device nodes and
// no hard links: hard links become copies, devices are left to devtmpfs at run time).
type Ext4Stats struct {
	Files, Dirs, Symlinks int
	HardlinksCopied       int
	Skipped               []string
	Bytes                 int64
	// Punched is how many bytes of zeros (journal, inode tables) were left as holes.
	Punched int64
}

// WriteExt4 writes the tree as an ext4 file system into a new image file of the given
// size, with go-diskfs. When ctx is cancelled it stops between two entries; on any error
// the file is removed.
//
// It is long because it is one linear pass (create, order the entries, directories,
// links, files, stamp) whose ordering rules are explained where they apply.
func WriteExt4(ctx context.Context, path string, size int64, t *fstree.Tree, o Ext4Options) (st Ext4Stats, err error) {
	if err := ctx.Err(); err != nil {
		return st, err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|os.O_TRUNC, 0o644)
	if err != nil {
		return st, err
	}
	defer func() {
		f.Close()
		if err != nil {
			os.Remove(path)
		}
	}()
	if err := f.Truncate(size); err != nil {
		return st, err
	}
	defer lowGCPercent()()
	// go-diskfs works on the file through a shared memory mapping (membackend.go).
	disk, err := mapDisk(f, size)
	if err != nil {
		return st, fmt.Errorf("%s: %w", path, err)
	}
	defer disk.unmap()
	// One inode per 16 KiB, as mkfs.ext4's default: go-diskfs's 8192 doubles the inode
	// tables, and a root tree needs far fewer (checked by ext4Size's margin).
	params := &ext4.Params{VolumeName: o.Label, InodeRatio: 16384}
	// What go-diskfs would draw at random follows from the file system's identity, so the
	// same input gives the same bytes (see ext4stamp.go).
	derivedUUID, hashSeed, err := ext4Identity("ext4/"+o.UUID+"/"+o.Label, o.UUID == "")
	if err != nil {
		return st, err
	}
	params.UUID = derivedUUID
	if o.UUID != "" {
		u, err := uuid.Parse(o.UUID)
		if err != nil {
			return st, fmt.Errorf("ext4 UUID %q: %w", o.UUID, err)
		}
		params.UUID = &u
	}
	fsys, err := ext4.Create(disk, size, 0, 512, params)
	if err != nil {
		return st, fmt.Errorf("creating ext4 (%d bytes): %w", size, err)
	}
	// Two passes, settled entries first (all of them when Settled is nil), each with
	// directories first (parents before children), then symlinks, then regular files.
	// Settled files go from the smallest to the largest: go-diskfs looks for free blocks
	// from the first block group on every allocation, so the many small files are written
	// while the early groups still have room and the few large ones pay for the full
	// groups. The others (a few binaries and many small configuration files) go from the
	// largest to the smallest: a changed configuration file then moves only the small
	// files after it, not a binary.
	// Permissions and owners are set afterwards, by stampExt4, for every entry at once.
	var pass [2]struct{ dirs, links, files []*fstree.Entry }
	attrs := make(map[string]inodeAttrs, t.Len())
	sizes := map[*fstree.Entry]int64{}
	if err := t.Walk(func(e *fstree.Entry) error {
		p := &pass[0]
		if o.Settled != nil && !o.Settled(e) {
			p = &pass[1]
		}
		switch {
		case e.IsDir():
			p.dirs = append(p.dirs, e)
		case e.IsSymlink():
			p.links = append(p.links, e)
		case e.IsRegular():
			n, err := t.Size(e)
			if err != nil {
				return err
			}
			sizes[e] = n
			p.files = append(p.files, e)
		default:
			st.Skipped = append(st.Skipped, e.Path)
			return nil
		}
		attrs[e.Path] = inodeAttrs{Perm: unixPerm(e.Mode), UID: uint32(e.UID), GID: uint32(e.GID)}
		return nil
	}); err != nil {
		return st, err
	}
	sort.SliceStable(pass[0].files, func(i, j int) bool { return sizes[pass[0].files[i]] < sizes[pass[0].files[j]] })
	sort.SliceStable(pass[1].files, func(i, j int) bool { return sizes[pass[1].files[i]] > sizes[pass[1].files[j]] })
	total, done := int64(t.Len()), int64(len(st.Skipped))
	tick := func() error {
		if done++; done%256 == 0 || done == total {
			if o.Meter != nil {
				o.Meter(done, total)
			}
			return ctx.Err()
		}
		return nil
	}
	for _, p := range pass {
		for _, e := range p.dirs {
			if e.Path != "" {
				if err := fsys.Mkdir(e.Path); err != nil {
					return st, fmt.Errorf("mkdir %s: %w", e.Path, err)
				}
				st.Dirs++
			}
			if err := tick(); err != nil {
				return st, err
			}
		}
		for _, e := range p.links {
			if err := fsys.Symlink(e.Target, e.Path); err != nil {
				return st, fmt.Errorf("symlink %s: %w", e.Path, err)
			}
			st.Symlinks++
			if err := tick(); err != nil {
				return st, err
			}
		}
		for _, e := range p.files {
			data, err := t.Contents(e)
			if err != nil {
				return st, err
			}
			if e.Hardlink != "" {
				st.HardlinksCopied++
			}
			fh, err := fsys.OpenFile(e.Path, os.O_CREATE|os.O_RDWR)
			if err != nil {
				return st, fmt.Errorf("create %s: %w", e.Path, err)
			}
			if len(data) > 0 {
				if _, err := fh.Write(data); err != nil {
					return st, fmt.Errorf("write %s: %w", e.Path, err)
				}
			}
			if err := fh.Close(); err != nil {
				return st, fmt.Errorf("close %s: %w", e.Path, err)
			}
			st.Files++
			st.Bytes += int64(len(data))
			if err := tick(); err != nil {
				return st, err
			}
		}
	}
	if err := fsys.Close(); err != nil {
		return st, err
	}
	if err := stampExt4(disk.buf, o.Time, attrs, &hashSeed); err != nil {
		return st, fmt.Errorf("%s: %w", path, err)
	}
	if err := disk.unmap(); err != nil {
		return st, fmt.Errorf("%s: %w", path, err)
	}
	if st.Punched, err = punchZeros(f); err != nil {
		return st, fmt.Errorf("%s: %w", path, err)
	}
	// No fsync: the file is an intermediate that Build copies into each disk image.
	return st, f.Close()
}

// unixPerm is the mode's permission bits as ext4 stores them (07777).
func unixPerm(m fs.FileMode) uint16 {
	p := uint16(m.Perm())
	if m&fs.ModeSetuid != 0 {
		p |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		p |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		p |= 0o1000
	}
	return p
}
