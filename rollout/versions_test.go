package rollout

import (
	"strings"
	"testing"
)

func TestCheckUpgrade(t *testing.T) {
	three := func(a, b, c string) map[string]string {
		return map[string]string{"etcd-1": a, "etcd-2": b, "etcd-3": c}
	}
	for _, tc := range []struct {
		name    string
		target  string
		running map[string]string
		want    []string // substrings of the error; nil means no error
	}{
		{"patch", "v3.6.16", three("3.6.13", "3.6.13", "3.6.13"), nil},
		{"equal (a re-release)", "v3.6.16", three("3.6.16", "3.6.16", "3.6.16"), nil},
		{"target without v", "3.6.16", three("3.6.16", "3.6.13", "3.6.16"), nil},
		{"3.5.26 to 3.6", "v3.6.16", three("3.5.26", "3.5.26", "3.5.26"), nil},
		{"3.5.19 to 3.6", "v3.6.16", three("3.5.26", "3.5.19", "3.5.26"),
			[]string{"etcd-2 runs 3.5.19", "3.5.26 or newer", "etcd#19557", "first roll out the newest 3.5 patch (3.5.26 or newer), then 3.6.16"}},
		{"3.6.16 to 3.7", "v3.7.3", three("3.6.16", "3.6.16", "3.6.16"), nil},
		{"3.6.11 to 3.7", "v3.7.3", three("3.6.11", "3.6.16", "3.6.16"), nil},
		{"3.6.10 to 3.7", "v3.7.3", three("3.6.16", "3.6.16", "3.6.10"),
			[]string{"etcd-3 runs 3.6.10", "3.6.11 or newer", "upgrade guide", "first roll out the newest 3.6 patch (3.6.11 or newer), then 3.7.3"}},
		{"prerelease below the needed patch", "v3.7.3", three("3.6.16", "3.6.11-rc.0", "3.6.16"),
			[]string{"etcd-2 runs 3.6.11-rc.0", "3.6.11 or newer"}},
		{"two members too old", "v3.7.3", three("3.6.9", "3.6.16", "3.6.10"),
			[]string{"etcd-1 runs 3.6.9 and etcd-3 runs 3.6.10"}},
		{"downgrade", "v3.6.16", three("3.7.3", "3.7.3", "3.7.3"),
			[]string{"downgrade refused", "etcd-1 runs 3.7.3, etcd-2 runs 3.7.3 and etcd-3 runs 3.7.3", "publish etcd 3.7.3 or newer", "etcdctl downgrade"}},
		{"patch downgrade", "3.6.13", three("3.6.16", "3.6.13", "3.6.13"),
			[]string{"downgrade refused", "etcd-1 runs 3.6.16", "publish etcd 3.6.16 or newer"}},
		{"skips a minor", "v3.8.0", three("3.6.16", "3.6.16", "3.6.16"),
			[]string{"more than one minor version below the target 3.8.0", "one minor version at a time", "first roll out the newest 3.7 patch, then 3.8.0"}},
		{"3.5 to 3.7", "v3.7.3", three("3.5.19", "3.5.26", "3.5.26"),
			[]string{"etcd-1 runs 3.5.19, etcd-2 runs 3.5.26 and etcd-3 runs 3.5.26, more than one minor",
				"first roll out the newest 3.5 patch (3.5.26 or newer), then the newest 3.6 patch (3.6.11 or newer), then 3.7.3"}},
		{"mixed, forward", "v3.7.3", three("3.6.16", "3.7.3", "3.6.16"), nil},
		{"mixed, back", "v3.6.16", three("3.6.16", "3.7.3", "3.6.16"),
			[]string{"downgrade refused", "etcd-2 runs 3.7.3", "publish etcd 3.7.3 or newer"}},
		{"mixed, two rules", "v3.7.3", map[string]string{"a": "3.5.26", "b": "3.6.10", "c": "3.8.0"},
			[]string{"c runs 3.8.0, newer than the target", "a runs 3.5.26, more than one minor", "b runs 3.6.10: upgrading 3.6 to 3.7"}},
		{"major", "v4.0.0", three("3.6.16", "3.6.16", "3.6.16"),
			[]string{"another major version", "etcd-1 runs 3.6.16", "within one major version"}},
		{"garbage member version", "v3.6.16", three("3.6.16", "three.six", "3.6.16"),
			[]string{`member etcd-2 reports version "three.six"`, "MAJOR.MINOR.PATCH"}},
		{"empty member version", "v3.6.16", three("3.6.16", "3.6.16", ""),
			[]string{`member etcd-3 reports version ""`}},
		{"garbage target", "latest", three("3.6.16", "3.6.16", "3.6.16"),
			[]string{`target etcd version "latest" is not a version`}},
		{"no members", "v3.6.16", nil, []string{"no member versions"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckUpgrade(tc.target, tc.running)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("allowed")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
		})
	}
}

func TestClusterVersionAfter(t *testing.T) {
	for in, want := range map[string]string{"v3.7.3": "3.7.0", "3.6.16": "3.6.0", "v3.7.0-rc.1": "3.7.0", "latest": ""} {
		if got := ClusterVersionAfter(in); got != want {
			t.Errorf("ClusterVersionAfter(%q) = %q, want %q", in, got, want)
		}
	}
}
