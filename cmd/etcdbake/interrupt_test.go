package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/etcdbake/etcdbake/binaries"
	"github.com/etcdbake/etcdbake/imagebuild/base"
	"github.com/etcdbake/etcdbake/internal/testtools"
)

// listTree returns every path under dir (relative), sorted; a missing dir is empty.
func listTree(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil
			}
			return err
		}
		if rel, _ := filepath.Rel(dir, p); rel != "." {
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

// TestInterruptImageLeavesNothing runs the real etcdbake binary's `image` on the example,
// sends SIGINT while the shared root is being written, and checks that it stops promptly
// with exit code 130 and leaves no temporary file or directory in OUT or in the caches.
func TestInterruptImageLeavesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the real base and binaries")
	}
	if _, err := exec.LookPath("mmdebstrap"); err != nil {
		// The default base is built with mmdebstrap (make setup installs it).
		if _, err := os.Stat(mustBaseCache(t)); err != nil {
			t.Skip("no mmdebstrap and no cached base")
		}
	}
	dir := t.TempDir()
	self := testtools.BuildCLI(t, filepath.Join(dir, "bin"))
	cache := os.Getenv("ETCDBAKE_TEST_CACHE")
	if cache == "" {
		cache, _ = binaries.DefaultCacheDir()
	}
	specPath, out := filepath.Join(dir, "cluster.yaml"), filepath.Join(dir, "out")
	etcdbake := func(ctx context.Context, args ...string) *exec.Cmd {
		return exec.CommandContext(ctx, self, append([]string{"-f", specPath, "--out", out, "--cache", cache}, args...)...)
	}
	if b, err := etcdbake(context.Background(), "init").CombinedOutput(); err != nil {
		t.Fatalf("init: %v\n%s", err, b)
	}
	b, _ := os.ReadFile(specPath)
	b = bytes.Replace(b, []byte("sources: [release, go]"), []byte("sources: [go]"), 1) // no github.com here
	os.WriteFile(specPath, b, 0o644)

	// Fill the caches first (binaries, base, PKI): the interrupted run must leave them as
	// they were, and it must reach the root write quickly.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	if b, err := etcdbake(ctx, "fetch").CombinedOutput(); err != nil {
		t.Fatalf("fetch: %v\n%s", err, b)
	}
	if b, err := etcdbake(ctx, "base").CombinedOutput(); err != nil {
		t.Fatalf("base: %v\n%s", err, b)
	}
	if b, err := etcdbake(ctx, "pki").CombinedOutput(); err != nil {
		t.Fatalf("pki: %v\n%s", err, b)
	}
	baseCache := mustBaseCache(t)
	beforeOut, beforeBase, beforeBin := listTree(t, out), listTree(t, baseCache), listTree(t, cache)

	cmd := etcdbake(ctx, "image")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	var so bytes.Buffer
	cmd.Stdout = &so
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var log strings.Builder
	sent := make(chan time.Time, 1)
	sc := bufio.NewScanner(stderr)
	sc.Split(scanLinesOrCR)
	for sc.Scan() {
		line := sc.Text()
		log.WriteString(line + "\n")
		// The split line comes right before the shared root is written; the meter's
		// "shared root" lines come during it.
		if len(sent) == 0 && (strings.Contains(line, "image: split:") || strings.Contains(line, "shared root:")) {
			time.Sleep(300 * time.Millisecond) // well inside the root write (seconds long)
			if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
				t.Fatal(err)
			}
			sent <- time.Now()
		}
	}
	io.Copy(io.Discard, stderr)
	err = cmd.Wait()
	t.Logf("etcdbake image:\n%s%s", log.String(), so.String())
	if len(sent) == 0 {
		t.Fatalf("never saw the root write start (%v)", err)
	}
	stopped := time.Since(<-sent)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 130 {
		t.Fatalf("interrupted image: %v, want exit code 130", err)
	}
	if stopped > 15*time.Second {
		t.Errorf("etcdbake took %s to stop after SIGINT", stopped.Round(time.Millisecond))
	}
	t.Logf("stopped %s after SIGINT", stopped.Round(time.Millisecond))
	if got := listTree(t, out); strings.Join(got, "\n") != strings.Join(beforeOut, "\n") {
		t.Errorf("OUT changed by the interrupted run:\nbefore %v\nafter  %v", beforeOut, got)
	}
	if got := listTree(t, baseCache); strings.Join(got, "\n") != strings.Join(beforeBase, "\n") {
		t.Errorf("base cache changed by the interrupted run:\nbefore %v\nafter  %v", beforeBase, got)
	}
	if got := listTree(t, cache); strings.Join(got, "\n") != strings.Join(beforeBin, "\n") {
		t.Errorf("binary cache changed by the interrupted run:\nbefore %v\nafter  %v", beforeBin, got)
	}
}

func mustBaseCache(t *testing.T) string {
	t.Helper()
	d, err := base.DefaultCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// scanLinesOrCR splits on \n or \r (the meter redraws its line with \r).
func scanLinesOrCR(data []byte, atEOF bool) (int, []byte, error) {
	if i := bytes.IndexAny(data, "\r\n"); i >= 0 {
		return i + 1, data[:i], nil
	}
	if atEOF && len(data) > 0 {
		return len(data), data, nil
	}
	return 0, nil, nil
}
