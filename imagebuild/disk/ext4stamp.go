package disk

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"time"

	"github.com/google/uuid"
)

// Reproducible ext4 images.
//
// go-diskfs v1.9.4 stamps time.Now() on the superblock and on every inode's change time
// (Chtimes sets only atime, mtime and crtime) and draws the directory hash seed (and the
// file system UUID when none is given) from uuid.NewRandom, the uuid package's
// process-wide random source. Two things make its output byte-identical for the same
// input, without touching that source:
//
//   - ext4Identity derives the UUID (when none is given) and the hash seed from the file
//     system's identity (its UUID and label), as UUIDs read from a deterministic stream;
//     the UUID is passed to go-diskfs, the hash seed is written over the random one by
//     stampExt4 (go-diskfs only stores it in the superblock: its directories are linear,
//     so nothing on disk was computed from it);
//   - after go-diskfs has closed the file system, stampExt4 rewrites every time field of the
//     superblock (and its backups) and of every inode in use to one instant, and recomputes
//     the superblock and inode checksums (crc32c, as the kernel and e2fsck compute them).
//     Nothing else is touched; e2fsck -fn is run on the result by the tests.

// ext4Identity returns what go-diskfs would draw at random for the file system identified
// by seed: its UUID (used only when none is given) and its directory hash seed. They are
// the UUIDs google/uuid made, up to the previous version of this writer, while its random
// source was swapped for hashStream(seed) during ext4.Create: the UUID first when none was
// given, then the hash seed. Keeping those bytes keeps images byte-identical.
func ext4Identity(seed string, needUUID bool) (fsUUID *uuid.UUID, hashSeed [16]byte, err error) {
	stream := newHashStream(seed)
	if needUUID {
		u, err := uuid.NewRandomFromReader(stream)
		if err != nil {
			return nil, hashSeed, err
		}
		fsUUID = &u
	}
	h, err := uuid.NewRandomFromReader(stream)
	if err != nil {
		return nil, hashSeed, err
	}
	return fsUUID, h, nil
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
	sbOffHashSeed     = 0xEC
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
	inOffUIDLo      = 0x02
	inOffFlags      = 0x20
	inOffBlock      = 0x28
	inOffGIDLo      = 0x18
	inOffUIDHi      = 0x78
	inOffGIDHi      = 0x7A
	inFlagExtents   = 0x80000
	extentMagic     = 0xF30A
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

// inodeAttrs are the permission bits and owner one path must have.
type inodeAttrs struct {
	Perm     uint16 // rwx bits with setuid, setgid and sticky (07777); ignored for symlinks
	UID, GID uint32
}

// stampExt4 finishes the ext4 file system in img (the whole file system, as bytes): every
// inode reached from the root by a path in attrs gets that path's permission bits and
// owner, the superblock (and its backups) gets hashSeed as its directory hash seed (when
// not nil), and every timestamp of the superblock and of every inode in use becomes t
// (when t is not zero); the checksums are recomputed.
//
// The attributes are set here, by path, instead of through go-diskfs's Chmod and Chown:
// each of those walks the path from the root again, re-reading every directory on the way
// (about a third of the writer's time for a Debian root), and they cannot reach the root
// directory or a symlink's owner.
func stampExt4(img []byte, t time.Time, attrs map[string]inodeAttrs, hashSeed *[16]byte) error {
	fsys, err := parseExt4(img)
	if err != nil {
		return err
	}
	le := binary.LittleEndian
	secs, nsExtra := t.Unix(), extraTime(t)
	sb := img[sbOffset : sbOffset+1024]

	if len(attrs) > 0 {
		set := func(p string, in []byte) {
			a, ok := attrs[p]
			if !ok {
				return
			}
			mode := le.Uint16(in[inOffMode:])
			if mode&0xF000 != 0xA000 { // symlinks keep 0777
				le.PutUint16(in[inOffMode:], mode&0xF000|a.Perm&0o7777)
			}
			le.PutUint16(in[inOffUIDLo:], uint16(a.UID))
			le.PutUint16(in[inOffUIDHi:], uint16(a.UID>>16))
			le.PutUint16(in[inOffGIDLo:], uint16(a.GID))
			le.PutUint16(in[inOffGIDHi:], uint16(a.GID>>16))
		}
		root, err := fsys.inode(ext4RootInode)
		if err != nil {
			return err
		}
		set("", root)
		if err := fsys.walk(ext4RootInode, "", 0, set); err != nil {
			return err
		}
	}

	if !t.IsZero() || hashSeed != nil {
		// Superblock and its backups: the primary at byte 1024, a backup at the start of
		// each group that has one (recognised by magic and UUID: go-diskfs leaves
		// s_block_group_nr 0 in its backups).
		for g := int64(0); g < fsys.groups; g++ {
			pos := int64(sbOffset)
			if g > 0 {
				pos = (fsys.firstData + g*fsys.blocksPerGrp) * fsys.blockSize
			}
			if pos+1024 > int64(len(img)) {
				break
			}
			b := img[pos : pos+1024]
			if le.Uint16(b[sbOffMagic:]) != sbMagic || !bytes.Equal(b[sbOffUUID:sbOffUUID+16], sb[sbOffUUID:sbOffUUID+16]) {
				continue
			}
			if hashSeed != nil {
				copy(b[sbOffHashSeed:sbOffHashSeed+16], hashSeed[:])
			}
			if !t.IsZero() {
				for _, o := range []int{sbOffMtime, sbOffWtime, sbOffLastCheck, sbOffMkfsTime} {
					le.PutUint32(b[o:], uint32(secs))
				}
				for _, o := range []int{sbOffWtimeHi, sbOffMtimeHi, sbOffMkfsTimeHi, sbOffLastCheckHi} {
					b[o] = byte(secs >> 32)
				}
			}
			if fsys.metaCsum || le.Uint32(b[sbOffChecksum:]) != 0 {
				le.PutUint32(b[sbOffChecksum:], crc32cRaw(^uint32(0), b[:sbOffChecksum]))
			}
		}
	}

	// Every inode in use: times, then the checksum (over the attributes set above too).
	zero := make([]byte, fsys.inodeSize)
	for g := int64(0); g < fsys.groups; g++ {
		table, err := fsys.inodeTable(g)
		if err != nil {
			return err
		}
		for i := int64(0); i < fsys.inodesPerGrp; i++ {
			num := g*fsys.inodesPerGrp + i + 1
			if num > fsys.inodesCount {
				break
			}
			in := table[i*fsys.inodeSize : (i+1)*fsys.inodeSize]
			if bytes.Equal(in, zero) {
				continue
			}
			if !t.IsZero() {
				stampTimes(in, secs, nsExtra)
			}
			checksumInode(in, uint32(num), fsys.csumSeed)
		}
	}
	return nil
}

// ext4Image is the geometry of an ext4 file system held in memory, read from its
// superblock and group descriptors (see the kernel's fs/ext4/ext4.h).
type ext4Image struct {
	img                                   []byte
	blockSize, blocksPerGrp, inodesPerGrp int64
	inodeSize, firstData, inodesCount     int64
	groups                                int64
	gdt                                   []byte
	descSize                              int64
	is64, metaCsum                        bool
	csumSeed                              uint32
}

const ext4RootInode = 2

func parseExt4(img []byte) (*ext4Image, error) {
	if len(img) < sbOffset+1024 {
		return nil, fmt.Errorf("ext4: %d bytes is too small for a file system", len(img))
	}
	sb := img[sbOffset : sbOffset+1024]
	le := binary.LittleEndian
	if le.Uint16(sb[sbOffMagic:]) != sbMagic {
		return nil, fmt.Errorf("ext4 superblock: bad magic %#x", le.Uint16(sb[sbOffMagic:]))
	}
	incompat := le.Uint32(sb[sbOffIncompat:])
	f := &ext4Image{
		img:          img,
		blockSize:    int64(1024) << le.Uint32(sb[sbOffLogBlockSize:]),
		blocksPerGrp: int64(le.Uint32(sb[sbOffBlocksPerGrp:])),
		inodesPerGrp: int64(le.Uint32(sb[sbOffInodesPerGrp:])),
		inodeSize:    int64(le.Uint16(sb[sbOffInodeSize:])),
		firstData:    int64(le.Uint32(sb[sbOffFirstData:])),
		inodesCount:  int64(le.Uint32(sb[sbOffInodesCount:])),
		metaCsum:     le.Uint32(sb[sbOffROCompat:])&roCompatMetaCsum != 0,
		is64:         incompat&incompat64Bit != 0,
		descSize:     32,
	}
	blocks := int64(le.Uint32(sb[sbOffBlocksLo:]))
	if f.is64 {
		blocks |= int64(le.Uint32(sb[sbOffBlocksHi:])) << 32
		if ds := int64(le.Uint16(sb[sbOffDescSize:])); ds > 0 {
			f.descSize = ds
		}
	}
	if f.blocksPerGrp == 0 || f.inodesPerGrp == 0 || f.inodeSize < inGoodOldSize || f.blockSize > 64<<10 {
		return nil, fmt.Errorf("ext4 superblock: implausible geometry (block size %d, blocks/group %d, inodes/group %d, inode size %d)", f.blockSize, f.blocksPerGrp, f.inodesPerGrp, f.inodeSize)
	}
	f.groups = (blocks - f.firstData + f.blocksPerGrp - 1) / f.blocksPerGrp
	f.csumSeed = crc32cRaw(^uint32(0), sb[sbOffUUID:sbOffUUID+16])
	if incompat&incompatCsumSeed != 0 {
		f.csumSeed = le.Uint32(sb[sbOffCsumSeed:])
	}
	// Group descriptors follow the primary superblock's block.
	gdtOff := (f.firstData + 1) * f.blockSize
	gdt, err := f.bytes(gdtOff, f.groups*f.descSize)
	if err != nil {
		return nil, fmt.Errorf("ext4 group descriptors: %w", err)
	}
	f.gdt = gdt
	return f, nil
}

// bytes is the slice [off, off+n) of the image, or an error naming what is out of range.
func (f *ext4Image) bytes(off, n int64) ([]byte, error) {
	if off < 0 || n < 0 || off+n > int64(len(f.img)) {
		return nil, fmt.Errorf("bytes %d-%d are outside the %d-byte file system", off, off+n, len(f.img))
	}
	return f.img[off : off+n], nil
}

func (f *ext4Image) inodeTable(g int64) ([]byte, error) {
	le := binary.LittleEndian
	d := f.gdt[g*f.descSize : (g+1)*f.descSize]
	itab := int64(le.Uint32(d[gdOffInodeTableLo:]))
	if f.is64 && f.descSize >= 64 {
		itab |= int64(le.Uint32(d[gdOffInodeTableHi:])) << 32
	}
	n := f.inodesPerGrp * f.inodeSize
	if rest := f.inodesCount - g*f.inodesPerGrp; rest < f.inodesPerGrp {
		n = rest * f.inodeSize
	}
	t, err := f.bytes(itab*f.blockSize, n)
	if err != nil {
		return nil, fmt.Errorf("ext4 inode table of group %d: %w", g, err)
	}
	return t, nil
}

// inode is inode num's bytes, in place.
func (f *ext4Image) inode(num uint32) ([]byte, error) {
	if num == 0 || int64(num) > f.inodesCount {
		return nil, fmt.Errorf("ext4: inode %d out of range (1-%d)", num, f.inodesCount)
	}
	g, i := (int64(num)-1)/f.inodesPerGrp, (int64(num)-1)%f.inodesPerGrp
	t, err := f.inodeTable(g)
	if err != nil {
		return nil, err
	}
	return t[i*f.inodeSize : (i+1)*f.inodeSize], nil
}

// extentBlocks lists the physical blocks of an inode's data in file order, from its
// extent tree (i_block holds the root node).
func (f *ext4Image) extentBlocks(in []byte) ([]int64, error) {
	if binary.LittleEndian.Uint32(in[inOffFlags:])&inFlagExtents == 0 {
		return nil, fmt.Errorf("inode without an extent tree")
	}
	var out []int64
	var node func(b []byte, depth int) error
	node = func(b []byte, depth int) error {
		le := binary.LittleEndian
		if len(b) < 12 || le.Uint16(b[0:]) != extentMagic {
			return fmt.Errorf("bad extent header")
		}
		n, d := int(le.Uint16(b[2:])), int(le.Uint16(b[6:]))
		if d != depth && depth >= 0 || d > 5 || 12+12*n > len(b) {
			return fmt.Errorf("bad extent node (depth %d, %d entries)", d, n)
		}
		for k := 0; k < n; k++ {
			e := b[12+12*k : 24+12*k]
			if d == 0 {
				length := int64(le.Uint16(e[4:]))
				if length > 32768 { // uninitialised extent: reads as zeros
					continue
				}
				start := int64(le.Uint16(e[6:]))<<32 | int64(le.Uint32(e[8:]))
				for j := int64(0); j < length; j++ {
					out = append(out, start+j)
				}
				continue
			}
			leaf := int64(le.Uint16(e[8:]))<<32 | int64(le.Uint32(e[4:]))
			child, err := f.bytes(leaf*f.blockSize, f.blockSize)
			if err != nil {
				return err
			}
			if err := node(child, d-1); err != nil {
				return err
			}
		}
		return nil
	}
	return out, node(in[inOffBlock:inOffBlock+60], -1)
}

// walk calls fn for every entry below directory dir (at path p, "" for the root), with
// the entry's path and inode, parents before children. Directory blocks are read
// linearly, which is valid for hashed directories too (their index blocks look like
// empty entries).
func (f *ext4Image) walk(dir uint32, p string, depth int, fn func(path string, in []byte)) error {
	if depth > 256 {
		return fmt.Errorf("ext4: directories nested deeper than 256 at /%s", p)
	}
	din, err := f.inode(dir)
	if err != nil {
		return err
	}
	blocks, err := f.extentBlocks(din)
	if err != nil {
		return fmt.Errorf("ext4 directory /%s: %w", p, err)
	}
	le := binary.LittleEndian
	for _, blk := range blocks {
		b, err := f.bytes(blk*f.blockSize, f.blockSize)
		if err != nil {
			return fmt.Errorf("ext4 directory /%s: %w", p, err)
		}
		for pos := 0; pos+8 <= len(b); {
			ino, recLen, nameLen := le.Uint32(b[pos:]), int(le.Uint16(b[pos+4:])), int(b[pos+6])
			if recLen < 8 || pos+recLen > len(b) || 8+nameLen > recLen {
				return fmt.Errorf("ext4 directory /%s: bad entry at byte %d of block %d", p, pos, blk)
			}
			name := string(b[pos+8 : pos+8+nameLen])
			isDir := b[pos+7] == 2
			pos += recLen
			if ino == 0 || name == "." || name == ".." {
				continue
			}
			cp := name
			if p != "" {
				cp = p + "/" + name
			}
			in, err := f.inode(ino)
			if err != nil {
				return fmt.Errorf("ext4 /%s: %w", cp, err)
			}
			fn(cp, in)
			if isDir {
				if err := f.walk(ino, cp, depth+1, fn); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// extraTime is the *_extra field for t: nanoseconds << 2 | the epoch bits above 32.
func extraTime(t time.Time) uint32 {
	return uint32(t.Nanosecond())<<2 | uint32((t.Unix()-int64(int32(t.Unix())))>>32)&3
}

// stampTimes sets the inode's times.
func stampTimes(in []byte, secs int64, extra uint32) {
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
}

// checksumInode recomputes the inode's checksum. go-diskfs fills the checksum fields even
// without metadata_csum (where nothing reads them), so they are recomputed either way.
func checksumInode(in []byte, num uint32, csumSeed uint32) {
	le := binary.LittleEndian
	extraSize := 0
	if len(in) > inGoodOldSize {
		extraSize = int(le.Uint16(in[inOffExtraIsize:]))
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
