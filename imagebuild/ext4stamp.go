package imagebuild

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"sync"
	"time"

	"github.com/google/uuid"
)

// Reproducible ext4 images.
//
// go-diskfs v1.9.4 stamps time.Now() on the superblock and on every inode's change time
// (Chtimes sets only atime, mtime and crtime) and draws the directory hash seed from
// uuid.NewRandom. Two things make its output byte-identical for the same input:
//
//   - while a file system is created, google/uuid draws from a reader seeded by the file
//     system's UUID (seededUUIDs), so the hash seed follows from the cluster and node names;
//   - after go-diskfs has closed the file system, stampExt4 rewrites every time field of the
//     superblock (and its backups) and of every inode in use to one instant, and recomputes
//     the superblock and inode checksums (crc32c, as the kernel and e2fsck compute them).
//     Nothing else is touched; e2fsck -fn is run on the result by the tests.

var uuidRandMu sync.Mutex

// seededUUIDs makes google/uuid's random source deterministic (derived from seed) until the
// returned function is called. It holds a lock for that time: uuid's source is global.
func seededUUIDs(seed string) (restore func()) {
	uuidRandMu.Lock()
	uuid.SetRand(newHashStream(seed))
	return func() {
		uuid.SetRand(nil)
		uuidRandMu.Unlock()
	}
}

// hashStream is an endless deterministic byte stream: sha256(seed || counter) blocks.
type hashStream struct {
	seed []byte
	n    uint64
	buf  []byte
}

func newHashStream(seed string) *hashStream { return &hashStream{seed: []byte(seed)} }

func (h *hashStream) Read(p []byte) (int, error) {
	for i := range p {
		if len(h.buf) == 0 {
			var ctr [8]byte
			binary.LittleEndian.PutUint64(ctr[:], h.n)
			h.n++
			sum := sha256.Sum256(append(append([]byte{}, h.seed...), ctr[:]...))
			h.buf = sum[:]
		}
		p[i], h.buf = h.buf[0], h.buf[1:]
	}
	return len(p), nil
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// crc32cRaw is the kernel's crc32c_le(seed, p): no inversion on entry or exit (Go's
// crc32.Update inverts both).
func crc32cRaw(seed uint32, p []byte) uint32 {
	return ^crc32.Update(^seed, castagnoli, p)
}

// ext4 on-disk offsets used here (superblock relative to its start, inode relative to its
// start); see the kernel's fs/ext4/ext4.h.
const (
	sbOffset          = 1024
	sbMagic           = 0xEF53
	sbOffInodesCount  = 0x00
	sbOffBlocksLo     = 0x04
	sbOffFirstData    = 0x14
	sbOffLogBlockSize = 0x18
	sbOffBlocksPerGrp = 0x20
	sbOffInodesPerGrp = 0x28
	sbOffMtime        = 0x2C
	sbOffWtime        = 0x30
	sbOffMagic        = 0x38
	sbOffLastCheck    = 0x40
	sbOffInodeSize    = 0x58
	sbOffIncompat     = 0x60
	sbOffROCompat     = 0x64
	sbOffUUID         = 0x68
	sbOffDescSize     = 0xFE
	sbOffMkfsTime     = 0x108
	sbOffBlocksHi     = 0x150
	sbOffCsumSeed     = 0x270
	sbOffWtimeHi      = 0x274
	sbOffMtimeHi      = 0x275
	sbOffMkfsTimeHi   = 0x276
	sbOffLastCheckHi  = 0x277
	sbOffChecksum     = 0x3FC

	incompat64Bit    = 0x80
	incompatCsumSeed = 0x2000
	roCompatMetaCsum = 0x400

	gdOffInodeTableLo = 0x08
	gdOffInodeTableHi = 0x28

	inOffMode       = 0x00
	inOffAtime      = 0x08
	inOffCtime      = 0x0C
	inOffMtime      = 0x10
	inOffLinks      = 0x1A
	inOffGeneration = 0x64
	inOffCsumLo     = 0x7C
	inOffExtraIsize = 0x80
	inOffCsumHi     = 0x82
	inOffCtimeExtra = 0x84
	inOffMtimeExtra = 0x88
	inOffAtimeExtra = 0x8C
	inOffCrtime     = 0x90
	inOffCrtimeExtr = 0x94
	inGoodOldSize   = 128
)

// stampExt4 sets every timestamp of the ext4 file system at off in f to t (see above).
func stampExt4(f *os.File, off int64, t time.Time) error {
	sb := make([]byte, 1024)
	if _, err := f.ReadAt(sb, off+sbOffset); err != nil {
		return fmt.Errorf("ext4 superblock: %w", err)
	}
	le := binary.LittleEndian
	if le.Uint16(sb[sbOffMagic:]) != sbMagic {
		return fmt.Errorf("ext4 superblock: bad magic %#x", le.Uint16(sb[sbOffMagic:]))
	}
	var (
		blockSize     = int64(1024) << le.Uint32(sb[sbOffLogBlockSize:])
		blocksPerGrp  = int64(le.Uint32(sb[sbOffBlocksPerGrp:]))
		inodesPerGrp  = int64(le.Uint32(sb[sbOffInodesPerGrp:]))
		inodeSize     = int64(le.Uint16(sb[sbOffInodeSize:]))
		firstData     = int64(le.Uint32(sb[sbOffFirstData:]))
		incompat      = le.Uint32(sb[sbOffIncompat:])
		metaCsum      = le.Uint32(sb[sbOffROCompat:])&roCompatMetaCsum != 0
		blocks        = int64(le.Uint32(sb[sbOffBlocksLo:]))
		inodesCount   = int64(le.Uint32(sb[sbOffInodesCount:]))
		descSize      = int64(32)
		is64          = incompat&incompat64Bit != 0
		secs, nsExtra = t.Unix(), extraTime(t)
	)
	if is64 {
		blocks |= int64(le.Uint32(sb[sbOffBlocksHi:])) << 32
		if ds := int64(le.Uint16(sb[sbOffDescSize:])); ds > 0 {
			descSize = ds
		}
	}
	if blocksPerGrp == 0 || inodesPerGrp == 0 || inodeSize < inGoodOldSize {
		return fmt.Errorf("ext4 superblock: implausible geometry (blocks/group %d, inodes/group %d, inode size %d)", blocksPerGrp, inodesPerGrp, inodeSize)
	}
	groups := (blocks - firstData + blocksPerGrp - 1) / blocksPerGrp
	csumSeed := crc32cRaw(^uint32(0), sb[sbOffUUID:sbOffUUID+16])
	if incompat&incompatCsumSeed != 0 {
		csumSeed = le.Uint32(sb[sbOffCsumSeed:])
	}

	// Superblock and its backups: the primary at byte 1024, a backup at the start of
	// each group that has one (recognised by magic and group number).
	for g := int64(0); g < groups; g++ {
		pos := off + sbOffset
		if g > 0 {
			pos = off + (firstData+g*blocksPerGrp)*blockSize
		}
		b := make([]byte, 1024)
		if _, err := f.ReadAt(b, pos); err != nil {
			return fmt.Errorf("ext4 superblock copy in group %d: %w", g, err)
		}
		// go-diskfs leaves s_block_group_nr 0 in its backups: a copy is recognised by
		// magic and UUID.
		if le.Uint16(b[sbOffMagic:]) != sbMagic || !bytes.Equal(b[sbOffUUID:sbOffUUID+16], sb[sbOffUUID:sbOffUUID+16]) {
			continue
		}
		for _, o := range []int{sbOffMtime, sbOffWtime, sbOffLastCheck, sbOffMkfsTime} {
			le.PutUint32(b[o:], uint32(secs))
		}
		for _, o := range []int{sbOffWtimeHi, sbOffMtimeHi, sbOffMkfsTimeHi, sbOffLastCheckHi} {
			b[o] = byte(secs >> 32)
		}
		if metaCsum || le.Uint32(b[sbOffChecksum:]) != 0 {
			le.PutUint32(b[sbOffChecksum:], crc32cRaw(^uint32(0), b[:sbOffChecksum]))
		}
		if _, err := f.WriteAt(b, pos); err != nil {
			return err
		}
	}

	// Group descriptors follow the primary superblock's block.
	gdt := make([]byte, groups*descSize)
	if _, err := f.ReadAt(gdt, off+(firstData+1)*blockSize); err != nil {
		return fmt.Errorf("ext4 group descriptors: %w", err)
	}
	table := make([]byte, inodesPerGrp*inodeSize)
	zero := make([]byte, inodeSize)
	for g := int64(0); g < groups; g++ {
		d := gdt[g*descSize : (g+1)*descSize]
		itab := int64(le.Uint32(d[gdOffInodeTableLo:]))
		if is64 && descSize >= 64 {
			itab |= int64(le.Uint32(d[gdOffInodeTableHi:])) << 32
		}
		pos := off + itab*blockSize
		if _, err := f.ReadAt(table, pos); err != nil && err != io.EOF {
			return fmt.Errorf("ext4 inode table of group %d: %w", g, err)
		}
		changed := false
		for i := int64(0); i < inodesPerGrp; i++ {
			num := g*inodesPerGrp + i + 1
			if num > inodesCount {
				break
			}
			in := table[i*inodeSize : (i+1)*inodeSize]
			if bytes.Equal(in, zero) {
				continue
			}
			stampInode(in, uint32(num), secs, nsExtra, csumSeed)
			changed = true
		}
		if changed {
			if _, err := f.WriteAt(table, pos); err != nil {
				return err
			}
		}
	}
	return nil
}

// extraTime is the *_extra field for t: nanoseconds << 2 | the epoch bits above 32.
func extraTime(t time.Time) uint32 {
	return uint32(t.Nanosecond())<<2 | uint32((t.Unix()-int64(int32(t.Unix())))>>32)&3
}

// stampInode sets the inode's times and recomputes its checksum. go-diskfs fills the
// checksum fields even without metadata_csum (where nothing reads them), from contents
// that included the old times, so they are recomputed either way.
func stampInode(in []byte, num uint32, secs int64, extra, csumSeed uint32) {
	le := binary.LittleEndian
	for _, o := range []int{inOffAtime, inOffCtime, inOffMtime} {
		le.PutUint32(in[o:], uint32(secs))
	}
	extraSize := 0
	if len(in) > inGoodOldSize {
		extraSize = int(le.Uint16(in[inOffExtraIsize:]))
	}
	// The extra fields exist when i_extra_isize covers them.
	for _, o := range []int{inOffCtimeExtra, inOffMtimeExtra, inOffAtimeExtra, inOffCrtimeExtr} {
		if inGoodOldSize+extraSize >= o+4 {
			le.PutUint32(in[o:], extra)
		}
	}
	if inGoodOldSize+extraSize >= inOffCrtime+4 {
		le.PutUint32(in[inOffCrtime:], uint32(secs))
	}
	hasHi := inGoodOldSize+extraSize >= inOffCsumHi+2
	le.PutUint16(in[inOffCsumLo:], 0)
	if hasHi {
		le.PutUint16(in[inOffCsumHi:], 0)
	}
	var b [4]byte
	le.PutUint32(b[:], num)
	c := crc32cRaw(csumSeed, b[:])
	c = crc32cRaw(c, in[inOffGeneration:inOffGeneration+4])
	c = crc32cRaw(c, in) // checksum fields are zero here, as the kernel computes it
	le.PutUint16(in[inOffCsumLo:], uint16(c))
	if hasHi {
		le.PutUint16(in[inOffCsumHi:], uint16(c>>16))
	}
}
