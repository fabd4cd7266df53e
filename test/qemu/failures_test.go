package qemu

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// keepOnFailure keeps files of a failed test (consoles, server logs) for later reading:
// CI shows only part of a long test log, and the test's temporary directory is gone when
// it ends. When t has failed, its cleanup copies each file that exists (glob patterns
// allowed) into <test cache>/../test-failures/<test>-<time>/ and logs the directory; the
// newest 10 such directories are kept.
func keepOnFailure(t testing.TB, patterns ...string) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		root := failuresDir()
		dir := filepath.Join(root, strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())+"-"+time.Now().UTC().Format("20060102T150405Z"))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Logf("keeping the failure's files: %v", err)
			return
		}
		var kept []string
		for _, p := range patterns {
			matches, _ := filepath.Glob(p)
			for _, m := range matches {
				b, err := os.ReadFile(m)
				if err != nil {
					continue
				}
				name := filepath.Base(filepath.Dir(m)) + "_" + filepath.Base(m)
				if os.WriteFile(filepath.Join(dir, name), b, 0o644) == nil {
					kept = append(kept, name)
				}
			}
		}
		t.Logf("the failed test's files are kept in %s: %s", dir, strings.Join(kept, ", "))
		if old, _ := filepath.Glob(filepath.Join(root, "*")); len(old) > 10 {
			slices.SortFunc(old, func(a, b string) int {
				sa, _ := os.Stat(a)
				sb, _ := os.Stat(b)
				return sa.ModTime().Compare(sb.ModTime())
			})
			for _, o := range old[:len(old)-10] {
				os.RemoveAll(o)
			}
		}
	})
}

// failuresDir is where keepOnFailure keeps files: next to the test binaries' cache
// ($ETCDBAKE_TEST_CACHE/../test-failures), else under the user's cache directory.
func failuresDir() string {
	if c := os.Getenv("ETCDBAKE_TEST_CACHE"); c != "" {
		return filepath.Join(filepath.Dir(filepath.Clean(c)), "test-failures")
	}
	c, err := os.UserCacheDir()
	if err != nil {
		c = os.TempDir()
	}
	return filepath.Join(c, "etcdbake", "test-failures")
}
