package disk

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/fat32"
	"github.com/etcdbake/etcdbake/imagebuild/internal/imagetest"
)

// diskTestPattern is deterministic, non-repeating-looking content.
func diskTestPattern(n int, seed byte) []byte {
	b := make([]byte, n)
	x := uint32(seed)*2654435761 + 1
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	return b
}

var diskTestTime = time.Date(2024, 5, 17, 13, 45, 31, 0, time.UTC)

func diskTestESPFiles(t *testing.T) ([]ESPFile, map[string][]byte) {
	t.Helper()
	dir := t.TempDir()
	kernel := diskTestPattern(3<<20+123, 1)
	initrd := diskTestPattern(9<<20+7, 2) // larger than one write chunk
	if err := os.WriteFile(filepath.Join(dir, "vmlinuz"), kernel, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "initrd.img"), initrd, 0o644); err != nil {
		t.Fatal(err)
	}
	files := []ESPFile{
		{Path: "EFI/BOOT/BOOTX64.EFI", Data: diskTestPattern(300_001, 3)},
		{Path: "loader/loader.conf", Data: LoaderConf()},
		{Path: "/loader/entries/node-1.conf", Data: LoaderEntry("etcd node-1", "/vmlinuz", "/initrd.img", "root=PARTUUID=X ro")},
		{Path: "vmlinuz", Source: filepath.Join(dir, "vmlinuz")},
		{Path: "initrd.img", Source: filepath.Join(dir, "initrd.img")},
		{Path: "deep/nested/dir/a-rather-long-file-name.txt", Data: []byte("deep\n")},
		{Path: "deep/nested/other.bin", Data: diskTestPattern(513, 4)},
		{Path: "empty", Data: nil},
	}
	want := map[string][]byte{
		"EFI/BOOT/BOOTX64.EFI":       files[0].Data,
		"loader/loader.conf":         files[1].Data,
		"loader/entries/node-1.conf": files[2].Data,
		"vmlinuz":                    kernel,
		"initrd.img":                 initrd,
		"deep/nested/dir/a-rather-long-file-name.txt": []byte("deep\n"),
		"deep/nested/other.bin":                       files[6].Data,
		"empty":                                       {},
	}
	return files, want
}

// diskTestFsck runs fsck.vfat -n on img and fails unless it exits 0.
func diskTestFsck(t *testing.T, img string) {
	t.Helper()
	fsck := imagetest.Tool(t, "fsck.vfat", "dosfstools")
	out, err := exec.Command(fsck, "-n", "-v", img).CombinedOutput()
	if err != nil {
		t.Fatalf("fsck.vfat -n %s: %v\n%s", img, err, out)
	}
	t.Logf("fsck.vfat -n: exit 0\n%s", out)
}

func TestDeriveGUID(t *testing.T) {
	canon := regexp.MustCompile(`^[0-9A-F]{8}-[0-9A-F]{4}-5[0-9A-F]{3}-[89AB][0-9A-F]{3}-[0-9A-F]{12}$`)
	a := DeriveGUID("cluster", "node-1", "root")
	if a != DeriveGUID("cluster", "node-1", "root") {
		t.Fatal("DeriveGUID is not stable")
	}
	if !canon.MatchString(a) {
		t.Fatalf("DeriveGUID = %q, not an upper-case version-5 GUID", a)
	}
	seen := map[string]string{}
	for _, parts := range [][]string{
		{"cluster", "node-1", "root"}, {"cluster", "node-2", "root"}, {"cluster", "node-1", "esp"},
		{"other", "node-1", "root"}, {"ab", "c"}, {"a", "bc"}, {"abc"}, {}, {""},
	} {
		g := DeriveGUID(parts...)
		if !canon.MatchString(g) {
			t.Errorf("DeriveGUID(%q) = %q, not canonical", parts, g)
		}
		if other, dup := seen[g]; dup {
			t.Errorf("DeriveGUID(%q) = DeriveGUID(%s) = %s", parts, other, g)
		}
		seen[g] = fmt.Sprintf("%q", parts)
	}

	v := DeriveVolumeID("cluster", "node-1", "esp")
	if v != DeriveVolumeID("cluster", "node-1", "esp") || v == 0 {
		t.Fatalf("DeriveVolumeID not stable or zero: %#x", v)
	}
	if v == DeriveVolumeID("cluster", "node-2", "esp") {
		t.Fatal("DeriveVolumeID is the same for different nodes")
	}
}

func TestESPLoaderConfig(t *testing.T) {
	if got, want := string(LoaderConf()), "timeout 0\neditor no\nauto-entries no\nauto-firmware no\n"; got != want {
		t.Errorf("LoaderConf = %q, want %q", got, want)
	}
	got := string(LoaderEntry("etcd node-1", "/vmlinuz", "/initrd.img", "root=PARTUUID=AB ro console=ttyS0,115200"))
	want := "title etcd node-1\nlinux /vmlinuz\ninitrd /initrd.img\noptions root=PARTUUID=AB ro console=ttyS0,115200\n"
	if got != want {
		t.Errorf("LoaderEntry = %q, want %q", got, want)
	}
	if got := string(LoaderEntry("t", "/k", "", "")); got != "title t\nlinux /k\n" {
		t.Errorf("LoaderEntry without initrd/options = %q", got)
	}
}

// TestESPWriteFsckReadBack writes an ESP, checks fsck.vfat accepts it, reads every file
// back with go-diskfs and checks the repaired on-disk structures directly.
func TestESPWriteFsckReadBack(t *testing.T) {
	files, want := diskTestESPFiles(t)
	img := filepath.Join(t.TempDir(), "esp.img")
	const size = 64 << 20
	volID := DeriveVolumeID("test", "esp")
	if err := WriteESP(img, size, "esp", volID, diskTestTime, files); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(img); err != nil || st.Size() != size {
		t.Fatalf("image size: %v %v", st, err)
	}
	diskTestFsck(t, img)

	raw, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if got := binary.LittleEndian.Uint32(raw[67:]); got != volID {
		t.Errorf("volume serial = %#x, want %#x", got, volID)
	}
	if got := binary.LittleEndian.Uint32(raw[6*512+67:]); got != volID {
		t.Errorf("backup boot sector volume serial = %#x, want %#x", got, volID)
	}
	if got := string(raw[71:82]); got != "ESP        " {
		t.Errorf("volume label = %q", got)
	}
	g, err := parseFAT32Boot(raw[:512])
	if err != nil {
		t.Fatal(err)
	}
	// FSInfo: free count and next-free hint match the FAT.
	free, first := uint32(0), uint32(0)
	for c := uint32(2); c <= g.clusterCount+1; c++ {
		if binary.LittleEndian.Uint32(raw[g.fatOffset(0)+int64(c)*4:])&fatEntryMask == 0 {
			free++
			if first == 0 {
				first = c
			}
		}
	}
	for _, s := range []int64{g.fsInfoSector, g.backupBootSector + g.fsInfoSector} {
		fsi := raw[s*512:]
		if got := binary.LittleEndian.Uint32(fsi[488:]); got != free {
			t.Errorf("FSInfo (sector %d) free clusters = %d, want %d", s, got, free)
		}
		if got := binary.LittleEndian.Uint32(fsi[492:]); got != first {
			t.Errorf("FSInfo (sector %d) next free = %d, want %d", s, got, first)
		}
	}
	if !bytes.Equal(raw[g.fatOffset(0):g.fatOffset(1)], raw[g.fatOffset(1):g.fatOffset(2)]) {
		t.Error("the two FATs differ")
	}

	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fs, err := fat32.Read(file.New(f, true), size, 0, 512)
	if err != nil {
		t.Fatalf("go-diskfs cannot read the ESP back: %v", err)
	}
	for p, data := range want {
		if len(data) == 0 {
			// An empty file has first cluster 0 as the FAT specification says; go-diskfs
			// cannot open such a file (it wants a cluster chain), so only stat it.
			st, err := fs.Stat(p)
			if err != nil || st.Size() != 0 || st.IsDir() {
				t.Errorf("stat %s: %v %v", p, st, err)
			}
			continue
		}
		got, err := fs.ReadFile("/" + p)
		if err != nil {
			t.Errorf("reading /%s: %v", p, err)
			continue
		}
		if !bytes.Equal(got, data) {
			t.Errorf("/%s: read %d bytes, differing from the %d written", p, len(got), len(data))
		}
	}
	// The top-level directories' ".." entries point at cluster 0 (the root), deeper
	// ones at their parent; all entries carry the fixed time.
	for _, dir := range []string{"EFI", "loader", "deep", "deep/nested", "deep/nested/dir"} {
		st, err := fs.Stat(dir)
		if err != nil {
			t.Fatalf("stat %s: %v", dir, err)
		}
		if !st.IsDir() || !st.ModTime().Equal(diskTestTime.Truncate(2*time.Second)) {
			t.Errorf("%s: dir=%v mtime=%s, want a directory with mtime %s", dir, st.IsDir(), st.ModTime(), diskTestTime)
		}
	}
	st, err := fs.Stat("loader/entries/node-1.conf")
	if err != nil || !st.ModTime().Equal(diskTestTime.Truncate(2*time.Second)) {
		t.Errorf("loader entry mtime: %v %v", st, err)
	}
	var dotdot func(cluster, parentField uint32, name string, depth int)
	checked := 0
	dotdot = func(cluster, parentField uint32, name string, depth int) {
		d := raw[g.clusterOffset(cluster):][:g.clusterBytes()]
		for i := 0; i < len(d) && d[i] != 0; i += 32 {
			e := d[i : i+32]
			if e[11] == fatAttrLFN || e[0] == 0xe5 || e[11]&fatAttrVolumeID != 0 {
				continue
			}
			c := uint32(binary.LittleEndian.Uint16(e[20:]))<<16 | uint32(binary.LittleEndian.Uint16(e[26:]))
			switch string(e[:11]) {
			case ".          ":
				if c != cluster {
					t.Errorf("%s: \".\" points at %d, want %d", name, c, cluster)
				}
			case "..         ":
				checked++
				if c != parentField {
					t.Errorf("%s: \"..\" points at %d, want %d", name, c, parentField)
				}
			default:
				if e[11]&fatAttrDirectory != 0 {
					pf := cluster
					if depth == 0 {
						pf = 0
					}
					dotdot(c, pf, name+"/"+strings.TrimSpace(string(e[:11])), depth+1)
				}
				if strings.TrimSpace(string(e[:11])) == "EMPTY" && (c != 0 || binary.LittleEndian.Uint32(e[28:]) != 0) {
					t.Errorf("empty file has cluster %d", c)
				}
			}
		}
	}
	dotdot(g.rootCluster, 0, "", 0)
	// EFI, EFI/BOOT, loader, loader/entries, deep, deep/nested, deep/nested/dir
	if checked != 7 {
		t.Errorf("checked %d \"..\" entries, want 7", checked)
	}
}

// TestESPSizes checks fsck.vfat accepts ESPs of other sizes: the smallest FAT32 go-diskfs
// can make, one with 4 KiB clusters, and odd sizes.
func TestESPSizes(t *testing.T) {
	files, _ := diskTestESPFiles(t)
	for _, size := range []int64{33 << 20, 100 << 20, 127<<20 + 512, 300 << 20} {
		img := filepath.Join(t.TempDir(), "esp.img")
		if err := WriteESP(img, size, "ESP", 1, diskTestTime, files); err != nil {
			t.Fatalf("%d bytes: %v", size, err)
		}
		diskTestFsck(t, img)
	}
}

// TestESPDeterministic builds the same ESP twice while go-diskfs's clock (it honours
// SOURCE_DATE_EPOCH) says different times; the images must be byte-identical, and
// differ when the given time or volume id differ.
func TestESPDeterministic(t *testing.T) {
	files, _ := diskTestESPFiles(t)
	dir := t.TempDir()
	build := func(name, epoch string, volID uint32, mtime time.Time, files []ESPFile) []byte {
		t.Setenv("SOURCE_DATE_EPOCH", epoch)
		p := filepath.Join(dir, name)
		if err := WriteESP(p, 40<<20, "ESP", volID, mtime, files); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	a := build("a.img", "1000000000", 0x1234abcd, diskTestTime, files)
	reversed := append([]ESPFile(nil), files...)
	for i, j := 0, len(reversed)-1; i < j; i, j = i+1, j-1 {
		reversed[i], reversed[j] = reversed[j], reversed[i]
	}
	b := build("b.img", "1500000000", 0x1234abcd, diskTestTime, reversed)
	if !bytes.Equal(a, b) {
		for i := range a {
			if a[i] != b[i] {
				t.Fatalf("two builds with the same inputs differ, first at byte %d", i)
			}
		}
	}
	c := build("c.img", "1000000000", 0x1234abcd, diskTestTime.Add(time.Hour), files)
	if bytes.Equal(a, c) {
		t.Error("changing the time did not change the image")
	}
	d := build("d.img", "1000000000", 0x1234abce, diskTestTime, files)
	if bytes.Equal(a, d) {
		t.Error("changing the volume id did not change the image")
	}
}

func TestESPErrors(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "esp.img")
	for name, tc := range map[string]struct {
		size  int64
		label string
		files []ESPFile
	}{
		"too small for FAT32": {size: 16 << 20},
		"odd size":            {size: 40<<20 + 1},
		"label too long":      {size: 40 << 20, label: "ABCDEFGHIJKL"},
		"files do not fit":    {size: 40 << 20, files: []ESPFile{{Path: "big", Data: make([]byte, 41<<20)}}},
		"duplicate":           {size: 40 << 20, files: []ESPFile{{Path: "a/b"}, {Path: "A/B"}}},
		"file as dir":         {size: 40 << 20, files: []ESPFile{{Path: "a"}, {Path: "a/b"}}},
		"bad name":            {size: 40 << 20, files: []ESPFile{{Path: "a:b"}}},
		"missing source":      {size: 40 << 20, files: []ESPFile{{Path: "k", Source: filepath.Join(dir, "nope")}}},
	} {
		err := WriteESP(img, tc.size, tc.label, 1, diskTestTime, tc.files)
		if err == nil {
			t.Errorf("%s: no error", name)
			continue
		}
		t.Logf("%s: %v", name, err)
		if _, serr := os.Stat(img); !errors.Is(serr, os.ErrNotExist) {
			t.Errorf("%s: the failed image was left behind", name)
		}
	}
}

type diskTestSfdisk struct {
	PartitionTable struct {
		Label      string `json:"label"`
		ID         string `json:"id"`
		SectorSize int    `json:"sectorsize"`
		Partitions []struct {
			Node  string `json:"node"`
			Start int64  `json:"start"`
			Size  int64  `json:"size"`
			Type  string `json:"type"`
			UUID  string `json:"uuid"`
			Name  string `json:"name"`
		} `json:"partitions"`
	} `json:"partitiontable"`
}

// TestDiskWrite writes a disk with an ESP (built in place), a root partition copied from
// a sparse image file and a data partition filling the rest, and checks it with sgdisk,
// sfdisk, fsck.vfat and by reading the bytes.
func TestDiskWrite(t *testing.T) {
	dir := t.TempDir()
	espFiles, _ := diskTestESPFiles(t)

	// A sparse "root file system image": data at the start and near the end, a hole
	// between.
	rootImg := filepath.Join(dir, "root.img")
	head, tail := diskTestPattern(1<<20+5, 7), diskTestPattern(70_000, 8)
	const rootSize = 24 << 20
	const tailAt = 20 << 20
	rf, err := os.Create(rootImg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rf.WriteAt(head, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := rf.WriteAt(tail, tailAt); err != nil {
		t.Fatal(err)
	}
	if err := rf.Truncate(rootSize - 3<<20); err != nil { // smaller than the partition
		t.Fatal(err)
	}
	rf.Close()

	dataPattern := diskTestPattern(256<<10, 9)
	diskGUID := DeriveGUID("test", "disk")
	parts := []Partition{
		{Name: "esp", Type: TypeESP, GUID: DeriveGUID("test", "esp"), Size: 40 << 20,
			Content: ESPContent("ESP", 0xcafe, diskTestTime, espFiles)},
		{Name: "root", Type: TypeLinuxRootX8664, GUID: DeriveGUID("test", "root"), Size: rootSize,
			Content: FileContent(rootImg)},
		{Name: "node", Type: TypeLinuxData, Size: 4 << 20, // GUID derived
			Content: func(_ context.Context, w io.WriterAt, offset, size int64) error {
				_, err := w.WriteAt(bytes.Repeat([]byte("node"), int(size/4)), offset)
				return err
			}},
		{Name: "data", Type: TypeLinuxVar, GUID: DeriveGUID("test", "data"), Size: 0,
			Content: BytesContent(dataPattern)},
	}
	const diskSize = 200 << 20
	img := filepath.Join(dir, "disk.raw")
	if err := WriteDisk(context.Background(), img, diskSize, parts, diskGUID); err != nil {
		t.Fatal(err)
	}
	extents, err := LayoutDisk(diskSize, parts, diskGUID)
	if err != nil {
		t.Fatal(err)
	}
	wantSizes := []int64{40 << 20, rootSize, 4 << 20, diskSize - (1+40+24+4+1)<<20}
	wantGUIDs := []string{parts[0].GUID, parts[1].GUID, DeriveGUID("partition", diskGUID, "3", "node"), parts[3].GUID}
	for i, x := range extents {
		if x.Size != wantSizes[i] || x.GUID != wantGUIDs[i] || x.Offset%(1<<20) != 0 {
			t.Errorf("extent %d = %+v, want size %d guid %s, 1 MiB aligned", i, x, wantSizes[i], wantGUIDs[i])
		}
	}

	st, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != diskSize {
		t.Errorf("disk size %d, want %d", st.Size(), diskSize)
	}
	blocks := st.Sys().(*syscall.Stat_t).Blocks * 512
	t.Logf("disk: %d bytes, %d allocated", st.Size(), blocks)
	if blocks > diskSize/4 {
		t.Errorf("disk is not sparse: %d of %d bytes allocated", blocks, diskSize)
	}

	raw, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	// Protective MBR.
	if raw[510] != 0x55 || raw[511] != 0xaa {
		t.Errorf("no MBR signature: % x", raw[510:512])
	}
	if raw[450] != 0xee {
		t.Errorf("MBR partition type %#x, want 0xee", raw[450])
	}
	if got := binary.LittleEndian.Uint32(raw[454:]); got != 1 {
		t.Errorf("protective MBR starts at %d, want 1", got)
	}

	// Contents.
	espBytes := raw[extents[0].Offset:][:extents[0].Size]
	espAlone := filepath.Join(dir, "esp.img")
	if err := WriteESP(espAlone, extents[0].Size, "ESP", 0xcafe, diskTestTime, espFiles); err != nil {
		t.Fatal(err)
	}
	if alone, err := os.ReadFile(espAlone); err != nil || !bytes.Equal(alone, espBytes) {
		t.Errorf("ESP built in the disk differs from WriteESP's (err %v)", err)
	}
	espExtracted := filepath.Join(dir, "esp-extracted.img")
	if err := os.WriteFile(espExtracted, espBytes, 0o644); err != nil {
		t.Fatal(err)
	}
	diskTestFsck(t, espExtracted)

	// The hole in the root image stayed a hole in the disk.
	df, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	holeFrom, holeTo := extents[1].Offset+int64(len(head)+1<<20), extents[1].Offset+tailAt
	holeFrom = holeFrom &^ (1<<20 - 1)
	data, _, err := nextDataRegion(df, holeFrom, diskSize)
	df.Close()
	if err != nil {
		t.Fatal(err)
	}
	if data < holeTo {
		t.Errorf("disk has data at %d, inside the root image's hole [%d, %d)", data, holeFrom, holeTo)
	}

	rootBytes := raw[extents[1].Offset:][:extents[1].Size]
	wantRoot := make([]byte, rootSize)
	copy(wantRoot, head)
	copy(wantRoot[tailAt:], tail)
	if !bytes.Equal(rootBytes, wantRoot) {
		t.Error("root partition content differs from the image file")
	}
	if nodeBytes := raw[extents[2].Offset:][:extents[2].Size]; !bytes.Equal(nodeBytes, bytes.Repeat([]byte("node"), len(nodeBytes)/4)) {
		t.Error("node partition content wrong")
	}
	dataBytes := raw[extents[3].Offset:][:extents[3].Size]
	if !bytes.Equal(dataBytes[:len(dataPattern)], dataPattern) || bytes.Count(dataBytes[len(dataPattern):], []byte{0}) != len(dataBytes)-len(dataPattern) {
		t.Error("data partition content wrong")
	}

	// sgdisk -v: no problems.
	sgdisk := imagetest.Tool(t, "sgdisk", "gdisk")
	out, err := exec.Command(sgdisk, "-v", img).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "No problems found") {
		t.Fatalf("sgdisk -v: %v\n%s", err, out)
	}
	out, err = exec.Command(sgdisk, "-p", img).CombinedOutput()
	if err != nil {
		t.Fatalf("sgdisk -p: %v\n%s", err, out)
	}
	t.Logf("sgdisk -p:\n%s", out)
	if !strings.Contains(string(out), "Disk identifier (GUID): "+diskGUID) {
		t.Errorf("sgdisk -p does not show disk GUID %s", diskGUID)
	}
	for i, p := range parts {
		info, err := exec.Command(sgdisk, "-i", fmt.Sprint(i+1), img).CombinedOutput()
		if err != nil {
			t.Fatalf("sgdisk -i %d: %v\n%s", i+1, err, info)
		}
		for _, want := range []string{
			"Partition GUID code: " + p.Type,
			"Partition unique GUID: " + wantGUIDs[i],
			fmt.Sprintf("First sector: %d ", extents[i].Offset/512),
			fmt.Sprintf("Partition size: %d sectors", extents[i].Size/512),
			"Partition name: '" + p.Name + "'",
		} {
			if !strings.Contains(string(info), want) {
				t.Errorf("sgdisk -i %d lacks %q:\n%s", i+1, want, info)
			}
		}
	}

	// sfdisk --json: the same, machine-readable.
	sfdisk := imagetest.Tool(t, "sfdisk", "fdisk")
	out, err = exec.Command(sfdisk, "--json", img).Output()
	if err != nil {
		t.Fatalf("sfdisk --json: %v\n%s", err, out)
	}
	var sf diskTestSfdisk
	if err := json.Unmarshal(out, &sf); err != nil {
		t.Fatalf("sfdisk --json: %v\n%s", err, out)
	}
	pt := sf.PartitionTable
	if pt.Label != "gpt" || pt.ID != diskGUID || len(pt.Partitions) != len(parts) {
		t.Fatalf("sfdisk: label %q id %q with %d partitions\n%s", pt.Label, pt.ID, len(pt.Partitions), out)
	}
	for i, sp := range pt.Partitions {
		if sp.Name != parts[i].Name || sp.Type != parts[i].Type || sp.UUID != wantGUIDs[i] ||
			sp.Start*512 != extents[i].Offset || sp.Size*512 != wantSizes[i] {
			t.Errorf("sfdisk partition %d = %+v, want name %s type %s uuid %s start %d size %d",
				i+1, sp, parts[i].Name, parts[i].Type, wantGUIDs[i], extents[i].Offset/512, wantSizes[i]/512)
		}
	}

	// Deterministic: the same inputs give the same disk.
	img2 := filepath.Join(dir, "disk2.raw")
	if err := WriteDisk(context.Background(), img2, diskSize, parts, diskGUID); err != nil {
		t.Fatal(err)
	}
	if raw2, err := os.ReadFile(img2); err != nil || !bytes.Equal(raw, raw2) {
		t.Errorf("a second WriteDisk with the same inputs gave a different image (err %v)", err)
	}
}

func TestDiskLayoutErrors(t *testing.T) {
	g := DeriveGUID("test", "disk")
	ok := Partition{Name: "a", Type: TypeLinuxData, Size: 1 << 20}
	for name, tc := range map[string]struct {
		size  int64
		parts []Partition
		guid  string
	}{
		"no partitions":      {size: 8 << 20, guid: g},
		"no disk GUID":       {size: 8 << 20, parts: []Partition{ok}},
		"bad disk GUID":      {size: 8 << 20, parts: []Partition{ok}, guid: "xyz"},
		"odd disk size":      {size: 8<<20 + 1, parts: []Partition{ok}, guid: g},
		"size not MiB":       {size: 8 << 20, parts: []Partition{{Type: TypeLinuxData, Size: 4096}}, guid: g},
		"fill not last":      {size: 8 << 20, parts: []Partition{{Type: TypeLinuxData}, ok}, guid: g},
		"too big":            {size: 8 << 20, parts: []Partition{{Type: TypeLinuxData, Size: 7 << 20}}, guid: g},
		"no room for fill":   {size: 3 << 20, parts: []Partition{ok, {Type: TypeLinuxData}}, guid: g},
		"bad type":           {size: 8 << 20, parts: []Partition{{Type: "linux", Size: 1 << 20}}, guid: g},
		"name too long":      {size: 8 << 20, parts: []Partition{{Name: strings.Repeat("n", 37), Type: TypeLinuxData, Size: 1 << 20}}, guid: g},
		"duplicate GUIDs":    {size: 8 << 20, parts: []Partition{{Type: TypeLinuxData, GUID: g, Size: 1 << 20}}, guid: g},
		"duplicate GUIDs II": {size: 8 << 20, parts: []Partition{{Type: TypeLinuxData, GUID: DeriveGUID("x"), Size: 1 << 20}, {Type: TypeLinuxData, GUID: DeriveGUID("x"), Size: 1 << 20}}, guid: g},
	} {
		if _, err := LayoutDisk(tc.size, tc.parts, tc.guid); err == nil {
			t.Errorf("%s: no error", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
	// The last partition fills up to the last whole MiB before the backup GPT.
	x, err := LayoutDisk(8<<20, []Partition{ok, {Type: TypeLinuxData}}, g)
	if err != nil {
		t.Fatal(err)
	}
	if x[1].Offset != 2<<20 || x[1].Size != 5<<20 {
		t.Errorf("fill partition = %+v, want offset 2 MiB size 5 MiB", x[1])
	}
	// A content function failing removes the image.
	img := filepath.Join(t.TempDir(), "disk.raw")
	boom := errors.New("boom")
	err = WriteDisk(context.Background(), img, 8<<20, []Partition{{Type: TypeLinuxData, Size: 1 << 20,
		Content: func(context.Context, io.WriterAt, int64, int64) error { return boom }}}, g)
	if !errors.Is(err, boom) {
		t.Errorf("WriteDisk error = %v, want boom", err)
	}
	if _, err := os.Stat(img); !errors.Is(err, os.ErrNotExist) {
		t.Error("failed WriteDisk left the image behind")
	}
	// A source image larger than its partition is an error.
	big := filepath.Join(t.TempDir(), "big.img")
	if err := os.WriteFile(big, make([]byte, 2<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteDisk(context.Background(), img, 8<<20, []Partition{{Type: TypeLinuxData, Size: 1 << 20, Content: FileContent(big)}}, g); err == nil {
		t.Error("FileContent larger than the partition: no error")
	}
}

func TestDiskQCOW2(t *testing.T) {
	qemuImg := imagetest.Tool(t, "qemu-img", "qemu-utils")
	dir := t.TempDir()
	raw := filepath.Join(dir, "disk.raw")
	const size = 48 << 20
	if err := WriteDisk(context.Background(), raw, size, []Partition{
		{Name: "data", Type: TypeLinuxData, Size: 0, Content: BytesContent(diskTestPattern(1<<20, 5))},
	}, DeriveGUID("test", "qcow2")); err != nil {
		t.Fatal(err)
	}
	sizes := map[string]int64{}
	for _, compress := range []string{"", QCOW2Zlib, QCOW2Zstd} {
		q := filepath.Join(dir, fmt.Sprintf("disk-%s.qcow2", compress))
		var last, calls int64
		if err := ConvertQCOW2(context.Background(), raw, q, compress, func(done, total int64) {
			if done < last || total != 10000 {
				t.Errorf("progress went from %d to %d of %d", last, done, total)
			}
			last, calls = done, calls+1
		}); err != nil {
			t.Fatal(err)
		}
		if last != 10000 || calls < 2 {
			t.Errorf("compress=%v: progress ended at %d/10000 after %d reports", compress, last, calls)
		}
		out, err := exec.Command(qemuImg, "info", "--output", "json", q).Output()
		if err != nil {
			t.Fatalf("qemu-img info: %v", err)
		}
		var info struct {
			Format         string `json:"format"`
			VirtualSize    int64  `json:"virtual-size"`
			ActualSize     int64  `json:"actual-size"`
			FormatSpecific struct {
				Data struct {
					CompressionType string `json:"compression-type"`
				} `json:"data"`
			} `json:"format-specific"`
		}
		if err := json.Unmarshal(out, &info); err != nil {
			t.Fatalf("qemu-img info: %v\n%s", err, out)
		}
		if info.Format != "qcow2" || info.VirtualSize != size {
			t.Errorf("compress=%v: qemu-img info says %s, %d bytes; want qcow2, %d", compress, info.Format, info.VirtualSize, size)
		}
		// The clusters' compression is the one asked for (qemu-img names zlib for an
		// uncompressed image too: it is the header's default).
		if want := cmp.Or(compress, QCOW2Zlib); info.FormatSpecific.Data.CompressionType != want {
			t.Errorf("compress=%q: compression type %q, want %q", compress, info.FormatSpecific.Data.CompressionType, want)
		}
		sizes[compress] = info.ActualSize
		// The qcow2 holds the same disk.
		if out, err := exec.Command(qemuImg, "compare", "-q", raw, q).CombinedOutput(); err != nil {
			t.Errorf("compress=%v: qemu-img compare: %v %s", compress, err, out)
		}
	}
	if sizes[QCOW2Zstd] >= sizes[""] || sizes[QCOW2Zlib] >= sizes[""] {
		t.Errorf("compressed qcow2 files are not smaller than the uncompressed one: %v", sizes)
	}
	if err := ConvertQCOW2(context.Background(), raw, filepath.Join(dir, "x.qcow2"), "lz4", nil); err == nil || !strings.Contains(err.Error(), "zstd, zlib or none") {
		t.Errorf("an unknown compression: %v", err)
	}
}

func TestDiskQCOW2MissingTool(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	err := ConvertQCOW2(context.Background(), "a", "b", "", nil)
	if err == nil || !strings.Contains(err.Error(), "qemu-utils") {
		t.Fatalf("ConvertQCOW2 without qemu-img: %v, want an error naming qemu-utils", err)
	}
}
