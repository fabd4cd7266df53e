package fstree

import (
	"io/fs"
	"testing"
)

// TestTreeResolveAndClone: paths resolve through absolute and relative links without
// leaving the root, a link loop is an error, and a clone's entries change independently.
func TestTreeResolveAndClone(t *testing.T) {
	tr := NewTree()
	for _, e := range []*Entry{
		{Path: "usr/lib/os-release", Mode: 0o644, Data: []byte("ID=debian\n")},
		{Path: "lib", Mode: fs.ModeSymlink | 0o777, Target: "usr/lib"},
		{Path: "etc/os-release", Mode: fs.ModeSymlink | 0o777, Target: "../lib/os-release"},
		{Path: "etc/abs", Mode: fs.ModeSymlink | 0o777, Target: "/../../usr/lib"},
		{Path: "loop", Mode: fs.ModeSymlink | 0o777, Target: "loop"},
	} {
		if err := tr.Put(e); err != nil {
			t.Fatal(err)
		}
	}
	for p, want := range map[string]string{"etc/os-release": "usr/lib/os-release", "/etc/abs/os-release": "usr/lib/os-release", "lib/x/../os-release": "usr/lib/os-release"} {
		if got, err := tr.Resolve(p, true); err != nil || got != want {
			t.Errorf("Resolve(%q) = %q, %v; want %q", p, got, err, want)
		}
	}
	if got, _ := tr.Resolve("etc/os-release", false); got != "etc/os-release" {
		t.Errorf("Resolve without following the last link = %q", got)
	}
	if _, err := tr.Resolve("loop/x", true); err == nil {
		t.Error("a link loop resolved")
	}
	if b, err := tr.ReadFile("usr/lib/os-release"); err != nil || string(b) != "ID=debian\n" {
		t.Errorf("ReadFile = %q, %v", b, err)
	}
	if e, ok := tr.Follow("etc/os-release"); !ok || !e.IsRegular() {
		t.Errorf("Follow = %v, %v", e, ok)
	}

	c := tr.Clone()
	e, _ := c.Get("usr/lib/os-release")
	e.Mode = 0o600
	c.Delete("lib")
	if orig, _ := tr.Get("usr/lib/os-release"); orig.Mode != 0o644 {
		t.Error("changing a clone's entry changed the original")
	}
	if _, ok := tr.Lookup("lib"); !ok {
		t.Error("deleting from a clone deleted from the original")
	}
	if c.Len() != tr.Len()-1 {
		t.Errorf("clone has %d entries, original %d", c.Len(), tr.Len())
	}
}
