package imagebuild

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/etcdbake/etcdbake/ignition"
	"github.com/etcdbake/etcdbake/imagebuild/base"
	"github.com/etcdbake/etcdbake/imagebuild/fstree"
	"github.com/etcdbake/etcdbake/imagebuild/internal/imagetest"
	"github.com/etcdbake/etcdbake/internal/fileutil"
	"github.com/etcdbake/etcdbake/pki"
	"github.com/etcdbake/etcdbake/spec"
)

// testBootFiles are stand-ins for the programs CheckBase asks for beyond the accounts:
// kernel, initrd, systemd-boot, init, chronyd, iptables, mkfs.ext4, a dpkg status.
var testBootFiles = map[string]string{
	"boot/vmlinuz-6.1.0-test-amd64":                strings.Repeat("K", 4096),
	"boot/initrd.img-6.1.0-test-amd64":             strings.Repeat("I", 8192),
	"usr/lib/systemd/boot/efi/systemd-bootx64.efi": "MZ-systemd-boot",
	"usr/lib/systemd/systemd":                      "systemd",
	"usr/lib/systemd/systemd-bless-boot":           "bless-boot",
	"usr/sbin/init":                                "init",
	"usr/sbin/chronyd":                             "chronyd",
	"usr/sbin/iptables":                            "iptables",
	"usr/sbin/nft":                                 "nft",
	"usr/sbin/sshd":                                "sshd",
	"usr/bin/ssh-keygen":                           "ssh-keygen",
	"usr/bin/sudo":                                 "sudo",
	"usr/sbin/mkfs.ext4":                           "mkfs",
	"var/lib/dpkg/status":                          "Package: base\n",
}

// syntheticImageBase is a small tree with what CheckBase asks for (stand-in kernel, initrd and
// EFI binary: their bytes only travel to the ESP here; the QEMU test boots the real base).
func syntheticImageBase(t testing.TB) *fstree.Tree {
	t.Helper()
	tr := fstree.NewTree()
	files := map[string]string{
		"etc/passwd":                            "root:x:0:0:root:/root:/bin/sh\n",
		"etc/group":                             "root:x:0:\n",
		"etc/shadow":                            "root:*:19000:0:99999:7:::\n",
		"etc/gshadow":                           "root:*::\n",
		"usr/lib/systemd/system/chrony.service": "[Service]\nExecStart=/usr/sbin/chronyd\n[Install]\nWantedBy=multi-user.target\n",
		"boot/config-6.1.0-test-amd64":          "CONFIG_EXT4_FS=y\n",
	}
	for p, d := range testBootFiles {
		files[p] = d
	}
	for p, d := range files {
		if err := tr.Put(&fstree.Entry{Path: p, Mode: 0o644, Data: []byte(d)}); err != nil {
			t.Fatal(err)
		}
	}
	// Debian's links to the kernel (linux-image's postinst) and one to elsewhere.
	for _, l := range [][2]string{{"lib", "usr/lib"}, {"sbin", "usr/sbin"}, {"bin", "usr/bin"},
		{"vmlinuz", "boot/vmlinuz-6.1.0-test-amd64"}, {"initrd.img.old", "/boot/initrd.img-6.1.0-test-amd64"}, {"vmlinuz.old", "boot/config-6.1.0-test-amd64"}} {
		if err := tr.Put(&fstree.Entry{Path: l[0], Mode: fs.ModeSymlink | 0o777, Target: l[1]}); err != nil {
			t.Fatal(err)
		}
	}
	if err := tr.MkdirAll("var/log/journal"); err != nil {
		t.Fatal(err)
	}
	if err := base.Check(tr); err != nil {
		t.Fatalf("synthetic base incomplete: %v", err)
	}
	return tr
}

// exampleBuild renders the example's three node configs and returns the build options.
func exampleBuild(t testing.TB, out string) BuildOptions {
	t.Helper()
	o, _ := exampleBuildPKI(t, out)
	return o
}

// exampleBuildPKI is exampleBuild, also returning the PKI directory it made.
// testS3Secret is the backup target's secret key in exampleBuildPKI's spec.
const testS3Secret = "etcdbake-test-secret-0123456789abcdef"

func exampleBuildPKI(t testing.TB, out string) (BuildOptions, string) {
	t.Helper()
	return exampleBuildPKIWith(t, out, nil)
}

// exampleBuildPKIWith is exampleBuildPKI with some programs taken from local files
// (name -> path) instead of stand-in scripts.
func exampleBuildPKIWith(t testing.TB, out string, files map[string]string) (BuildOptions, string) {
	t.Helper()
	c, rep := spec.Parse(spec.Example)
	if rep.HasErrors() {
		t.Fatal(rep.String())
	}
	dir := t.TempDir()
	// A backup target: its keys, the same for every node, must still land in each node's
	// own partition only.
	creds := filepath.Join(dir, "s3.env")
	os.WriteFile(creds, []byte("AWS_ACCESS_KEY_ID=AKIAEXAMPLE\nAWS_SECRET_ACCESS_KEY="+testS3Secret+"\n"), 0o600)
	c.Backup.Target = &spec.BackupTarget{Endpoint: "https://s3.etcdbake.invalid", Bucket: "etcd-backups", CredentialsFile: creds}
	if _, err := pki.Ensure(c, filepath.Join(dir, "pki"), time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)); err != nil {
		t.Fatal(err)
	}
	set, err := pki.Load(c, filepath.Join(dir, "pki"))
	if err != nil {
		t.Fatal(err)
	}
	const url = "https://binaries.etcdbake.invalid"
	bins := map[string]ignition.Binary{}
	remote := map[string]string{}
	var recs []BinaryRecord
	for _, name := range ignition.BinaryNames {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte("#!/bin/sh\necho "+name+"\n"), 0o755)
		if f, ok := files[name]; ok {
			p = f
		}
		b, err := ignition.LocalBinary(name, p)
		if err != nil {
			t.Fatal(err)
		}
		bins[name] = b
		remote[url+"/"+name] = p
		sum, err := fileutil.SHA256(p)
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, BinaryRecord{Name: name, Version: "test", SHA256: sum, Source: "test"})
	}
	configs, err := ignition.Render(ignition.Input{Cluster: c, PKI: set, Binaries: bins, Options: ignition.Options{BinariesURL: url}})
	if err != nil {
		t.Fatal(err)
	}
	var nodes []NodeInput
	for _, n := range c.Nodes {
		nodes = append(nodes, NodeInput{Name: n.Name, Config: configs[n.Name], DNS: []string{"10.88.0.1"}})
	}
	return BuildOptions{Cluster: c.Name, Nodes: nodes, Base: syntheticImageBase(t), BaseHash: "base", SpecHash: "spec",
		Binaries: recs, Remote: remote, OutDir: out, Formats: []string{"raw"}, DataSize: 512 << 20, Time: time.Unix(1750000000, 0),
		SlotSize: 128 << 20}, filepath.Join(dir, "pki") // the synthetic root is 65 MiB
}

// partition copies one partition of a raw image to its own file.
func partition(t *testing.T, raw string, m Manifest, label string) string {
	t.Helper()
	off := int64(1 << 20)
	for _, p := range m.Layout {
		if p.Label == label {
			f, err := os.Open(raw)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			out := filepath.Join(t.TempDir(), label+".img")
			o, err := os.Create(out)
			if err != nil {
				t.Fatal(err)
			}
			defer o.Close()
			// Zero chunks stay holes: a slot is 1.5 GiB, mostly empty.
			buf, zero := make([]byte, 1<<20), make([]byte, 1<<20)
			for pos := int64(0); pos < p.Size; pos += int64(len(buf)) {
				n, err := f.ReadAt(buf[:min(int64(len(buf)), p.Size-pos)], off+pos)
				if err != nil && err != io.EOF {
					t.Fatal(err)
				}
				if !bytes.Equal(buf[:n], zero[:n]) {
					if _, err := o.WriteAt(buf[:n], pos); err != nil {
						t.Fatal(err)
					}
				}
			}
			if err := o.Truncate(p.Size); err != nil {
				t.Fatal(err)
			}
			return out
		}
		off += p.Size
	}
	t.Fatalf("no partition %s", label)
	return ""
}

func sha256File(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	io.Copy(h, f)
	return fmt.Sprintf("%x", h.Sum(nil))
}

// TestBuildImagesFromSyntheticBase builds the example's three images and checks them
// with the standard tools and by reading them back.
func TestBuildImagesFromSyntheticBase(t *testing.T) {
	for _, tool := range [][2]string{{"sgdisk", "gdisk"}, {"fsck.vfat", "dosfstools"}, {"fsck.ext4", "e2fsprogs"}, {"debugfs", "e2fsprogs"}} {
		imagetest.Tool(t, tool[0], tool[1])
	}
	out := filepath.Join(t.TempDir(), "images")
	o, pkiDir := exampleBuildPKI(t, out)
	var log []string
	o.Progress = func(f string, a ...any) { log = append(log, fmt.Sprintf(f, a...)) }
	imgs, err := Build(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("build log:\n%s", strings.Join(log, "\n"))
	if len(imgs) != 3 {
		t.Fatalf("%d images", len(imgs))
	}
	entries, _ := os.ReadDir(filepath.Dir(out))
	if len(entries) != 1 {
		t.Fatalf("leftovers next to the output: %v", entries)
	}
	for _, im := range imgs {
		raw := filepath.Join(out, im.Node+".raw")
		var m Manifest
		mb, err := os.ReadFile(filepath.Join(out, im.Node+".manifest.json"))
		if err != nil || json.Unmarshal(mb, &m) != nil {
			t.Fatalf("%s: manifest: %v", im.Node, err)
		}
		if len(m.Binaries) != 4 || m.BaseSHA256 != "base" || m.SpecSHA256 != "spec" || !strings.Contains(m.Cmdline, "systemd.hostname="+im.Node) || m.Release != ReleaseID(o) || len(m.Release) != 12 {
			t.Errorf("%s: manifest %+v", im.Node, m)
		}
		if out, err := exec.Command("sgdisk", "-v", raw).CombinedOutput(); err != nil || !strings.Contains(string(out), "No problems found") {
			t.Errorf("%s: sgdisk -v: %v\n%s", im.Node, err, out)
		}
		esp := partition(t, raw, m, LabelESP)
		if out, err := exec.Command("fsck.vfat", "-n", esp).CombinedOutput(); err != nil {
			t.Errorf("%s: fsck.vfat -n: %v\n%s", im.Node, err, out)
		}
		checkSlots(t, im.Node, esp, o.SlotSize, m)
		root, node := partition(t, raw, m, RootLabel(SlotA)), partition(t, raw, m, NodeLabel(SlotA))
		for _, p := range []string{root, node} {
			if out, err := exec.Command("fsck.ext4", "-fn", p).CombinedOutput(); err != nil {
				t.Errorf("%s: fsck.ext4 -fn %s: %v\n%s", im.Node, filepath.Base(p), err, out)
			}
		}
		// Slot B is empty (a hole) until a rollout writes it.
		for _, l := range []string{RootLabel("b"), NodeLabel("b")} {
			var st syscall.Stat_t
			if err := syscall.Stat(partition(t, raw, m, l), &st); err != nil || st.Blocks != 0 {
				t.Errorf("%s: partition %s holds data (%d blocks, %v): slot B of a fresh image must be empty", im.Node, l, st.Blocks, err)
			}
		}
		dbg := func(img, req string) string {
			out, _ := exec.Command("debugfs", "-R", req, img).CombinedOutput()
			return string(out)
		}
		// Per-node files live in the node partition; the root links to them.
		if got := dbg(root, "stat /etc/etcd/etcd.env"); !strings.Contains(got, `Fast link dest: "/node/etc/etcd/etcd.env"`) {
			t.Errorf("%s: root's etcd.env is not a link to /node: %s", im.Node, got)
		}
		if got := dbg(node, "cat /etc/etcd/etcd.env"); !strings.Contains(got, "ETCD_NAME="+im.Node) {
			t.Errorf("%s: node partition's etcd.env: %s", im.Node, got)
		}
		// The node partition says what the slot's root holds, piece by piece.
		var pieces spec.ReleaseFile
		got := dbg(node, "cat /"+spec.RootPiecesName)
		rootBytes, _ := os.ReadFile(root) // the partition: the image, then the slot's free space
		_, js, _ := strings.Cut(got, "\n")
		if json.Unmarshal([]byte(js), &pieces) != nil || pieces.Size > int64(len(rootBytes)) || fmt.Sprintf("%x", sha256.Sum256(rootBytes[:pieces.Size])) != pieces.SHA256 || int64(len(pieces.Chunks)) != (pieces.Size+spec.ZeroChunk-1)/spec.ZeroChunk {
			t.Errorf("%s: %s does not describe the root (sha256 %s, %d pieces): %.200s", im.Node, spec.RootPiecesName, pieces.SHA256, len(pieces.Chunks), got)
		}
		if got := dbg(node, "stat /etc/etcd/pki/server.key"); !strings.Contains(got, "Mode:  0600") {
			t.Errorf("%s: server.key: %s", im.Node, got)
		}
		// The kernel and initrd are on the ESP (checkSlots), not also in the root; so
		// are the links to them. The rest of /boot and other links stay.
		for _, p := range []string{"/boot/vmlinuz-6.1.0-test-amd64", "/boot/initrd.img-6.1.0-test-amd64", "/vmlinuz", "/initrd.img.old"} {
			if got := dbg(root, "stat "+p); !strings.Contains(got, "File not found") {
				t.Errorf("%s: the root holds %s, which belongs on the ESP only: %s", im.Node, p, got)
			}
		}
		for _, p := range []string{"/boot/config-6.1.0-test-amd64", "/vmlinuz.old"} {
			if got := dbg(root, "stat "+p); strings.Contains(got, "File not found") {
				t.Errorf("%s: the root lost %s: %s", im.Node, p, got)
			}
		}
		// Shared files are in the root itself, with their enablement links.
		if got := dbg(root, "cat /etc/systemd/system/etcd.service"); !strings.Contains(got, "Type=notify") {
			t.Errorf("%s: etcd.service: %s", im.Node, got)
		}
		if got := dbg(root, "stat /etc/systemd/system/multi-user.target.wants/etcd.service"); !strings.Contains(got, "Fast link dest") {
			t.Errorf("%s: etcd.service not enabled: %s", im.Node, got)
		}
		if got := dbg(root, "cat /etc/fstab"); !strings.Contains(got, "PARTLABEL=data /var ext4") || !strings.Contains(got, "PARTLABEL=esp /efi vfat noauto,x-systemd.automount") || strings.Contains(got, "/node") && strings.Contains(got, "PARTLABEL=node") {
			t.Errorf("%s: fstab: %s", im.Node, got)
		}
		// The A/B machinery is in the shared root: the node partition's generator, the
		// verify gate pulled in by boot-complete.target, the deadline.
		if got := dbg(root, "stat /"+NodeGenerator); !strings.Contains(got, "Mode:  0755") {
			t.Errorf("%s: %s: %s", im.Node, NodeGenerator, got)
		}
		if got := dbg(root, "cat /usr/lib/systemd/system/"+VerifyUnit); !strings.Contains(got, "ExecStart=/opt/etcdbake/bin/etcd-firstboot verify-boot --config /etc/etcdbake/node.json") || !strings.Contains(got, "TimeoutStartSec=600") || !strings.Contains(got, "Before=boot-complete.target") {
			t.Errorf("%s: %s: %s", im.Node, VerifyUnit, got)
		}
		for _, link := range []string{"boot-complete.target.requires/" + VerifyUnit, "sysinit.target.wants/" + DeadlineUnit, "multi-user.target.wants/" + RolloutUnit} {
			if got := dbg(root, "stat /etc/systemd/system/"+link); !strings.Contains(got, "Fast link dest") {
				t.Errorf("%s: %s missing: %s", im.Node, link, got)
			}
		}
		// No CA key anywhere on the disk: the body of each CA key file is searched in every
		// partition's bytes; the node's own server key, which must be there, is the control.
		var parts [][]byte
		for _, p := range []string{root, node, esp} {
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			parts = append(parts, b)
		}
		found := func(keyFile string) bool {
			body := pemBody(t, keyFile)
			for _, b := range parts {
				if bytes.Contains(b, body) {
					return true
				}
			}
			return false
		}
		if _, key := pki.NodeCertPath(pkiDir, im.Node, "server"); !found(key) {
			t.Errorf("%s: the control failed: its own server key %s is not found on its disk", im.Node, key)
		}
		// The backup target's keys: in the node partition (0600), never in the shared root.
		if got := dbg(root, "stat "+spec.S3CredentialsPath); !strings.Contains(got, `Fast link dest: "/node`+spec.S3CredentialsPath+`"`) {
			t.Errorf("%s: the root's %s is not a link to /node: %s", im.Node, spec.S3CredentialsPath, got)
		}
		if got := dbg(node, "stat "+spec.S3CredentialsPath); !strings.Contains(got, "Mode:  0600") {
			t.Errorf("%s: the node partition's %s: %s", im.Node, spec.S3CredentialsPath, got)
		}
		if !bytes.Contains(parts[1], []byte(testS3Secret)) || bytes.Contains(parts[0], []byte(testS3Secret)) {
			t.Errorf("%s: the backup target's secret key: in the node partition %v (want true), in the root %v (want false)", im.Node,
				bytes.Contains(parts[1], []byte(testS3Secret)), bytes.Contains(parts[0], []byte(testS3Secret)))
		}
		for _, ca := range []string{"ca", "peer-ca"} {
			if _, key := pki.CAPath(pkiDir, ca); found(key) {
				t.Errorf("%s: the CA key %s is on the disk", im.Node, key)
			}
		}
	}
	// Reproducible: a second build (a second later, into another directory) gives
	// byte-identical disk images and manifests.
	time.Sleep(1100 * time.Millisecond)
	out2 := filepath.Join(t.TempDir(), "images")
	o.OutDir = out2
	if _, err := Build(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	for _, im := range imgs {
		for _, f := range []string{im.Node + ".raw", im.Node + ".manifest.json"} {
			a, b := sha256File(t, filepath.Join(out, f)), sha256File(t, filepath.Join(out2, f))
			if a != b {
				t.Errorf("%s differs between two builds: %s vs %s", f, a, b)
			} else {
				t.Logf("%s: sha256 %s in both builds", f, a)
			}
		}
	}
	// A release that changes one node's own files only (its resolver, which differs
	// between the nodes already) has another release ID but the same root image, byte for
	// byte: nodes copy it from their running slot instead of downloading it.
	rootOf := func(node string) string {
		var m Manifest
		mb, _ := os.ReadFile(filepath.Join(o.OutDir, node+".manifest.json"))
		json.Unmarshal(mb, &m)
		return sha256File(t, partition(t, filepath.Join(o.OutDir, node+".raw"), m, RootLabel(SlotA)))
	}
	o.Nodes = slices.Clone(o.Nodes)
	for i := range o.Nodes {
		o.Nodes[i].DNS = []string{fmt.Sprintf("10.88.0.%d", 101+i)}
	}
	roots := map[string]string{}
	ids := map[string]bool{}
	for round := range 2 {
		if round == 1 {
			o.Nodes[0].DNS = []string{"10.88.0.200"}
		}
		o.OutDir = filepath.Join(t.TempDir(), "images")
		if _, err := Build(context.Background(), o); err != nil {
			t.Fatal(err)
		}
		ids[ReleaseID(o)] = true
		for _, im := range imgs {
			if r := rootOf(im.Node); round == 0 {
				roots[im.Node] = r
			} else if r != roots[im.Node] {
				t.Errorf("%s: the root differs between releases that change only a node's own files: %s vs %s", im.Node, roots[im.Node], r)
			}
		}
	}
	if len(ids) != 2 {
		t.Errorf("the release ID did not change with a node's resolver")
	}
}

// TestBuildCancelledDuringRootWrite cancels the context while the shared root is being
// written (from the writer's own progress report, so it is mid-write): Build returns
// context.Canceled without finishing the root, the previous images in OutDir are
// untouched, and nothing else is left next to OutDir (no temporary directory or file).
func TestBuildCancelledDuringRootWrite(t *testing.T) {
	parent := t.TempDir()
	out := filepath.Join(parent, "images")
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(out, "previous.raw"), []byte("old image"), 0o644); err != nil {
		t.Fatal(err)
	}
	o := exampleBuild(t, out)
	// Enough entries that the root writer reports progress (every 256 entries) well
	// before it ends.
	for i := range 3000 {
		if err := o.Base.Put(&fstree.Entry{Path: fmt.Sprintf("usr/share/filler/%04d", i), Mode: 0o644, Data: []byte(strings.Repeat("x", i))}); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var reports []int64
	var total int64
	o.Meter = func(step string, done, n int64) {
		if step == "shared root" {
			reports = append(reports, done)
			total = n
			cancel()
		}
	}
	start := time.Now()
	imgs, err := Build(ctx, o)
	if !errors.Is(err, context.Canceled) || imgs != nil {
		t.Fatalf("Build = %v, %v; want context.Canceled and no images", imgs, err)
	}
	if len(reports) != 1 || reports[0] >= total {
		t.Errorf("the root writer reported %v of %d entries: it did not stop at the first report after the cancel", reports, total)
	}
	t.Logf("cancelled after %d of %d root entries; Build returned %v in %s", reports[0], total, err, time.Since(start).Round(time.Millisecond))
	entries, err := os.ReadDir(parent)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != "images" {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("next to OutDir after the cancel: %v, want only images", names)
	}
	got, err := os.ReadDir(out)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(out, "previous.raw")); len(got) != 1 || string(b) != "old image" {
		t.Errorf("OutDir changed by a cancelled build: %d entries, previous.raw %q", len(got), b)
	}
}

// pemBody is the base64 body of the PEM file's first block (what a copy of the key holds,
// whatever the header says).
func pemBody(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) < 3 || !strings.HasPrefix(lines[0], "-----BEGIN ") {
		t.Fatalf("%s is not a PEM file", path)
	}
	return []byte(strings.Join(lines[1:len(lines)-1], "\n"))
}

// TestRootLayoutAcrossReleases: what keeps a release's root close to the one before, block
// for block: its size is whole block groups and does not move when a binary changes by a
// few MiB, and settledIn tells the base's unchanged entries from etcdbake's.
func TestRootLayoutAcrossReleases(t *testing.T) {
	dir := t.TempDir()
	sized := func(name string, n int64) string {
		p := filepath.Join(dir, name)
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := f.Truncate(n); err != nil { // sparse: only its size is read
			t.Fatal(err)
		}
		return p
	}
	base := fstree.NewTree()
	for _, e := range []*fstree.Entry{
		{Path: "usr/lib/modules", Mode: fs.ModeDir | 0o755},
		{Path: "usr/lib/big", Mode: 0o644, Source: sized("big", 400<<20)},
		{Path: "etc/hostname", Mode: 0o644, Data: []byte("debian\n")},
		{Path: "etc/os-release", Mode: 0o644, Data: []byte("ID=debian\n")},
		{Path: "bin", Mode: fs.ModeSymlink | 0o777, Target: "usr/bin"},
		{Path: "sbin", Mode: fs.ModeSymlink | 0o777, Target: "usr/sbin"},
	} {
		if err := base.Put(e); err != nil {
			t.Fatal(err)
		}
	}
	release := func(etcdSize int64) *fstree.Tree {
		r := base.Clone()
		for _, e := range []*fstree.Entry{
			{Path: "opt/etcdbake/bin/etcd", Mode: 0o755, Source: sized(fmt.Sprintf("etcd-%d", etcdSize), etcdSize)},
			{Path: "etc/hostname", Mode: 0o644, Data: []byte("etcd-1\n")},
			{Path: "sbin", Mode: fs.ModeSymlink | 0o777, Target: "/usr/local/sbin"},
		} {
			if err := r.Put(e); err != nil {
				t.Fatal(err)
			}
		}
		return r
	}
	a, b := release(27<<20), release(24<<20)
	sa, sb := rootFSSize(a), rootFSSize(b)
	if sa != sb || sa%(128<<20) != 0 || sa < 427<<20 {
		t.Errorf("root sizes %d and %d MiB for 427 and 424 MiB of files: want the same whole block groups (128 MiB), above the files", sa>>20, sb>>20)
	}
	settled := settledIn(base, a)
	for p, want := range map[string]bool{
		"usr/lib/modules": true, "usr/lib/big": true, "etc/os-release": true, "bin": true,
		"etc/hostname": false, "sbin": false, "opt/etcdbake/bin/etcd": false, "opt": false,
	} {
		e, ok := a.Get(p)
		if !ok {
			t.Fatalf("no %s", p)
		}
		if got := settled(e); got != want {
			t.Errorf("settled(%s) = %v, want %v", p, got, want)
		}
	}
}
