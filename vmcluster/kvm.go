package vmcluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/etcdbake/etcdbake/internal/fileutil"
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

// AccelOptions tell ChooseAccel how to probe KVM.
type AccelOptions struct {
	// Record keeps the probe's result for the current host boot (a JSON file, rewritten
	// after each probe), so that only the first ChooseAccel after a reboot boots a kernel.
	// Empty: probe every time.
	Record string
	// Kernel provides a bootable Linux kernel for the probe (e.g. extracted from a base)
	// and a function that removes it; it is called only when a probe runs.
	Kernel func() (path string, cleanup func(), err error)
	// Timeout bounds the probe's test boot; default 20 s.
	Timeout time.Duration
	// Log, if set, receives one line per decision.
	Log func(format string, args ...any)
}

// ChooseAccel resolves an accelerator choice for ClusterOptions.Accel: "tcg" and "kvm"
// stand; "auto" is "kvm" only when /dev/kvm exists and ProbeKVM has seen a kernel boot
// under it (during this host boot, see AccelOptions.Record), else "tcg".
func ChooseAccel(ctx context.Context, want string, o AccelOptions) (string, error) {
	logf := o.Log
	if logf == nil {
		logf = func(string, ...any) {}
	}
	switch want {
	case "tcg", "kvm":
		return want, nil
	case "auto":
	default:
		return "", fmt.Errorf("accelerator %q: use tcg, kvm or auto", want)
	}
	if _, err := os.Stat("/dev/kvm"); err != nil {
		logf("no /dev/kvm: using TCG")
		return "tcg", nil
	}
	timeout := o.Timeout
	if timeout == 0 {
		timeout = 20 * time.Second
	}
	b, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	bootID := strings.TrimSpace(string(b))
	var probe struct {
		BootID string `json:"bootID"`
		OK     bool   `json:"ok"`
		Reason string `json:"reason"`
	}
	if b, err := os.ReadFile(o.Record); o.Record != "" && err == nil && json.Unmarshal(b, &probe) == nil && probe.BootID == bootID {
		logf("KVM probe (earlier this host boot): %s", probe.Reason)
	} else {
		if o.Kernel == nil {
			return "", errors.New("AccelOptions.Kernel: no kernel to probe KVM with")
		}
		kernel, cleanup, err := o.Kernel()
		if err != nil {
			return "", fmt.Errorf("a kernel for the KVM probe: %w", err)
		}
		defer cleanup()
		logf("probing KVM with a test boot (up to %s)...", timeout)
		probe.OK, probe.Reason = ProbeKVM(ctx, kernel, timeout)
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		probe.BootID = bootID
		if o.Record != "" {
			if b, err := json.Marshal(probe); err == nil {
				_ = fileutil.WriteAtomic(o.Record, b, 0o644)
			}
		}
		logf("KVM probe: %s", probe.Reason)
	}
	if probe.OK {
		return "kvm", nil
	}
	logf("using TCG")
	return "tcg", nil
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
	// TCG's default CPU model (qemu64) has no SSE4, AVX or SHA extensions: with "max" the
	// guest's Go crypto takes its vector paths (sha256 39 -> 66 MB/s, ChaCha20-Poly1305
	// 54 -> 75 MB/s measured in one VM), which etcd's TLS and a rollout's staging use.
	return []string{"-accel", "tcg,tb-size=512", "-cpu", "max"}
}
