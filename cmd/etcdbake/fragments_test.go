package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/etcdbake/etcdbake/spec"
)

// Butane fragments for the tests below.
const (
	// A misspelt key: Butane drops it with a warning.
	warnFragment = "variant: fcos\nversion: 1.5.0\nstorage:\n  files:\n    - path: /etc/motd\n      colour: blue\n      contents:\n        inline: hi\n"
	// A relative path: Butane refuses it.
	badFragment = "variant: fcos\nversion: 1.5.0\nstorage:\n  files:\n    - path: etc/motd\n      contents:\n        inline: hi\n"
	// Replaces etcdbake's etcd.service.
	overrideFragment = "variant: fcos\nversion: 1.5.0\nsystemd:\n  units:\n    - name: etcd.service\n      contents: \"[Service]\\nExecStart=/bin/true\\n\"\n"
	// Valid alone, but a link over the directory etcdbake writes flanneld.env into.
	linkFragment = "variant: fcos\nversion: 1.5.0\nstorage:\n  links:\n    - path: /etc/flannel\n      target: /srv/flannel\n"
)

// fragmentSpec writes the example spec with `butane: extra.bu` (holding fragment) and,
// when node2 is not empty, `butane: node2` on etcd-2 (the file is not created).
func fragmentSpec(t *testing.T, dir, src, fragment, node2 string) string {
	t.Helper()
	if fragment != "" {
		if err := os.WriteFile(filepath.Join(dir, "extra.bu"), []byte(fragment), 0o644); err != nil {
			t.Fatal(err)
		}
		src = strings.Replace(src, "# butane: extra.bu ", "butane: extra.bu   ", 1)
	}
	if node2 != "" {
		src = strings.Replace(src, `mac: "52:54:00:88:00:12"`, `mac: "52:54:00:88:00:12"`+"\n    butane: "+node2, 1)
	}
	p := filepath.Join(dir, "cluster.yaml")
	if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestValidateReadsFragments: validate reads, translates and merges the spec's Butane
// fragments: Butane's warnings are printed with the fragment's origin; an invalid
// fragment, a missing file, a fragment that replaces etcdbake's unit and one that makes
// the merged config invalid are errors naming the spec field, the file and the path.
func TestValidateReadsFragments(t *testing.T) {
	cases := []struct {
		name, fragment, node2 string
		overrides             bool
		wantErr               bool
		want                  []string
	}{
		{"butane warning", warnFragment, "", false, false, []string{"warning: butane: ", "extra.bu: warning at $.storage.files.0.colour", "unused key colour", "valid (1 warning(s))"}},
		{"invalid fragment", badFragment, "", false, true, []string{"error: butane: ", "extra.bu: error at $.storage.files.0.path", "path not absolute"}},
		{"missing file", "", "missing.bu", false, true, []string{"error: nodes[1].butane: ", "missing.bu: does not exist"}},
		{"replaces etcd.service", overrideFragment, "", false, true, []string{"error: butane: ", "$.systemd.units.0", "etcd.service", "butaneOverrides"}},
		{"replaces etcd.service with the opt-in", overrideFragment, "", true, false, []string{"warning: butane: ", "$.systemd.units.0", "etcd.service"}},
		{"breaks the merged config", linkFragment, "", false, true, []string{"error: butane: ", "extra.bu makes the Ignition config of node etcd-1 invalid", "error at $.storage.files.8 (/etc/flannel/pki/ca.crt, written by etcdbake): file path includes link"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			src := example()
			if tc.overrides {
				src += "butaneOverrides: true\n"
			}
			specPath := fragmentSpec(t, dir, src, tc.fragment, tc.node2)
			stdout, _, err := run(t, time.Now(), "validate", "-f", specPath)
			var ee *exitError
			switch {
			case tc.wantErr && (!errors.As(err, &ee) || ee.code != 2):
				t.Fatalf("validate accepted it (err %v):\n%s", err, stdout)
			case !tc.wantErr && err != nil:
				t.Fatalf("validate refused it: %v\n%s", err, stdout)
			}
			for _, w := range tc.want {
				if !strings.Contains(stdout, w) {
					t.Errorf("want %q in:\n%s", w, stdout)
				}
			}
		})
	}
}

// TestIgnitionChecksFragmentsFirst: `ignition` refuses an invalid fragment before any
// output (no OUT/pki, no cache) and prints a fragment's Butane warnings with its origin.
// It needs the composition root to run ignition.CheckFragments before any work.
func TestIgnitionChecksFragmentsFirst(t *testing.T) {
	t.Run("invalid fragment writes nothing", func(t *testing.T) {
		dir := t.TempDir()
		specPath := fragmentSpec(t, dir, fakeBinaries(t, dir), badFragment, "")
		out, cache := filepath.Join(dir, "out"), filepath.Join(dir, "cache")
		fb := staticFirstboot(t) // a real one: --firstboot is checked
		_, _, err := run(t, time.Now(), "ignition", "-f", specPath, "--out", out, "--cache", cache, "--firstboot", fb, "--binaries-url", "http://10.88.0.1:8080/bin")
		var inv *spec.InvalidError
		if !errors.As(err, &inv) || !strings.Contains(err.Error(), "butane") || !strings.Contains(err.Error(), "path not absolute") {
			t.Errorf("want the invalid-spec error naming the fragment, got %v", err)
		}
		for _, p := range []string{out, cache} {
			if _, err := os.Stat(p); !os.IsNotExist(err) {
				t.Errorf("ignition wrote %s for an invalid fragment", p)
			}
		}
	})
	t.Run("warnings printed", func(t *testing.T) {
		dir := t.TempDir()
		specPath := fragmentSpec(t, dir, fakeBinaries(t, dir), warnFragment, "")
		fb := staticFirstboot(t) // a real one: --firstboot is checked
		stdout, stderr, err := run(t, time.Now(), "ignition", "-f", specPath, "--out", filepath.Join(dir, "out"), "--cache", filepath.Join(dir, "cache"), "--firstboot", fb, "--binaries-url", "http://10.88.0.1:8080/bin")
		if err != nil {
			t.Fatalf("ignition: %v\n%s\n%s", err, stdout, stderr)
		}
		if !strings.Contains(stderr, "warning: butane: ") || !strings.Contains(stderr, "unused key colour") {
			t.Errorf("no Butane warning with its origin on stderr:\n%s", stderr)
		}
	})
}
