package disk

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"os"
	"syscall"
	"time"

	"github.com/diskfs/go-diskfs/backend"
	"golang.org/x/sys/unix"
)

// mappedDisk is a go-diskfs storage backend over a shared memory mapping of the image
// file. go-diskfs's ext4 writer reads and rewrites the same metadata blocks (directories
// along every path, bitmaps, superblock and group-descriptor copies) for every file it
// creates: through the mapping each of those is a copy in the page cache instead of a
// system call, and the data lands in the file's pages directly (no second copy). Blocks
// never written stay holes in the file.
type mappedDisk struct {
	storageCursor
	buf []byte
	f   *os.File
}

var _ backend.Storage = (*mappedDisk)(nil)
var _ backend.WritableFile = (*mappedDisk)(nil)

// mapDisk maps the first size bytes of f (which must be that long) for reading and
// writing. unmap releases it; writes are in f's page cache from the moment they are made.
func mapDisk(f *os.File, size int64) (*mappedDisk, error) {
	if size <= 0 || int64(int(size)) != size {
		return nil, fmt.Errorf("cannot map a %d-byte image", size)
	}
	b, err := syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mapping the image into memory: %w (the output directory must be on a file system that supports mmap)", err)
	}
	m := &mappedDisk{buf: b, f: f}
	m.storageCursor = storageCursor{name: "image", size: size, at: m}
	return m, nil
}

// bulkWrite is the size from which a write goes to the file instead of the mapping.
const bulkWrite = 16 << 10

// unmap releases the mapping; it may be called more than once.
func (m *mappedDisk) unmap() error {
	if m.buf == nil {
		return nil
	}
	err := syscall.Munmap(m.buf)
	m.buf = nil
	return err
}

func (m *mappedDisk) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("image: read at negative offset %d", off)
	}
	if off >= int64(len(m.buf)) {
		return 0, io.EOF
	}
	n := copy(p, m.buf[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (m *mappedDisk) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(m.buf)) {
		return 0, fmt.Errorf("image: write of %d bytes at %d outside the %d-byte image", len(p), off, len(m.buf))
	}
	// File contents go through write(2): the same page cache as the mapping (Linux keeps
	// them coherent), filled a run of pages at a time instead of one fault per page.
	if len(p) >= bulkWrite {
		return m.f.WriteAt(p, off)
	}
	return copy(m.buf[off:], p), nil
}

func (m *mappedDisk) Writable() (backend.WritableFile, error) { return m, nil }

// storageCursor is what both of our go-diskfs backends (mappedDisk, espStorage) share
// around their own ReadAt/WriteAt: a stream position over a fixed-size region and the
// file information go-diskfs asks for. at is the embedding backend itself.
type storageCursor struct {
	name string
	size int64
	pos  int64
	at   io.ReaderAt
}

func (c *storageCursor) Read(p []byte) (int, error) {
	n, err := c.at.ReadAt(p, c.pos)
	c.pos += int64(n)
	return n, err
}

func (c *storageCursor) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		off += c.pos
	case io.SeekEnd:
		off += c.size
	default:
		return c.pos, fmt.Errorf("%s: bad whence %d", c.name, whence)
	}
	if off < 0 {
		return c.pos, fmt.Errorf("%s: seek to negative offset %d", c.name, off)
	}
	c.pos = off
	return off, nil
}

func (c *storageCursor) Close() error                 { return nil }
func (c *storageCursor) Stat() (iofs.FileInfo, error) { return storageInfo{c.name, c.size}, nil }
func (c *storageCursor) Sys() (*os.File, error)       { return nil, backend.ErrNotSuitable }
func (c *storageCursor) Path() string                 { return "" }

type storageInfo struct {
	name string
	size int64
}

func (i storageInfo) Name() string        { return i.name }
func (i storageInfo) Size() int64         { return i.size }
func (i storageInfo) Mode() iofs.FileMode { return 0o644 }
func (i storageInfo) ModTime() time.Time  { return time.Time{} }
func (i storageInfo) IsDir() bool         { return false }
func (i storageInfo) Sys() any            { return nil }

// punchZeros deallocates the blocks of f that hold only zeros (fallocate PUNCH_HOLE,
// keeping the size), in runs of whole 4 KiB blocks, and returns how many bytes it
// freed. go-diskfs writes a new file system's journal and inode tables out as zeros:
// for a data partition made at its full size that is 160 MiB per node that every raw
// image, every copy and every PXE stream would carry. Reading a hole gives the same
// zeros, so the file's content is unchanged. Where the file system cannot punch holes,
// nothing is freed and that is not an error.
func punchZeros(f *os.File) (int64, error) {
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	const blk = 4 << 10
	buf, zeros := make([]byte, 1<<20), make([]byte, blk)
	var freed int64
	punch := func(off, n int64) error {
		if n == 0 {
			return nil
		}
		err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
		if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) {
			return errNoPunch
		}
		freed += n
		return err
	}
	for pos := int64(0); pos < st.Size(); {
		data, hole, err := nextDataRegion(f, pos, st.Size())
		if err != nil {
			return freed, err
		}
		if data >= st.Size() {
			break
		}
		data &^= blk - 1 // regions of a hole-reporting file system are block-aligned
		run := int64(-1) // start of the current run of zero blocks
		for c := data; c < hole; c += int64(len(buf)) {
			n, err := f.ReadAt(buf[:min(int64(len(buf)), hole-c)], c)
			if err != nil && !(errors.Is(err, io.EOF) && n > 0) {
				return freed, err
			}
			for b := 0; b < n; b += blk {
				off := c + int64(b)
				if b+blk <= n && bytes.Equal(buf[b:b+blk], zeros) {
					if run < 0 {
						run = off
					}
					continue
				}
				if run >= 0 {
					if err := punch(run, off-run); err != nil {
						return freed, noPunchOK(err)
					}
					run = -1
				}
			}
		}
		if run >= 0 {
			if err := punch(run, hole-run); err != nil {
				return freed, noPunchOK(err)
			}
		}
		pos = hole
	}
	return freed, nil
}

var errNoPunch = errors.New("the file system cannot punch holes")

func noPunchOK(err error) error {
	if errors.Is(err, errNoPunch) {
		return nil
	}
	return err
}
