package ignition

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
)

// Write replaces dir (e.g. out/ignition) with one <node>.ign per config. The files are
// written into a temporary sibling directory first and swapped in by rename, so a failure
// leaves the previous output untouched and no partial output behind.
func Write(dir string, configs map[string][]byte) error {
	parent := filepath.Dir(dir)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", parent, err)
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(dir)+".tmp-")
	if err != nil {
		return fmt.Errorf("creating a temporary directory next to %s: %w", dir, err)
	}
	defer os.RemoveAll(tmp)
	names := make([]string, 0, len(configs))
	for n := range configs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		// Configs carry private keys: readable by the operator only.
		if err := os.WriteFile(filepath.Join(tmp, n+".ign"), configs[n], 0o600); err != nil {
			return fmt.Errorf("writing %s.ign: %w", n, err)
		}
	}
	if err := os.Chmod(tmp, 0o700); err != nil {
		return err
	}
	old := tmp + ".old"
	hadOld := false
	if _, err := os.Stat(dir); err == nil {
		if err := os.Rename(dir, old); err != nil {
			return fmt.Errorf("replacing %s: %w", dir, err)
		}
		hadOld = true
	}
	if err := os.Rename(tmp, dir); err != nil {
		if hadOld {
			_ = os.Rename(old, dir)
		}
		return fmt.Errorf("replacing %s: %w", dir, err)
	}
	if hadOld {
		return os.RemoveAll(old)
	}
	return nil
}
