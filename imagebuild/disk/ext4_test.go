package disk

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/etcdbake/etcdbake/imagebuild/fstree"
	"github.com/etcdbake/etcdbake/imagebuild/internal/imagetest"
	"github.com/google/uuid"
)

func sampleTree(t *testing.T) *fstree.Tree {
	t.Helper()
	tr := fstree.NewTree()
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(tr.Put(&fstree.Entry{Path: "etc", Mode: fs.ModeDir | 0o755}))
	must(tr.Put(&fstree.Entry{Path: "etc/hostname", Mode: 0o644, Data: []byte("node\n")}))
	must(tr.Put(&fstree.Entry{Path: "var/lib/etcd", Mode: fs.ModeDir | 0o700, UID: 990, GID: 989}))
	must(tr.Put(&fstree.Entry{Path: "usr/bin/su", Mode: fs.ModeSetuid | 0o755, Data: []byte("#!/bin/sh\n")}))
	must(tr.Put(&fstree.Entry{Path: "bin", Mode: fs.ModeSymlink | 0o777, Target: "usr/bin"}))
	must(tr.Put(&fstree.Entry{Path: "etc/big", Mode: 0o600, UID: 990, GID: 989, Data: []byte(strings.Repeat("0123456789abcdef", 70000))}))
	must(tr.Put(&fstree.Entry{Path: "etc/big-link", Mode: 0o600, Hardlink: "etc/big"}))
	must(tr.Put(&fstree.Entry{Path: "tmp", Mode: fs.ModeDir | fs.ModeSticky | 0o777}))
	must(tr.Put(&fstree.Entry{Path: "var/lib/etcd/member", Mode: fs.ModeSymlink | 0o777, Target: "/data/member", UID: 990, GID: 989}))
	must(tr.Put(&fstree.Entry{Path: "usr/bin/wall", Mode: fs.ModeSetgid | 0o2755, GID: 5, Data: []byte("x")}))
	return tr
}

// TestWriteExt4 writes a tree with go-diskfs and checks it with e2fsprogs: fsck clean,
// and debugfs reads back contents, modes, owners and link targets.
func TestWriteExt4(t *testing.T) {
	imagetest.Tool(t, "fsck.ext4", "e2fsprogs")
	imagetest.Tool(t, "debugfs", "e2fsprogs")
	img := filepath.Join(t.TempDir(), "root.ext4")
	var done, total int64
	st, err := WriteExt4(context.Background(), img, 64<<20, sampleTree(t), Ext4Options{Label: "root", UUID: DeriveGUID("test", "root"), Time: time.Unix(1700000000, 0),
		Meter: func(d, n int64) { done, total = d, n }})
	if err != nil {
		t.Fatal(err)
	}
	if done != total || total != int64(sampleTree(t).Len()) {
		t.Errorf("meter ended at %d of %d", done, total)
	}
	if st.Files != 5 || st.HardlinksCopied != 1 || st.Symlinks != 2 {
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
	checkExt4Attrs(t, img, sampleTree(t))

	// Any root directory: its mode and owner come from the tree too.
	tr := sampleTree(t)
	if err := tr.Put(&fstree.Entry{Path: "", Mode: fs.ModeDir | 0o711, UID: 7, GID: 8}); err != nil {
		t.Fatal(err)
	}
	img2 := filepath.Join(t.TempDir(), "root2.ext4")
	if _, err := WriteExt4(context.Background(), img2, 64<<20, tr, Ext4Options{Label: "root", UUID: DeriveGUID("test", "root2")}); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("fsck.ext4", "-fn", img2).CombinedOutput(); err != nil {
		t.Fatalf("fsck.ext4 -fn (no build time): %v\n%s", err, out)
	}
	checkExt4Attrs(t, img2, tr)
}

// checkExt4Attrs compares every entry's type bits, permissions and owner with what
// debugfs reads from the image.
func checkExt4Attrs(t *testing.T, img string, tr *fstree.Tree) {
	t.Helper()
	var req strings.Builder
	paths := tr.Paths()
	for _, p := range paths {
		fmt.Fprintf(&req, "stat \"/%s\"\n", p)
	}
	cmd := exec.Command("debugfs", "-f", "-", img)
	cmd.Stdin = strings.NewReader(req.String())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs: %v\n%s", err, out)
	}
	re := regexp.MustCompile(`(?m)^Inode: \d+\s+Type: (\w+)\s+Mode:\s+(\d+)\s.*\nGeneration: .*\nUser:\s+(\d+)\s+Group:\s+(\d+)`)
	got := re.FindAllStringSubmatch(string(out), -1)
	if len(got) != len(paths) {
		t.Fatalf("debugfs stat: %d answers for %d paths\n%s", len(got), len(paths), out)
	}
	for i, p := range paths {
		e, _ := tr.Get(p)
		typ := map[bool]string{true: "directory"}[e.IsDir()]
		if e.IsSymlink() {
			typ = "symlink"
		} else if e.IsRegular() {
			typ = "regular"
		}
		perm := fmt.Sprintf("0%o", unixPerm(e.Mode)) // as debugfs prints it
		if e.IsSymlink() {
			perm = "0777"
		}
		want := fmt.Sprintf("%s %s %d:%d", typ, perm, e.UID, e.GID)
		if g := fmt.Sprintf("%s %s %s:%s", got[i][1], got[i][2], got[i][3], got[i][4]); g != want {
			t.Errorf("/%s: image has %s, tree says %s", p, g, want)
		}
	}
}

// TestWriteExt4Reproducible writes the same tree twice, a second apart: the images are
// byte-identical, e2fsck finds them clean (superblock and inode checksums recomputed by
// stampExt4), and every time debugfs shows is the requested one. A different UUID gives
// a different image (the hash seed follows the identity, it is not a constant).
func TestWriteExt4Reproducible(t *testing.T) {
	imagetest.Tool(t, "fsck.ext4", "e2fsprogs")
	imagetest.Tool(t, "debugfs", "e2fsprogs")
	dir := t.TempDir()
	when := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	write := func(name, id string) []byte {
		img := filepath.Join(dir, name)
		if _, err := WriteExt4(context.Background(), img, 64<<20, sampleTree(t), Ext4Options{Label: "root", UUID: DeriveGUID("test", id), Time: when}); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("fsck.ext4", "-fn", img).CombinedOutput(); err != nil {
			t.Fatalf("fsck.ext4 -fn %s: %v\n%s", name, err, out)
		}
		b, err := os.ReadFile(img)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	a := write("a.ext4", "root")
	time.Sleep(1100 * time.Millisecond) // go-diskfs stamps time.Now(): make it differ
	b := write("b.ext4", "root")
	if !bytes.Equal(a, b) {
		n, first := 0, -1
		for i := range a {
			if a[i] != b[i] {
				if first < 0 {
					first = i
				}
				n++
			}
		}
		t.Fatalf("two builds differ in %d bytes (first at offset %#x)", n, first)
	}
	if c := write("c.ext4", "other"); bytes.Equal(a, c) {
		t.Error("a different file system UUID gave the same image")
	}
	img := filepath.Join(dir, "a.ext4")
	for _, p := range []string{"/", "/etc/hostname", "/bin", "/var/lib/etcd", "/lost+found", "<8>"} {
		out, err := exec.Command("debugfs", "-R", "stat "+p, img).CombinedOutput()
		if err != nil {
			t.Fatalf("debugfs stat %s: %v\n%s", p, err, out)
		}
		for _, m := range regexp.MustCompile(`(?m)^\s*(ctime|atime|mtime|crtime): 0x([0-9a-f]+)`).FindAllStringSubmatch(string(out), -1) {
			if m[2] != fmt.Sprintf("%08x", when.Unix()) {
				t.Errorf("%s: %s is %s, want %x", p, m[1], m[2], when.Unix())
			}
		}
	}
	out, err := exec.Command("dumpe2fs", "-h", img).CombinedOutput()
	if err != nil {
		t.Fatalf("dumpe2fs: %v\n%s", err, out)
	}
	for _, f := range []string{"Filesystem created", "Last write time", "Last checked"} {
		if m := regexp.MustCompile(`(?m)^` + f + `:\s+(.*)$`).FindStringSubmatch(string(out)); m == nil || !strings.Contains(m[1], "2025") {
			t.Errorf("superblock %q: %v", f, m)
		}
	}
}

// TestWriteExt4LeavesUUIDAlone: writing ext4 does not touch the process's uuid source.
// Another goroutine draws uuid.New() the whole time two images are written: none of its
// values may come from the stream the images' identity seeds (which a swapped global
// source would hand out), and the two images stay identical, with the directory hash
// seed the identity gives (the first UUID of that stream, as before: images stay
// byte-identical across this change).
func TestWriteExt4LeavesUUIDAlone(t *testing.T) {
	dir := t.TempDir()
	id := DeriveGUID("test", "root")
	seeded := map[uuid.UUID]bool{}
	stream := newHashStream("ext4/" + id + "/root")
	for range 64 {
		u, err := uuid.NewRandomFromReader(stream)
		if err != nil {
			t.Fatal(err)
		}
		seeded[u] = true
	}
	wantSeed, _ := uuid.NewRandomFromReader(newHashStream("ext4/" + id + "/root"))

	stop := make(chan struct{})
	drawn := make(chan []uuid.UUID)
	go func() {
		var got []uuid.UUID
		for {
			select {
			case <-stop:
				drawn <- got
				return
			default:
				got = append(got, uuid.New())
			}
		}
	}()
	var imgs [][]byte
	for i := range 2 {
		img := filepath.Join(dir, fmt.Sprintf("%d.ext4", i))
		if _, err := WriteExt4(context.Background(), img, 64<<20, sampleTree(t), Ext4Options{Label: "root", UUID: id, Time: time.Unix(1700000000, 0)}); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(img)
		if err != nil {
			t.Fatal(err)
		}
		imgs = append(imgs, b)
	}
	close(stop)
	got := <-drawn
	bad := 0
	for _, u := range got {
		if seeded[u] {
			bad++
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d uuid.New() values drawn while ext4 was written came from the image's seeded stream", bad, len(got))
	}
	if !bytes.Equal(imgs[0], imgs[1]) {
		t.Error("two images of the same tree differ while another goroutine draws UUIDs")
	}
	if hs := imgs[0][sbOffset+0xEC : sbOffset+0xFC]; !bytes.Equal(hs, wantSeed[:]) {
		t.Errorf("directory hash seed %x, want %x (the first UUID of the identity's stream)", hs, wantSeed[:])
	}
}

// TestWriteExt4SettledFirst: with Settled, the settled files (a base's) keep their blocks
// when the others change (a binary grows, a configuration file is added), so a node
// staging the new image copies them from its running slot. Without Settled (every file
// ordered by size) the same change moves settled files: the control.
func TestWriteExt4SettledFirst(t *testing.T) {
	imagetest.Tool(t, "fsck.ext4", "e2fsprogs")
	imagetest.Tool(t, "debugfs", "e2fsprogs")
	dir := t.TempDir()
	when := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	base := func() *fstree.Tree {
		tr := fstree.NewTree()
		for i := range 40 {
			// Sizes from 3 KiB to 1.2 MiB, with the binary's sizes in between.
			data := bytes.Repeat([]byte{byte(i + 1)}, 3<<10+i*i*800)
			if err := tr.Put(&fstree.Entry{Path: fmt.Sprintf("usr/lib/base/f%02d", i), Mode: 0o644, Data: data}); err != nil {
				t.Fatal(err)
			}
		}
		return tr
	}
	settled := map[string]bool{}
	for _, p := range base().Paths() {
		settled[p] = true
	}
	build := func(name string, binSize int, extra bool, order func(*fstree.Entry) bool) string {
		tr := base()
		for _, e := range []*fstree.Entry{
			{Path: "opt/etcdbake/bin/etcd", Mode: 0o755, Data: bytes.Repeat([]byte("e"), binSize)},
			{Path: "etc/etcdbake/node.json", Mode: 0o644, Data: []byte(`{"name":"etcd-1"}`)},
		} {
			if err := tr.Put(e); err != nil {
				t.Fatal(err)
			}
		}
		if extra {
			if err := tr.Put(&fstree.Entry{Path: "etc/systemd/system/etcd.service.d/10-more.conf", Mode: 0o644, Data: []byte("[Service]\nNice=-5\n")}); err != nil {
				t.Fatal(err)
			}
		}
		img := filepath.Join(dir, name)
		if _, err := WriteExt4(context.Background(), img, 64<<20, tr, Ext4Options{Label: "root", UUID: DeriveGUID("test", "root"), Time: when, Settled: order}); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("fsck.ext4", "-fn", img).CombinedOutput(); err != nil {
			t.Fatalf("fsck.ext4 -fn %s: %v\n%s", name, err, out)
		}
		return img
	}
	blocks := func(img, p string) string {
		out, err := exec.Command("debugfs", "-R", "blocks /"+p, img).CombinedOutput()
		if err != nil || len(bytes.TrimSpace(out)) == 0 {
			t.Fatalf("debugfs blocks /%s in %s: %v\n%s", p, img, err, out)
		}
		return string(bytes.TrimSpace(regexp.MustCompile(`(?m)^debugfs.*\n`).ReplaceAll(out, nil)))
	}
	moved := func(a, b string) (n int) {
		for p := range settled {
			if strings.HasPrefix(p, "usr/lib/base/") && blocks(a, p) != blocks(b, p) {
				n++
			}
		}
		return n
	}
	isSettled := func(e *fstree.Entry) bool { return settled[e.Path] }
	a := build("a.ext4", 300<<10, false, isSettled)
	b := build("b.ext4", 700<<10, true, isSettled)
	if n := moved(a, b); n != 0 {
		t.Errorf("with Settled, %d of the base's files moved when only the others changed", n)
	}
	if ea, eb := blocks(a, "opt/etcdbake/bin/etcd"), blocks(b, "opt/etcdbake/bin/etcd"); ea == eb {
		t.Errorf("the grown binary has the same blocks in both images (%s): the images are not the ones described", ea)
	}
	if n := moved(build("c.ext4", 300<<10, false, nil), build("d.ext4", 700<<10, true, nil)); n == 0 {
		t.Errorf("control: ordered by size alone, no base file moved: the test does not tell the orders apart")
	} else {
		t.Logf("ordered by size alone, %d of the 40 base files moved; with Settled, none", n)
	}
}

// TestWriteExt4LeavesZerosAsHoles: a 2 GiB file system (as a data partition is made at
// its full size) takes only its metadata and files on disk: the journal's and inode
// tables' zeros that go-diskfs writes are punched out, and e2fsck and debugfs read the
// same file system.
func TestWriteExt4LeavesZerosAsHoles(t *testing.T) {
	imagetest.Tool(t, "fsck.ext4", "e2fsprogs")
	imagetest.Tool(t, "debugfs", "e2fsprogs")
	img := filepath.Join(t.TempDir(), "data.ext4")
	st, err := WriteExt4(context.Background(), img, 2<<30, sampleTree(t), Ext4Options{Label: "data", Time: time.Unix(1700000000, 0)})
	if err != nil {
		t.Fatal(err)
	}
	var sys syscall.Stat_t
	if err := syscall.Stat(img, &sys); err != nil {
		t.Fatal(err)
	}
	alloc := sys.Blocks * 512
	t.Logf("2 GiB ext4: %d KiB allocated, %d MiB of zeros punched", alloc>>10, st.Punched>>20)
	if st.Punched < 64<<20 || alloc > 8<<20 {
		t.Errorf("%d bytes punched, %d allocated: want the journal's and inode tables' zeros (> 64 MiB) gone and under 8 MiB left", st.Punched, alloc)
	}
	if out, err := exec.Command("fsck.ext4", "-fn", img).CombinedOutput(); err != nil {
		t.Fatalf("fsck.ext4 -fn: %v\n%s", err, out)
	}
	if out, _ := exec.Command("debugfs", "-R", "cat /etc/hostname", img).CombinedOutput(); !strings.Contains(string(out), "node\n") {
		t.Errorf("hostname after punching: %q", out)
	}
}

// TestPunchZeros: only whole 4 KiB blocks of zeros become holes; the content reads the
// same, a block with one byte set stays, and a partial block of zeros at the end stays.
func TestPunchZeros(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want := make([]byte, 64<<10+100) // 16 blocks and a partial one
	want[5<<10] = 1                  // block 1
	want[40<<10+4095] = 2            // block 10
	if _, err := f.Write(want); err != nil {
		t.Fatal(err)
	}
	freed, err := punchZeros(f)
	if err != nil {
		t.Fatal(err)
	}
	if freed != 14*4096 {
		t.Errorf("punched %d bytes, want 14 blocks (%d)", freed, 14*4096)
	}
	got, err := os.ReadFile(f.Name())
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("content changed by punching (%v)", err)
	}
	var sys syscall.Stat_t
	if err := syscall.Stat(f.Name(), &sys); err != nil {
		t.Fatal(err)
	}
	if sys.Blocks*512 > 4*4096 {
		t.Errorf("%d bytes still allocated, want 3 blocks (two with data, the partial last one)", sys.Blocks*512)
	}
}
