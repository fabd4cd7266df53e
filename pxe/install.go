package pxe

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// InstallOptions are what the installer reads from the kernel command line.
type InstallOptions struct {
	Image  string // etcdbake.image=URL: the node's sparse image stream (/image?mac=)
	SHA256 string // etcdbake.sha256=HEX: the SHA-256 of the image's sparse stream (StreamSHA256)
	Report string // etcdbake.report=URL: where to say how it went (/installed?mac=)
	Disk   string // etcdbake.disk=/dev/X: the target; default: the first fixed disk big enough
}

// ParseCmdline reads the installer's options from a kernel command line.
func ParseCmdline(cmdline string) (InstallOptions, error) {
	var o InstallOptions
	for _, f := range strings.Fields(cmdline) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "etcdbake.image":
			o.Image = v
		case "etcdbake.sha256":
			o.SHA256 = strings.ToLower(v)
		case "etcdbake.report":
			o.Report = v
		case "etcdbake.disk":
			o.Disk = v
		}
	}
	if o.Image == "" || len(o.SHA256) != 64 {
		return o, fmt.Errorf("the kernel command line lacks etcdbake.image=URL or etcdbake.sha256=HEX (64 hex digits): %q", cmdline)
	}
	return o, nil
}

// Install streams the image onto the disk and checks its SHA-256. On a failed check the
// disk's partition tables are zeroed, so the machine never boots a corrupted image.
// logf receives progress lines.
func Install(ctx context.Context, o InstallOptions, logf func(string, ...any)) (disk string, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, o.Image, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("fetching the image: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("fetching the image from %s: %s", o.Image, resp.Status)
	}
	size, err := SparseHeader(resp.Body)
	if err != nil {
		return "", err
	}
	disk = o.Disk
	if disk == "" {
		if disk, err = findDisk("/sys/block", size); err != nil {
			return "", err
		}
	}
	f, err := os.OpenFile(disk, os.O_RDWR|unix.O_EXCL, 0)
	if err != nil {
		return disk, fmt.Errorf("opening %s: %w", disk, err)
	}
	defer f.Close()
	if n, err := f.Seek(0, 2); err == nil && n < size {
		return disk, fmt.Errorf("%s holds %d bytes, the image needs %d", disk, n, size)
	}
	logf("installing %d MiB onto %s from %s", size>>20, disk, o.Image)
	start, next := time.Now(), int64(0)
	err = ReadSparse(resp.Body, size, blockDisk{f}, o.SHA256, func(done int64) {
		if done >= next {
			logf("  %3d%% (%s)", done*100/size, time.Since(start).Round(time.Second))
			next += size / 10
		}
	})
	if err != nil {
		wipeTables(f, size)
		return disk, err
	}
	if err := f.Sync(); err != nil {
		return disk, fmt.Errorf("syncing %s: %w", disk, err)
	}
	logf("installed and verified (sha256 %s) in %s", o.SHA256, time.Since(start).Round(100*time.Millisecond))
	return disk, nil
}

// ReportResult tells the server how the install went (best effort).
func ReportResult(ctx context.Context, reportURL string, installErr error) {
	if reportURL == "" {
		return
	}
	u := reportURL + "&result=ok"
	if installErr != nil {
		u = reportURL + "&result=failed&error=" + url.QueryEscape(installErr.Error())
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil); err == nil {
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}
}

// findDisk picks the first fixed disk (not removable, not a loop, RAM, optical or mapped
// device) that can hold size bytes.
func findDisk(sysBlock string, size int64) (string, error) {
	entries, err := os.ReadDir(sysBlock)
	if err != nil {
		return "", err
	}
	var names, seen []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	for _, n := range names {
		if strings.HasPrefix(n, "loop") || strings.HasPrefix(n, "ram") || strings.HasPrefix(n, "sr") ||
			strings.HasPrefix(n, "zram") || strings.HasPrefix(n, "dm-") || strings.HasPrefix(n, "md") {
			continue
		}
		read := func(f string) string {
			b, _ := os.ReadFile(filepath.Join(sysBlock, n, f))
			return strings.TrimSpace(string(b))
		}
		sectors, _ := strconv.ParseInt(read("size"), 10, 64)
		seen = append(seen, fmt.Sprintf("%s (%d MiB, removable %s)", n, sectors*512>>20, read("removable")))
		if read("removable") == "1" || sectors*512 < size {
			continue
		}
		return "/dev/" + n, nil
	}
	return "", fmt.Errorf("no fixed disk of at least %d MiB to install onto (found: %s); name one with etcdbake.disk=/dev/X", size>>20, strings.Join(seen, ", "))
}

// blockDisk zeroes with BLKZEROOUT where the device supports it, else by writing zeros.
type blockDisk struct{ f *os.File }

func (d blockDisk) WriteAt(p []byte, off int64) (int, error) { return d.f.WriteAt(p, off) }

func (d blockDisk) Zero(off, n int64) error {
	rng := [2]uint64{uint64(off), uint64(n)}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, d.f.Fd(), unix.BLKZEROOUT, uintptr(unsafe.Pointer(&rng[0]))); e == 0 {
		return nil
	}
	for n > 0 {
		k := min(n, int64(len(zeroBlock)))
		if _, err := d.f.WriteAt(zeroBlock[:k], off); err != nil {
			return err
		}
		off, n = off+k, n-k
	}
	return nil
}

// wipeTables zeroes the first and last MiB of the image's span (both GPT copies).
func wipeTables(f *os.File, size int64) {
	_, _ = f.WriteAt(zeroBlock, 0)
	if size > int64(len(zeroBlock)) {
		_, _ = f.WriteAt(zeroBlock, size-int64(len(zeroBlock)))
	}
	_ = f.Sync()
}
