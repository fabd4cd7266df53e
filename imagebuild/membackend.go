package imagebuild

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
)

// memDisk is a go-diskfs storage backend held in memory. go-diskfs's ext4 writer reads
// and rewrites the same metadata blocks (directories along every path, bitmaps,
// superblock and group-descriptor copies) for every file it creates; in memory each of
// those is a copy instead of a system call. The finished file system is written to its
// file once, skipping blocks that are all zero (the file stays sparse).
type memDisk struct {
	buf    []byte
	pos    int64
	mapped bool
}

var _ backend.Storage = (*memDisk)(nil)
var _ backend.WritableFile = (*memDisk)(nil)

// newMemDisk allocates a zeroed disk of size bytes. The memory is mapped directly and
// marked for transparent huge pages where the kernel allows it: touching half a
// gigabyte in 4 KiB pages costs more page faults than the whole file system write.
// Release it with free.
func newMemDisk(size int64) *memDisk {
	if size > 0 && int64(int(size)) == size {
		if b, err := syscall.Mmap(-1, 0, int(size), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON); err == nil {
			_ = syscall.Madvise(b, madvHugepage) // advice only: 4 KiB pages work too
			return &memDisk{buf: b, mapped: true}
		}
	}
	return &memDisk{buf: make([]byte, size)}
}

const madvHugepage = 14 // MADV_HUGEPAGE

// free returns the memory; the disk must not be used afterwards.
func (m *memDisk) free() {
	if m.mapped {
		_ = syscall.Munmap(m.buf)
	}
	m.buf, m.mapped = nil, false
}

func (m *memDisk) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("memdisk: read at negative offset %d", off)
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

func (m *memDisk) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(m.buf)) {
		return 0, fmt.Errorf("memdisk: write of %d bytes at %d outside the %d-byte disk", len(p), off, len(m.buf))
	}
	return copy(m.buf[off:], p), nil
}

func (m *memDisk) Read(p []byte) (int, error) {
	n, err := m.ReadAt(p, m.pos)
	m.pos += int64(n)
	return n, err
}

func (m *memDisk) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		off += m.pos
	case io.SeekEnd:
		off += int64(len(m.buf))
	default:
		return m.pos, fmt.Errorf("memdisk: bad whence %d", whence)
	}
	if off < 0 {
		return m.pos, fmt.Errorf("memdisk: seek to negative offset %d", off)
	}
	m.pos = off
	return off, nil
}

func (m *memDisk) Close() error                            { return nil }
func (m *memDisk) Stat() (iofs.FileInfo, error)            { return memInfo{size: int64(len(m.buf))}, nil }
func (m *memDisk) Sys() (*os.File, error)                  { return nil, errors.New("memdisk: no OS file") }
func (m *memDisk) Writable() (backend.WritableFile, error) { return m, nil }
func (m *memDisk) Path() string                            { return "" }

// WriteTo writes the disk's contents to f at off, leaving all-zero blocks as holes
// (f must be freshly truncated, i.e. read as zeros there).
func (m *memDisk) writeSparse(f io.WriterAt, off int64) error {
	const chunk = 64 << 10
	var zero [chunk]byte
	start := -1 // start of the pending run of non-zero chunks
	flush := func(end int) error {
		if start < 0 {
			return nil
		}
		_, err := f.WriteAt(m.buf[start:end], off+int64(start))
		start = -1
		return err
	}
	for i := 0; i < len(m.buf); i += chunk {
		end := min(i+chunk, len(m.buf))
		if bytes.Equal(m.buf[i:end], zero[:end-i]) {
			if err := flush(i); err != nil {
				return err
			}
			continue
		}
		if start < 0 {
			start = i
		}
	}
	return flush(len(m.buf))
}

type memInfo struct{ size int64 }

func (i memInfo) Name() string        { return "memdisk" }
func (i memInfo) Size() int64         { return i.size }
func (i memInfo) Mode() iofs.FileMode { return 0o644 }
func (i memInfo) ModTime() time.Time  { return time.Time{} }
func (i memInfo) IsDir() bool         { return false }
func (i memInfo) Sys() any            { return nil }
