package firstboot

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"github.com/etcdbake/etcdbake/internal/fileutil"
	"github.com/etcdbake/etcdbake/spec"
)

// Staging writes a release into the inactive A/B slot, never the running one, in an
// order that a power loss at any point cannot turn into a boot of a half-written slot:
//
//  1. an entry of the target slot that was armed and never tried is removed (it would be
//     the next boot); nothing else on the ESP changes while the partitions are written,
//     so a power loss during the long download finds the ESP as it was;
//  2. the root and node images are downloaded straight into the slot's partitions (their
//     all-zero ranges written as zeros, not downloaded; the root's pieces the running
//     slot holds copied from it), every piece checked against the release's digest of it
//     before it is written (an image the release lists no piece digests for is read back
//     and checked against its sha256 instead);
//  3. every other entry of the target slot and its old kernel and initrd are removed,
//     then the new kernel and initrd go to the ESP as .tmp files (copied from the running
//     slot's when they are the same, else downloaded), checked, renamed;
//  4. the staged release is recorded in the state directory (staged.json).
//
// While the partitions are written, an older entry of the target slot may still be on
// the ESP: either one that failed (it sorts last) or the previous release's, older than
// the running slot's entry, which sorts first; neither boots while the running slot's
// entry is there.
//
// No entry is written: the slot boots only once Arm writes its entry (under the rollout
// lock, right before the reboot), so a node that reboots for another reason comes back
// on its running slot.

// StagedName is the record of the staged slot in the state directory.
const StagedName = "staged.json"

// stageRetries bounds the resumed attempts of one download (a dropped connection
// resumes with an HTTP Range request from the bytes already written).
const stageRetries = 5

// StageOptions say what to stage.
type StageOptions struct {
	// URL is the release on the release server (`etcdbake serve --release-listen`):
	// https://HOST:PORT/v1/releases/<id>; the node's name and the file names are added.
	URL string
	// Devices maps a partition label (root-b, node-b) to its path; default
	// /dev/disk/by-partlabel/<label>. Tests point them at files.
	Devices map[string]string
	// Progress, if set, follows the downloads (file, bytes done, total).
	Progress func(file string, done, total int64)
}

// Staged records a staged slot.
type Staged struct {
	Release string    `json:"release"`
	Slot    string    `json:"slot"`
	URL     string    `json:"url"`
	Entry   string    `json:"entry"` // the entry file's text (from the release manifest)
	Took    string    `json:"took"`
	Staged  time.Time `json:"staged"`
}

// StagedPath is where the staged slot is recorded.
func (a *Agent) StagedPath() string { return filepath.Join(a.Cfg.StateDir, StagedName) }

// Stage downloads this node's part of a release into the inactive slot (see above).
func (a *Agent) Stage(ctx context.Context, o StageOptions) (*Staged, error) {
	start := a.now()
	bi, err := ReadBootInfo(a.BootPaths)
	if err != nil {
		return nil, err
	}
	if bi == nil || bi.Slot == "" {
		return nil, errors.New("stage: this boot names no A/B slot on its kernel command line (etcdbake.slot=): the disk was not made with A/B slots; re-image it once")
	}
	target := spec.OtherSlot(bi.Slot)
	base := strings.TrimSuffix(o.URL, "/") + "/" + a.Cfg.Name + "/"
	hc, err := a.releaseClient()
	if err != nil {
		return nil, err
	}
	var m spec.ReleaseManifest
	if err := getJSON(ctx, hc, base+spec.ReleaseManifestName, &m); err != nil {
		return nil, fmt.Errorf("stage: the release manifest: %w", err)
	}
	node, ok := m.Nodes[a.Cfg.Name]
	if !ok || m.Cluster != a.Cfg.Cluster {
		return nil, fmt.Errorf("stage: release %s (cluster %q) has nothing for node %s of cluster %q", m.ID, m.Cluster, a.Cfg.Name, a.Cfg.Cluster)
	}
	entry := node.Entries[target]
	if entry == "" || !strings.HasSuffix(o.URL, "/"+m.ID) {
		return nil, fmt.Errorf("stage: release %s has no boot entry for slot %s, or the URL %s does not name it", m.ID, target, o.URL)
	}
	dev := func(label string) string {
		if p := o.Devices[label]; p != "" {
			return p
		}
		return "/dev/disk/by-partlabel/" + label
	}
	a.logf("stage: release %s into slot %s (running slot %s, release %s)", m.ID, target, bi.Slot, bi.Release)
	// The running slot's node partition describes its root's pieces: the release's root
	// pieces that are the same (all of them when the release changes only the nodes'
	// partitions, as a certificate renewal does) are copied from the running slot's
	// partition instead of downloaded.
	var running *runningRoot
	var have spec.ReleaseFile
	if ok, _ := readJSON(filepath.Join(a.BootPaths.withDefaults().Node, spec.RootPiecesName), &have); ok && len(have.Chunks) > 0 {
		running = &runningRoot{path: dev(spec.RootLabel(bi.Slot)), chunks: have.Chunks, hash: have.ChunkHash}
	}

	// 1. Nothing may boot the target slot next while it is being written.
	esp := a.BootPaths.withDefaults().ESP
	_ = os.Remove(a.StagedPath())
	if err := clearSlotOnESP(esp, target, true); err != nil {
		return nil, fmt.Errorf("stage: removing slot %s's armed entry from the ESP %s: %w", target, esp, err)
	}

	// 2. The partitions.
	for _, p := range []struct {
		label, file string
		want        spec.ReleaseFile
	}{{spec.RootLabel(target), "root", m.Root}, {spec.NodeLabel(target), "node", node.Node}} {
		if p.file == "root" && running != nil {
			err := a.stagePartition(ctx, hc, base+p.file, running, dev(p.label), p.want, o.Progress)
			if err == nil {
				continue
			}
			if ctx.Err() != nil {
				return nil, fmt.Errorf("stage: %s into %s: %w", p.file, dev(p.label), err)
			}
			a.logf("stage: the root with pieces copied from the running slot (%s) failed, downloading all of it: %v", running.path, err)
		}
		if err := a.stagePartition(ctx, hc, base+p.file, nil, dev(p.label), p.want, o.Progress); err != nil {
			return nil, fmt.Errorf("stage: %s into %s: %w", p.file, dev(p.label), err)
		}
	}
	// 3. The kernel and initrd.
	if err := clearSlotOnESP(esp, target, false); err != nil {
		return nil, fmt.Errorf("stage: clearing slot %s on the ESP %s: %w", target, esp, err)
	}
	kdir := filepath.Join(esp, spec.SlotKernelDir(target))
	if err := os.MkdirAll(kdir, 0o700); err != nil {
		return nil, err
	}
	runningKdir := filepath.Join(esp, spec.SlotKernelDir(bi.Slot))
	for _, f := range []struct {
		name string
		want spec.ReleaseFile
	}{{"linux", m.Linux}, {"initrd", m.Initrd}} {
		tmp := filepath.Join(kdir, f.name+".tmp")
		// A release that keeps the kernel (most do) needs no download of it.
		if err := copyChecked(filepath.Join(runningKdir, f.name), tmp, f.want); err == nil {
			a.logf("stage: %s: the running slot's (same sha256), copied", f.name)
		} else if err := a.download(ctx, hc, base+f.name, tmp, 0o600, f.want, o.Progress); err != nil {
			return nil, fmt.Errorf("stage: %s: %w", f.name, err)
		}
		if err := os.Rename(tmp, filepath.Join(kdir, f.name)); err != nil {
			return nil, err
		}
	}
	fileutil.SyncDir(kdir)
	// 4. The record.
	st := &Staged{Release: m.ID, Slot: target, URL: o.URL, Entry: entry, Took: a.now().Sub(start).Round(time.Second).String(), Staged: a.now().UTC()}
	if err := writeJSON(a.StagedPath(), st, 0o644); err != nil {
		return nil, err
	}
	a.logf("stage: release %s staged in slot %s in %s", m.ID, target, st.Took)
	return st, nil
}

// Arm writes the staged slot's boot entry with one try, for rollout generation gen:
// systemd-boot boots it next (newest name first), and boot counting falls back to the
// running slot if the boot is not verified. The entry is written as a .tmp file that
// systemd-boot ignores, then renamed.
func (a *Agent) Arm(gen int) (string, error) {
	var st Staged
	ok, err := readJSON(a.StagedPath(), &st)
	if err != nil {
		return "", err
	}
	if !ok {
		return "", fmt.Errorf("arm: nothing is staged (%s): stage a release first", a.StagedPath())
	}
	bi, err := ReadBootInfo(a.BootPaths)
	if err != nil {
		return "", err
	}
	if bi == nil || bi.Slot == "" || bi.Slot == st.Slot {
		return "", fmt.Errorf("arm: the staged slot %s is the running one (or this boot names no slot): stage again", st.Slot)
	}
	if bi.Generation >= gen {
		return "", fmt.Errorf("arm: generation %d is not newer than the running entry's (%d): systemd-boot would not pick it", gen, bi.Generation)
	}
	esp := a.BootPaths.withDefaults().ESP
	kdir := filepath.Join(esp, spec.SlotKernelDir(st.Slot))
	for _, f := range []string{"linux", "initrd"} {
		if _, err := os.Stat(filepath.Join(kdir, f)); err != nil {
			return "", fmt.Errorf("arm: slot %s's %s is gone from the ESP (%v): stage again", st.Slot, f, err)
		}
	}
	dir := filepath.Join(esp, "loader", "entries")
	name := spec.EntryName(gen, st.Slot) + "+1"
	tmp := filepath.Join(dir, name+".tmp")
	if err := os.WriteFile(tmp, []byte(st.Entry), 0o600); err != nil {
		return "", err
	}
	if err := fileutil.SyncFile(tmp); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, filepath.Join(dir, name+".conf")); err != nil {
		return "", err
	}
	fileutil.SyncDir(dir)
	a.logf("arm: %s.conf boots slot %s (release %s) next, once", name, st.Slot, st.Release)
	return name + ".conf", nil
}

// clearSlotOnESP removes every boot entry of slot and its kernel directory; with
// pendingOnly, only the entries that still have tries left (armed, never tried).
func clearSlotOnESP(esp, slot string, pendingOnly bool) error {
	dir := filepath.Join(esp, "loader", "entries")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		name := e.Name()
		asConf := name // a .tmp entry left by an interrupted Arm counts as the entry
		if base, ok := strings.CutSuffix(name, ".tmp"); ok {
			asConf = base + ".conf"
		}
		be, perr := ParseBootEntry(asConf)
		if perr != nil || be.Slot != slot || pendingOnly && !(be.Counted && be.TriesLeft > 0) {
			continue
		}
		if err := os.Remove(filepath.Join(dir, name)); err != nil {
			return err
		}
	}
	fileutil.SyncDir(dir)
	if pendingOnly {
		return nil
	}
	kdir := filepath.Join(esp, spec.SlotKernelDir(slot))
	if err := os.RemoveAll(kdir); err != nil {
		return err
	}
	fileutil.SyncDir(filepath.Dir(kdir))
	return nil
}

// stageBlock is how much of a partition image one range request fetches.
const stageBlock = 4 << 20

// stagePartition writes one image into a partition and reads it back. The image's
// all-zero ranges (want.Zeros) are written as zeros here without a download, the pieces
// the running root holds (running, if set) are copied from it, and the rest is fetched
// in range requests of up to stageBlock (a broken one is asked again). The
// partition is written and read past the page cache (O_DIRECT) where the device allows
// it: the image would otherwise push etcd's pages out of a small VM's memory. Every piece
// of data, downloaded or copied, is checked against the release's digest of it before it
// is written; a copied piece that does not match (the running slot is not what its node
// partition says) is downloaded instead. Only an image whose release lists no piece
// digests is read back after the write and checked against its sha256.
func (a *Agent) stagePartition(ctx context.Context, hc *http.Client, url string, running *runningRoot, dev string, want spec.ReleaseFile, progress func(string, int64, int64)) error {
	// O_EXCL on a block device fails while it is mounted: the running slot is refused
	// here even if the command line were wrong.
	f, err := openDirect(dev, os.O_RDWR|syscall.O_EXCL, want.Size)
	if err != nil {
		return err
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return err
	}
	if size < want.Size {
		return fmt.Errorf("the partition has %d bytes, the image %d: this disk's slots are too small for the release; re-image it", size, want.Size)
	}
	extents, err := imageExtents(want)
	if err != nil {
		return fmt.Errorf("%s: %w", url, err)
	}
	var src *os.File // the running slot's partition, read at the same offsets
	if running != nil {
		if src, err = openDirect(running.path, os.O_RDONLY, want.Size); err != nil {
			return err
		}
		defer src.Close()
	}
	// local says whether the piece at off can be copied from the running slot.
	local := func(off int64) bool {
		i := off / spec.ZeroChunk
		return src != nil && running.hash == want.ChunkHash && i < int64(len(want.Chunks)) && i < int64(len(running.chunks)) && want.Chunks[i] == running.chunks[i]
	}
	// pieces: the release has a digest of every piece, checked as the piece is written.
	pieces := int64(len(want.Chunks)) == (want.Size+spec.ZeroChunk-1)/spec.ZeroChunk
	// check compares the pieces in b (the image's bytes from off) with the release's
	// digests; a copied piece that differs is downloaded into its place and checked again.
	var refetched int64
	check := func(off int64, b []byte, copied bool) error {
		if !pieces {
			return nil
		}
		for p := 0; p < len(b); p += spec.ZeroChunk {
			piece := b[p:min(p+spec.ZeroChunk, len(b))]
			i := (off + int64(p)) / spec.ZeroChunk
			if want.PieceDigest(piece) == want.Chunks[i] {
				continue
			}
			if copied { // the running slot's piece differs: download it into its place
				if err := a.fetchRange(ctx, hc, url, off+int64(p), piece, want.Size); err != nil {
					return err
				}
				if want.PieceDigest(piece) == want.Chunks[i] {
					refetched += int64(len(piece))
					continue
				}
			}
			return fmt.Errorf("bytes %d-%d: their digest is not the release's digest of that piece (sha256 or XXH64, the manifest's chunkHash): the transfer did not keep the image", off+int64(p), off+int64(p+len(piece))-1)
		}
		return nil
	}
	buf := alignedBuffer(stageBlock)
	t0 := a.now()
	var done, zeroed, copied int64
	for _, e := range extents {
		end := e.Off + e.Len
		for off := e.Off; off < end; {
			// The next run: up to stageBlock of zeros, or of data pieces that all come
			// from the same place (the running slot or the server).
			n := min(stageBlock, end-off)
			copying := !e.zero && local(off)
			if !e.zero {
				n = min(spec.ZeroChunk, end-off)
				for off+n < end && n < stageBlock && local(off+n) == copying {
					n += min(spec.ZeroChunk, end-off-n)
				}
			}
			switch {
			case e.zero:
				err = zeroRange(f, off, n, buf)
				zeroed += n
			case copying:
				if _, err = src.ReadAt(buf[:n], off); err == nil {
					if err = check(off, buf[:n], true); err == nil {
						_, err = f.WriteAt(buf[:n], off)
					}
				}
				copied += n
			default:
				if err = a.fetchRange(ctx, hc, url, off, buf[:n], want.Size); err == nil {
					if err = check(off, buf[:n], false); err == nil {
						_, err = f.WriteAt(buf[:n], off)
					}
				}
			}
			if err == nil {
				err = ctx.Err()
			}
			if err != nil {
				return err
			}
			off += n
			done += n
			if progress != nil {
				progress(url, done, want.Size)
			}
		}
	}
	if err := f.Sync(); err != nil {
		return err
	}
	t1 := a.now()
	copied -= refetched
	if pieces {
		a.logf("stage: %s: %d MiB written and every piece checked in %s (%d MiB downloaded, %d MiB copied from the running slot, %d MiB of zeros)",
			dev, want.Size>>20, t1.Sub(t0).Round(time.Second), (want.Size-zeroed-copied)>>20, copied>>20, zeroed>>20)
		return nil
	}
	// No piece digests: read back what the partition holds.
	h := sha256.New()
	for off := int64(0); off < want.Size; off += stageBlock {
		n := min(stageBlock, want.Size-off)
		if _, err := f.ReadAt(buf[:n], off); err != nil {
			return fmt.Errorf("reading back at byte %d: %w", off, err)
		}
		h.Write(buf[:n])
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want.SHA256 {
		return fmt.Errorf("read back sha256 %s, the release says %s: the transfer or the disk did not keep the image", got, want.SHA256)
	}
	a.logf("stage: %s: %d MiB written in %s (%d MiB downloaded, %d MiB copied from the running slot, %d MiB of zeros), read back and checked in %s",
		dev, want.Size>>20, t1.Sub(t0).Round(time.Second), (want.Size-zeroed-copied)>>20, copied>>20, zeroed>>20, a.now().Sub(t1).Round(time.Second))
	return nil
}

// imageExtent is a range of an image: data to download, or zeros.
type imageExtent struct {
	spec.Extent
	zero bool
}

// imageExtents splits an image into its data and zero ranges, in order; Zeros that are
// out of order, out of the image or not whole ZeroChunks are refused.
func imageExtents(want spec.ReleaseFile) ([]imageExtent, error) {
	var out []imageExtent
	var at int64
	for _, z := range want.Zeros {
		if z.Off < at || z.Len <= 0 || z.Off+z.Len > want.Size || z.Off%spec.ZeroChunk != 0 || z.Len%spec.ZeroChunk != 0 && z.Off+z.Len != want.Size {
			return nil, fmt.Errorf("the release's zero ranges are out of order, out of the file or not whole chunks (%d+%d in %d bytes)", z.Off, z.Len, want.Size)
		}
		if z.Off > at {
			out = append(out, imageExtent{Extent: spec.Extent{Off: at, Len: z.Off - at}})
		}
		out = append(out, imageExtent{Extent: z, zero: true})
		at = z.Off + z.Len
	}
	if at < want.Size {
		out = append(out, imageExtent{Extent: spec.Extent{Off: at, Len: want.Size - at}})
	}
	return out, nil
}

// directAlign is the alignment O_DIRECT needs of offsets, lengths and buffers here.
const directAlign = 4096

// openDirect opens path with flag, adding O_DIRECT (past the page cache) when an image
// of size allows aligned I/O and the file system takes it.
func openDirect(path string, flag int, size int64) (*os.File, error) {
	if size%directAlign == 0 {
		f, err := os.OpenFile(path, flag|syscall.O_DIRECT, 0)
		if !errors.Is(err, syscall.EINVAL) {
			return f, err
		}
	}
	return os.OpenFile(path, flag, 0)
}

// runningRoot is the running slot's root partition and the piece digests it holds.
type runningRoot struct {
	path   string
	chunks []string
	hash   string // their ReleaseFile.ChunkHash
}

// alignedBuffer is a buffer of n bytes at a directAlign boundary.
func alignedBuffer(n int) []byte {
	b := make([]byte, n+directAlign)
	skip := (directAlign - int(uintptr(unsafe.Pointer(&b[0]))%directAlign)) % directAlign
	return b[skip : skip+n : skip+n]
}

// blkZeroOut is Linux's BLKZEROOUT ioctl, _IO(0x12, 127): zero a byte range of a
// block device (a virtio disk passes it on as WRITE ZEROES).
const blkZeroOut = 0x127f

// zeroRange writes n zero bytes at off: with BLKZEROOUT on a block device, else by
// writing zeros from buf.
func zeroRange(f *os.File, off, n int64, buf []byte) error {
	if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeDevice != 0 {
		r := [2]uint64{uint64(off), uint64(n)}
		if _, _, errno := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), blkZeroOut, uintptr(unsafe.Pointer(&r[0]))); errno == 0 {
			return nil
		}
	}
	clear(buf[:n])
	_, err := f.WriteAt(buf[:n], off)
	return err
}

// fetchRange reads bytes [off, off+len(buf)) of url (a file of total bytes) into buf
// with a range request, asking again up to stageRetries times when a transfer breaks.
func (a *Agent) fetchRange(ctx context.Context, hc *http.Client, url string, off int64, buf []byte, total int64) error {
	var last error
	for attempt := 0; attempt <= stageRetries; attempt++ {
		if attempt > 0 {
			a.logf("stage: %s: asking again for bytes %d-%d after: %v", url, off, off+int64(len(buf))-1, last)
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Duration(attempt) * a.retryEvery()):
			}
		}
		last = fetchRangeOnce(ctx, hc, url, off, buf, total)
		if last == nil || ctx.Err() != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return nil
		}
	}
	return fmt.Errorf("%s: bytes %d-%d: %w (after %d attempts)", url, off, off+int64(len(buf))-1, last, stageRetries+1)
}

func fetchRangeOnce(ctx context.Context, hc *http.Client, url string, off int64, buf []byte, total int64) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	end := off + int64(len(buf)) - 1
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, end))
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusPartialContent:
		if cr, want := resp.Header.Get("Content-Range"), fmt.Sprintf("bytes %d-%d/%d", off, end, total); cr != want {
			return fmt.Errorf("the server answered range %q, asked for %q", cr, want)
		}
	case resp.StatusCode == http.StatusOK && off == 0 && int64(len(buf)) == total:
	case resp.StatusCode == http.StatusOK:
		return fmt.Errorf("the server sent the whole file where bytes %d-%d were asked for", off, end)
	default:
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	if _, err := io.ReadFull(resp.Body, buf); err != nil {
		return err
	}
	// Read to the end, so that the connection is used again.
	if k, _ := resp.Body.Read(make([]byte, 1)); k > 0 {
		return fmt.Errorf("more than the %d bytes asked for", len(buf))
	}
	return nil
}

// download fetches one file to path (created with mode) and syncs it.
func (a *Agent) download(ctx context.Context, hc *http.Client, url, path string, mode os.FileMode, want spec.ReleaseFile, progress func(string, int64, int64)) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := a.fetch(ctx, hc, url, f, want, progress); err != nil {
		return err
	}
	return f.Sync()
}

// copyChecked copies the file src to dst (created 0600, synced) when it is want: its
// size and the sha256 of the bytes copied. On any error dst is removed.
func copyChecked(src, dst string, want spec.ReleaseFile) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if fi, err := in.Stat(); err != nil || fi.Size() != want.Size {
		return fmt.Errorf("%s is not %d bytes", src, want.Size)
	}
	out, err := os.OpenFile(dst, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(dst)
		}
	}()
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(out, h), in); err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want.SHA256 {
		return fmt.Errorf("%s: sha256 %s, the release says %s", src, got, want.SHA256)
	}
	return out.Sync()
}

// fetch copies url to the start of w, checking size and sha256 over the stream. A
// broken transfer resumes (HTTP Range) from the bytes written, up to stageRetries times.
func (a *Agent) fetch(ctx context.Context, hc *http.Client, url string, w io.WriterAt, want spec.ReleaseFile, progress func(string, int64, int64)) error {
	h := sha256.New()
	var off int64
	var last error
	for attempt := 0; attempt <= stageRetries; attempt++ {
		if attempt > 0 {
			a.logf("stage: %s: resuming at byte %d after: %v", url, off, last)
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Duration(attempt) * a.retryEvery()):
			}
		}
		n, err := fetchFrom(ctx, hc, url, w, off, h, want.Size, progress)
		off += n
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var restart errRestart
		if errors.As(err, &restart) {
			h.Reset()
			off = 0
		}
		last = err
		if attempt == stageRetries {
			return fmt.Errorf("%s: %w (after %d attempts)", url, err, attempt+1)
		}
	}
	if off != want.Size {
		return fmt.Errorf("%s: %d bytes, the release says %d", url, off, want.Size)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want.SHA256 {
		return fmt.Errorf("%s: sha256 %s, the release says %s", url, got, want.SHA256)
	}
	return nil
}

// errRestart: the server sent the whole file where a range was asked for.
type errRestart struct{ error }

// fetchFrom does one request for url from byte off, writing to w at off and hashing; it
// returns how many bytes it wrote.
func fetchFrom(ctx context.Context, hc *http.Client, url string, w io.WriterAt, off int64, h hash.Hash, total int64, progress func(string, int64, int64)) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	if off > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", off))
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	switch {
	case off > 0 && resp.StatusCode == http.StatusOK:
		return 0, errRestart{fmt.Errorf("the server ignored the range request")}
	case off > 0 && resp.StatusCode == http.StatusPartialContent:
		if cr := resp.Header.Get("Content-Range"); !strings.HasPrefix(cr, fmt.Sprintf("bytes %d-", off)) {
			return 0, errRestart{fmt.Errorf("the server answered range %q, asked from byte %d", cr, off)}
		}
	case off == 0 && resp.StatusCode == http.StatusOK:
	default:
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return 0, fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	buf := make([]byte, 1<<20)
	var n int64
	for {
		k, rerr := resp.Body.Read(buf)
		if k > 0 {
			if off+n+int64(k) > total {
				return n, fmt.Errorf("more than the %d bytes the release says", total)
			}
			if _, err := w.WriteAt(buf[:k], off+n); err != nil {
				return n, err
			}
			h.Write(buf[:k])
			n += int64(k)
			if progress != nil {
				progress(url, off+n, total)
			}
		}
		if rerr == io.EOF {
			return n, nil
		}
		if rerr != nil {
			return n, rerr
		}
	}
}

// releaseClient is an HTTPS client with this node's etcd-firstboot certificate that
// trusts only the cluster CA.
func (a *Agent) releaseClient() (*http.Client, error) {
	tc, err := a.tlsConfig()
	if err != nil {
		return nil, err
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: tc, ResponseHeaderTimeout: 30 * time.Second}}, nil
}

func getJSON(ctx context.Context, hc *http.Client, url string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s: %s", url, resp.Status, strings.TrimSpace(string(b)))
	}
	return json.Unmarshal(b, v)
}
