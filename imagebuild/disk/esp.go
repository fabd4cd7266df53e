package disk

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/diskfs/go-diskfs/backend"
	"github.com/diskfs/go-diskfs/filesystem/fat32"
	"github.com/etcdbake/etcdbake/imagebuild/fstree"
)

// ESPFile is one file of an EFI system partition.
type ESPFile struct {
	// Path inside the file system, slash-separated ("EFI/BOOT/BOOTX64.EFI"); a leading
	// slash is ignored and missing directories are created. Names are limited to
	// printable ASCII without the characters FAT forbids (`"*/:<>?\|`).
	Path string
	// Data is the content, unless Source is set.
	Data []byte
	// Source names a local file to read the content from (kernel, initrd); it is
	// streamed, not held in memory.
	Source string
}

// espMinClusters is the smallest cluster count a FAT32 file system may have; with fewer,
// readers (fsck.vfat, Linux, firmware) decide by the count that it is FAT16.
const espMinClusters = 65525

// espChunk is how much of a Source file is written to the FAT32 file system per call.
const espChunk = 8 << 20

// LoaderConf returns a systemd-boot loader/loader.conf that boots at once, with the
// editor and the automatic entries disabled. It has no default: systemd-boot then boots
// the first entry in its order (newest name first, entries whose boot-counting tries are
// used up last), which is what A/B boot counting needs. A default naming an entry would
// stop matching once the entry carries a counter (its ID is the whole file name), or
// would pin an entry that failed.
func LoaderConf() []byte {
	return []byte("timeout 0\neditor no\nauto-entries no\nauto-firmware no\n")
}

// LoaderEntry returns a systemd-boot type-1 boot loader entry (loader/entries/<x>.conf).
// kernel and initrd are paths on the ESP ("/vmlinuz"); an empty initrd or options leaves
// the line out. systemd-boot adds initrd= to the command line itself.
func LoaderEntry(title, kernel, initrd, options string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "title %s\n", title)
	fmt.Fprintf(&b, "linux %s\n", kernel)
	if initrd != "" {
		fmt.Fprintf(&b, "initrd %s\n", initrd)
	}
	if options != "" {
		fmt.Fprintf(&b, "options %s\n", options)
	}
	return b.Bytes()
}

// WriteESP writes a FAT32 file system of size bytes (a multiple of 512, at least
// 33 MiB: FAT32 needs 65525 clusters and go-diskfs uses 512-byte clusters up to 260 MiB)
// holding files to the file at path, which is created or truncated. label is the volume
// label (at most 11 characters, upper-cased; "" means NO NAME), volID the volume serial
// number (see DeriveVolumeID), and every directory entry gets mtime as its creation,
// modification and access time (its wall-clock fields, FAT has no time zone; the zero
// time means 1980-01-01 00:00:00, the FAT epoch).
//
// The output depends only on the arguments and the files' contents: identical inputs give
// byte-identical images. It passes `fsck.vfat -n`: go-diskfs's output is repaired after
// writing (see fixFAT32).
func WriteESP(path string, size int64, label string, volID uint32, mtime time.Time, files []ESPFile) error {
	return withSparseFile(path, size, func(f *os.File) error {
		return writeESPAt(f, 0, size, label, volID, mtime, files)
	})
}

// ESPContent returns a partition content function that builds the same file system as
// WriteESP directly inside the disk image, filling the partition (no temporary file).
// The io.WriterAt it is given must also be an io.ReaderAt (the *os.File WriteDisk passes
// is) and the region must read as zeros (a freshly truncated disk does).
func ESPContent(label string, volID uint32, mtime time.Time, files []ESPFile) ContentFunc {
	return func(ctx context.Context, w io.WriterAt, offset, size int64) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		rw, ok := w.(espReadWriterAt)
		if !ok {
			return fmt.Errorf("ESP content needs an io.ReaderAt too, got %T", w)
		}
		return writeESPAt(rw, offset, size, label, volID, mtime, files)
	}
}

type espReadWriterAt interface {
	io.ReaderAt
	io.WriterAt
}

func writeESPAt(rw espReadWriterAt, off, size int64, label string, volID uint32, mtime time.Time, files []ESPFile) error {
	if size <= 0 || size%512 != 0 {
		return fmt.Errorf("ESP size %d is not a positive multiple of 512", size)
	}
	if size > fat32.Fat32MaxSize {
		return fmt.Errorf("ESP size %d is larger than FAT32 allows", size)
	}
	label, err := espLabel(label)
	if err != nil {
		return err
	}
	if mtime.IsZero() {
		mtime = time.Date(1980, 1, 1, 0, 0, 0, 0, time.UTC)
	}
	if y := mtime.Year(); y < 1980 || y > 2107 {
		return fmt.Errorf("ESP time %s is outside the FAT range 1980-2107", mtime)
	}
	sorted, err := espSortFiles(files)
	if err != nil {
		return err
	}

	store := newESPStorage(rw, off, size)
	// reproducible=true only makes go-diskfs leave the volume serial 0; fixFAT32 sets
	// ours. Timestamps are fixed there too.
	fs, err := fat32.Create(store, size, 0, 512, label, true)
	if err != nil {
		return fmt.Errorf("creating FAT32 file system: %w", err)
	}
	boot := make([]byte, 512)
	if _, err := rw.ReadAt(boot, off); err != nil {
		return err
	}
	g, err := parseFAT32Boot(boot)
	if err != nil {
		return fmt.Errorf("FAT32 boot sector: %w", err)
	}
	if n := g.usableClusters(); n < espMinClusters {
		return fmt.Errorf("ESP of %d bytes has %d clusters, fewer than FAT32 needs (%d): make it larger", size, n, espMinClusters)
	}
	for _, f := range sorted {
		if dir := path.Dir(f.Path); dir != "." {
			if err := fs.Mkdir("/" + dir); err != nil {
				return fmt.Errorf("ESP: creating /%s: %w", dir, err)
			}
		}
		if err := espWriteFile(fs, f); err != nil {
			return fmt.Errorf("ESP: writing /%s: %w", f.Path, err)
		}
	}
	if err := fixFAT32(rw, off, volID, mtime); err != nil {
		return fmt.Errorf("ESP: %w", err)
	}
	return nil
}

// espLabel validates and normalises a FAT volume label.
func espLabel(label string) (string, error) {
	if label == "" {
		return "NO NAME", nil
	}
	label = strings.ToUpper(label)
	if len(label) > 11 {
		return "", fmt.Errorf("FAT volume label %q is longer than 11 characters", label)
	}
	for _, c := range []byte(label) {
		if c < 0x20 || c > 0x7e || strings.IndexByte(`"*+,./:;<=>?[\]|`, c) >= 0 {
			return "", fmt.Errorf("FAT volume label %q has an invalid character %q", label, c)
		}
	}
	return label, nil
}

// espSortFiles cleans the paths, checks names and conflicts and sorts by path so the
// image does not depend on the order the caller listed the files in.
func espSortFiles(files []ESPFile) ([]ESPFile, error) {
	out := make([]ESPFile, 0, len(files))
	seen := map[string]bool{}
	for _, f := range files {
		p := fstree.Clean(f.Path)
		if p == "" {
			return nil, fmt.Errorf("ESP file with an empty path")
		}
		for _, name := range strings.Split(p, "/") {
			if err := espCheckName(name); err != nil {
				return nil, fmt.Errorf("ESP file %q: %w", f.Path, err)
			}
		}
		key := strings.ToUpper(p) // FAT names are case-insensitive
		if seen[key] {
			return nil, fmt.Errorf("ESP file %q is listed twice", f.Path)
		}
		seen[key] = true
		if f.Source != "" && f.Data != nil {
			return nil, fmt.Errorf("ESP file %q has both Data and Source", f.Path)
		}
		f.Path = p
		out = append(out, f)
	}
	for _, f := range out {
		for d := path.Dir(f.Path); d != "."; d = path.Dir(d) {
			if seen[strings.ToUpper(d)] {
				return nil, fmt.Errorf("ESP file %q is below file %q", f.Path, d)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}

func espCheckName(name string) error {
	if name == "." || name == ".." {
		return fmt.Errorf("invalid name %q", name)
	}
	if len(name) > 255 {
		return fmt.Errorf("name longer than 255 characters")
	}
	if strings.HasSuffix(name, ".") || strings.HasSuffix(name, " ") || strings.HasPrefix(name, " ") {
		return fmt.Errorf("name %q starts with a space or ends with a dot or space", name)
	}
	for _, c := range []byte(name) {
		if c < 0x20 || c > 0x7e || strings.IndexByte(`"*/:<>?\|`, c) >= 0 {
			return fmt.Errorf("name %q has a character FAT does not allow here (%q)", name, c)
		}
	}
	return nil
}

func espWriteFile(fs *fat32.FileSystem, f ESPFile) error {
	out, err := fs.OpenFile("/"+f.Path, os.O_CREATE|os.O_RDWR)
	if err != nil {
		return err
	}
	defer out.Close()
	if f.Source == "" {
		if len(f.Data) == 0 {
			return nil
		}
		_, err := out.Write(f.Data)
		return err
	}
	in, err := os.Open(f.Source)
	if err != nil {
		return err
	}
	defer in.Close()
	buf := make([]byte, espChunk)
	for {
		n, rerr := io.ReadFull(in, buf)
		if n > 0 {
			if _, err := out.Write(buf[:n]); err != nil {
				return err
			}
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// espStorage presents the region [off, off+size) of rw as a go-diskfs backend. Writes
// outside the region fail instead of spilling into the neighbouring partition.
type espStorage struct {
	storageCursor
	rw  espReadWriterAt
	off int64
}

var _ backend.Storage = (*espStorage)(nil)
var _ backend.WritableFile = (*espStorage)(nil)

func newESPStorage(rw espReadWriterAt, off, size int64) *espStorage {
	s := &espStorage{rw: rw, off: off}
	s.storageCursor = storageCursor{name: "esp", size: size, at: s}
	return s
}

func (s *espStorage) Writable() (backend.WritableFile, error) { return s, nil }

func (s *espStorage) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("negative read offset")
	}
	if off >= s.size {
		return 0, io.EOF
	}
	short := false
	if int64(len(p)) > s.size-off {
		p = p[:s.size-off]
		short = true
	}
	n, err := s.rw.ReadAt(p, s.off+off)
	if err == nil && short {
		err = io.EOF
	}
	return n, err
}

func (s *espStorage) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > s.size {
		return 0, fmt.Errorf("write of %d bytes at %d is beyond the end of the %d-byte FAT file system (too small for its files?)", len(p), off, s.size)
	}
	return s.rw.WriteAt(p, s.off+off)
}

// fatGeometry is what fixFAT32 needs from a FAT32 boot sector.
type fatGeometry struct {
	bytesPerSector    int64
	sectorsPerCluster int64
	reservedSectors   int64
	fatCount          int64
	sectorsPerFAT     int64
	totalSectors      int64
	rootCluster       uint32
	fsInfoSector      int64
	backupBootSector  int64
	clusterCount      uint32 // data clusters, numbered 2 .. clusterCount+1
	fatEntries        int64  // entries one FAT has room for
}

// usableClusters is the cluster count once the file system is shrunk to what its FAT
// can describe (see fixFAT32).
func (g *fatGeometry) usableClusters() uint32 {
	return uint32(min(int64(g.clusterCount), g.fatEntries-2))
}

func (g *fatGeometry) clusterBytes() int64 { return g.bytesPerSector * g.sectorsPerCluster }
func (g *fatGeometry) fatOffset(i int64) int64 {
	return (g.reservedSectors + i*g.sectorsPerFAT) * g.bytesPerSector
}
func (g *fatGeometry) clusterOffset(c uint32) int64 {
	return g.fatOffset(g.fatCount) + int64(c-2)*g.clusterBytes()
}

func parseFAT32Boot(b []byte) (*fatGeometry, error) {
	if len(b) < 512 || b[510] != 0x55 || b[511] != 0xaa {
		return nil, errors.New("no boot sector signature")
	}
	le16 := func(o int) int64 { return int64(binary.LittleEndian.Uint16(b[o:])) }
	le32 := func(o int) int64 { return int64(binary.LittleEndian.Uint32(b[o:])) }
	g := &fatGeometry{
		bytesPerSector:    le16(11),
		sectorsPerCluster: int64(b[13]),
		reservedSectors:   le16(14),
		fatCount:          int64(b[16]),
		totalSectors:      le16(19),
		sectorsPerFAT:     le16(22),
		rootCluster:       binary.LittleEndian.Uint32(b[44:]),
		fsInfoSector:      le16(48),
		backupBootSector:  le16(50),
	}
	switch g.bytesPerSector {
	case 512, 1024, 2048, 4096:
	default:
		return nil, fmt.Errorf("bad bytes per sector %d", g.bytesPerSector)
	}
	if g.sectorsPerCluster == 0 || g.sectorsPerCluster&(g.sectorsPerCluster-1) != 0 {
		return nil, fmt.Errorf("bad sectors per cluster %d", g.sectorsPerCluster)
	}
	if le16(17) != 0 || g.sectorsPerFAT != 0 {
		return nil, errors.New("not FAT32 (fixed root directory or 16-bit FAT size)")
	}
	g.sectorsPerFAT = le32(36)
	if g.totalSectors == 0 {
		g.totalSectors = le32(32)
	}
	if g.reservedSectors == 0 || g.fatCount == 0 || g.sectorsPerFAT == 0 {
		return nil, errors.New("bad FAT32 layout")
	}
	data := g.totalSectors - g.reservedSectors - g.fatCount*g.sectorsPerFAT
	if data <= 0 {
		return nil, errors.New("no data area")
	}
	g.clusterCount = uint32(data / g.sectorsPerCluster)
	g.fatEntries = g.sectorsPerFAT * g.bytesPerSector / 4
	if g.fatEntries < 3 {
		return nil, errors.New("FAT too small")
	}
	if g.rootCluster < 2 || g.rootCluster > g.clusterCount+1 {
		return nil, fmt.Errorf("bad root cluster %d", g.rootCluster)
	}
	if g.fsInfoSector == 0 || g.fsInfoSector >= g.reservedSectors {
		return nil, errors.New("no FSInfo sector")
	}
	return g, nil
}

// fatTimestamp encodes t as FAT date, time and 10 ms units (0-199).
func fatTimestamp(t time.Time) (date, tm uint16, tenth byte) {
	date = uint16((t.Year()-1980)<<9 | int(t.Month())<<5 | t.Day())
	tm = uint16(t.Hour()<<11 | t.Minute()<<5 | t.Second()/2)
	tenth = byte(t.Second()%2*100 + t.Nanosecond()/10_000_000)
	return date, tm, tenth
}

const (
	fatAttrVolumeID  = 0x08
	fatAttrDirectory = 0x10
	fatAttrLFN       = 0x0f
	fatEOC           = 0x0fffffff
	fatEntryMask     = 0x0fffffff
	fatDirEntrySize  = 32
)

var (
	fatDotName    = []byte(".          ")
	fatDotDotName = []byte("..         ")
)

// fixFAT32 repairs and normalises a FAT32 file system written by go-diskfs (v1.9.4) that
// starts at off in rw:
//
//   - the volume serial number (boot sector offset 67 and its backup) is set to volID;
//   - every short directory entry (files, directories, "." and "..", the volume label)
//     gets mtime as its creation, modification and access time, replacing go-diskfs's
//     time.Now() stamps, so the image is reproducible;
//   - ".." in a directory whose parent is the root gets cluster 0, as the FAT
//     specification requires (go-diskfs writes the root's cluster, 2); every "." and
//     ".." is (re)set to the directory itself / its parent, and must be the first two
//     entries;
//   - where go-diskfs's FAT is 2 entries short of the data area's clusters (it happens
//     for some sizes, 64 MiB among them; fsck.vfat then refuses the file system), the
//     boot sectors' total sector count is lowered to the clusters the FAT can describe;
//   - a file's cluster chain is cut to its size (go-diskfs gives an empty file one
//     cluster; an empty file must have cluster 0 and no chain), clusters no directory
//     entry reaches are freed, and cross-linked or short chains are reported as errors;
//   - the FSInfo sector (and its backup) gets the real free cluster count and the first
//     free cluster as next-free hint (go-diskfs leaves both 0xFFFFFFFF).
//
// It works from the on-disk structures only: the boot sector, the FAT and the
// directory clusters.
//
// It is long because it is one pass over the FAT structures in on-disk order, doing the
// repairs listed above where each structure is read.
func fixFAT32(rw espReadWriterAt, off int64, volID uint32, mtime time.Time) error {
	boot := make([]byte, 512)
	if _, err := rw.ReadAt(boot, off); err != nil {
		return fmt.Errorf("reading boot sector: %w", err)
	}
	g, err := parseFAT32Boot(boot)
	if err != nil {
		return fmt.Errorf("FAT32 boot sector: %w", err)
	}
	bps := g.bytesPerSector

	// Volume serial, in the boot sector and its backup.
	var serial [4]byte
	binary.LittleEndian.PutUint32(serial[:], volID)
	bootSectors := []int64{0}
	if g.backupBootSector != 0 {
		bootSectors = append(bootSectors, g.backupBootSector)
	}
	for _, s := range bootSectors {
		if _, err := rw.WriteAt(serial[:], off+s*bps+67); err != nil {
			return err
		}
	}

	// go-diskfs sizes the FAT as ceil(4*(total-reserved) / (bytesPerCluster+8)) sectors,
	// which for some sizes (64 MiB, for one) leaves room for 2 entries fewer than the
	// data area has clusters (+2 reserved entries); fsck.vfat then refuses the file
	// system. go-diskfs never allocates a cluster its FAT cannot hold, so shrinking the
	// file system's sector count to the clusters the FAT describes loses nothing.
	if n := g.usableClusters(); n < g.clusterCount {
		total := g.reservedSectors + g.fatCount*g.sectorsPerFAT + int64(n)*g.sectorsPerCluster
		var v [4]byte
		binary.LittleEndian.PutUint32(v[:], uint32(total))
		for _, s := range bootSectors {
			if _, err := rw.WriteAt([]byte{0, 0}, off+s*bps+19); err != nil { // 16-bit count unused
				return err
			}
			if _, err := rw.WriteAt(v[:], off+s*bps+32); err != nil {
				return err
			}
		}
		g.totalSectors, g.clusterCount = total, n
	}

	// The FAT, first copy; all copies are rewritten from it at the end.
	fatBytes := make([]byte, g.sectorsPerFAT*bps)
	if _, err := rw.ReadAt(fatBytes, off+g.fatOffset(0)); err != nil {
		return fmt.Errorf("reading FAT: %w", err)
	}
	maxCluster := g.clusterCount + 1
	fat := make([]uint32, int64(len(fatBytes))/4)
	for i := range fat {
		fat[i] = binary.LittleEndian.Uint32(fatBytes[i*4:]) & fatEntryMask
	}
	for c := maxCluster + 1; int(c) < len(fat); c++ {
		if fat[c] != 0 {
			return fmt.Errorf("cluster %d beyond the data area (%d clusters) is in use: the file system is too small for its files", c, g.clusterCount)
		}
	}
	owner := make([]bool, maxCluster+1) // clusters reached from a directory entry
	chain := func(first uint32) ([]uint32, error) {
		var out []uint32
		for c := first; ; {
			if c < 2 || c > maxCluster {
				return nil, fmt.Errorf("cluster chain from %d reaches invalid cluster %d", first, c)
			}
			if owner[c] {
				return nil, fmt.Errorf("cluster %d is cross-linked (chain from %d)", c, first)
			}
			if fat[c] == 0 {
				return nil, fmt.Errorf("cluster chain from %d reaches free cluster %d", first, c)
			}
			owner[c] = true
			out = append(out, c)
			if fat[c] >= 0x0ffffff8 {
				return out, nil
			}
			c = fat[c]
		}
	}

	date, tm, tenth := fatTimestamp(mtime)
	type dirTodo struct {
		cluster uint32
		dotdot  uint32 // what ".." must hold: the parent's cluster, 0 for the root
		name    string
	}
	todo := []dirTodo{{cluster: g.rootCluster, name: "/"}}
	cb := g.clusterBytes()
	for len(todo) > 0 {
		d := todo[0]
		todo = todo[1:]
		isRoot := d.cluster == g.rootCluster
		clusters, err := chain(d.cluster)
		if err != nil {
			return fmt.Errorf("directory %s: %w", d.name, err)
		}
		buf := make([]byte, int64(len(clusters))*cb)
		for i, c := range clusters {
			if _, err := rw.ReadAt(buf[int64(i)*cb:int64(i+1)*cb], off+g.clusterOffset(c)); err != nil {
				return fmt.Errorf("reading directory %s: %w", d.name, err)
			}
		}
		names := map[string]bool{}
		for i := 0; i+fatDirEntrySize <= len(buf); i += fatDirEntrySize {
			e := buf[i : i+fatDirEntrySize]
			if e[0] == 0 {
				break
			}
			if e[0] == 0xe5 || e[11]&0x3f == fatAttrLFN {
				continue
			}
			e[13] = tenth
			binary.LittleEndian.PutUint16(e[14:], tm)
			binary.LittleEndian.PutUint16(e[16:], date)
			binary.LittleEndian.PutUint16(e[18:], date)
			binary.LittleEndian.PutUint16(e[22:], tm)
			binary.LittleEndian.PutUint16(e[24:], date)
			attr := e[11]
			if attr&fatAttrVolumeID != 0 {
				continue
			}
			first := uint32(binary.LittleEndian.Uint16(e[20:]))<<16 | uint32(binary.LittleEndian.Uint16(e[26:]))
			setFirst := func(c uint32) {
				binary.LittleEndian.PutUint16(e[20:], uint16(c>>16))
				binary.LittleEndian.PutUint16(e[26:], uint16(c))
			}
			shortName := string(e[0:11])
			switch {
			case bytes.Equal(e[0:11], fatDotName):
				if isRoot || i != 0 {
					return fmt.Errorf("directory %s: misplaced \".\" entry", d.name)
				}
				setFirst(d.cluster)
				continue
			case bytes.Equal(e[0:11], fatDotDotName):
				if isRoot || i != fatDirEntrySize {
					return fmt.Errorf("directory %s: misplaced \"..\" entry", d.name)
				}
				setFirst(d.dotdot)
				continue
			}
			if !isRoot && i < 2*fatDirEntrySize {
				return fmt.Errorf("directory %s does not start with \".\" and \"..\"", d.name)
			}
			if names[shortName] {
				return fmt.Errorf("directory %s: duplicate short name %q", d.name, shortName)
			}
			names[shortName] = true
			childName := path.Join(d.name, strings.TrimSpace(shortName))
			if attr&fatAttrDirectory != 0 {
				dotdot := d.cluster
				if isRoot {
					dotdot = 0
				}
				todo = append(todo, dirTodo{cluster: first, dotdot: dotdot, name: childName})
				continue
			}
			size := int64(binary.LittleEndian.Uint32(e[28:]))
			want := int((size + cb - 1) / cb)
			if first == 0 {
				if want != 0 {
					return fmt.Errorf("file %s: %d bytes but no clusters", childName, size)
				}
				continue
			}
			fc, err := chain(first)
			if err != nil {
				return fmt.Errorf("file %s: %w", childName, err)
			}
			if len(fc) < want {
				return fmt.Errorf("file %s: %d bytes but only %d clusters", childName, size, len(fc))
			}
			for _, c := range fc[want:] { // surplus clusters: free them
				fat[c] = 0
				owner[c] = false
			}
			if want == 0 {
				setFirst(0)
			} else {
				fat[fc[want-1]] = fatEOC
			}
		}
		for i, c := range clusters {
			if _, err := rw.WriteAt(buf[int64(i)*cb:int64(i+1)*cb], off+g.clusterOffset(c)); err != nil {
				return fmt.Errorf("writing directory %s: %w", d.name, err)
			}
		}
	}

	// Free what no entry reaches, count free clusters, rewrite every FAT copy.
	free, nextFree := uint32(0), uint32(0xffffffff)
	for c := uint32(2); c <= maxCluster; c++ {
		if !owner[c] {
			fat[c] = 0
		}
		if fat[c] == 0 {
			free++
			if nextFree == 0xffffffff {
				nextFree = c
			}
		}
	}
	for c := uint32(2); c <= maxCluster; c++ {
		binary.LittleEndian.PutUint32(fatBytes[c*4:], fat[c]|binary.LittleEndian.Uint32(fatBytes[c*4:])&^fatEntryMask)
	}
	for i := int64(0); i < g.fatCount; i++ {
		if _, err := rw.WriteAt(fatBytes, off+g.fatOffset(i)); err != nil {
			return fmt.Errorf("writing FAT %d: %w", i+1, err)
		}
	}

	fsInfoSectors := []int64{g.fsInfoSector}
	if g.backupBootSector != 0 {
		fsInfoSectors = append(fsInfoSectors, g.backupBootSector+g.fsInfoSector)
	}
	for n, s := range fsInfoSectors {
		sec := make([]byte, 512)
		if _, err := rw.ReadAt(sec, off+s*bps); err != nil {
			return fmt.Errorf("reading FSInfo: %w", err)
		}
		if binary.LittleEndian.Uint32(sec[0:]) != 0x41615252 ||
			binary.LittleEndian.Uint32(sec[484:]) != 0x61417272 ||
			binary.LittleEndian.Uint32(sec[508:]) != 0xaa550000 {
			if n == 0 {
				return errors.New("FSInfo sector has no signature")
			}
			continue // no backup FSInfo: leave the sector alone
		}
		var v [8]byte
		binary.LittleEndian.PutUint32(v[0:], free)
		binary.LittleEndian.PutUint32(v[4:], nextFree)
		if _, err := rw.WriteAt(v[:], off+s*bps+488); err != nil {
			return fmt.Errorf("writing FSInfo: %w", err)
		}
	}
	return nil
}
