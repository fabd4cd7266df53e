// Package imagebuild composes a node's bootable disk image (GPT, UEFI, no root
// privileges or loop devices): Build applies each node's Ignition config to the base
// (imagebuild/ignapply), adapts the tree to a read-only root (ReadOnlyRoot), splits the
// node trees into one shared root and small per-node trees (Split), and writes the disks
// (imagebuild/disk) in the output formats of one table (CheckFormats).
//
// The parts live in subpackages by what they are: fstree (the in-memory tree every stage
// works on), base (the Debian base: recipe, cache, kernel choice), ignapply (the offline
// Ignition applier) and disk (GPT, ext4, ESP, qcow2).
package imagebuild

import (
	"bytes"
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/etcdbake/etcdbake/imagebuild/base"
	"github.com/etcdbake/etcdbake/imagebuild/disk"
	"github.com/etcdbake/etcdbake/imagebuild/fstree"
	"github.com/etcdbake/etcdbake/imagebuild/ignapply"
	"github.com/etcdbake/etcdbake/spec"
)

// An outputFormat is one kind of image file Build can write for a node, from the node's
// raw disk image (written first, in the same temporary directory).
type outputFormat struct {
	Name   string
	Suffix string
	// Write makes the file out from the raw image; nil: the raw image itself is the file.
	Write func(ctx context.Context, raw, out string, meter func(done, total int64)) error
}

// formats is the one table of output formats: CheckFormats validates against it before
// any work, and Build writes each requested one in this order (and lists it in
// Image.Files in this order).
var formats = []outputFormat{
	{Name: "raw", Suffix: ".raw"},
	{Name: "qcow2", Suffix: ".qcow2", Write: qcow2(disk.QCOW2Zstd)},
	// For readers older than QEMU 5.1, which cannot read zstd clusters.
	{Name: "qcow2-zlib", Suffix: ".zlib.qcow2", Write: qcow2(disk.QCOW2Zlib)},
}

// qcow2 writes a compressed qcow2 (about a third of the raw image's size).
func qcow2(compression string) func(ctx context.Context, raw, out string, meter func(done, total int64)) error {
	return func(ctx context.Context, raw, out string, meter func(done, total int64)) error {
		return disk.ConvertQCOW2(ctx, raw, out, compression, meter)
	}
}

// FormatFile is the name of node's image file in format name ("" for an unknown format).
func FormatFile(node, name string) string {
	for _, f := range formats {
		if f.Name == name {
			return node + f.Suffix
		}
	}
	return ""
}

// FormatNames lists the known output formats.
func FormatNames() []string {
	var names []string
	for _, f := range formats {
		names = append(names, f.Name)
	}
	return names
}

// CheckFormats rejects unknown formats with the list of known ones.
func CheckFormats(names []string) error {
	if len(names) == 0 {
		return fmt.Errorf("--format: give at least one of %s", strings.Join(FormatNames(), ", "))
	}
	for _, n := range names {
		if !slices.Contains(FormatNames(), n) {
			return fmt.Errorf("--format %q is not known: use %s", n, strings.Join(FormatNames(), " and/or "))
		}
	}
	return nil
}

// NodeInput is one node's rendered Ignition config and what cannot be in it.
type NodeInput struct {
	Name   string
	Config []byte
	DNS    []string
	// EtcdData, if set, is a restored etcd data directory (made by backup.Restore for
	// this node) that the image's data partition holds at /var/lib/etcd, with the rest
	// of the image's /var; empty: the data partition is blank and formatted at first boot.
	EtcdData string
}

// BinaryRecord is one baked program in the SBOM (spec's release binary).
type BinaryRecord = spec.ReleaseBinary

// BuildOptions is everything Build needs.
type BuildOptions struct {
	Cluster  string
	Nodes    []NodeInput
	Base     *fstree.Tree
	BaseHash string
	SpecHash string
	Binaries []BinaryRecord
	// Remote resolves the configs' binary URLs to verified local files.
	Remote   map[string]string
	OutDir   string
	Formats  []string
	DataSize int64
	// SlotSize is the size of each A/B slot's root partition (default DefaultSlotSize):
	// fixed at install time, so it leaves room for the roots of later releases.
	SlotSize int64
	// VerifyTimeout bounds the verification of a new slot's first boot (the spec's
	// rollout.timeout; default spec.DefaultRolloutTimeout).
	VerifyTimeout time.Duration
	// ReleasesDir, if set, keeps the build as a release there (see writeRelease), for
	// rollouts; CertSerials (node -> certificate kind -> serial) go into its manifest.
	ReleasesDir string
	CertSerials map[string]map[string]string
	// SpecJSON is the spec the build comes from (JSON, defaults applied), kept in the
	// release as spec.json.
	SpecJSON []byte
	// Time is stamped into the file systems (default: SOURCE_DATE_EPOCH or a constant),
	// so equal inputs give byte-identical images.
	Time     time.Time
	Progress func(format string, args ...any)
	// Meter, if set, follows the long steps: it is called with the step's name and
	// how much of it is done (done of total, in the step's own units).
	Meter func(step string, done, total int64)
}

// Image lists the files written for one node.
type Image struct {
	Node  string
	Files []string
	// Took is the time spent on this node alone (its partition, ESP, disk, conversion);
	// the shared root is made once for all nodes.
	Took time.Duration
	// Release is the directory of the release the image's slot A holds ("" without
	// BuildOptions.ReleasesDir).
	Release string
	nodeImg string // the node partition's image, until it goes into the release
}

// Manifest is the SBOM written next to each image.
type Manifest struct {
	Cluster string `json:"cluster"`
	Node    string `json:"node"`
	// Release identifies what the image's slot holds: the same inputs (base, spec, the
	// nodes' configs with their certificates and binaries) give the same release.
	Release    string         `json:"release"`
	BaseSHA256 string         `json:"baseSHA256"`
	SpecSHA256 string         `json:"specSHA256"`
	Binaries   []BinaryRecord `json:"binaries"`
	Kernel     string         `json:"kernel"`
	Layout     []PartInfo     `json:"layout"`
	// Slot is the slot the image boots (SlotA), Entry its boot entry's file name on the
	// ESP and Cmdline the entry's kernel command line.
	Slot    string   `json:"slot"`
	Entry   string   `json:"entry"`
	Cmdline string   `json:"cmdline"`
	PerNode []string `json:"perNodeFiles"`
}

// PartInfo describes one partition in the manifest.
type PartInfo struct {
	Label string `json:"label"`
	GUID  string `json:"guid"`
	Size  int64  `json:"size"`
}

// Sizes of the fixed partitions. The ESP holds both slots' kernel and initrd (about
// 30 MB a slot with Debian's cloud kernel) and cannot grow once installed.
const (
	espSize  = 256 << 20
	nodeSize = 16 << 20
	mib      = 1 << 20
	// DefaultSlotSize is the default root size of each slot: more than twice the
	// example's root (about 670 MiB), for the bases of later releases.
	DefaultSlotSize = 1536 << 20
)

// imageLayout names how Build lays out a disk from its inputs. It is part of the release
// ID, so a change here (not only in the spec, base or binaries) makes a new release and
// `etcdbake up` rebuilds its images. Change it with the layout.
const imageLayout = "layout 2: data partition made at build time"

// ReleaseID derives a release's ID from everything that goes into its slots: the image
// layout, the base, the spec, the binaries and each node's config (which holds its
// certificates).
func ReleaseID(o BuildOptions) string {
	h := sha256.New()
	fmt.Fprintf(h, "etcdbake release\x00%s\x00%s\x00%s\x00%s\x00", imageLayout, o.Cluster, o.BaseHash, o.SpecHash)
	for _, b := range sortedBinaries(o.Binaries) {
		fmt.Fprintf(h, "%s\x00%s\x00", b.Name, b.SHA256)
	}
	nodes := append([]NodeInput(nil), o.Nodes...)
	sort.Slice(nodes, func(i, j int) bool { return nodes[i].Name < nodes[j].Name })
	for _, n := range nodes {
		fmt.Fprintf(h, "%s\x00%d\x00", n.Name, len(n.Config))
		h.Write(n.Config)
		fmt.Fprintf(h, "%q\x00", n.DNS)
	}
	return hex.EncodeToString(h.Sum(nil))[:12]
}

func buildTime(o BuildOptions) time.Time {
	if !o.Time.IsZero() {
		return o.Time.UTC()
	}
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		var sec int64
		if _, err := fmt.Sscan(s, &sec); err == nil {
			return time.Unix(sec, 0).UTC()
		}
	}
	return time.Unix(base.DefaultSourceDateEpoch, 0).UTC()
}

// settledIn says which entries of the shared root are the base's own, unchanged (same
// type, link target and contents): disk.WriteExt4 places them first, the same way in every
// release made from this base, so a release that changes only etcdbake's files (binaries,
// units, configuration) shares the blocks of everything else with the one before.
func settledIn(base, root *fstree.Tree) func(*fstree.Entry) bool {
	return func(e *fstree.Entry) bool {
		b, ok := base.Get(e.Path)
		if !ok || b.Mode.Type() != e.Mode.Type() {
			return false
		}
		switch {
		case e.IsDir():
			return true
		case e.IsSymlink():
			return b.Target == e.Target
		}
		bd, rd := base.DataOf(b), root.DataOf(e)
		return bd.Source == rd.Source && bytes.Equal(bd.Data, rd.Data)
	}
}

// MachineID derives a node's systemd machine ID (32 hex digits) from its names.
func MachineID(cluster, node string) string {
	h := sha1.Sum([]byte("etcdbake machine-id\x00" + cluster + "\x00" + node))
	return hex.EncodeToString(h[:16])
}

// Build makes one disk image per node. The shared root is written once and copied into
// every node's disk; the per-node work is the node partition, the ESP and the copy.
// Output goes to a temporary directory next to OutDir and replaces it at the end, so a
// failure leaves the previous images as they were. Cancelling ctx stops every long step
// (applying the configs, the root and node file systems, the disks, qemu-img) within
// about a second; Build then removes its temporary directory and returns ctx's error.
func Build(ctx context.Context, o BuildOptions) ([]Image, error) {
	if err := CheckFormats(o.Formats); err != nil {
		return nil, err
	}
	progress := o.Progress
	if progress == nil {
		progress = func(string, ...any) {}
	}
	when := buildTime(o)
	start := time.Now()
	if o.SlotSize == 0 {
		o.SlotSize = DefaultSlotSize
	}
	if o.VerifyTimeout == 0 {
		o.VerifyTimeout = spec.DefaultRolloutTimeout
	}
	release := ReleaseID(o)
	slotOpts := SlotOptions{VerifyTimeout: o.VerifyTimeout, Firstboot: spec.BinDir + "/etcd-firstboot", NodeConfig: spec.NodeConfigPath}

	trees := map[string]*fstree.Tree{}
	for _, n := range o.Nodes {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		t := o.Base.Clone()
		if err := ignapply.Apply(t, n.Config, ignapply.Options{Remote: o.Remote, Time: when}); err != nil {
			return nil, fmt.Errorf("node %s: applying its Ignition config: %w", n.Name, err)
		}
		if err := ReadOnlyRoot(t, n.DNS); err != nil {
			return nil, fmt.Errorf("node %s: %w", n.Name, err)
		}
		if err := SlotSystem(t, slotOpts); err != nil {
			return nil, fmt.Errorf("node %s: %w", n.Name, err)
		}
		trees[n.Name] = t
	}
	root, own, perNode, err := Split(trees)
	if err != nil {
		return nil, err
	}
	progress("split: %d entries in the shared root, %d per-node files (%s)", root.Len(), len(perNode), time.Since(start).Round(time.Millisecond))
	boot, err := takeBootFiles(root)
	if err != nil {
		return nil, err
	}
	bootEFI, ok := root.Get("usr/lib/systemd/boot/efi/systemd-bootx64.efi")
	if !ok {
		return nil, fmt.Errorf("the base has no systemd-boot EFI binary (usr/lib/systemd/boot/efi/systemd-bootx64.efi): add the systemd-boot-efi package")
	}
	sbom, err := makeSBOMParts(root, strings.TrimPrefix(path.Base(boot.kernel), "vmlinuz-"), o.Binaries)
	if err != nil {
		return nil, err
	}

	parent := filepath.Dir(filepath.Clean(o.OutDir))
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(o.OutDir)+".tmp-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)

	// The shared root, once.
	t0 := time.Now()
	rootImg := filepath.Join(tmp, "root.ext4")
	rootSize := rootFSSize(root)
	if rootSize > o.SlotSize {
		return nil, fmt.Errorf("the shared root needs %d MiB, more than the slot size (%d MiB): give a larger slot size", rootSize>>20, o.SlotSize>>20)
	}
	// The file system's UUID derives from the root's contents, not the release: a
	// release that changes only the nodes' partitions (a certificate renewal) has the
	// same root image, byte for byte, and a node copies it from its running slot
	// instead of downloading it. Two slots holding different roots differ in UUID.
	rootDigest, err := root.Digest()
	if err != nil {
		return nil, fmt.Errorf("the shared root: %w", err)
	}
	if _, err := disk.WriteExt4(ctx, rootImg, rootSize, root, disk.Ext4Options{Label: "root", UUID: disk.DeriveGUID(o.Cluster, "root-fs", rootDigest), Time: when, Meter: o.meter("shared root"), Settled: settledIn(o.Base, root)}); err != nil {
		return nil, fmt.Errorf("writing the shared root: %w", err)
	}
	progress("shared root: %d MiB ext4 in %s", rootSize>>20, time.Since(t0).Round(time.Millisecond))
	// Every node partition says what the slot's root holds (its pieces): a node that
	// stages a later release copies the pieces it already has.
	rootFile, err := digestRelease(ReleaseRoot, rootImg)
	if err != nil {
		return nil, err
	}
	pieces, err := json.Marshal(rootFile)
	if err != nil {
		return nil, err
	}
	for _, n := range o.Nodes {
		t := own[n.Name]
		if err := t.MkdirAll(path.Dir(spec.RootPiecesName)); err != nil {
			return nil, err
		}
		if err := t.Put(&fstree.Entry{Path: spec.RootPiecesName, Mode: 0o644, Data: pieces}); err != nil {
			return nil, err
		}
	}

	var images []Image
	for _, n := range o.Nodes {
		t1 := time.Now()
		// The data partition's file system is made here, at the partition's size (its
		// zeros are holes): the first boot neither formats it nor grows it (growing a
		// small one took 8.7 s under TCG), and x-systemd.makefs still formats a
		// partition found empty after a disk loss.
		dt, err := dataContent(trees[n.Name], n.EtcdData)
		if err != nil {
			return nil, fmt.Errorf("node %s: %w", n.Name, err)
		}
		what := "the data partition"
		if n.EtcdData != "" {
			what = "the restored data partition"
		}
		dataImg := filepath.Join(tmp, n.Name+".data.ext4")
		if need := ext4Size(dt); need > o.dataPartSize() {
			return nil, fmt.Errorf("node %s: %s needs a %d MiB file system, more than the %d MiB data partition: give a larger data size (--data-size)", n.Name, what, need/mib, o.dataPartSize()/mib)
		}
		if _, err := disk.WriteExt4(ctx, dataImg, o.dataPartSize(), dt, disk.Ext4Options{Label: LabelData, UUID: disk.DeriveGUID(o.Cluster, n.Name, "data-fs"), Time: when}); err != nil {
			return nil, fmt.Errorf("node %s: %s: %w", n.Name, what, err)
		}
		im, err := buildNode(ctx, o, release, n, tmp, rootImg, own[n.Name], root, boot, bootEFI, perNode, when, dataImg, sbom)
		os.Remove(dataImg)
		if err != nil {
			return nil, fmt.Errorf("node %s: %w", n.Name, err)
		}
		im.Took = time.Since(t1)
		images = append(images, im)
		progress("%s: image in %s", n.Name, im.Took.Round(time.Millisecond))
	}
	var releaseDir string
	if o.ReleasesDir != "" {
		t2 := time.Now()
		rp := releaseParts{id: release, rootImg: rootImg, nodeImgs: map[string]string{}, options: map[string]map[string]string{}, entries: map[string]map[string]string{},
			boot: boot, when: when, slotSize: o.SlotSize, baseHash: o.BaseHash, specHash: o.SpecHash,
			cluster: o.Cluster, binaries: sortedBinaries(o.Binaries), certSerials: o.CertSerials, specJSON: o.SpecJSON}
		for _, im := range images {
			rp.nodeImgs[im.Node] = im.nodeImg
			rp.options[im.Node], rp.entries[im.Node] = map[string]string{}, map[string]string{}
			for _, sl := range Slots {
				rp.options[im.Node][sl] = nodeCmdline(o.Cluster, im.Node, sl, release)
				rp.entries[im.Node][sl] = string(nodeEntry(o.Cluster, im.Node, sl, release))
			}
		}
		if releaseDir, err = writeRelease(ctx, o.ReleasesDir, rp); err != nil {
			return nil, fmt.Errorf("writing release %s: %w", release, err)
		}
		progress("release %s in %s (%s)", release, releaseDir, time.Since(t2).Round(time.Millisecond))
	}
	for _, f := range []string{rootImg} {
		if err := os.Remove(f); err != nil && !os.IsNotExist(err) {
			return nil, err
		}
	}
	for i := range images {
		images[i].Release = releaseDir
		if err := os.Remove(images[i].nodeImg); err != nil && !os.IsNotExist(err) {
			return nil, err
		}
	}
	// The last moment to stop: after this the new images are in place.
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := replaceDir(tmp, o.OutDir); err != nil {
		return nil, err
	}
	for i := range images {
		for j, f := range images[i].Files {
			images[i].Files[j] = filepath.Join(o.OutDir, filepath.Base(f))
		}
	}
	progress("%d images in %s", len(images), time.Since(start).Round(time.Millisecond))
	return images, nil
}

// meter binds Meter to one step (nil without a Meter).
func (o BuildOptions) meter(step string) func(done, total int64) {
	if o.Meter == nil {
		return nil
	}
	return func(done, total int64) { o.Meter(step, done, total) }
}

// ext4Size is the content plus room for metadata and a margin, in whole MiB.
func ext4Size(t *fstree.Tree) int64 {
	bytes := fileBytes(t)
	size := bytes + bytes/4 + int64(t.Len())*512 + 64*mib
	return (size + mib - 1) &^ (mib - 1)
}

// dataPartSize is the data partition's size: DataSize, at least 512 MiB.
func (o BuildOptions) dataPartSize() int64 {
	return max(o.DataSize, 512*mib)
}

// rootFSSize is the shared root's file system size: its files, an eighth more, and room
// for ext4's own metadata (inode tables, the journal, directories), rounded up to whole
// block groups (128 MiB). Releases whose files differ by a few MiB (another etcd) then
// have the same geometry, so the base's files keep their blocks (see settledIn).
func rootFSSize(t *fstree.Tree) int64 {
	const group = 128 * mib
	bytes := fileBytes(t)
	size := bytes + bytes/8 + int64(t.Len())*512 + 48*mib
	return (size + group - 1) &^ (group - 1)
}

// fileBytes is what the tree's regular files take in 4 KiB blocks (a hard link is a copy
// in the image, so it counts its contents again).
func fileBytes(t *fstree.Tree) int64 {
	var bytes int64
	_ = t.Walk(func(e *fstree.Entry) error {
		if e.IsRegular() {
			if n, err := t.Size(e); err == nil {
				bytes += (n + 4095) &^ 4095
			}
		}
		return nil
	})
	return bytes
}

func buildNode(ctx context.Context, o BuildOptions, release string, n NodeInput, tmp, rootImg string, own, root *fstree.Tree, boot bootFiles, bootEFI *fstree.Entry, perNode []string, when time.Time, dataImg string, sbom sbomParts) (Image, error) {
	nodeImg := filepath.Join(tmp, n.Name+".node.ext4")
	if _, err := disk.WriteExt4(ctx, nodeImg, nodeSize, own, disk.Ext4Options{Label: "node", UUID: disk.DeriveGUID(o.Cluster, n.Name, "node-fs"), Time: when}); err != nil {
		return Image{}, fmt.Errorf("node partition: %w", err)
	}

	guid := func(label string) string { return disk.DeriveGUID(o.Cluster, n.Name, label) }
	slot := SlotA
	cmdline := nodeCmdline(o.Cluster, n.Name, slot, release)
	efiData, err := root.Contents(bootEFI)
	if err != nil {
		return Image{}, err
	}
	entry := EntryName(0, slot) + ".conf"
	kdir := SlotKernelDir(slot)
	files := []disk.ESPFile{
		{Path: "EFI/BOOT/BOOTX64.EFI", Data: efiData},
		{Path: "loader/loader.conf", Data: disk.LoaderConf()},
		{Path: "loader/entries/" + entry, Data: nodeEntry(o.Cluster, n.Name, slot, release)},
		{Path: kdir + "/linux", Data: boot.linux},
		{Path: kdir + "/initrd", Data: boot.initrd},
	}
	dataSize := o.dataPartSize()
	// ESP, slot A (filled), slot B (empty: a hole until a rollout writes it), data last so
	// that it can grow into a larger disk.
	parts := []disk.Partition{
		{Name: LabelESP, Type: disk.TypeESP, GUID: guid("esp"), Size: espSize,
			Content: disk.ESPContent("ESP", disk.DeriveVolumeID(o.Cluster, n.Name, "esp"), when, files)},
	}
	for _, sl := range Slots {
		rootPart := disk.Partition{Name: RootLabel(sl), Type: disk.TypeLinuxRootX8664, GUID: guid(RootLabel(sl)), Size: o.SlotSize}
		nodePart := disk.Partition{Name: NodeLabel(sl), Type: disk.TypeLinuxData, GUID: guid(NodeLabel(sl)), Size: nodeSize}
		if sl == slot {
			rootPart.Content, nodePart.Content = disk.FileContent(rootImg), disk.FileContent(nodeImg)
		}
		parts = append(parts, rootPart, nodePart)
	}
	parts = append(parts, disk.Partition{Name: LabelData, Type: disk.TypeLinuxVar, GUID: guid("data"), Size: dataSize, Content: disk.FileContent(dataImg)})
	total := int64(mib) // GPT at the start
	for _, p := range parts {
		total += p.Size
	}
	total += mib // backup GPT
	raw := filepath.Join(tmp, n.Name+".raw")
	if err := disk.WriteDisk(ctx, raw, total, parts, disk.DeriveGUID(o.Cluster, n.Name, "disk")); err != nil {
		return Image{}, err
	}
	im := Image{Node: n.Name, nodeImg: nodeImg}
	for _, f := range formats {
		if !slices.Contains(o.Formats, f.Name) {
			continue
		}
		out := filepath.Join(tmp, n.Name+f.Suffix)
		if f.Write != nil {
			if err := f.Write(ctx, raw, out, o.meter(n.Name+" "+f.Name)); err != nil {
				return Image{}, err
			}
		}
		im.Files = append(im.Files, out)
	}
	if !slices.Contains(o.Formats, "raw") {
		if err := os.Remove(raw); err != nil {
			return Image{}, err
		}
	}
	var layout []PartInfo
	for _, p := range parts {
		layout = append(layout, PartInfo{Label: p.Name, GUID: p.GUID, Size: p.Size})
	}
	bins := sortedBinaries(o.Binaries)
	m := Manifest{Cluster: o.Cluster, Node: n.Name, Release: release, BaseSHA256: o.BaseHash, SpecSHA256: o.SpecHash, Binaries: bins,
		Kernel: boot.kernel, Layout: layout, Slot: slot, Entry: entry, Cmdline: cmdline, PerNode: perNode}
	mb, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return Image{}, err
	}
	mf := filepath.Join(tmp, n.Name+".manifest.json")
	if err := os.WriteFile(mf, append(mb, '\n'), 0o644); err != nil {
		return Image{}, err
	}
	sf := filepath.Join(tmp, n.Name+SBOMSuffix)
	if err := writeSBOM(sf, sbom, o.Cluster, n.Name, release, im.Files, when); err != nil {
		return Image{}, err
	}
	im.Files = append(im.Files, mf, sf)
	return im, nil
}

// nodeEntry is the boot loader entry that boots a node's slot holding release.
func nodeEntry(cluster, node, slot, release string) []byte {
	kdir := "/" + SlotKernelDir(slot)
	return disk.LoaderEntry(fmt.Sprintf("etcd %s (%s), slot %s, release %s", node, cluster, slot, release), kdir+"/linux", kdir+"/initrd", nodeCmdline(cluster, node, slot, release))
}

// nodeCmdline is the kernel command line of a node's entry for slot.
func nodeCmdline(cluster, node, slot, release string) string {
	guid := func(label string) string { return disk.DeriveGUID(cluster, node, label) }
	return SlotCmdline(slot, guid(RootLabel(slot)), guid(NodeLabel(slot)), release, node, MachineID(cluster, node))
}

func sortedBinaries(b []BinaryRecord) []BinaryRecord {
	bins := append([]BinaryRecord(nil), b...)
	sort.Slice(bins, func(i, j int) bool { return bins[i].Name < bins[j].Name })
	return bins
}

// replaceDir swaps a finished temporary directory into place.
func replaceDir(tmp, dir string) error {
	old := tmp + ".old"
	hadOld := false
	if _, err := os.Stat(dir); err == nil {
		if err := os.Rename(dir, old); err != nil {
			return err
		}
		hadOld = true
	}
	if err := os.Rename(tmp, dir); err != nil {
		if hadOld {
			_ = os.Rename(old, dir)
		}
		return err
	}
	if hadOld {
		return os.RemoveAll(old)
	}
	return nil
}
