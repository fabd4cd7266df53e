package firstboot

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/etcdbake/etcdbake/pki"
	"github.com/etcdbake/etcdbake/spec"
)

// releaseServer serves one release for node m1 over mutual TLS as the release server
// does (client certificates from the cluster CA; http.ServeContent, so ranges work). It
// can cut the first transfer of a file after cut bytes, or serve corrupt bytes.
type releaseServer struct {
	url      string
	files    map[string][]byte // wire name -> content
	manifest spec.ReleaseManifest
	mu       sync.Mutex
	cut      map[string]int // wire name -> bytes before the first transfer is cut
	ranges   []string       // Range headers seen
	gets     []string       // every file asked for, in order
	corrupt  string         // wire name served with one byte flipped
}

func newReleaseServer(t *testing.T, fc *fbCluster, node string, rootSize int) *releaseServer {
	t.Helper()
	return newReleaseServerID(t, fc, node, rootSize, "0f0e0d0c0b0a")
}

// newReleaseServerID is newReleaseServer for release id.
func newReleaseServerID(t *testing.T, fc *fbCluster, node string, rootSize int, id string) *releaseServer {
	t.Helper()
	rs := &releaseServer{files: map[string][]byte{}, cut: map[string]int{}}
	rnd := func(n int) []byte {
		b := make([]byte, n)
		rand.Read(b)
		return b
	}
	// The node image's size is not a multiple of 4 KiB (written through the page cache),
	// the root's is (written with O_DIRECT on this file system).
	rs.files["root"], rs.files["node"], rs.files["linux"], rs.files["initrd"] = rnd(rootSize), rnd(1<<20+123), rnd(300<<10), rnd(500<<10)
	file := func(name string) spec.ReleaseFile {
		return releaseFile(name, rs.files[name])
	}
	root := file("root")
	if rootSize >= 4<<20 { // MiB 1 and 2 are zeros, listed in the manifest
		clear(rs.files["root"][1<<20 : 3<<20])
		root = file("root")
		root.Zeros = []spec.Extent{{Off: 1 << 20, Len: 2 << 20}}
	}
	rs.manifest = spec.ReleaseManifest{ID: id, Cluster: fc.tc.Spec.Name, Root: root, Linux: file("linux"), Initrd: file("initrd"),
		Nodes: map[string]spec.ReleaseNode{node: {Node: file("node"), Entries: map[string]string{
			"a": "title x\nlinux /etcdbake/a/linux\ninitrd /etcdbake/a/initrd\noptions etcdbake.slot=a\n",
			"b": "title x\nlinux /etcdbake/b/linux\ninitrd /etcdbake/b/initrd\noptions etcdbake.slot=b\n"}}}}
	mb, _ := json.Marshal(rs.manifest)
	rs.files[spec.ReleaseManifestName] = mb

	caPEM, _ := os.ReadFile(fc.agents[node].Cfg.CA)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	crt, key := pki.NodeCertPath(fc.tc.PKIDir, node, pki.KindServer) // SAN: the node's 127.0.0.x
	pair, err := tls.LoadX509KeyPair(crt, key)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(fc.tc.Spec.Nodes[0].IP().String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	prefix := "/v1/releases/" + id + "/" + node + "/"
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		name, ok := strings.CutPrefix(r.URL.Path, prefix)
		data, found := rs.files[name]
		if !ok || !found {
			http.NotFound(w, r)
			return
		}
		rs.mu.Lock()
		rs.gets = append(rs.gets, name)
		if rg := r.Header.Get("Range"); rg != "" {
			rs.ranges = append(rs.ranges, name+" "+rg)
		}
		cut, cutting := rs.cut[name]
		delete(rs.cut, name)
		corrupt := rs.corrupt == name
		rs.mu.Unlock()
		if corrupt {
			data = bytes.Clone(data)
			data[len(data)/2] ^= 0xff
		}
		if cutting { // send part of the file or range, then drop the connection
			var from, to int
			if _, err := fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &from, &to); err == nil {
				w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", from, to, len(data)))
				w.Header().Set("Content-Length", strconv.Itoa(to+1-from))
				w.WriteHeader(http.StatusPartialContent)
				w.Write(data[from : from+cut])
			} else {
				w.Header().Set("Content-Length", strconv.Itoa(len(data)))
				w.WriteHeader(http.StatusOK)
				w.Write(data[:cut])
			}
			w.(http.Flusher).Flush()
			conn, _, _ := w.(http.Hijacker).Hijack()
			conn.Close()
			return
		}
		http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(data))
	}), TLSConfig: &tls.Config{Certificates: []tls.Certificate{pair}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13}}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
	rs.url = "https://" + ln.Addr().String() + "/v1/releases/" + id
	return rs
}

// releaseFile describes data as the image build does (without Zeros).
func releaseFile(name string, data []byte) spec.ReleaseFile {
	s := sha256.Sum256(data)
	f := spec.ReleaseFile{Path: name, Size: int64(len(data)), SHA256: hex.EncodeToString(s[:]), ChunkHash: spec.ChunkXXH64}
	for off := 0; off < len(data); off += spec.ZeroChunk {
		f.Chunks = append(f.Chunks, spec.ChunkDigest(data[off:min(off+spec.ZeroChunk, len(data))]))
	}
	return f
}

// stageEnv is a node running slot a: its devices for slot b are files, its ESP a
// directory with slot a's entry and leftovers of an older slot b.
func stageEnv(t *testing.T, a *Agent, running string, slotSize int64) StageOptions {
	t.Helper()
	a.BootPaths = fakeBoot{cmdline: cmdline(running), vars: map[string]string{"LoaderEntrySelected": spec.EntryName(0, running) + ".conf"},
		entries: []string{spec.EntryName(0, running) + ".conf", spec.EntryName(1, spec.OtherSlot(running)) + "+0-1.conf", spec.EntryName(2, spec.OtherSlot(running)) + "+1.tmp"}}.write(t)
	other := spec.OtherSlot(running)
	os.MkdirAll(filepath.Join(a.BootPaths.ESP, "etcdbake", other), 0o755)
	os.WriteFile(filepath.Join(a.BootPaths.ESP, "etcdbake", other, "linux"), []byte("old kernel"), 0o644)
	dir := t.TempDir()
	devs := map[string]string{}
	for label, size := range map[string]int64{spec.RootLabel(other): slotSize, spec.NodeLabel(other): 2 << 20} {
		p := filepath.Join(dir, label)
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		os.Truncate(p, size)
		devs[label] = p
	}
	return StageOptions{Devices: devs}
}

func entriesOnESP(t *testing.T, a *Agent) []string {
	t.Helper()
	ents, _ := os.ReadDir(filepath.Join(a.BootPaths.ESP, "loader", "entries"))
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// TestStageAndArm stages a release from a real mutual-TLS server into slot b's devices
// (files here) while slot a runs: the partitions and the ESP's kernel and initrd hold the
// release's bytes, every old entry of slot b is gone before anything is written, and no
// entry boots slot b until Arm writes one with one try. The root comes in range requests
// of its data only (its zero MiBs are written here, over what the partition held); a
// range whose transfer breaks is asked again.
func TestStageAndArm(t *testing.T) {
	fc := newFBClusterN(t, "stg", 1, 61)
	a := fc.agents["m1"]
	rs := newReleaseServer(t, fc, "m1", 9<<20)
	o := stageEnv(t, a, "a", 12<<20)
	o.URL = rs.url
	if err := os.WriteFile(o.Devices["root-b"], bytes.Repeat([]byte{0xff}, 12<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	rs.cut["root"] = 512 << 10 // the first transfer of the root breaks after 512 KiB
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := a.Stage(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if st.Slot != "b" || st.Release != rs.manifest.ID || st.Entry != rs.manifest.Nodes["m1"].Entries["b"] {
		t.Errorf("staged %+v", st)
	}
	var rootRanges []string
	for _, r := range rs.ranges {
		if name, rg, _ := strings.Cut(r, " "); name == "root" {
			rootRanges = append(rootRanges, rg)
		}
	}
	if want := []string{"bytes=0-1048575", "bytes=0-1048575", "bytes=3145728-7340031", "bytes=7340032-9437183"}; !slices.Equal(rootRanges, want) {
		t.Errorf("root fetched as %v, want %v: MiB 0 twice (the first transfer broke), then the data after the zeros in 4 MiB ranges", rootRanges, want)
	}
	for label, name := range map[string]string{"root-b": "root", "node-b": "node"} {
		b, _ := os.ReadFile(o.Devices[label])
		if !bytes.Equal(b[:len(rs.files[name])], rs.files[name]) {
			t.Errorf("%s does not hold the release's %s", label, name)
		}
	}
	for _, f := range []string{"linux", "initrd"} {
		b, _ := os.ReadFile(filepath.Join(a.BootPaths.ESP, "etcdbake", "b", f))
		if !bytes.Equal(b, rs.files[f]) {
			t.Errorf("ESP etcdbake/b/%s is not the release's (%d bytes)", f, len(b))
		}
	}
	if got := strings.Join(entriesOnESP(t, a), " "); got != "etcdbake-000000-a.conf" {
		t.Errorf("entries after staging: %s, want slot a's only (nothing boots b before Arm)", got)
	}
	// Arm for generation 3: one try, the release's entry text.
	if _, err := a.Arm(0); err == nil || !strings.Contains(err.Error(), "not newer") {
		t.Errorf("Arm(0): %v, want refused (not newer than the running entry)", err)
	}
	name, err := a.Arm(3)
	if err != nil {
		t.Fatal(err)
	}
	if name != "etcdbake-000003-b+1.conf" {
		t.Errorf("armed %s", name)
	}
	if got := strings.Join(entriesOnESP(t, a), " "); got != "etcdbake-000000-a.conf etcdbake-000003-b+1.conf" {
		t.Errorf("entries after Arm: %s", got)
	}
	if b, _ := os.ReadFile(filepath.Join(a.BootPaths.ESP, "loader", "entries", name)); string(b) != st.Entry {
		t.Errorf("armed entry:\n%s", b)
	}
	bi, err := ReadBootInfo(a.BootPaths)
	if err != nil || len(bi.Entries) != 2 || bi.Entries[0].Name != name || bi.Entries[0].TriesLeft != 1 {
		t.Errorf("boot info after Arm: %+v (%v): the armed entry must sort first with one try", bi, err)
	}
	// Booted into b, the staged slot is the running one: arming it again is refused.
	a.BootPaths = fakeBoot{cmdline: cmdline("b"), vars: map[string]string{"LoaderEntrySelected": name}, entries: []string{name}}.write(t)
	if _, err := a.Arm(4); err == nil || !strings.Contains(err.Error(), "is the running one") {
		t.Errorf("Arm of the running slot: %v", err)
	}
}

// TestStageRefusals: a corrupt transfer, a slot too small, a cancelled staging and a
// release without this node fail with the reason; none leaves anything that boots
// slot b or a record that Arm would take.
func TestStageRefusals(t *testing.T) {
	fc := newFBClusterN(t, "stgr", 1, 71)
	a := fc.agents["m1"]
	rs := newReleaseServer(t, fc, "m1", 3<<20)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	check := func(what string, err error, want string) {
		t.Helper()
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want an error with %q", what, err, want)
		}
		// Slot a's entry stays, and no entry of slot b could be the next boot: none is
		// armed (an old one that failed sorts last).
		ents := entriesOnESP(t, a)
		if !slices.Contains(ents, "etcdbake-000000-a.conf") {
			t.Errorf("%s: slot a's entry is gone: %v", what, ents)
		}
		for _, e := range ents {
			be, err := ParseBootEntry(strings.Replace(e, ".tmp", ".conf", 1))
			if err == nil && be.Slot == "b" && (!be.Counted || be.TriesLeft > 0) && what != "unknown release" {
				t.Errorf("%s: %s could boot slot b (entries %v)", what, e, ents)
			}
		}
		if _, err := a.Arm(5); err == nil || !strings.Contains(err.Error(), "nothing is staged") {
			t.Errorf("%s: Arm afterwards: %v, want nothing staged", what, err)
		}
	}

	o := stageEnv(t, a, "a", 8<<20)
	o.URL = rs.url
	rs.corrupt = "node"
	_, err := a.Stage(ctx, o)
	check("corrupt node image", err, "release's digest of that piece")
	// A release without piece digests: the partition is read back and its sha256 checked.
	withPieces := rs.manifest
	node := rs.manifest.Nodes["m1"]
	node.Node.Chunks = nil
	rs.manifest.Nodes = map[string]spec.ReleaseNode{"m1": node}
	rs.files[spec.ReleaseManifestName], _ = json.Marshal(rs.manifest)
	o = stageEnv(t, a, "a", 8<<20)
	o.URL = rs.url
	_, err = a.Stage(ctx, o)
	check("corrupt node image without piece digests", err, "read back sha256")
	rs.manifest = withPieces
	rs.files[spec.ReleaseManifestName], _ = json.Marshal(rs.manifest)
	rs.corrupt = ""

	o = stageEnv(t, a, "a", 1<<20)
	o.URL = rs.url
	_, err = a.Stage(ctx, o)
	check("slot too small", err, "re-image")

	o = stageEnv(t, a, "a", 8<<20)
	o.URL = rs.url
	cctx, ccancel := context.WithCancel(ctx)
	o.Progress = func(file string, done, total int64) {
		if strings.HasSuffix(file, "/root") && done > 1<<20 {
			ccancel() // power loss while the root is written
		}
	}
	_, err = a.Stage(cctx, o)
	check("cancelled while writing the root", err, "context canceled")

	o = stageEnv(t, a, "a", 8<<20)
	o.URL = strings.Replace(rs.url, rs.manifest.ID, "aaaaaaaaaaaa", 1)
	_, err = a.Stage(ctx, o)
	check("unknown release", err, "404")
}

// TestStageCopiesPiecesOfTheRunningRoot: a node whose running slot's node partition
// describes its root (spec.RootPiecesName) takes a release whose root differs in one MiB
// by copying every other piece from its running slot and downloading that one, and
// copies the kernel and initrd from the running slot's when the release has the same.
// A piece or file the running slot does not hold as the release says (its digest
// differs) is downloaded instead, and only that one.
func TestStageCopiesPiecesOfTheRunningRoot(t *testing.T) {
	fc := newFBClusterN(t, "stgc", 1, 81)
	a := fc.agents["m1"]
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// Release 1 (its ID is the one the test command lines boot) staged into slot b.
	rs1 := newReleaseServerID(t, fc, "m1", 9<<20, testRelease)
	o1 := stageEnv(t, a, "a", 12<<20)
	o1.URL = rs1.url
	if _, err := a.Stage(ctx, o1); err != nil {
		t.Fatal(err)
	}
	// Booted into slot b: its node partition says what its root holds.
	nodeDir := t.TempDir()
	if err := writeJSON(filepath.Join(nodeDir, spec.RootPiecesName), rs1.manifest.Root, 0o644); err != nil {
		t.Fatal(err)
	}
	// Release 2: release 1's root with MiB 5 changed, a new node partition.
	root2 := bytes.Clone(rs1.files["root"])
	copy(root2[5<<20:], "release 2")
	rootRanges := func(rs *releaseServer) (out []string) {
		for _, r := range rs.ranges {
			if name, rg, _ := strings.Cut(r, " "); name == "root" {
				out = append(out, rg)
			}
		}
		return out
	}
	for _, tc := range []struct {
		name    string
		corrupt bool // the running slot's root no longer holds release 1's MiB 7, nor its initrd
		want    []string
		fetched []string // the files asked for besides the manifest, node and root
	}{
		{"pieces copied", false, []string{"bytes=5242880-6291455"}, nil},
		{"running slot changed", true, []string{"bytes=5242880-6291455", "bytes=7340032-8388607"}, []string{"initrd"}},
	} {
		rs2 := newReleaseServerID(t, fc, "m1", 9<<20, "2222222222"+fmt.Sprint(len(tc.name)))
		rs2.files["root"] = root2
		rs2.manifest.Root = releaseFile("root", root2)
		rs2.manifest.Root.Zeros = rs1.manifest.Root.Zeros
		for _, k := range []string{"linux", "initrd"} { // the same kernel as release 1
			rs2.files[k] = rs1.files[k]
		}
		rs2.manifest.Linux, rs2.manifest.Initrd = rs1.manifest.Linux, rs1.manifest.Initrd
		rs2.files[spec.ReleaseManifestName], _ = json.Marshal(rs2.manifest)
		o2 := stageEnv(t, a, "b", 12<<20) // now running slot b, release 1
		a.BootPaths.Node = nodeDir
		o2.URL = rs2.url
		o2.Devices["root-b"] = o1.Devices["root-b"]
		kdir := filepath.Join(a.BootPaths.ESP, spec.SlotKernelDir("b"))
		os.MkdirAll(kdir, 0o755)
		for _, k := range []string{"linux", "initrd"} { // what staging release 1 put there
			os.WriteFile(filepath.Join(kdir, k), rs1.files[k], 0o600)
		}
		if tc.corrupt {
			f, _ := os.OpenFile(o1.Devices["root-b"], os.O_RDWR, 0)
			f.WriteAt([]byte("changed"), 7<<20)
			f.Close()
			os.WriteFile(filepath.Join(kdir, "initrd"), bytes.Repeat([]byte{1}, len(rs1.files["initrd"])), 0o600)
		}
		st, err := a.Stage(ctx, o2)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if st.Slot != "a" {
			t.Errorf("%s: staged %+v", tc.name, st)
		}
		if got := rootRanges(rs2); !slices.Equal(got, tc.want) {
			t.Errorf("%s: root fetched as %v, want %v", tc.name, got, tc.want)
		}
		var fetched []string
		for _, g := range rs2.gets {
			if g == "linux" || g == "initrd" {
				fetched = append(fetched, g)
			}
		}
		if !slices.Equal(fetched, tc.fetched) {
			t.Errorf("%s: kernel files fetched %v, want %v", tc.name, fetched, tc.fetched)
		}
		for _, k := range []string{"linux", "initrd"} {
			if b, _ := os.ReadFile(filepath.Join(a.BootPaths.ESP, spec.SlotKernelDir("a"), k)); !bytes.Equal(b, rs2.files[k]) {
				t.Errorf("%s: slot a's %s on the ESP is not the release's", tc.name, k)
			}
		}
		b, _ := os.ReadFile(o2.Devices["root-a"])
		if !bytes.Equal(b[:len(root2)], root2) {
			t.Errorf("%s: root-a does not hold release 2's root", tc.name)
		}
		b, _ = os.ReadFile(o2.Devices["node-a"])
		if !bytes.Equal(b[:len(rs2.files["node"])], rs2.files["node"]) {
			t.Errorf("%s: node-a does not hold release 2's node partition", tc.name)
		}
	}
}
