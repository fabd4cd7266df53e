// Package disk writes the parts of a node's disk image: the GPT disk with its partitions
// (disk.go), ext4 file systems from an fstree.Tree with the stamp that makes them
// reproducible (ext4.go, ext4stamp.go, membackend.go), the FAT32 EFI system partition
// (esp.go), and the conversion to qcow2 with qemu-img (qcow2.go).
package disk

import (
	"context"
	"crypto/sha1"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"os"
	"strconv"
	"strings"
	"syscall"
	"unicode/utf16"

	"github.com/diskfs/go-diskfs/partition/gpt"
)

// GPT partition type GUIDs used by etcdbake images (all boot under OVMF).
const (
	TypeESP            = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" // EFI system partition
	TypeLinuxRootX8664 = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709" // Linux root (x86-64)
	TypeLinuxData      = "0FC63DAF-8483-4772-8E79-3D69D8477DE4" // Linux file system data
	TypeLinuxVar       = "4D21B016-B534-45C2-A9FB-5C16E091FD2D" // Linux /var
)

const (
	diskSectorSize = 512
	diskAlign      = 1 << 20 // partition start and size alignment, bytes
	// gptEntrySectors is the size of each partition entry array (128 entries of 128 bytes).
	gptEntrySectors = 128 * 128 / diskSectorSize
	gptMaxParts     = 128
)

// guidNamespace is the RFC 4122 name space of every id etcdbake derives.
var guidNamespace = [16]byte{
	0x3b, 0x6e, 0x0d, 0x52, 0x9a, 0x41, 0x4f, 0x0c,
	0x8e, 0x57, 0x21, 0xc4, 0x6a, 0x90, 0xd3, 0x1f,
}

func deriveHash(domain string, parts []string) []byte {
	h := sha1.New()
	h.Write(guidNamespace[:])
	h.Write([]byte(domain))
	for _, p := range parts {
		// NUL-separated, so ("ab","c") and ("a","bc") differ.
		h.Write([]byte{0})
		h.Write([]byte(p))
	}
	return h.Sum(nil)
}

// DeriveGUID returns a name-based (version 5 style: SHA-1 over a fixed etcdbake name
// space and the parts) GUID in the upper-case canonical form GPT tools print
// ("0FC63DAF-8483-4772-8E79-3D69D8477DE4"). The same parts always give the same GUID,
// so images are reproducible and a node's root=PARTUUID= can be known in advance.
func DeriveGUID(parts ...string) string {
	sum := deriveHash("guid", parts)
	var u [16]byte
	copy(u[:], sum)
	u[6] = u[6]&0x0f | 0x50 // version 5
	u[8] = u[8]&0x3f | 0x80 // RFC 4122 variant
	return formatGUID(u)
}

// DeriveVolumeID returns a FAT volume serial number derived from the parts.
func DeriveVolumeID(parts ...string) uint32 {
	v := binary.LittleEndian.Uint32(deriveHash("fat-volume-id", parts))
	if v == 0 {
		v = 1
	}
	return v
}

func formatGUID(u [16]byte) string {
	h := strings.ToUpper(hex.EncodeToString(u[:]))
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// normalizeGUID checks the canonical 8-4-4-4-12 hex form and upper-cases it.
func normalizeGUID(s string) (string, error) {
	if len(s) != 36 {
		return "", fmt.Errorf("invalid GUID %q", s)
	}
	for i, c := range s {
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return "", fmt.Errorf("invalid GUID %q", s)
			}
		default:
			if !strings.ContainsRune("0123456789abcdefABCDEF", c) {
				return "", fmt.Errorf("invalid GUID %q", s)
			}
		}
	}
	return strings.ToUpper(s), nil
}

// ContentFunc writes a partition's content. w is the whole disk image (WriteDisk passes
// its *os.File, so implementations may use it for fast paths such as copy_file_range);
// the partition occupies [offset, offset+size) and nothing outside may be written. The
// region reads as zeros beforehand and whatever is not written stays a hole. A long
// content function stops with ctx's error when ctx is cancelled.
type ContentFunc func(ctx context.Context, w io.WriterAt, offset, size int64) error

// Partition is one GPT partition of a disk written by WriteDisk.
type Partition struct {
	// Name is the GPT partition name (PARTLABEL), at most 36 UTF-16 code units.
	Name string
	// Type is the GPT type GUID (TypeESP, TypeLinuxRootX8664, ...).
	Type string
	// GUID is the unique partition GUID (PARTUUID). Empty derives one from the disk
	// GUID, the partition number and the name.
	GUID string
	// Size in bytes, a multiple of 1 MiB. 0 for the last partition means "the rest of
	// the disk" (rounded down to whole MiB).
	Size int64
	// Content fills the partition; nil leaves it zero (sparse). See FileContent,
	// BytesContent and ESPContent.
	Content ContentFunc
}

// Extent is where WriteDisk puts a partition.
type Extent struct {
	Offset, Size int64 // bytes from the start of the disk
	GUID         string
}

// LayoutDisk returns the placement WriteDisk uses for parts on a disk of size bytes:
// the first partition at 1 MiB, each following one right after the previous, all 1 MiB
// aligned, leaving the last 33 sectors (and the first 34) to the GPT.
func LayoutDisk(size int64, parts []Partition, diskGUID string) ([]Extent, error) {
	if size <= 0 || size%diskSectorSize != 0 {
		return nil, fmt.Errorf("disk size %d is not a positive multiple of %d", size, diskSectorSize)
	}
	if len(parts) == 0 {
		return nil, errors.New("no partitions")
	}
	if len(parts) > gptMaxParts {
		return nil, fmt.Errorf("%d partitions, GPT holds at most %d", len(parts), gptMaxParts)
	}
	dg, err := normalizeGUID(diskGUID)
	if err != nil {
		return nil, fmt.Errorf("disk GUID: %w", err)
	}
	sectors := size / diskSectorSize
	// Last usable sector: the backup header is the last sector, its entry array before it.
	lastUsable := sectors - 1 - gptEntrySectors - 1
	seen := map[string]string{dg: "the disk"}
	out := make([]Extent, len(parts))
	start := int64(diskAlign / diskSectorSize)
	for i, p := range parts {
		what := fmt.Sprintf("partition %d (%q)", i+1, p.Name)
		if n := len(utf16.Encode([]rune(p.Name))); n > 36 {
			return nil, fmt.Errorf("%s: name has %d UTF-16 code units, GPT allows 36", what, n)
		}
		if _, err := normalizeGUID(p.Type); err != nil {
			return nil, fmt.Errorf("%s: type: %w", what, err)
		}
		guid := p.GUID
		if guid == "" {
			guid = DeriveGUID("partition", dg, strconv.Itoa(i+1), p.Name)
		}
		if guid, err = normalizeGUID(guid); err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		if other, dup := seen[guid]; dup {
			return nil, fmt.Errorf("%s: GUID %s is also used by %s", what, guid, other)
		}
		seen[guid] = what
		var n int64 // sectors
		switch {
		case p.Size < 0 || p.Size%diskAlign != 0:
			return nil, fmt.Errorf("%s: size %d is not a multiple of 1 MiB", what, p.Size)
		case p.Size == 0 && i != len(parts)-1:
			return nil, fmt.Errorf("%s: only the last partition may have size 0 (fill the disk)", what)
		case p.Size == 0:
			n = (lastUsable + 1 - start) / (diskAlign / diskSectorSize) * (diskAlign / diskSectorSize)
			if n <= 0 {
				return nil, fmt.Errorf("%s: no room left on the %d-byte disk", what, size)
			}
		default:
			n = p.Size / diskSectorSize
		}
		if start+n-1 > lastUsable {
			return nil, fmt.Errorf("%s: ends at byte %d, beyond the usable end of the %d-byte disk (%d)",
				what, (start+n)*diskSectorSize, size, (lastUsable+1)*diskSectorSize)
		}
		out[i] = Extent{Offset: start * diskSectorSize, Size: n * diskSectorSize, GUID: guid}
		start += n
	}
	return out, nil
}

// WriteDisk writes a raw disk image of size bytes to path (created or truncated): a GPT
// with a protective MBR (OVMF ignores GPT disks without one), 512-byte sectors, the
// partitions laid out by LayoutDisk with the given names, types and GUIDs, and their
// contents. diskGUID is the disk's GUID (see DeriveGUID); nothing is random, so the same
// inputs give the same image. The file is sparse: it is truncated to size and only the
// GPT and the partition contents are written. On error, or when ctx is cancelled, the
// file is removed.
func WriteDisk(ctx context.Context, path string, size int64, parts []Partition, diskGUID string) (err error) {
	extents, err := LayoutDisk(size, parts, diskGUID)
	if err != nil {
		return err
	}
	return withSparseFile(path, size, func(f *os.File) error { return writeDisk(ctx, f, size, parts, extents, diskGUID) })
}

// withSparseFile creates (or truncates) path as a sparse file of size bytes, runs fill on
// it and closes it; if anything fails the file is removed.
func withSparseFile(path string, size int64, fill func(*os.File) error) (err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(path)
		}
	}()
	if err := f.Truncate(size); err != nil {
		return err
	}
	return fill(f)
}

func writeDisk(ctx context.Context, f *os.File, size int64, parts []Partition, extents []Extent, diskGUID string) error {
	table := &gpt.Table{
		LogicalSectorSize:  diskSectorSize,
		PhysicalSectorSize: diskSectorSize,
		ProtectiveMBR:      true,
		GUID:               strings.ToUpper(diskGUID), // validated by LayoutDisk
	}
	for i, p := range parts {
		x := extents[i]
		if err := ctx.Err(); err != nil {
			return err
		}
		if p.Content != nil {
			if err := p.Content(ctx, f, x.Offset, x.Size); err != nil {
				return fmt.Errorf("partition %d (%q): %w", i+1, p.Name, err)
			}
		}
		typ, _ := normalizeGUID(p.Type)
		table.Partitions = append(table.Partitions, &gpt.Partition{
			Index: i + 1,
			Start: uint64(x.Offset / diskSectorSize),
			End:   uint64((x.Offset+x.Size)/diskSectorSize - 1),
			Size:  uint64(x.Size),
			Type:  gpt.Type(typ),
			Name:  p.Name,
			GUID:  x.GUID,
		})
	}
	// The table goes last, so a content function cannot have overwritten it.
	if err := table.Write(gptFile{f}, size); err != nil {
		return fmt.Errorf("writing GPT: %w", err)
	}
	return nil
}

// gptFile hands go-diskfs the disk file without its Sync method (go-diskfs fsyncs after
// every table write when it can; an image being built needs no durability) and without
// letting it close the file.
type gptFile struct{ f *os.File }

func (g gptFile) Stat() (iofs.FileInfo, error)              { return g.f.Stat() }
func (g gptFile) Read(p []byte) (int, error)                { return g.f.Read(p) }
func (g gptFile) ReadAt(p []byte, off int64) (int, error)   { return g.f.ReadAt(p, off) }
func (g gptFile) WriteAt(p []byte, off int64) (int, error)  { return g.f.WriteAt(p, off) }
func (g gptFile) Seek(off int64, whence int) (int64, error) { return g.f.Seek(off, whence) }
func (g gptFile) Close() error                              { return nil }

// BytesContent returns a ContentFunc writing b at the start of the partition.
func BytesContent(b []byte) ContentFunc {
	return func(_ context.Context, w io.WriterAt, offset, size int64) error {
		if int64(len(b)) > size {
			return fmt.Errorf("content of %d bytes does not fit the %d-byte partition", len(b), size)
		}
		_, err := w.WriteAt(b, offset)
		return err
	}
}

// FileContent returns a ContentFunc copying a pre-built file system image (e.g. the
// shared root built once for all nodes) to the start of the partition. Only the
// source's data regions are copied (SEEK_DATA/SEEK_HOLE), so holes stay holes; when w
// is an *os.File (as WriteDisk passes) each region is copied in the kernel with
// copy_file_range (a reflink clone on file systems that can), else through a buffer, in
// chunks of copyChunk bytes so that a cancelled ctx stops it promptly.
func FileContent(src string) ContentFunc {
	return func(ctx context.Context, w io.WriterAt, offset, size int64) error {
		in, err := os.Open(src)
		if err != nil {
			return err
		}
		defer in.Close()
		st, err := in.Stat()
		if err != nil {
			return err
		}
		if !st.Mode().IsRegular() {
			return fmt.Errorf("%s is not a regular file", src)
		}
		if st.Size() > size {
			return fmt.Errorf("%s has %d bytes, more than the %d-byte partition", src, st.Size(), size)
		}
		for pos := int64(0); pos < st.Size(); {
			data, hole, err := nextDataRegion(in, pos, st.Size())
			if err != nil {
				return fmt.Errorf("%s: %w", src, err)
			}
			if data >= st.Size() {
				break
			}
			for c := data; c < hole; c += copyChunk {
				if err := ctx.Err(); err != nil {
					return err
				}
				if err := copyRegion(w, in, offset+c, c, min(copyChunk, hole-c)); err != nil {
					return fmt.Errorf("copying %s: %w", src, err)
				}
			}
			pos = hole
		}
		return nil
	}
}

// copyChunk is how much FileContent copies between two looks at its context (64 MiB:
// well under a second).
const copyChunk = 64 << 20

const (
	seekData = 3 // SEEK_DATA
	seekHole = 4 // SEEK_HOLE
)

// nextDataRegion returns the next data region [data, hole) of f at or after pos. Where
// the file system cannot report holes, the rest of the file is one data region.
func nextDataRegion(f *os.File, pos, end int64) (data, hole int64, err error) {
	data, err = f.Seek(pos, seekData)
	if err != nil {
		if errors.Is(err, syscall.ENXIO) { // no data after pos
			return end, end, nil
		}
		if errors.Is(err, syscall.EINVAL) {
			return pos, end, nil
		}
		return 0, 0, err
	}
	hole, err = f.Seek(data, seekHole)
	if err != nil {
		if errors.Is(err, syscall.EINVAL) {
			return data, end, nil
		}
		return 0, 0, err
	}
	return data, min(hole, end), nil
}

func copyRegion(w io.WriterAt, in *os.File, dstOff, srcOff, n int64) error {
	if out, ok := w.(*os.File); ok {
		if _, err := in.Seek(srcOff, io.SeekStart); err != nil {
			return err
		}
		if _, err := out.Seek(dstOff, io.SeekStart); err != nil {
			return err
		}
		// *os.File.ReadFrom uses copy_file_range(2) for a file source behind an
		// io.LimitedReader and falls back to a plain copy where the kernel refuses.
		copied, err := out.ReadFrom(io.LimitReader(in, n))
		if err != nil {
			return err
		}
		if copied != n {
			return fmt.Errorf("copied %d of %d bytes", copied, n)
		}
		return nil
	}
	copied, err := io.CopyBuffer(io.NewOffsetWriter(w, dstOff), io.NewSectionReader(in, srcOff, n), make([]byte, 1<<20))
	if err != nil {
		return err
	}
	if copied != n {
		return fmt.Errorf("copied %d of %d bytes", copied, n)
	}
	return nil
}
