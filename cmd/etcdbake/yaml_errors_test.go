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

// TestYAMLIndentationErrors: a mis-indented spec fails `validate` with exit code 2 and
// names the line to fix and how (issue 13, item 2); other commands refuse it the same way.
func TestYAMLIndentationErrors(t *testing.T) {
	cases := []struct {
		name, from, to string
		want           string
	}{
		{"key dedented mid-mapping", "  subnetLen: 24", "subnetLen: 24",
			`error: flannel.subnetLen (line 40): not valid YAML: "subnetLen" is indented 0 spaces: indent it under flannel: (line 37), to 2 spaces like "network" on line 39`},
		{"last key dedented", "  leafLifetime: 1y", "leafLifetime: 1y",
			`error: leafLifetime (line 52): unknown field "leafLifetime" at the top level: indent it under pki: (line 49), to 2 spaces like "caLifetime" on line 51`},
		{"tab", "    address: 10.88.0.12/24", "\taddress: 10.88.0.12/24",
			`error: nodes[1].address (line 16): not valid YAML: tabs are not allowed in YAML indentation, line 16: indent it with 4 spaces instead, under the list item nodes[1] (line 15) like "name" on line 15`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			specPath := filepath.Join(dir, "cluster.yaml")
			src := strings.Replace(example(), tc.from, tc.to, 1)
			if src == example() {
				t.Fatalf("test case does not apply: %q not in the example", tc.from)
			}
			if err := os.WriteFile(specPath, []byte(src), 0o644); err != nil {
				t.Fatal(err)
			}
			stdout, _, err := run(t, time.Now(), "validate", "-f", specPath)
			var ee *exitError
			if !errors.As(err, &ee) || ee.code != 2 {
				t.Fatalf("validate: want exit code 2, got %v:\n%s", err, stdout)
			}
			if want := specPath + ": " + tc.want; !strings.Contains(stdout, want) || !strings.Contains(ee.msg, "1 error(s)") {
				t.Fatalf("want\n%s\n(1 error) in\n%s%s", want, stdout, ee.msg)
			}
			_, _, err = run(t, time.Now(), "pki", "-f", specPath, "--out", filepath.Join(dir, "out"))
			var inv *spec.InvalidError
			if !errors.As(err, &inv) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("pki: want the invalid-spec error (exit code 2) with the same line, got %v", err)
			}
		})
	}
}
