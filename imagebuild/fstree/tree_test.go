package fstree

import (
	"io/fs"
	"os"
	"path/filepath"
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

// TestDigest: the digest is the same for equal trees built in another order and changes
// with a file's contents (in memory or from a source file), mode, owner or a link target.
func TestDigest(t *testing.T) {
	src := filepath.Join(t.TempDir(), "big")
	os.WriteFile(src, []byte("large binary"), 0o644)
	build := func(change func(t *Tree)) string {
		tr := NewTree()
		for _, e := range []*Entry{
			{Path: "etc", Mode: fs.ModeDir | 0o755},
			{Path: "etc/hostname", Mode: 0o644, Data: []byte("n1\n")},
			{Path: "usr", Mode: fs.ModeDir | 0o755},
			{Path: "usr/bin", Mode: fs.ModeDir | 0o755},
			{Path: "usr/bin/etcd", Mode: 0o755, Source: src},
			{Path: "usr/bin/e", Mode: fs.ModeSymlink | 0o777, Target: "etcd"},
		} {
			if err := tr.Put(e); err != nil {
				t.Fatal(err)
			}
		}
		if change != nil {
			change(tr)
		}
		d, err := tr.Digest()
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	base := build(nil)
	if again := build(nil); again != base {
		t.Errorf("two equal trees: %s and %s", base, again)
	}
	for name, change := range map[string]func(*Tree){
		"contents": func(tr *Tree) { tr.Set(&Entry{Path: "etc/hostname", Mode: 0o644, Data: []byte("n2\n")}) },
		"mode":     func(tr *Tree) { tr.Set(&Entry{Path: "etc/hostname", Mode: 0o600, Data: []byte("n1\n")}) },
		"owner":    func(tr *Tree) { tr.Set(&Entry{Path: "etc/hostname", Mode: 0o644, UID: 1, Data: []byte("n1\n")}) },
		"target":   func(tr *Tree) { tr.Set(&Entry{Path: "usr/bin/e", Mode: fs.ModeSymlink | 0o777, Target: "etcdctl"}) },
		"source": func(tr *Tree) {
			other := filepath.Join(t.TempDir(), "big")
			os.WriteFile(other, []byte("large binarY"), 0o644)
			tr.Set(&Entry{Path: "usr/bin/etcd", Mode: 0o755, Source: other})
		},
		"new file": func(tr *Tree) { tr.Put(&Entry{Path: "etc/x", Mode: 0o644}) },
	} {
		if d := build(change); d == base {
			t.Errorf("%s changed: the digest did not", name)
		}
	}
}
