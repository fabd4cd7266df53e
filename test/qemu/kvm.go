package qemu

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// Acceleration: TCG always works; KVM is used only when ProbeKVM has seen a kernel boot
// under it. (On this project's machines /dev/kvm exists but guests hang right after the
// firmware hands over to the kernel: nested virtualisation.)

// ProbeKVM boots kernel under KVM with no root file system and says whether it got as far
// as the kernel's panic ("VFS: Unable to mount root fs") within timeout, with the reason
// when it did not.
func ProbeKVM(ctx context.Context, kernel string, timeout time.Duration) (bool, string) {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return false, fmt.Sprintf("/dev/kvm is not usable: %v", err)
	}
	f.Close()
	return probeBoot(ctx, "kvm", kernel, timeout)
}

// probeBoot is ProbeKVM's test boot under the given accelerator.
func probeBoot(ctx context.Context, accel, kernel string, timeout time.Duration) (bool, string) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", "-accel", accel, "-machine", "q35", "-m", "256",
		"-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot",
		"-kernel", kernel, "-append", "console=ttyS0 panic=-1 root=/dev/nonexistent")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	s := out.String()
	if strings.Contains(s, "Kernel panic") || strings.Contains(s, "VFS: Unable to mount root") {
		return true, fmt.Sprintf("a kernel booted under %s in %s", accel, time.Since(start).Round(100*time.Millisecond))
	}
	if ctx.Err() != nil {
		return false, fmt.Sprintf("a test boot under %s showed no kernel panic within %s (it hangs)", accel, timeout)
	}
	return false, fmt.Sprintf("a test boot under %s failed (%v): %s", accel, err, lastLine(s))
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// accelArgs are QEMU's acceleration arguments for accel ("" or "tcg", or "kvm").
func accelArgs(accel string) []string {
	if accel == "kvm" {
		return []string{"-accel", "kvm"}
	}
	return []string{"-accel", "tcg,tb-size=64"}
}
