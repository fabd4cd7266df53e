package imagebuild

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/fat32"

	"github.com/etcdbake/etcdbake/imagebuild/internal/imagetest"
	"github.com/etcdbake/etcdbake/internal/fileutil"
)

// checkSlots checks a fresh image's A/B layout: the partitions in order, slot A's boot
// entry on the ESP (no loader default, the kernel and initrd under /etcdbake/a) and the
// command line that names slot A's partitions and the release.
func checkSlots(t *testing.T, node, esp string, slotSize int64, m Manifest) {
	t.Helper()
	var labels []string
	guid := map[string]string{}
	for _, p := range m.Layout {
		labels = append(labels, p.Label)
		guid[p.Label] = strings.ToLower(p.GUID)
		if (p.Label == "root-a" || p.Label == "root-b") && p.Size != slotSize {
			t.Errorf("%s: %s is %d bytes, want the slot size %d", node, p.Label, p.Size, slotSize)
		}
	}
	if want := []string{"esp", "root-a", "node-a", "root-b", "node-b", "data"}; !slices.Equal(labels, want) {
		t.Errorf("%s: partitions %v, want %v", node, labels, want)
	}
	if m.Slot != "a" || m.Entry != "etcdbake-000000-a.conf" {
		t.Errorf("%s: manifest slot %q entry %q, want a, etcdbake-000000-a.conf", node, m.Slot, m.Entry)
	}
	for _, w := range []string{"root=PARTUUID=" + guid["root-a"] + " ", "etcdbake.slot=a ", "etcdbake.node=" + guid["node-a"] + " ", "etcdbake.release=" + m.Release + " ", "panic=30 "} {
		if !strings.Contains(m.Cmdline+" ", w) {
			t.Errorf("%s: command line %q lacks %q", node, m.Cmdline, w)
		}
	}
	f, err := os.Open(esp)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	fs, err := fat32.Read(file.New(f, true), st.Size(), 0, 512)
	if err != nil {
		t.Fatalf("%s: reading the ESP: %v", node, err)
	}
	read := func(p string) string {
		b, err := fs.ReadFile(p)
		if err != nil {
			t.Errorf("%s: ESP %s: %v", node, p, err)
		}
		return string(b)
	}
	if lc := read("/loader/loader.conf"); strings.Contains(lc, "default") || !strings.Contains(lc, "timeout 0") {
		t.Errorf("%s: loader.conf must not name a default (boot counting picks the entry):\n%s", node, lc)
	}
	entries, err := fs.ReadDir("loader/entries")
	if err != nil || len(entries) != 1 || !strings.EqualFold(entries[0].Name(), m.Entry) {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("%s: loader entries %v (%v), want only %s", node, names, err, m.Entry)
	}
	entry := read("/loader/entries/" + m.Entry)
	for _, w := range []string{"linux /etcdbake/a/linux\n", "initrd /etcdbake/a/initrd\n", "options " + m.Cmdline + "\n"} {
		if !strings.Contains(entry, w) {
			t.Errorf("%s: entry lacks %q:\n%s", node, w, entry)
		}
	}
	if k := read("/etcdbake/a/linux"); k != testBootFiles["boot/vmlinuz-6.1.0-test-amd64"] {
		t.Errorf("%s: /etcdbake/a/linux is not the base's kernel (%d bytes)", node, len(k))
	}
	if i := read("/etcdbake/a/initrd"); i != testBootFiles["boot/initrd.img-6.1.0-test-amd64"] {
		t.Errorf("%s: /etcdbake/a/initrd is not the base's initrd (%d bytes)", node, len(i))
	}
	if _, err := fs.ReadDir("etcdbake/b"); err == nil {
		t.Errorf("%s: the ESP has a directory for slot b in a fresh image", node)
	}
}

// TestNodeGenerator runs the node partition's generator with sh on command lines of its
// own: it mounts the named partition read-only before local-fs.target, and writes nothing
// for a missing or malformed PARTUUID.
func TestNodeGenerator(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	script := filepath.Join(dir, "generator")
	if err := os.WriteFile(script, []byte(nodeGeneratorScript), 0o755); err != nil {
		t.Fatal(err)
	}
	run := func(cmdline string) string {
		t.Helper()
		cl := filepath.Join(dir, "cmdline")
		os.WriteFile(cl, []byte(cmdline+"\n"), 0o644)
		out, err := os.MkdirTemp(dir, "out")
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(sh, script, out, out, out)
		cmd.Env = []string{"ETCDBAKE_PROC_CMDLINE=" + cl, "PATH=/usr/bin:/bin"}
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("generator on %q: %v\n%s", cmdline, err, b)
		}
		return out
	}
	id := "0f2b6e4a-1c3d-4e5f-8a9b-0c1d2e3f4a5b"
	out := run(SlotCmdline("b", "11111111-2222-3333-4444-555555555555", id, "0123456789ab", "etcd-1", MachineID("c", "etcd-1")))
	unit, err := os.ReadFile(filepath.Join(out, "node.mount"))
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"What=/dev/disk/by-partuuid/" + id + "\n", "Where=/node\n", "Options=ro,nodev,nosuid,noexec\n", "Before=local-fs.target\n"} {
		if !strings.Contains(string(unit), w) {
			t.Errorf("node.mount lacks %q:\n%s", w, unit)
		}
	}
	if target, err := os.Readlink(filepath.Join(out, "local-fs.target.requires", "node.mount")); err != nil || target != "../node.mount" {
		t.Errorf("local-fs.target.requires/node.mount -> %q (%v)", target, err)
	}
	for _, cl := range []string{
		"root=PARTUUID=x ro console=ttyS0",               // an image without slots
		"etcdbake.node= ro",                              // empty
		"etcdbake.node=0f2b6e4a;touch${IFS}/tmp/x ro",    // not a PARTUUID
		"etcdbake.node=../../dev/sda ro etcdbake.slot=a", // a path
	} {
		out := run(cl)
		if ents, _ := os.ReadDir(out); len(ents) != 0 {
			t.Errorf("generator on %q wrote %d entries, want none", cl, len(ents))
		}
	}
}

// TestSlotUnitsVerify has systemd-analyze check the verify gate and the deadline units.
func TestSlotUnitsVerify(t *testing.T) {
	sa := imagetest.Tool(t, "systemd-analyze", "systemd")
	tr := syntheticImageBase(t)
	if err := SlotSystem(tr, SlotOptions{VerifyTimeout: 90e9, Firstboot: "/bin/true", NodeConfig: "/etc/x.json"}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, u := range []string{VerifyUnit, DeadlineUnit, RolloutUnit} {
		e, ok := tr.Get("usr/lib/systemd/system/" + u)
		if !ok {
			t.Fatalf("%s missing", u)
		}
		os.WriteFile(filepath.Join(dir, u), e.Data, 0o644)
		if u == VerifyUnit && !strings.Contains(string(e.Data), "TimeoutStartSec=90\n") {
			t.Errorf("%s: the timeout is not the given 90 s:\n%s", u, e.Data)
		}
		if u == DeadlineUnit && !strings.Contains(string(e.Data), "sleep 210;") {
			t.Errorf("%s: the deadline is not the timeout plus 2 min:\n%s", u, e.Data)
		}
		if u == RolloutUnit && !strings.Contains(string(e.Data), "ExecStart=/bin/true rollout --config /etc/x.json --timeout 90s\n") {
			t.Errorf("%s: the agent does not get the timeout:\n%s", u, e.Data)
		}
	}
	out, err := exec.Command(sa, "verify", "--man=no", filepath.Join(dir, VerifyUnit), filepath.Join(dir, DeadlineUnit), filepath.Join(dir, RolloutUnit)).CombinedOutput()
	if strings.Contains(string(out), "nknown") || strings.Contains(string(out), "Failed to parse") {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestRootLargerThanSlot: a root that does not fit the slot is refused before any output,
// naming both sizes.
func TestRootLargerThanSlot(t *testing.T) {
	out := filepath.Join(t.TempDir(), "images")
	o, _ := exampleBuildPKI(t, out)
	o.SlotSize = 32 << 20
	_, err := Build(context.Background(), o)
	if err == nil || !strings.Contains(err.Error(), "more than the slot size (32 MiB)") {
		t.Fatalf("Build with a 32 MiB slot: %v, want the root refused", err)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("output left behind: %v", err)
	}
}

// TestReleaseKeptSideBySide: with ReleasesDir, a build is kept as a release: the root,
// each node's partition image (the same bytes as slot A of its disk), the kernel and
// initrd, and a manifest with their sha256 and each slot's command line. A rebuild of
// the same inputs leaves that release as it is; other inputs (another node config) make
// a second release beside it.
func TestReleaseKeptSideBySide(t *testing.T) {
	out := filepath.Join(t.TempDir(), "images")
	o, _ := exampleBuildPKI(t, out)
	o.ReleasesDir = filepath.Join(t.TempDir(), "releases")
	o.CertSerials = map[string]map[string]string{"etcd-1": {"server": "0a1b"}}
	o.SpecJSON = []byte(`{"name":"example"}`)
	imgs, err := Build(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	id := ReleaseID(o)
	dir := filepath.Join(o.ReleasesDir, id)
	if imgs[0].Release != dir {
		t.Errorf("image's release %q, want %q", imgs[0].Release, dir)
	}
	m, err := ReadReleaseManifest(dir)
	if err != nil {
		t.Fatal(err)
	}
	if m.ID != id || m.SlotSize != o.SlotSize || len(m.Nodes) != 3 || m.Kernel == "" || len(m.Binaries) != 4 {
		t.Fatalf("manifest %+v", m)
	}
	if m.Spec.Path != "spec.json" {
		t.Errorf("the release's spec: %+v", m.Spec)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "spec.json")); string(b) != string(o.SpecJSON) {
		t.Errorf("spec.json holds %q", b)
	}
	files := []ReleaseFile{m.Root, m.Linux, m.Initrd, m.Spec}
	for _, n := range m.Nodes {
		files = append(files, n.Node)
	}
	for _, f := range files {
		sum, size, err := fileutil.Digest(filepath.Join(dir, f.Path), sha256.New())
		if err != nil || sum != f.SHA256 || size != f.Size {
			t.Errorf("%s: sha256 %s size %d (%v), manifest says %s %d", f.Path, sum, size, err, f.SHA256, f.Size)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(dir, ReleaseLinux)); string(b) != testBootFiles["boot/vmlinuz-6.1.0-test-amd64"] {
		t.Errorf("the release's kernel is not the base's")
	}
	var dm Manifest
	mb, _ := os.ReadFile(filepath.Join(out, "etcd-1.manifest.json"))
	if err := json.Unmarshal(mb, &dm); err != nil {
		t.Fatal(err)
	}
	n1 := m.Nodes["etcd-1"]
	if n1.Options["a"] != dm.Cmdline || !strings.Contains(n1.Options["b"], "etcdbake.slot=b ") || n1.CertSerials["server"] != "0a1b" {
		t.Errorf("etcd-1 in the release: %+v; the disk's command line is %q", n1, dm.Cmdline)
	}
	if e := n1.Entries["a"]; !strings.Contains(e, "linux /etcdbake/a/linux\n") || !strings.Contains(e, "options "+dm.Cmdline+"\n") {
		t.Errorf("etcd-1's entry for slot a:\n%s", e)
	}
	if e := n1.Entries["b"]; !strings.Contains(e, "initrd /etcdbake/b/initrd\n") || !strings.Contains(e, "options "+n1.Options["b"]+"\n") {
		t.Errorf("etcd-1's entry for slot b:\n%s", e)
	}
	// The node image is what slot A of the node's disk holds.
	part := partition(t, filepath.Join(out, "etcd-1.raw"), dm, NodeLabel(SlotA))
	pb, _ := os.ReadFile(part)
	nb, _ := os.ReadFile(filepath.Join(dir, n1.Node.Path))
	if len(nb) == 0 || !bytes.Equal(pb[:len(nb)], nb) {
		t.Errorf("the release's node image (%d bytes) is not slot A's node partition", len(nb))
	}
	entries, _ := os.ReadDir(o.ReleasesDir)
	if len(entries) != 1 {
		t.Fatalf("releases: %v", entries)
	}

	// The same inputs: the release is left as it is.
	st0, _ := os.Stat(filepath.Join(dir, ReleaseManifestName))
	o.OutDir = filepath.Join(t.TempDir(), "images2")
	if _, err := Build(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	if st1, _ := os.Stat(filepath.Join(dir, ReleaseManifestName)); !st1.ModTime().Equal(st0.ModTime()) {
		t.Errorf("rebuilding the same inputs rewrote the release")
	}
	// Another config: a second release beside the first.
	o.Nodes[0].Config = append([]byte(nil), o.Nodes[0].Config...)
	o.Nodes[0].DNS = []string{"10.88.0.53"}
	o.OutDir = filepath.Join(t.TempDir(), "images3")
	if _, err := Build(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	entries, _ = os.ReadDir(o.ReleasesDir)
	if len(entries) != 2 || ReleaseID(o) == id {
		t.Errorf("after a changed build: releases %v (ids %s, %s)", entries, id, ReleaseID(o))
	}
}
