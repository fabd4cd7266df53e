package bake

import (
	"bytes"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/etcdbake/etcdbake/pki"
	"github.com/etcdbake/etcdbake/spec"
)

// portsSpec is the example spec with etcd on ports other than etcd's defaults.
func portsSpec(t *testing.T) *spec.Cluster {
	t.Helper()
	b := spec.Example
	for _, r := range [][2]string{{"# clientPort: 2379", "clientPort: 12379"}, {"# peerPort: 2380", "peerPort: 12380"}} {
		if !bytes.Contains(b, []byte(r[0])) {
			t.Fatalf("spec.Example no longer contains %q: update the test", r[0])
		}
		b = bytes.Replace(b, []byte(r[0]), []byte(r[1]), 1)
	}
	c, rep := spec.Parse(b)
	if c == nil || len(rep.Errors()) > 0 {
		t.Fatalf("spec: %v", rep.Problems)
	}
	if c.Etcd.ClientPort != 12379 || c.Etcd.PeerPort != 12380 {
		t.Fatalf("spec ports %d/%d, want 12379/12380", c.Etcd.ClientPort, c.Etcd.PeerPort)
	}
	return c
}

// TestQEMUPortsFromSpec: the QEMU guest fragment makes etcd listen on the spec's client
// and peer ports (the ports the node advertises), not on etcd's defaults, and the VMs'
// forwards go to those ports; otherwise a spec with other ports never forms a cluster
// under `etcdbake up`.
func TestQEMUPortsFromSpec(t *testing.T) {
	c := portsSpec(t)
	frag := string(QEMUFragment(c).Data)
	t.Logf("QEMU guest fragment for clientPort 12379, peerPort 12380:\n%s", frag)
	for _, want := range []string{"ETCD_LISTEN_CLIENT_URLS=https://0.0.0.0:12379\n", "ETCD_LISTEN_PEER_URLS=https://0.0.0.0:12380\n"} {
		if !strings.Contains(frag, want) {
			t.Errorf("the fragment lacks %q", strings.TrimSpace(want))
		}
	}
	for _, bad := range []string{":2379", ":2380"} {
		if strings.Contains(frag, bad) {
			t.Errorf("the fragment still uses etcd's default port %s", bad)
		}
	}
	o := QEMUCluster(c, map[string]string{"etcd-1": "etcd-1.raw"}, t.TempDir())
	if o.ClientPort != 12379 || o.PeerPort != 12380 {
		t.Errorf("cluster options forward to guest ports %d/%d, want 12379/12380", o.ClientPort, o.PeerPort)
	}
}

// TestQEMUStampIgnoresServeCert: the inputs stamp of `up`'s images changes when a node's
// certificate is re-issued, not when the release server's certificate (which no node
// holds) is made.
func TestQEMUStampIgnoresServeCert(t *testing.T) {
	c := portsSpec(t)
	dir := t.TempDir()
	if _, err := pki.Ensure(c, dir, time.Now()); err != nil {
		t.Fatal(err)
	}
	fb := filepath.Join(dir, "etcd-firstboot")
	os.WriteFile(fb, []byte("fb"), 0o755)
	s := Sources{Cluster: c, SpecBytes: spec.Example, PKIDir: dir, Firstboot: fb, FirstbootVersion: "test"}
	stamp := func() string {
		st, err := qemuInputsStamp(s, netip.Addr{}, "base.tar")
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	before := stamp()
	if _, _, err := pki.EnsureServeCert(c, dir, []string{"10.0.2.100"}, time.Now()); err != nil {
		t.Fatal(err)
	}
	if stamp() != before {
		t.Error("the release server's certificate changed the images' inputs stamp")
	}
	crt, key := pki.NodeCertPath(dir, "etcd-1", pki.KindServer)
	os.Remove(crt)
	os.Remove(key)
	if _, err := pki.Ensure(c, dir, time.Now()); err != nil {
		t.Fatal(err)
	}
	if stamp() == before {
		t.Error("a re-issued node certificate left the inputs stamp as it was")
	}
}
