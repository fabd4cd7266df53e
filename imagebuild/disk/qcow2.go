package disk

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// QCOW2 cluster compression (qemu-img's compression_type).
const (
	// QCOW2Zstd: much faster to write and read than zlib, a little smaller; read by QEMU
	// and qemu-img 5.1 and later (libvirt hands the file to QEMU, so its version does
	// not matter).
	QCOW2Zstd = "zstd"
	// QCOW2Zlib: the original qcow2 compression, read by every QEMU.
	QCOW2Zlib = "zlib"
)

// ConvertQCOW2 converts the raw disk image raw to a qcow2 image qcow2 (replaced if it
// exists) with `qemu-img convert -O qcow2` (Debian package qemu-utils). compression is
// "" (clusters stored as they are) or QCOW2Zstd or QCOW2Zlib (compressed clusters:
// smaller; the result still boots). Cancelling ctx kills qemu-img; on any failure the
// qcow2 file is removed.
func ConvertQCOW2(ctx context.Context, raw, qcow2, compression string, meter func(done, total int64)) error {
	switch compression {
	case "", QCOW2Zstd, QCOW2Zlib:
	default:
		return fmt.Errorf("qcow2 compression %q: use %s, %s or none", compression, QCOW2Zstd, QCOW2Zlib)
	}
	qemuImg, err := exec.LookPath("qemu-img")
	if err != nil {
		return fmt.Errorf("qemu-img is needed to write qcow2 images; install the package qemu-utils: %w", err)
	}
	args := []string{"convert", "-p", "-f", "raw", "-O", "qcow2"}
	if compression != "" {
		args = append(args, "-c", "-o", "compression_type="+compression)
	}
	args = append(args, raw, qcow2)
	cmd := exec.CommandContext(ctx, qemuImg, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("qemu-img: %w", err)
	}
	// -p prints "    (12.34/100%)" lines separated by carriage returns.
	sc := bufio.NewScanner(stdout)
	sc.Split(func(data []byte, atEOF bool) (int, []byte, error) {
		if i := bytes.IndexAny(data, "\r\n"); i >= 0 {
			return i + 1, data[:i], nil
		}
		if atEOF && len(data) > 0 {
			return len(data), data, nil
		}
		return 0, nil, nil
	})
	for sc.Scan() {
		var pct float64
		if _, err := fmt.Sscanf(strings.TrimSpace(sc.Text()), "(%f/100%%)", &pct); err == nil && meter != nil {
			meter(int64(pct*100), 10000)
		}
	}
	if err := cmd.Wait(); err != nil {
		os.Remove(qcow2)
		if ctx.Err() != nil {
			return fmt.Errorf("qemu-img: %w", ctx.Err())
		}
		return fmt.Errorf("qemu-img %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return nil
}
