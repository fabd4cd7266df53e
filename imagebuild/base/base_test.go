package base

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/etcdbake/etcdbake/imagebuild/fstree"
	"github.com/etcdbake/etcdbake/internal/testtools"
)

// tarMember is one member of a synthetic tarball.
type tarMember struct {
	hdr  tar.Header
	data string
}

func writeTar(t *testing.T, path string, gz bool, members []tarMember) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, m := range members {
		h := m.hdr
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(m.data))
		}
		if h.ModTime.IsZero() {
			h.ModTime = time.Unix(DefaultSourceDateEpoch, 0)
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("tar header %s: %v", h.Name, err)
		}
		if m.data != "" {
			if _, err := tw.Write([]byte(m.data)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	out := buf.Bytes()
	if gz {
		var zb bytes.Buffer
		zw := gzip.NewWriter(&zb)
		zw.Write(out)
		zw.Close()
		out = zb.Bytes()
	}
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
}

func dirM(name string, mode int64, uid, gid int) tarMember {
	return tarMember{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode, Uid: uid, Gid: gid}}
}

func fileM(name string, mode int64, uid, gid int, data string) tarMember {
	return tarMember{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Uid: uid, Gid: gid}, data: data}
}

func symlinkM(name, target string) tarMember {
	return tarMember{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777}}
}

func hardlinkM(name, target string) tarMember {
	return tarMember{hdr: tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target, Mode: 0o4755}}
}

// syntheticBase is a small tarball in mmdebstrap's style ("./" names, pax, /dev nodes),
// with a few members named without the prefix.
func syntheticBase() []tarMember {
	xattr := fileM("./usr/bin/ping", 0o755, 0, 0, "ping")
	xattr.hdr.PAXRecords = map[string]string{"SCHILY.xattr.security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"}
	return []tarMember{
		dirM("./", 0o755, 0, 0),
		dirM("./dev/", 0o755, 0, 0),
		{hdr: tar.Header{Typeflag: tar.TypeChar, Name: "./dev/null", Mode: 0o666, Devmajor: 1, Devminor: 3}},
		{hdr: tar.Header{Typeflag: tar.TypeBlock, Name: "./dev/vda", Mode: 0o660, Gid: 6, Devmajor: 254}},
		{hdr: tar.Header{Typeflag: tar.TypeFifo, Name: "./dev/initctl", Mode: 0o600}},
		symlinkM("./dev/fd", "/proc/self/fd"),
		dirM("./etc/", 0o755, 0, 0),
		fileM("./etc/passwd", 0o644, 0, 0, "root:x:0:0:root:/root:/bin/sh\n"),
		fileM("./etc/shadow", 0o640, 0, 42, "root:*:20089:0:99999:7:::\n"),
		fileM("./etc/machine-id", 0o444, 0, 0, ""),
		dirM("./home/", 0o755, 0, 0),
		dirM("./home/user/", 0o700, 1000, 1000),
		fileM("./home/user/.profile", 0o600, 1000, 1000, "PATH=/usr/bin\n"),
		dirM("./tmp/", 0o1777, 0, 0),
		dirM("./usr/", 0o755, 0, 0),
		dirM("./usr/bin/", 0o755, 0, 0),
		fileM("./usr/bin/su", 0o4755, 0, 0, "\x7fELF su"),
		fileM("./usr/bin/wall", 0o2755, 0, 5, "\x7fELF wall"),
		xattr,
		hardlinkM("./usr/bin/su-hardlink", "./usr/bin/su"),
		hardlinkM("./usr/bin/su-hardlink2", "usr/bin/su-hardlink"),
		symlinkM("./bin", "usr/bin"),
		symlinkM("./usr/bin/sh", "dash"),
		// No "./" prefix, parent directory implied.
		fileM("var/lib/state", 0o600, 101, 102, "state"),
		dirM("var/log", 0o755, 0, 0),
		// A directory appearing after its contents (implied earlier) keeps them.
		dirM("./var/lib/", 0o750, 0, 4),
	}
}

func TestReadBaseRoundTrip(t *testing.T) {
	dir := t.TempDir()
	want := map[string]fstree.Entry{
		"":                     {Mode: fs.ModeDir | 0o755},
		"dev":                  {Mode: fs.ModeDir | 0o755},
		"dev/fd":               {Mode: fs.ModeSymlink | 0o777, Target: "/proc/self/fd"},
		"etc":                  {Mode: fs.ModeDir | 0o755},
		"etc/passwd":           {Mode: 0o644, Data: []byte("root:x:0:0:root:/root:/bin/sh\n")},
		"etc/shadow":           {Mode: 0o640, GID: 42, Data: []byte("root:*:20089:0:99999:7:::\n")},
		"etc/machine-id":       {Mode: 0o444},
		"home":                 {Mode: fs.ModeDir | 0o755},
		"home/user":            {Mode: fs.ModeDir | 0o700, UID: 1000, GID: 1000},
		"home/user/.profile":   {Mode: 0o600, UID: 1000, GID: 1000, Data: []byte("PATH=/usr/bin\n")},
		"tmp":                  {Mode: fs.ModeDir | fs.ModeSticky | 0o777},
		"usr":                  {Mode: fs.ModeDir | 0o755},
		"usr/bin":              {Mode: fs.ModeDir | 0o755},
		"usr/bin/su":           {Mode: fs.ModeSetuid | 0o755, Data: []byte("\x7fELF su")},
		"usr/bin/wall":         {Mode: fs.ModeSetgid | 0o755, GID: 5, Data: []byte("\x7fELF wall")},
		"usr/bin/ping":         {Mode: 0o755, Data: []byte("ping")},
		"usr/bin/su-hardlink":  {Mode: fs.ModeSetuid | 0o755, Data: []byte("\x7fELF su"), Hardlink: "usr/bin/su"},
		"usr/bin/su-hardlink2": {Mode: fs.ModeSetuid | 0o755, Data: []byte("\x7fELF su"), Hardlink: "usr/bin/su"},
		"usr/bin/sh":           {Mode: fs.ModeSymlink | 0o777, Target: "dash"},
		"bin":                  {Mode: fs.ModeSymlink | 0o777, Target: "usr/bin"},
		"var":                  {Mode: fs.ModeDir | 0o755},
		"var/lib":              {Mode: fs.ModeDir | 0o750, GID: 4},
		"var/lib/state":        {Mode: 0o600, UID: 101, GID: 102, Data: []byte("state")},
		"var/log":              {Mode: fs.ModeDir | 0o755},
	}
	for _, gz := range []bool{false, true} {
		name := "base.tar"
		if gz {
			name = "base.tar.gz"
		}
		p := filepath.Join(dir, name)
		writeTar(t, p, gz, syntheticBase())
		tree, st, err := ReadStats(p)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if tree.Len() != len(want) {
			t.Errorf("%s: %d entries, want %d: %q", name, tree.Len(), len(want), tree.Paths())
		}
		for p, w := range want {
			e, ok := tree.Get(p)
			if !ok {
				t.Errorf("%s: %q missing", name, p)
				continue
			}
			w.Path = p
			got := *e
			if len(got.Data) == 0 {
				got.Data = nil
			}
			if !reflect.DeepEqual(got, w) {
				t.Errorf("%s: %q:\n got %+v\nwant %+v", name, p, got, w)
			}
		}
		wantStats := Stats{
			Dirs: 10, Files: 8, Symlinks: 3, Hardlinks: 2,
			Bytes:   int64(len("root:x:0:0:root:/root:/bin/sh\n" + "root:*:20089:0:99999:7:::\n" + "PATH=/usr/bin\n" + "\x7fELF su" + "\x7fELF wall" + "ping" + "state")),
			Devices: 2, FIFOs: 1,
			Skipped:    []string{"dev/null (char device)", "dev/vda (block device)", "dev/initctl (fifo)"},
			XattrFiles: 1,
			XattrPaths: []string{"usr/bin/ping"},
		}
		if !reflect.DeepEqual(*st, wantStats) {
			t.Errorf("%s: stats\n got %+v\nwant %+v", name, *st, wantStats)
		}
		// Read is the same without the stats.
		tree2, err := Read(p)
		if err != nil || !reflect.DeepEqual(tree2.Paths(), tree.Paths()) {
			t.Errorf("%s: Read: %v", name, err)
		}
	}
}

// TestReadBaseCancelled: reading a base stops with the context's error; the same file
// reads fine with a live context.
func TestReadBaseCancelled(t *testing.T) {
	p := filepath.Join(t.TempDir(), "base.tar")
	writeTar(t, p, false, syntheticBase())
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if tr, err := ReadContext(ctx, p); !errors.Is(err, context.Canceled) || tr != nil {
		t.Errorf("ReadContext with a cancelled context = %v, %v", tr, err)
	}
	if _, err := ReadContext(context.Background(), p); err != nil {
		t.Errorf("ReadContext: %v", err)
	}
}

func TestReadBaseRejects(t *testing.T) {
	dir := t.TempDir()
	cases := map[string][]tarMember{
		"dotdot":               {dirM("./", 0o755, 0, 0), fileM("../escape", 0o644, 0, 0, "x")},
		"dotdot inside":        {fileM("./etc/../../escape", 0o644, 0, 0, "x")},
		"absolute":             {fileM("/etc/passwd", 0o644, 0, 0, "x")},
		"hardlink escape":      {fileM("./a", 0o644, 0, 0, "x"), hardlinkM("./b", "../a")},
		"hardlink missing":     {hardlinkM("./b", "./a")},
		"hardlink to dir":      {dirM("./d", 0o755, 0, 0), hardlinkM("./b", "./d")},
		"file under a file":    {fileM("./a", 0o644, 0, 0, "x"), fileM("./a/b", 0o644, 0, 0, "y")},
		"file under a symlink": {symlinkM("./sbin", "usr/sbin"), fileM("./sbin/init", 0o755, 0, 0, "y")},
	}
	for name, members := range cases {
		p := filepath.Join(dir, strings.ReplaceAll(name, " ", "_")+".tar")
		writeTar(t, p, false, members)
		if _, err := Read(p); err == nil {
			t.Errorf("%s: no error", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
	// Compressions we do not read are named.
	zst := filepath.Join(dir, "base.tar.zst")
	os.WriteFile(zst, []byte{0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0}, 0o644)
	if _, err := Read(zst); err == nil || !strings.Contains(err.Error(), "zstd") {
		t.Errorf("zstd: %v", err)
	}
}

// completeBase is a minimal merged-/usr tree that Check accepts.
func completeBase(t *testing.T) *fstree.Tree {
	t.Helper()
	tr := fstree.NewTree()
	put := func(e *fstree.Entry) {
		if err := tr.Put(e); err != nil {
			t.Fatal(err)
		}
	}
	file := func(p string) { put(&fstree.Entry{Path: p, Mode: 0o755, Data: []byte(p)}) }
	link := func(p, target string) { put(&fstree.Entry{Path: p, Mode: fs.ModeSymlink | 0o777, Target: target}) }
	for _, d := range []string{"usr/bin", "usr/sbin", "usr/lib/systemd/boot/efi", "usr/lib/modules/6.1.0-28-cloud-amd64/kernel", "etc", "boot"} {
		if err := tr.MkdirAll(d); err != nil {
			t.Fatal(err)
		}
	}
	link("bin", "usr/bin")
	link("sbin", "usr/sbin")
	link("lib", "usr/lib")
	link("lib64", "usr/lib64")
	file("usr/lib/systemd/systemd")
	link("usr/sbin/init", "../lib/systemd/systemd")
	file("usr/sbin/chronyd")
	file("usr/sbin/nft")
	file("usr/sbin/sshd")
	file("usr/bin/ssh-keygen")
	file("usr/bin/sudo")
	file("usr/sbin/xtables-nft-multi")
	link("usr/sbin/iptables", "/etc/alternatives/iptables")
	link("etc/alternatives/iptables", "/usr/sbin/iptables-nft")
	link("usr/sbin/iptables-nft", "xtables-nft-multi")
	file("usr/bin/ip")
	file("usr/sbin/mke2fs")
	link("usr/sbin/mkfs.ext4", "mke2fs")
	file("usr/bin/udevadm")
	file("usr/bin/kmod")
	link("usr/sbin/modprobe", "../bin/kmod")
	file("usr/lib/systemd/boot/efi/systemd-bootx64.efi")
	file("usr/lib/systemd/systemd-bless-boot")
	file("etc/passwd")
	file("etc/group")
	file("boot/vmlinuz-6.1.0-28-cloud-amd64")
	file("boot/initrd.img-6.1.0-28-cloud-amd64")
	link("vmlinuz", "boot/vmlinuz-6.1.0-28-cloud-amd64")
	return tr
}

func TestCheckBaseEmpty(t *testing.T) {
	required := []string{
		"boot/vmlinuz-*", "boot/initrd.img-*", "linux-image-cloud-amd64", "initramfs-tools",
		"usr/lib/systemd/systemd", "sbin/init", "systemd-sysv",
		"usr/sbin/chronyd", "chrony", "usr/sbin/iptables", "package iptables",
		"mkfs.ext4", "e2fsprogs", "usr/lib/systemd/boot/efi/systemd-bootx64.efi", "systemd-boot-efi",
		"usr/lib/systemd/systemd-bless-boot", "package systemd-boot)",
		"etc/passwd", "etc/group", "base-passwd",
		"usr/sbin/nft", "package nftables", "usr/sbin/sshd", "package openssh-server",
		"usr/bin/ssh-keygen", "package openssh-client", "usr/bin/sudo", "package sudo",
	}
	runtime := []string{"iproute2", "udevadm", "package udev", "modprobe", "package kmod"}
	for _, full := range []bool{false, true} {
		check, name, want := Check, "Check", 2+len(baseRequirements)
		if full {
			check, name, want = CheckFull, "CheckFull", want+len(runtimeRequirements)
		}
		err := check(fstree.NewTree())
		var ce *CheckError
		if !errors.As(err, &ce) {
			t.Fatalf("%s(empty) = %v, want *CheckError", name, err)
		}
		msg := err.Error()
		t.Logf("%s: %s", name, msg)
		if len(ce.Problems) != want {
			t.Errorf("%s: %d problems, want %d", name, len(ce.Problems), want)
		}
		for _, s := range required {
			if !strings.Contains(msg, s) {
				t.Errorf("%s: error does not mention %q", name, s)
			}
		}
		for _, s := range runtime {
			if strings.Contains(msg, s) != full {
				t.Errorf("%s: mentions %q: %v", name, s, !full)
			}
		}
		for _, p := range ce.Problems {
			if p.What == "" || p.Purpose == "" || p.Package == "" {
				t.Errorf("%s: incomplete problem %+v", name, p)
			}
		}
	}
}

func TestCheckBaseComplete(t *testing.T) {
	tr := completeBase(t)
	if err := CheckFull(tr); err != nil {
		t.Fatalf("CheckFull(complete) = %v", err)
	}
	if err := Check(tr); err != nil {
		t.Fatalf("Check(complete) = %v", err)
	}
	k, i, err := KernelAndInitrd(tr)
	if err != nil || k != "boot/vmlinuz-6.1.0-28-cloud-amd64" || i != "boot/initrd.img-6.1.0-28-cloud-amd64" {
		t.Errorf("KernelAndInitrd = %q, %q, %v", k, i, err)
	}

	// Each removal is reported, alone.
	for _, c := range []struct{ remove, want string }{
		{"boot/initrd.img-6.1.0-28-cloud-amd64", "boot/initrd.img-6.1.0-28-cloud-amd64"},
		{"usr/lib/modules", "usr/lib/modules/6.1.0-28-cloud-amd64"},
		{"usr/sbin/mke2fs", "mkfs.ext4"}, // dangling link
		{"usr/sbin", "chronyd"},          // sbin -> usr/sbin dangles too
		{"etc/alternatives", "iptables"},
		{"usr/lib/systemd/boot", "systemd-boot-efi"},
		{"usr/bin/kmod", "modprobe"},
		{"usr/lib/systemd/systemd-bless-boot", "(Debian package systemd-boot)"},
	} {
		tr := completeBase(t)
		tr.Remove(c.remove)
		err := CheckFull(tr)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("without %s: %v, want it to mention %q", c.remove, err, c.want)
		}
	}
	// Check does not ask for the run-time extras.
	tr = completeBase(t)
	tr.Remove("usr/lib/modules")
	tr.Remove("usr/bin/ip")
	if err := Check(tr); err != nil {
		t.Errorf("Check without modules and ip: %v", err)
	}
	// A directory where a binary should be is not the binary.
	tr = completeBase(t)
	tr.Remove("usr/sbin/chronyd")
	tr.MkdirAll("usr/sbin/chronyd")
	if err := Check(tr); err == nil || !strings.Contains(err.Error(), "chronyd") {
		t.Errorf("chronyd directory: %v", err)
	}
}

func TestBaseKernelAndInitrdNewest(t *testing.T) {
	tr := fstree.NewTree()
	for _, p := range []string{
		"boot/vmlinuz-6.1.0-9-cloud-amd64", "boot/initrd.img-6.1.0-9-cloud-amd64",
		"boot/vmlinuz-6.1.0-28-cloud-amd64", "boot/initrd.img-6.1.0-28-cloud-amd64",
		"boot/vmlinuz-6.1.0-30-cloud-amd64", // no initrd
		"boot/config-6.1.0-40-cloud-amd64",
	} {
		tr.Put(&fstree.Entry{Path: p, Mode: 0o644, Data: []byte("x")})
	}
	k, i, err := KernelAndInitrd(tr)
	if err != nil || k != "boot/vmlinuz-6.1.0-28-cloud-amd64" || i != "boot/initrd.img-6.1.0-28-cloud-amd64" {
		t.Errorf("KernelAndInitrd = %q, %q, %v", k, i, err)
	}
	tr.Remove("boot/initrd.img-6.1.0-28-cloud-amd64")
	tr.Remove("boot/initrd.img-6.1.0-9-cloud-amd64")
	if _, _, err := KernelAndInitrd(tr); err == nil || !strings.Contains(err.Error(), "boot/initrd.img-6.1.0-30-cloud-amd64") {
		t.Errorf("no initrd: %v", err)
	}
}

func TestLookupFollowBase(t *testing.T) {
	tr := completeBase(t)
	tr.Put(&fstree.Entry{Path: "loop1", Mode: fs.ModeSymlink | 0o777, Target: "loop2"})
	tr.Put(&fstree.Entry{Path: "loop2", Mode: fs.ModeSymlink | 0o777, Target: "/loop1"})
	tr.Put(&fstree.Entry{Path: "usr/bin/up", Mode: fs.ModeSymlink | 0o777, Target: "../../../../../etc/passwd"})
	for p, want := range map[string]string{
		"sbin/mkfs.ext4":                "usr/sbin/mke2fs",
		"/sbin/iptables":                "usr/sbin/xtables-nft-multi",
		"lib/systemd/../../sbin/./init": "usr/lib/systemd/systemd",
		"sbin/init":                     "usr/lib/systemd/systemd",
		"usr/bin/up":                    "etc/passwd", // ".." stops at the root
		"vmlinuz":                       "boot/vmlinuz-6.1.0-28-cloud-amd64",
		"sbin":                          "usr/sbin",
		"sbin/":                         "usr/sbin",
		"":                              "",
		"loop1":                         "-",
		"loop1/x":                       "-",
		"lib64/ld.so":                   "-", // dangling parent
		"etc/passwd/x":                  "-", // file as a directory
		"usr/sbin/nothing":              "-",
	} {
		e, ok := tr.Follow(p)
		switch {
		case want == "-" && ok:
			t.Errorf("lookupFollow(%q) = %q, want not found", p, e.Path)
		case want != "-" && !ok:
			t.Errorf("lookupFollow(%q) not found, want %q", p, want)
		case want != "-" && e.Path != want:
			t.Errorf("lookupFollow(%q) = %q, want %q", p, e.Path, want)
		}
	}
	// 40 hops are fine, 41 are not.
	chain := fstree.NewTree()
	chain.Put(&fstree.Entry{Path: "f", Mode: 0o644})
	for i := 1; i <= 41; i++ {
		target := "l" + strconv.Itoa(i-1)
		if i == 1 {
			target = "f"
		}
		chain.Put(&fstree.Entry{Path: "l" + strconv.Itoa(i), Mode: fs.ModeSymlink | 0o777, Target: target})
	}
	if _, ok := chain.Follow("l40"); !ok {
		t.Errorf("40 hops: not found")
	}
	if _, ok := chain.Follow("l41"); ok {
		t.Errorf("41 hops: found")
	}
}

func TestBaseRecipeHash(t *testing.T) {
	r := DefaultRecipe()
	h := r.Hash()
	if len(h) != 64 {
		t.Fatalf("hash %q", h)
	}
	if h != DefaultRecipe().Hash() {
		t.Errorf("hash not stable")
	}
	// Include order and duplicates do not matter.
	r2 := DefaultRecipe()
	r2.Include = append([]string{"kmod"}, r2.Include...)
	for i, j := 0, len(r2.Include)-1; i < j; i, j = i+1, j-1 {
		r2.Include[i], r2.Include[j] = r2.Include[j], r2.Include[i]
	}
	if r2.Hash() != h {
		t.Errorf("reordered Include changed the hash")
	}
	changes := map[string]func(*Recipe){
		"include added":   func(r *Recipe) { r.Include = append(r.Include, "less") },
		"include changed": func(r *Recipe) { r.Include[0] = "systemd" },
		"include removed": func(r *Recipe) { r.Include = r.Include[1:] },
		"suite":           func(r *Recipe) { r.Suite = "trixie" },
		"variant":         func(r *Recipe) { r.Variant = "apt" },
		"mirror":          func(r *Recipe) { r.Mirror = "http://deb.debian.org/debian" },
		"components":      func(r *Recipe) { r.Components = []string{"main", "contrib"} },
		"epoch":           func(r *Recipe) { r.SourceDateEpoch++ },
		"hook":            func(r *Recipe) { r.CustomizeHooks = append(r.CustomizeHooks, "true") },
		"hook order": func(r *Recipe) {
			r.CustomizeHooks[0], r.CustomizeHooks[1] = r.CustomizeHooks[1], r.CustomizeHooks[0]
		},
	}
	seen := map[string]string{h: "default"}
	for name, change := range changes {
		r := DefaultRecipe()
		change(&r)
		got := r.Hash()
		if prev, dup := seen[got]; dup {
			t.Errorf("%s: hash equals that of %s", name, prev)
		}
		seen[got] = name
	}
	// The default recipe has what the images need and not systemd-resolved.
	inc := strings.Join(r.Include, " ")
	for _, p := range []string{"systemd-sysv", "linux-image-cloud-amd64", "chrony", "iptables", "iproute2", "e2fsprogs", "udev", "dbus", "kmod", "ca-certificates", "systemd-boot-efi", "systemd-boot", "nftables", "openssh-server", "sudo"} {
		if !strings.Contains(" "+inc+" ", " "+p+" ") {
			t.Errorf("default recipe does not include %s", p)
		}
	}
	if strings.Contains(inc, "resolved") {
		t.Errorf("default recipe includes systemd-resolved")
	}
	if err := r.Validate(); err != nil {
		t.Error(err)
	}
	bad := DefaultRecipe()
	bad.Include = append(bad.Include, "a,b")
	bad.Suite = "--help"
	if err := bad.Validate(); err == nil {
		t.Errorf("bad recipe validates")
	}
}

// fakeMmdebstrap puts a fake mmdebstrap first in PATH. It records its arguments and
// SOURCE_DATE_EPOCH in $FAKE_LOG, then copies $FAKE_TAR to its target, or fails after
// writing half a tarball when $FAKE_FAIL is set.
func fakeMmdebstrap(t *testing.T) (log string) {
	t.Helper()
	bin := t.TempDir()
	script := `#!/bin/sh
{ echo "SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH"; for a in "$@"; do printf '%s\n' "ARG:$a"; done; echo END; } >> "$FAKE_LOG"
echo "I: fake mmdebstrap running" >&2
while [ "$1" != "--" ]; do shift; done
shift; shift
target="$1"
if [ -n "$FAKE_SLEEP" ]; then head -c 100 "$FAKE_TAR" > "$target"; exec sleep "$FAKE_SLEEP"; fi
if [ -n "$FAKE_FAIL" ]; then head -c 100 "$FAKE_TAR" > "$target"; echo "E: fake failure" >&2; exit 1; fi
cp "$FAKE_TAR" "$target"
`
	if err := os.WriteFile(filepath.Join(bin, "mmdebstrap"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	log = filepath.Join(t.TempDir(), "log")
	tarball := filepath.Join(t.TempDir(), "fake.tar")
	writeTar(t, tarball, false, syntheticBase())
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	t.Setenv("FAKE_LOG", log)
	t.Setenv("FAKE_TAR", tarball)
	t.Setenv("SOURCE_DATE_EPOCH", "1") // must be overridden by the recipe's
	return log
}

func TestBuildBaseFake(t *testing.T) {
	log := fakeMmdebstrap(t)
	cache := t.TempDir()
	r := DefaultRecipe()
	r.Mirror = "http://deb.example/debian"
	var msgs []string
	progress := func(f string, a ...any) {
		t.Logf(f, a...)
		msgs = append(msgs, f)
	}
	p, err := Build(context.Background(), r, cache, progress)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(cache, "base", r.Hash()+".tar"); p != want || p != Path(cache, r) {
		t.Errorf("path %s, want %s", p, want)
	}
	if _, err := Read(p); err != nil {
		t.Errorf("Read: %v", err)
	}
	logged, _ := os.ReadFile(log)
	calls := strings.Count(string(logged), "END\n")
	if calls != 1 {
		t.Fatalf("%d mmdebstrap runs", calls)
	}
	var args []string
	for _, l := range strings.Split(string(logged), "\n") {
		if a, ok := strings.CutPrefix(l, "ARG:"); ok {
			args = append(args, a)
		}
	}
	joined := strings.Join(args, "\n")
	for _, want := range []string{
		"--variant=minbase",
		"--include=ca-certificates,chrony,dbus,e2fsprogs,iproute2,iptables,iputils-ping,kmod,linux-image-cloud-amd64,nftables,openssh-server,qemu-guest-agent,sudo,systemd-boot,systemd-boot-efi,systemd-sysv,udev,usr-is-merged",
		"--dpkgopt=path-exclude=/usr/share/doc/*\n--dpkgopt=path-include=/usr/share/doc/*/copyright",
		"--customize-hook=chroot \"$1\" dpkg --purge apt debian-archive-keyring gpgv libapt-pkg6.0 libfile-find-rule-perl libnumber-compare-perl libperl5.36 libtext-glob-perl perl perl-modules-5.36 usrmerge ||",
		"--customize-hook=set -e",
		"--format=tar\n--\nbookworm\n",
		"\nhttp://deb.example/debian",
	} {
		if !strings.Contains(joined, want) {
			t.Errorf("mmdebstrap args lack %q:\n%s", want, joined)
		}
	}
	if !strings.Contains(string(logged), "SOURCE_DATE_EPOCH=1735689600\n") {
		t.Errorf("SOURCE_DATE_EPOCH not passed:\n%s", logged)
	}
	if !strings.Contains(strings.Join(msgs, "\n"), "mmdebstrap: %s") {
		t.Errorf("mmdebstrap's status lines not forwarded: %q", msgs)
	}
	if _, err := os.Stat(filepath.Join(cache, "base", r.Hash()+".recipe.json")); err != nil {
		t.Error(err)
	}

	// A leftover of a builder that died is cleaned up by the next build.
	stale := filepath.Join(cache, "base", DefaultRecipe().Hash()+".12345.tmp.tar")
	os.WriteFile(stale, []byte("partial"), 0o600)
	if _, err := Build(context.Background(), DefaultRecipe(), cache, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("stale temporary file not removed: %v", err)
	}
	os.WriteFile(log, nil, 0o644)

	// Cached: no second run.
	if p2, err := Build(context.Background(), r, cache, nil); err != nil || p2 != p {
		t.Fatalf("second Build = %s, %v", p2, err)
	}
	logged, _ = os.ReadFile(log)
	if calls := strings.Count(string(logged), "END\n"); calls != 0 {
		t.Errorf("mmdebstrap ran %d times for a cached base", calls)
	}

	// A failed build leaves nothing.
	t.Setenv("FAKE_FAIL", "1")
	r.Include = append(r.Include, "less")
	_, err = Build(context.Background(), r, cache, nil)
	if err == nil || !strings.Contains(err.Error(), "fake failure") {
		t.Errorf("failed build: %v", err)
	}
	entries, _ := os.ReadDir(filepath.Join(cache, "base"))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), r.Hash()) && !strings.HasSuffix(e.Name(), ".lock") {
			t.Errorf("failed build left %s", e.Name())
		}
	}
	if _, err := os.Stat(Path(cache, r)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("failed build left the tarball: %v", err)
	}
}

func TestBuildBaseCancelled(t *testing.T) {
	fakeMmdebstrap(t)
	t.Setenv("FAKE_SLEEP", "30")
	cache := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := Build(ctx, DefaultRecipe(), cache, t.Logf)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("cancelled build: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("cancelling took %s", d)
	}
	entries, _ := os.ReadDir(filepath.Join(cache, "base"))
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".lock") {
			t.Errorf("cancelled build left %s", e.Name())
		}
	}
}

func TestBuildBaseWithoutMmdebstrap(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := Build(context.Background(), DefaultRecipe(), t.TempDir(), nil)
	if err == nil || !strings.Contains(err.Error(), "apt-get install mmdebstrap") {
		t.Errorf("Build without mmdebstrap: %v", err)
	}
}

// ensureMmdebstrap ends the test when mmdebstrap is missing (tests never install it:
// `make setup` does; see testtools.Missing).
func ensureMmdebstrap(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("mmdebstrap"); err != nil {
		testtools.Missing(t, "mmdebstrap (Debian package mmdebstrap)")
	}
}

// TestBuildDefaultBase builds (or reuses) the real default base in the shared cache
// ($ETCDBAKE_BASE_CACHE or ${XDG_CACHE_HOME:-~/.cache}/etcdbake, not a temporary
// directory: later tests boot it) and checks it.
func TestBuildDefaultBase(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a Debian root filesystem (~45 s when not cached)")
	}
	ensureMmdebstrap(t)
	cache, err := DefaultCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	r := DefaultRecipe()
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	start := time.Now()
	p, err := Build(ctx, r, cache, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Build: %s in %s", p, time.Since(start).Round(100*time.Millisecond))
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}

	start = time.Now()
	tree, st, err := ReadStats(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Read: %d entries (%d dirs, %d files, %d symlinks, %d hard links), %d MB of file data, tarball %d MB, in %s",
		tree.Len(), st.Dirs, st.Files, st.Symlinks, st.Hardlinks, st.Bytes>>20, fi.Size()>>20, time.Since(start).Round(100*time.Millisecond))
	t.Logf("skipped %d device nodes, %d FIFOs, %d other: %s; %d entries had xattrs (dropped): %s",
		st.Devices, st.FIFOs, st.Other, strings.Join(st.Skipped, ", "), st.XattrFiles, strings.Join(st.XattrPaths, ", "))
	if err := CheckFull(tree); err != nil {
		t.Fatal(err)
	}
	k, i, err := KernelAndInitrd(tree)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kernel %s, initrd %s", k, i)

	// What the customize hooks promise.
	if e, ok := tree.Get("etc/machine-id"); !ok || !e.IsRegular() || len(e.Data) != 0 {
		t.Errorf("etc/machine-id is not an empty file: %+v", e)
	}
	for _, p := range []string{"etc/resolv.conf", "etc/hostname", "var/lib/dbus/machine-id", "var/lib/dpkg/info/systemd-resolved.list", "usr/lib/systemd/systemd-resolved"} {
		if _, ok := tree.Get(p); ok {
			t.Errorf("%s is in the base", p)
		}
	}
	for _, p := range tree.Paths() {
		e, _ := tree.Get(p)
		switch {
		case strings.HasPrefix(p, "var/lib/apt/lists/") && e.IsRegular() && !(p == "var/lib/apt/lists/lock" && len(e.Data) == 0):
			// (mmdebstrap's own cleanup after the hooks leaves apt's empty lock file)
			t.Errorf("apt list %s in the base", p)
		case strings.HasPrefix(p, "var/cache/apt/") && strings.HasSuffix(p, ".bin"):
			t.Errorf("apt cache %s in the base", p)
		case strings.HasPrefix(p, "var/log/") && e.IsRegular() && len(e.Data) > 0:
			t.Errorf("log %s has content", p)
		case strings.HasPrefix(p, "etc/ssh/ssh_host_"):
			t.Errorf("ssh host key %s in the base", p)
		}
	}
	checkLeanModules(t, tree, strings.TrimPrefix(path.Base(k), "vmlinuz-"))
	// merged /usr, as lookups assume
	if e, ok := tree.Get("sbin"); !ok || !e.IsSymlink() {
		t.Logf("note: sbin is not a symlink (not merged-/usr): %+v", e)
	}
}

// TestPurgeKeepsWhatIsIncluded: a package the recipe includes is never purged (a spec's
// image.packages can bring back what the lean base removes), and the hash says so.
func TestPurgeKeepsWhatIsIncluded(t *testing.T) {
	r := DefaultRecipe()
	if !slices.Contains(r.purged(), "perl") {
		t.Fatalf("the default recipe does not purge perl: %v", r.purged())
	}
	r.Include = append(r.Include, "perl")
	if slices.Contains(r.purged(), "perl") || !slices.Contains(r.purged(), "usrmerge") {
		t.Errorf("with perl included, purged %v", r.purged())
	}
	if r.Hash() == DefaultRecipe().Hash() {
		t.Error("including a package does not change the recipe's hash")
	}
	if strings.Contains(strings.Join(r.mmdebstrapArgs("out.tar"), "\n"), " perl ") {
		t.Errorf("perl is still purged: %v", r.mmdebstrapArgs("out.tar"))
	}
}

// TestPruneHook runs the module-pruning customize hook (real sh, find, awk, chroot) on a
// small module tree: pruned directories lose their modules, except a module named in
// KeepModules and every module a kept one needs; empty directories go; depmod runs in
// the root for the kernel; a KeepModules name the kernel lacks fails the hook, naming it.
func TestPruneHook(t *testing.T) {
	if os.Geteuid() != 0 {
		if testtools.UnderMakeTest() {
			t.Fatal("the hook's chroot needs root (make test runs as root in CI)")
		}
		t.Skip("chroot needs root")
	}
	// A static stand-in for the base's depmod, which the hook runs inside the root.
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "main.go"), []byte(`package main

import "os"

func main() { os.WriteFile("/depmod.args", []byte(os.Args[1]), 0o644) }
`), 0o644)
	os.WriteFile(filepath.Join(src, "go.mod"), []byte("module depmod\n"), 0o644)
	build := func() string {
		root := t.TempDir()
		mdir := filepath.Join(root, "usr/lib/modules/6.1.0-test")
		dep := `kernel/fs/xfs/xfs.ko: kernel/lib/libcrc32c.ko
kernel/fs/btrfs/btrfs.ko: kernel/lib/raid6/raid6_pq.ko kernel/lib/libcrc32c.ko
kernel/fs/nfs/nfs.ko: kernel/fs/lockd/lockd.ko kernel/net/sunrpc/sunrpc.ko
kernel/fs/lockd/lockd.ko: kernel/net/sunrpc/sunrpc.ko
kernel/net/sunrpc/sunrpc.ko:
kernel/net/sctp/sctp.ko: kernel/lib/libcrc32c.ko
kernel/net/sctp/sctp_diag.ko: kernel/net/sctp/sctp.ko kernel/lib/libcrc32c.ko
kernel/net/tipc/tipc.ko:
kernel/drivers/net/uses-sctp.ko: kernel/net/sctp/sctp.ko kernel/lib/libcrc32c.ko
kernel/drivers/net/vxlan/vxlan.ko: kernel/net/ipv4/udp_tunnel.ko
kernel/net/ipv4/udp_tunnel.ko:
kernel/lib/libcrc32c.ko:
kernel/lib/raid6/raid6_pq.ko:
`
		for _, l := range strings.Split(strings.TrimSpace(dep), "\n") {
			m, _, _ := strings.Cut(l, ":")
			os.MkdirAll(filepath.Join(mdir, filepath.Dir(m)), 0o755)
			os.WriteFile(filepath.Join(mdir, m), []byte("ko"), 0o644)
		}
		os.WriteFile(filepath.Join(mdir, "modules.dep"), []byte(dep), 0o644)
		os.MkdirAll(filepath.Join(root, "usr/sbin"), 0o755)
		os.MkdirAll(filepath.Join(root, "tmp"), 0o1777)
		b := exec.Command("go", "build", "-o", filepath.Join(root, "usr/sbin/depmod"), ".")
		b.Dir, b.Env = src, append(os.Environ(), "CGO_ENABLED=0")
		if out, err := b.CombinedOutput(); err != nil {
			t.Fatalf("building the stand-in depmod: %v\n%s", err, out)
		}
		return root
	}
	run := func(r Recipe, root string) (string, error) {
		if err := r.Validate(); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("sh", "-c", r.pruneHook(), "exec", root)
		cmd.Env = append(os.Environ(), "PATH=/usr/sbin:/usr/bin:/sbin:/bin")
		out, err := cmd.CombinedOutput()
		return string(out), err
	}

	r := Recipe{Suite: "bookworm", Variant: "minbase", PruneModules: []string{"fs/xfs", "fs/btrfs", "fs/nfs", "fs/lockd", "net/sunrpc", "net/sctp", "net/tipc/tipc.ko", "fs/absent"}, KeepModules: []string{"nfs"}}
	root := build()
	out, err := run(r, root)
	if err != nil {
		t.Fatalf("hook: %v\n%s", err, out)
	}
	t.Logf("hook: %s", strings.TrimSpace(out))
	mdir := filepath.Join(root, "usr/lib/modules/6.1.0-test")
	for m, want := range map[string]bool{
		"kernel/fs/xfs/xfs.ko": false, "kernel/fs/btrfs/btrfs.ko": false, "kernel/net/tipc/tipc.ko": false, "kernel/net/sctp/sctp_diag.ko": false,
		"kernel/fs/nfs/nfs.ko": true, "kernel/fs/lockd/lockd.ko": true, "kernel/net/sunrpc/sunrpc.ko": true, // kept by name, with what it needs
		"kernel/net/sctp/sctp.ko":      true, // a module outside the pruned set needs it
		"kernel/lib/raid6/raid6_pq.ko": true, "kernel/drivers/net/vxlan/vxlan.ko": true, "kernel/lib/libcrc32c.ko": true,
	} {
		if _, err := os.Stat(filepath.Join(mdir, m)); (err == nil) != want {
			t.Errorf("%s: present %v, want %v", m, err == nil, want)
		}
	}
	for _, d := range []string{"kernel/fs/xfs", "kernel/fs/btrfs", "kernel/net/tipc"} {
		if _, err := os.Stat(filepath.Join(mdir, d)); err == nil {
			t.Errorf("the emptied directory %s is still there", d)
		}
	}
	if b, err := os.ReadFile(filepath.Join(root, "depmod.args")); err != nil || string(b) != "6.1.0-test" {
		t.Errorf("depmod in the root: %q %v (want it run for 6.1.0-test)", b, err)
	}
	if !strings.Contains(out, "pruned 4 kernel modules of 6.1.0-test") {
		t.Errorf("the hook's report: %q (want 4 modules pruned)", out)
	}
	if ents, _ := os.ReadDir(filepath.Join(root, "tmp")); len(ents) != 0 {
		t.Errorf("the hook left files in the root's /tmp: %v", ents)
	}

	// A module the kernel does not have: the build fails, naming it, and nothing is pruned.
	r.KeepModules = []string{"nfs", "no-such_mod"}
	root = build()
	out, err = run(r, root)
	if err == nil || !strings.Contains(out, "image.kernelModules: kernel 6.1.0-test has no module no_such_mod") {
		t.Errorf("keeping a module the kernel lacks: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(root, "usr/lib/modules/6.1.0-test/kernel/fs/xfs/xfs.ko")); err != nil {
		t.Errorf("a failed hook pruned modules: %v", err)
	}
	if (Recipe{}).pruneHook() != "" {
		t.Error("a recipe that prunes nothing has a prune hook")
	}
}

// checkLeanModules: the real base has none of LeanModules' modules left, its modules.dep
// (rebuilt by the base's depmod) names only modules that are there, and what the nodes
// load is kept: NIC and disk drivers, the flannel backends, netfilter, ext4.
func checkLeanModules(t *testing.T, tree *fstree.Tree, ver string) {
	mdir := "usr/lib/modules/" + ver
	for p := range tree.All() {
		for _, d := range LeanModules {
			if strings.HasPrefix(p, mdir+"/kernel/"+d) && strings.Contains(p, ".ko") {
				t.Errorf("%s is in the base: %s is left out", p, d)
			}
		}
	}
	dep, err := tree.ReadFile(mdir + "/modules.dep")
	if err != nil {
		t.Fatal(err)
	}
	builtin, _ := tree.ReadFile(mdir + "/modules.builtin")
	have := map[string]bool{}
	name := func(f string) string { return strings.ReplaceAll(strings.Split(path.Base(f), ".ko")[0], "-", "_") }
	for _, f := range strings.Fields(string(builtin)) {
		have[name(f)] = true
	}
	n := 0
	for _, l := range strings.Split(string(dep), "\n") {
		for i, f := range strings.Fields(strings.ReplaceAll(l, ":", " ")) {
			if i == 0 {
				have[name(f)] = true
				n++
			}
			if e, ok := tree.Get(mdir + "/" + f); !ok || !e.IsRegular() {
				t.Errorf("modules.dep names %s, which is not in the base", f)
			}
		}
	}
	for _, m := range []string{"vxlan", "wireguard", "ipip", "nf_tables", "nft_chain_nat", "xt_MASQUERADE", "br_netfilter", "virtio_net", "virtio_blk", "virtio_scsi", "nvme", "ext4", "vfat", "dm_mod", "bonding", "ena", "vmxnet3"} {
		if !have[m] {
			t.Errorf("kernel module %s is not in the base", m)
		}
	}
	t.Logf("kernel %s: %d modules after pruning", ver, n)
}
