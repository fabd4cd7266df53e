package spec

import (
	"fmt"
	"strings"
	"testing"
)

// exampleLine returns the 1-based line of the example that holds text (the first one).
func exampleLine(t *testing.T, text string) int {
	t.Helper()
	for i, l := range strings.Split(string(Example), "\n") {
		if strings.Contains(l, text) {
			return i + 1
		}
	}
	t.Fatalf("%q is not in the example spec", text)
	return 0
}

// mutation re-indents one line of the example.
type mutation func(line string) string

func dedent(n int) mutation {
	return func(l string) string {
		if !strings.HasPrefix(l, strings.Repeat(" ", n)) {
			panic(fmt.Sprintf("cannot dedent %q by %d", l, n))
		}
		return l[n:]
	}
}

func indent(n int) mutation { return func(l string) string { return strings.Repeat(" ", n) + l } }

// tab replaces the line's leading spaces with one tab.
func tab(l string) string { return "\t" + strings.TrimLeft(l, " ") }

// mutate applies m to the example line holding text and returns the spec and that line.
func mutate(t *testing.T, text string, m mutation) ([]byte, int) {
	t.Helper()
	line := exampleLine(t, text)
	lines := strings.Split(string(Example), "\n")
	lines[line-1] = m(lines[line-1])
	return []byte(strings.Join(lines, "\n")), line
}

// TestIndentationErrors breaks the example's indentation one line at a time and checks
// that the error names that line (not the start of the enclosing mapping, nor the line
// after it where the YAML parser notices), the field it was meant to be, and the fix.
func TestIndentationErrors(t *testing.T) {
	cases := []struct {
		name string
		text string // the example line to change
		m    mutation
		path string   // the reported field path
		want []string // in the message
	}{
		// The first case: a key dedented in the middle of a mapping.
		{"key dedented mid-mapping", "subnetLen: 24", dedent(2), "flannel.subnetLen",
			[]string{`not valid YAML: "subnetLen" is indented 0 spaces`, `indent it under flannel: (line 37), to 2 spaces like "network" on line 39`}},
		{"first key dedented", "algorithm: ecdsa-p256", dedent(2), "pki.algorithm",
			[]string{`indent it under pki: (line 49), to 2 spaces like "caLifetime" on line 51`}},
		{"first key dedented, comments after", "version: v3.6.16", dedent(2), "etcd.version",
			[]string{`indent it under etcd: (line 25)`}},
		// The second case: parses, into the wrong mapping.
		{"last key dedented", "leafLifetime: 1y", dedent(2), "leafLifetime",
			[]string{`unknown field "leafLifetime" at the top level: indent it under pki: (line 49), to 2 spaces like "caLifetime" on line 51`}},
		{"only key dedented", "sources: [release, go]", dedent(2), "sources",
			[]string{`unknown field "sources" at the top level: indent it under binaries: (line 60), to 2 spaces`}},
		{"key indented too far", "leafLifetime: 1y", indent(2), "pki.leafLifetime",
			[]string{`"leafLifetime" is indented 4 spaces: dedent it to 2 spaces, under pki: (line 49) like "caLifetime" on line 51`}},
		{"section indented into the one above", "pki:", indent(2), "time.pki",
			[]string{`unknown field "pki" in time: dedent it to the top level (no indentation)`}},
		{"top-level key indented", "nodes:", indent(2), "nodes",
			[]string{`"nodes" is indented 2 spaces: dedent it to the top level (no indentation)`}},
		{"first line indented", "apiVersion:", indent(2), "apiVersion",
			[]string{`"apiVersion" is indented 2 spaces: dedent it to the top level`}},
		// Inside a list item.
		{"key dedented in a list item", "address: 10.88.0.13/24", dedent(2), "nodes[2].address",
			[]string{`"address" is indented 2 spaces: indent it under the list item nodes[2] (line 18), to 4 spaces like "name" on line 18`}},
		{"last key of a list item dedented", `mac: "52:54:00:88:00:13"`, dedent(2), "nodes[2].mac",
			[]string{`indent it under the list item nodes[2] (line 18), to 4 spaces like "address" on line 19`}},
		{"key indented in a list item", `mac: "52:54:00:88:00:11"`, indent(2), "nodes[0].mac",
			[]string{`dedent it to 4 spaces, under the list item nodes[0] (line 12) like "address" on line 13`}},
		{"list item dedented", "- name: etcd-1", dedent(2), "nodes[0]",
			[]string{`the list item is indented 0 spaces: indent it under nodes: (line 11), to 2 spaces like the item on line 15`}},
		// Tabs.
		{"tab before a key", "leafLifetime: 1y", tab, "pki.leafLifetime",
			[]string{`tabs are not allowed in YAML indentation, line 52: indent it with 2 spaces instead, under pki: (line 49)`}},
		{"tab in a list item", "address: 10.88.0.12/24", tab, "nodes[1].address",
			[]string{`tabs are not allowed in YAML indentation, line 16: indent it with 4 spaces instead, under the list item nodes[1] (line 15)`}},
		{"tab before a list item", "- name: etcd-2", tab, "nodes[1]",
			[]string{`tabs are not allowed in YAML indentation, line 15: indent it with 2 spaces instead, under nodes: (line 11)`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			src, line := mutate(t, tc.text, tc.m)
			c, rep := Parse(src)
			if c != nil {
				t.Fatalf("a mis-indented spec was accepted:\n%s", src)
			}
			errs := rep.Errors()
			if len(errs) != 1 {
				t.Fatalf("want 1 error (the mis-indented line), got:\n%s", rep.String())
			}
			got := errs[0]
			if got.Line != line || got.Path != tc.path {
				t.Errorf("reported %s (line %d), want %s (line %d):\n%s", got.Path, got.Line, tc.path, line, rep.String())
			}
			for _, w := range tc.want {
				if !strings.Contains(got.Message, w) {
					t.Errorf("want %q in:\n%s", w, got.Message)
				}
			}
		})
	}
}

// TestMisplacedKeys: keys valid only in another mapping, where no re-indentation takes
// them, are reported with the mapping they belong to, closest first.
func TestMisplacedKeys(t *testing.T) {
	end := "# butane: extra.bu"
	cases := []struct {
		name, from, to string
		path           string
		want           string
	}{
		{"appended at the end", end, "leafLifetime: 2y\n" + end, "leafLifetime",
			`unknown field "leafLifetime" at the top level: move it under pki: (line 49)`},
		{"in another section", "  syncTimeout: 2m", "  leafLifetime: 2y\n  syncTimeout: 2m", "time.leafLifetime",
			`unknown field "leafLifetime" in time: move it under pki: (line 50)`},
		{"two homes", end, "version: v3.6.16\n" + end, "version",
			`unknown field "version" at the top level: move it under etcd: (line 25) or under flannel: (line 37)`},
		{"a node's field", end, "gateway: 10.88.0.1\n" + end, "gateway",
			`unknown field "gateway" at the top level: move it under an item of nodes: (line 11)`},
		{"a top-level field in a section", "  algorithm:", "  butaneOverrides: true\n  algorithm:", "pki.butaneOverrides",
			`unknown field "butaneOverrides" in pki: move it to the top level`},
		{"not a field anywhere", "etcd:\n", "etcd:\n  colour: blue\n", "etcd.colour", `unknown field "colour": remove it`},
		{"typo", "subnetLen: 24", "subnetlen: 24", "flannel.subnetlen", `did you mean "subnetLen"?`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			src := strings.Replace(string(Example), tc.from, tc.to, 1)
			_, rep := Parse([]byte(src))
			errs := rep.Errors()
			if len(errs) != 1 || errs[0].Path != tc.path || !strings.Contains(errs[0].Message, tc.want) {
				t.Fatalf("want one error at %s with %q, got:\n%s", tc.path, tc.want, rep.String())
			}
		})
	}
}

// TestIndentationErrorsWithOthers: every mis-indented line is reported, and so is what is
// wrong with the spec once they are fixed.
func TestIndentationErrorsWithOthers(t *testing.T) {
	src := strings.NewReplacer(
		"  subnetLen: 24", "subnetLen: 24",
		"  leafLifetime: 1y", "    leafLifetime: 1y",
		"backend: vxlan", "backend: vxlam",
	).Replace(string(Example))
	_, rep := Parse([]byte(src))
	var got []string
	for _, p := range rep.Errors() {
		got = append(got, fmt.Sprintf("%s:%d", p.Path, p.Line))
	}
	if want := "flannel.subnetLen:40 flannel.backend:41 pki.leafLifetime:52"; strings.Join(got, " ") != want {
		t.Fatalf("got %s, want %s:\n%s", strings.Join(got, " "), want, rep.String())
	}
}

// TestYAMLErrorLine: YAML errors that are not indentation still name the line where the
// document breaks, not the start of the enclosing mapping.
func TestYAMLErrorLine(t *testing.T) {
	cases := []struct {
		name, from, to string
		line           int
		want           string
	}{
		{"unclosed quote", `mac: "52:54:00:88:00:12"`, `mac: "52:54:00:88:00:12`, 17, `the value quoted with " on this line has no closing "`},
		{"unclosed list", "servers: [0.pool.ntp.org, 1.pool.ntp.org]", "servers: [0.pool.ntp.org, 1.pool.ntp.org", 45, "did not find expected ',' or ']'"},
		{"tab on a blank line", "\npki:", "\t\npki:", 48, "tabs are not allowed in YAML indentation, line 48"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, rep := Parse([]byte(strings.Replace(string(Example), tc.from, tc.to, 1)))
			errs := rep.Errors()
			if len(errs) != 1 || errs[0].Line != tc.line || !strings.Contains(errs[0].Message, tc.want) {
				t.Fatalf("want one error on line %d with %q, got:\n%s", tc.line, tc.want, rep.String())
			}
		})
	}
}

// TestKeyDedentedOutOfLastNode: a node's key dedented to the top level parses (butane is
// a top-level field too), so it is only a warning, on that line.
func TestKeyDedentedOutOfLastNode(t *testing.T) {
	mac := `    mac: "52:54:00:88:00:13"` + "\n"
	src := strings.Replace(string(Example), mac, mac+"butane: etcd-3.bu\n", 1)
	c, rep := Parse([]byte(src))
	if c == nil || rep.HasErrors() {
		t.Fatalf("rejected:\n%s", rep.String())
	}
	want := `warning: butane (line 21): "butane" is set at the top level, on the line right after nodes[2], which takes "butane" too: if it is meant for nodes[2], indent it to 4 spaces like "mac" on line 20`
	if len(rep.Problems) != 1 || rep.Problems[0].String() != want {
		t.Fatalf("want\n%s\ngot\n%s", want, rep.String())
	}
	// Set apart by a blank line, it is taken as meant for the whole cluster.
	src = strings.Replace(string(Example), mac, mac+"\nbutane: extra.bu\n", 1)
	if _, rep := Parse([]byte(src)); len(rep.Problems) != 0 {
		t.Fatalf("warned about a cluster-wide butane:\n%s", rep.String())
	}
}

// TestIndentationInBinaryFiles: the same inside entries of a map (binaries.files), where a
// dedented key can also become an entry of the wrong kind.
func TestIndentationInBinaryFiles(t *testing.T) {
	files := "  sources: [file]\n  files:\n    etcd:\n      path: /x/etcd\n      sha256: abc\n    etcdctl:\n      path: /x/etcdctl\n      sha256: abc\n"
	base := strings.Replace(string(Example), "  sources: [release, go]\n", files, 1)
	cases := []struct {
		name, from, to string
		line           int
		path, want     string
	}{
		{"entry key dedented", "      sha256: abc\n    etcdctl", "    sha256: abc\n    etcdctl", 67, "binaries.files.sha256",
			`expected a mapping, found a scalar; indent it under binaries.files.etcd: (line 65), to 6 spaces like "path" on line 66`},
		{"entry dedented", "    etcdctl:", "  etcdctl:", 68, "binaries.etcdctl",
			`unknown field "etcdctl" in binaries: indent it under binaries.files: (line 64), to 4 spaces like "etcd" on line 65`},
		{"first key of an entry dedented", "      path: /x/etcd", "    path: /x/etcd", 66, "binaries.files.etcd.path",
			`not valid YAML: "path" is indented 4 spaces: indent it under binaries.files.etcd: (line 65), to 6 spaces like "sha256" on line 67`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			src := strings.Replace(base, tc.from, tc.to, 1)
			if src == base {
				t.Fatalf("test case does not apply: %q", tc.from)
			}
			_, rep := Parse([]byte(src))
			for _, p := range rep.Errors() {
				if p.Line == tc.line && p.Path == tc.path && strings.Contains(p.Message, tc.want) {
					return
				}
			}
			t.Fatalf("want an error at %s (line %d) with %q, got:\n%s", tc.path, tc.line, tc.want, rep.String())
		})
	}
}
