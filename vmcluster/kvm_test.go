package vmcluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/etcdbake/etcdbake/imagebuild/base"
	"github.com/etcdbake/etcdbake/internal/testtools"
)

// TestProbeKVM runs the KVM probe `etcdbake up --accel auto` relies on with the base's
// kernel and reports what it found (on this project's machines KVM hangs, so the answer
// is TCG); a kernel QEMU cannot load is a clear "no" with QEMU's reason, never a yes.
func TestProbeKVM(t *testing.T) {
	if m := Missing(); len(m) > 0 {
		testtools.Missing(t, strings.Join(m, ", "))
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

	cache, err := base.DefaultCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	basePath, err := base.Build(ctx, base.DefaultRecipe(), cache, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	tree, err := base.Read(basePath)
	if err != nil {
		t.Fatal(err)
	}
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

// TestChooseAccel: tcg and kvm stand, anything else is refused, and auto decides from
// /dev/kvm and a probe kept for the current host boot: a recorded "no" from this boot is
// used without booting anything, a record from another boot is not.
func TestChooseAccel(t *testing.T) {
	ctx := context.Background()
	noProbe := AccelOptions{Kernel: func() (string, func(), error) {
		t.Fatal("a probe ran")
		return "", nil, nil
	}}
	for _, want := range []string{"tcg", "kvm"} {
		if got, err := ChooseAccel(ctx, want, noProbe); err != nil || got != want {
			t.Errorf("ChooseAccel(%q) = %q, %v", want, got, err)
		}
	}
	if _, err := ChooseAccel(ctx, "hvf", noProbe); err == nil || !strings.Contains(err.Error(), "tcg, kvm or auto") {
		t.Errorf("ChooseAccel(hvf): %v", err)
	}
	if _, err := os.Stat("/dev/kvm"); err != nil {
		if got, err := ChooseAccel(ctx, "auto", noProbe); err != nil || got != "tcg" {
			t.Errorf("auto without /dev/kvm: %q, %v", got, err)
		}
		return
	}
	bootID, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		t.Skipf("no boot ID: %v", err)
	}
	record := filepath.Join(t.TempDir(), "kvm-probe.json")
	os.WriteFile(record, []byte(`{"bootID":"`+strings.TrimSpace(string(bootID))+`","ok":false,"reason":"recorded"}`), 0o644)
	var logged []string
	o := noProbe
	o.Record = record
	o.Log = func(f string, args ...any) { logged = append(logged, fmt.Sprintf(f, args...)) }
	if got, err := ChooseAccel(ctx, "auto", o); err != nil || got != "tcg" {
		t.Errorf("auto with a recorded no: %q, %v", got, err)
	}
	if len(logged) == 0 || !strings.Contains(logged[0], "recorded") {
		t.Errorf("log %q does not give the recorded reason", logged)
	}
	// A record from another boot makes a new probe: here the kernel cannot be had.
	os.WriteFile(record, []byte(`{"bootID":"another-boot","ok":true,"reason":"recorded"}`), 0o644)
	o.Kernel = func() (string, func(), error) { return "", nil, errors.New("no kernel here") }
	if got, err := ChooseAccel(ctx, "auto", o); err == nil || !strings.Contains(err.Error(), "no kernel here") {
		t.Errorf("auto with a stale record: %q, %v; want the probe's kernel error", got, err)
	}
}
