// Package testtools finds the external programs the tests use as oracles.
package testtools

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

// UnderMakeTest reports whether the tests run under `make test` (or CI), which ran
// `make setup` first: there a missing tool is a failure, not a reason to skip.
func UnderMakeTest() bool { return os.Getenv("ETCDBAKE_MAKE_TEST") != "" }

// Missing ends a test that needs something the machine lacks. Tests never install
// anything themselves: under `make test` (which ran `make setup`) the lack is a failure
// naming the make target that provides it; a bare `go test` skips with the same reason.
func Missing(t testing.TB, what string) {
	t.Helper()
	msg := what + " is missing: run `make setup` (scripts/setup.sh installs it)"
	if UnderMakeTest() {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// cachedTool is a program `make setup` put into the cache's tools directory, or "" .
func cachedTool(name string) string {
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache")
	}
	p := filepath.Join(cache, "etcdbake", "tools", name)
	if _, err := os.Stat(p); err != nil {
		return ""
	}
	return p
}

// IgnitionApply returns Ignition's own ignition-apply (v2.25.0): $ETCDBAKE_IGNITION_APPLY,
// or the one `make setup` builds into the cache (see Missing when it is absent). It needs
// root (ignition-apply sets owners with chown).
func IgnitionApply(t testing.TB) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("ignition-apply sets owners with chown, which needs root; run the tests as root (CI does)")
	}
	if p := os.Getenv("ETCDBAKE_IGNITION_APPLY"); p != "" {
		return p
	}
	if p := cachedTool("ignition-apply"); p != "" {
		return p
	}
	Missing(t, "ignition-apply (the etcdbake tools cache)")
	return ""
}

// BuildCLI builds etcdbake and a static etcd-firstboot into dir (as `make build` lays
// them out in bin/: etcdbake finds etcd-firstboot next to itself) and returns the path
// of etcdbake.
func BuildCLI(t testing.TB, dir string) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	for _, b := range []struct{ out, pkg string }{{"etcdbake", "./cmd/etcdbake"}, {"etcd-firstboot", "./cmd/etcd-firstboot"}} {
		cmd := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(dir, b.out), b.pkg)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("building %s: %v\n%s", b.out, err, out)
		}
	}
	return filepath.Join(dir, "etcdbake")
}

// SleepNamed is a copy of sleep(1) under the given name in a temporary directory: a
// process that tests can find by its name (/proc/PID/comm) and kill.
func SleepNamed(t testing.TB, name string) string {
	t.Helper()
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(sleep)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}
