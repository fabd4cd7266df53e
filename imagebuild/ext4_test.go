package imagebuild

import (
	"io/fs"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func sampleTree(t *testing.T) *Tree {
	t.Helper()
	tr := NewTree()
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(tr.Put(&Entry{Path: "etc", Mode: fs.ModeDir | 0o755}))
	must(tr.Put(&Entry{Path: "etc/hostname", Mode: 0o644, Data: []byte("node\n")}))
	must(tr.Put(&Entry{Path: "var/lib/etcd", Mode: fs.ModeDir | 0o700, UID: 990, GID: 989}))
	must(tr.Put(&Entry{Path: "usr/bin/su", Mode: fs.ModeSetuid | 0o755, Data: []byte("#!/bin/sh\n")}))
	must(tr.Put(&Entry{Path: "bin", Mode: fs.ModeSymlink | 0o777, Target: "usr/bin"}))
	must(tr.Put(&Entry{Path: "etc/big", Mode: 0o600, UID: 990, GID: 989, Data: []byte(strings.Repeat("0123456789abcdef", 70000))}))
	must(tr.Put(&Entry{Path: "etc/big-link", Mode: 0o600, Hardlink: "etc/big"}))
	return tr
}

// TestWriteExt4 writes a tree with go-diskfs and checks it with e2fsprogs: fsck clean,
// and debugfs reads back contents, modes, owners and link targets.
func TestWriteExt4(t *testing.T) {
	diskTestTool(t, "fsck.ext4", "e2fsprogs")
	diskTestTool(t, "debugfs", "e2fsprogs")
	img := filepath.Join(t.TempDir(), "root.ext4")
	st, err := WriteExt4(img, 64<<20, sampleTree(t), Ext4Options{Label: "root", UUID: DeriveGUID("test", "root"), Time: time.Unix(1700000000, 0)})
	if err != nil {
		t.Fatal(err)
	}
	if st.Files != 4 || st.HardlinksCopied != 1 || st.Symlinks != 1 {
		t.Errorf("stats %+v", st)
	}
	if out, err := exec.Command("fsck.ext4", "-fn", img).CombinedOutput(); err != nil {
		t.Fatalf("fsck.ext4 -fn: %v\n%s", err, out)
	}
	dbg := func(req string) string {
		out, err := exec.Command("debugfs", "-R", req, img).CombinedOutput()
		if err != nil {
			t.Fatalf("debugfs %s: %v\n%s", req, err, out)
		}
		return string(out)
	}
	if got := dbg("cat /etc/hostname"); !strings.Contains(got, "node\n") {
		t.Errorf("hostname: %q", got)
	}
	stat := dbg("stat /var/lib/etcd")
	if !strings.Contains(stat, "Mode:  0700") || !strings.Contains(stat, "User:   990") || !strings.Contains(stat, "Group:   989") {
		t.Errorf("/var/lib/etcd: %s", stat)
	}
	if stat := dbg("stat /usr/bin/su"); !strings.Contains(stat, "Mode:  04755") {
		t.Errorf("setuid lost: %s", stat)
	}
	if got := dbg("stat /bin"); !strings.Contains(got, `Fast link dest: "usr/bin"`) {
		t.Errorf("symlink: %s", got)
	}
	if got := dbg("cat /etc/big-link"); len(got) < 16*70000 {
		t.Errorf("hard link copy has %d bytes", len(got))
	}
}
