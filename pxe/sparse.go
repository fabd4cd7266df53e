package pxe

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// The sparse stream carries a disk image without its holes (the data partition of a fresh
// image is all hole): a header, then extents, then an end record.
//
//	header: "ETCDBAKE-SPARSE1" (16 bytes), image size (u64 big-endian)
//	extent: offset (u64), length (u64, > 0), length bytes of data
//	end:    offset = image size, length 0
//
// Extents are in increasing order and do not overlap; everything between them is zero.
// The receiver checks the SHA-256 of the stream as it read it (every byte from the header
// to the end record; StreamSHA256) against the value it was given separately (the iPXE
// script's kernel arguments), so neither a truncated nor a corrupted stream is ever
// accepted.
const sparseMagic = "ETCDBAKE-SPARSE1"

// maxExtent bounds the extents the sender writes (a read buffer's worth).
const maxExtent = 4 << 20

// StreamSHA256 returns the SHA-256 (hex) of the raw image's sparse stream (WriteSparse's
// bytes: header, extent records with their data, end record) and the image's size. The
// stream determines the image exactly, holes included, so its digest verifies the image
// as the whole image's digest would; it costs only the image's data to compute, here and
// in the installer (the 4 GiB of zeros of a fresh image took the installer minutes to
// hash under emulation).
func StreamSHA256(path string) (string, int64, error) {
	h := sha256.New()
	if err := WriteSparse(h, path); err != nil {
		return "", 0, fmt.Errorf("hashing %s: %w", path, err)
	}
	st, err := os.Stat(path)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), st.Size(), nil
}

var zeroBlock = make([]byte, 1<<20)

// extents calls data for each data region of f (by SEEK_DATA/SEEK_HOLE; a file system
// without them reports the whole file as data) and then end with the file size.
func extents(f *os.File, data func(off, n int64) error, end func(size int64) error) error {
	st, err := f.Stat()
	if err != nil {
		return err
	}
	size := st.Size()
	for off := int64(0); off < size; {
		start, err := f.Seek(off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole is left
		}
		if err != nil {
			start = off // no SEEK_DATA here: all data
		}
		stop, err := f.Seek(start, unix.SEEK_HOLE)
		if err != nil {
			stop = size
		}
		if err := data(start, stop-start); err != nil {
			return err
		}
		off = stop
	}
	return end(size)
}

// WriteSparse writes the raw image at path as a sparse stream.
func WriteSparse(w io.Writer, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	var hdr [16]byte
	bw.WriteString(sparseMagic)
	binary.BigEndian.PutUint64(hdr[:8], uint64(st.Size()))
	bw.Write(hdr[:8])
	err = extents(f, func(off, n int64) error {
		for n > 0 {
			k := min(n, maxExtent)
			binary.BigEndian.PutUint64(hdr[:8], uint64(off))
			binary.BigEndian.PutUint64(hdr[8:], uint64(k))
			if _, err := bw.Write(hdr[:]); err != nil {
				return err
			}
			if _, err := io.Copy(bw, io.NewSectionReader(f, off, k)); err != nil {
				return err
			}
			off, n = off+k, n-k
		}
		return nil
	}, func(size int64) error {
		binary.BigEndian.PutUint64(hdr[:8], uint64(size))
		binary.BigEndian.PutUint64(hdr[8:], 0)
		_, err := bw.Write(hdr[:])
		return err
	})
	if err != nil {
		return err
	}
	return bw.Flush()
}

// Disk is where ReadSparse writes: a block device or a file.
type Disk interface {
	io.WriterAt
	// Zero makes [off, off+n) read as zeros (e.g. BLKZEROOUT, or writing zeros).
	Zero(off, n int64) error
}

// SparseHeader reads the stream's header and returns the image size.
func SparseHeader(r io.Reader) (int64, error) {
	var hdr [24]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, fmt.Errorf("sparse stream header: %w", err)
	}
	if string(hdr[:16]) != sparseMagic {
		return 0, errors.New("not an etcdbake sparse image stream")
	}
	return int64(binary.BigEndian.Uint64(hdr[16:])), nil
}

// ReadSparse writes the extents that follow the header to d, zeroes the gaps between
// them, and checks the SHA-256 of the whole stream, the header SparseHeader read
// included, against want (hex; StreamSHA256). progress, when not nil, is called with the
// bytes of the image done so far.
func ReadSparse(r io.Reader, size int64, d Disk, want string, progress func(done int64)) error {
	h := sha256.New()
	var hdr [8]byte
	binary.BigEndian.PutUint64(hdr[:], uint64(size))
	h.Write([]byte(sparseMagic))
	h.Write(hdr[:])
	r = io.TeeReader(r, h)
	buf := make([]byte, maxExtent)
	var pos int64
	var rec [16]byte
	gap := func(to int64) error {
		if to < pos || to > size {
			return fmt.Errorf("sparse stream: extent at %d out of order or past the image size %d", to, size)
		}
		if to == pos {
			return nil
		}
		if err := d.Zero(pos, to-pos); err != nil {
			return fmt.Errorf("zeroing %d bytes at %d: %w", to-pos, pos, err)
		}
		pos = to
		return nil
	}
	for {
		if _, err := io.ReadFull(r, rec[:]); err != nil {
			return fmt.Errorf("sparse stream cut short at %d of %d bytes: %w", pos, size, err)
		}
		off, n := int64(binary.BigEndian.Uint64(rec[:8])), int64(binary.BigEndian.Uint64(rec[8:]))
		if n == 0 {
			if off != size {
				return fmt.Errorf("sparse stream ends at %d, the image is %d bytes", off, size)
			}
			if err := gap(size); err != nil {
				return err
			}
			break
		}
		if n > maxExtent || off+n > size {
			return fmt.Errorf("sparse stream: bad extent %d+%d (image %d bytes)", off, n, size)
		}
		if err := gap(off); err != nil {
			return err
		}
		if _, err := io.ReadFull(r, buf[:n]); err != nil {
			return fmt.Errorf("sparse stream cut short in the extent at %d: %w", off, err)
		}
		if _, err := d.WriteAt(buf[:n], off); err != nil {
			return fmt.Errorf("writing %d bytes at %d: %w", n, off, err)
		}
		pos = off + n
		if progress != nil {
			progress(pos)
		}
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		return fmt.Errorf("image stream sha256 %s, want %s: the image was corrupted on the way", got, want)
	}
	return nil
}
