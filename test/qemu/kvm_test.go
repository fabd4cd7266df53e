package qemu

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/etcdbake/etcdbake/imagebuild/base"
)

// TestProbeKVM runs the KVM probe `etcdbake up --accel auto` relies on with the base's
// kernel and reports what it found (on this project's machines KVM hangs, so the answer
// is TCG); a kernel QEMU cannot load is a clear "no" with QEMU's reason, never a yes.
func TestProbeKVM(t *testing.T) {
	if err := Check(); err != nil {
		t.Skipf("QEMU/OVMF missing: %v (TestClusterBootstrapB0 installs them)", err)
	}
	if _, err := os.Stat("/dev/kvm"); err != nil {
		t.Skipf("no /dev/kvm here: the probe is not run (up uses TCG directly)")
	}
	ctx := context.Background()
	bogus := filepath.Join(t.TempDir(), "not-a-kernel")
	os.WriteFile(bogus, []byte("not a kernel"), 0o644)
	if ok, why := ProbeKVM(ctx, bogus, 20*time.Second); ok || !strings.Contains(why, "failed") {
		t.Errorf("probe with a bogus kernel: %v, %q", ok, why)
	} else {
		t.Logf("bogus kernel: %s", why)
	}

	tree := defaultBaseTree(ctx, t)
	k, _, err := base.KernelAndInitrd(tree)
	if err != nil {
		t.Fatal(err)
	}
	data, err := tree.ReadFile(k)
	if err != nil {
		t.Fatal(err)
	}
	kernel := filepath.Join(t.TempDir(), "vmlinuz")
	os.WriteFile(kernel, data, 0o644)
	// The probe's yardstick works: the same test boot under TCG reaches the panic.
	if ok, why := probeBoot(ctx, "tcg", kernel, 60*time.Second); !ok {
		t.Errorf("the test boot under TCG: %s", why)
	} else {
		t.Logf("TCG: %s", why)
	}
	start := time.Now()
	ok, why := ProbeKVM(ctx, kernel, 20*time.Second)
	if why == "" || (ok && time.Since(start) > 20*time.Second) {
		t.Errorf("probe: %v %q", ok, why)
	}
	t.Logf("KVM probe on this machine: usable=%v (%s) after %s", ok, why, time.Since(start).Round(100*time.Millisecond))
}
