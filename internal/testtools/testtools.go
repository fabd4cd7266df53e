// Package testtools finds the external programs the tests use as oracles.
package testtools

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

// RepoRoot is the repository's top directory (for scripts/setup.sh).
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// IgnitionApply returns Ignition's own ignition-apply (v2.25.0): $ETCDBAKE_IGNITION_APPLY,
// or the one scripts/setup.sh builds into the cache, building it if missing. It needs
// root (ignition-apply sets owners with chown); the test is skipped, with the reason,
// only when it cannot run here.
func IgnitionApply(t testing.TB) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("ignition-apply sets owners with chown, which needs root; run the tests as root (CI does)")
	}
	if p := os.Getenv("ETCDBAKE_IGNITION_APPLY"); p != "" {
		return p
	}
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache")
	}
	p := filepath.Join(cache, "etcdbake", "tools", "ignition-apply")
	if _, err := os.Stat(p); err == nil {
		return p
	}
	if out, err := exec.Command("bash", filepath.Join(RepoRoot(), "scripts", "setup.sh")).CombinedOutput(); err != nil {
		t.Skipf("ignition-apply cannot be built here (scripts/setup.sh failed): %v\n%s", err, out)
	}
	return p
}
