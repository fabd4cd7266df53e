// Package testcluster starts real etcd members (go.etcd.io/etcd/server/v3/embed) on
// 127.0.0.x addresses with certificates from etcdbake's own pki package, for tests.
//
// Loopback addresses are rejected by the user-facing spec validation (other machines could
// not reach them), so the test spec is built in code here and never validated as a user's
// spec would be: this is the test seam, and the validation stays strict.
package testcluster

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/etcdbake/etcdbake/pki"
	"github.com/etcdbake/etcdbake/spec"
)

// Cluster is a running test cluster.
type Cluster struct {
	Spec    *spec.Cluster
	PKIDir  string
	DataDir string // parent of each member's data dir
	mu      sync.Mutex
	members map[string]*embed.Etcd
}

// Spec returns a cluster spec for n members on 127.0.0.<base+i> with free ports, with
// defaults applied. It is not validated (loopback addresses are for tests only).
func Spec(t testing.TB, name string, n, base int) *spec.Cluster {
	t.Helper()
	c := &spec.Cluster{APIVersion: spec.APIVersion, Kind: spec.Kind, Name: name}
	for i := 0; i < n; i++ {
		c.Nodes = append(c.Nodes, spec.Node{Name: fmt.Sprintf("m%d", i+1), Address: fmt.Sprintf("127.0.0.%d/8", base+i)})
	}
	c.Etcd.Version = "v3.6.16"
	c.Etcd.ClientPort = freePort(t, fmt.Sprintf("127.0.0.%d", base))
	c.Etcd.PeerPort = freePort(t, fmt.Sprintf("127.0.0.%d", base))
	c.Flannel.Version = "v0.28.7"
	c.Flannel.Network = "10.244.0.0/16"
	c.Time.Servers = []string{"127.0.0.1"}
	c.ApplyDefaults()
	c.Etcd.HeartbeatInterval = spec.Dur(50 * time.Millisecond)
	c.Etcd.ElectionTimeout = spec.Dur(500 * time.Millisecond)
	return c
}

// freePort asks the kernel for a free port on the first address; members on the other
// addresses use the same number, each on its own IP.
func freePort(t testing.TB, ip string) int {
	t.Helper()
	l, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatalf("no free port on %s: %v", ip, err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// New issues the PKI for c under a temp dir; members are started with Start.
func New(t testing.TB, c *spec.Cluster) *Cluster {
	t.Helper()
	dir := t.TempDir()
	tc := &Cluster{Spec: c, PKIDir: filepath.Join(dir, "pki"), DataDir: filepath.Join(dir, "data"), members: map[string]*embed.Etcd{}}
	if _, err := pki.Ensure(c, tc.PKIDir, time.Now()); err != nil {
		t.Fatalf("pki: %v", err)
	}
	t.Cleanup(tc.StopAll)
	return tc
}

// StartAll starts every member concurrently as a new cluster and waits until each is ready.
func StartAll(t testing.TB, c *spec.Cluster) *Cluster {
	t.Helper()
	tc := New(t, c)
	var wg sync.WaitGroup
	errs := make(chan error, len(c.Nodes))
	for _, n := range c.Nodes {
		wg.Add(1)
		go func(n spec.Node) {
			defer wg.Done()
			if err := tc.Start(n.Name, "new"); err != nil {
				errs <- err
			}
		}(n)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return tc
}

// MemberDataDir is where member name keeps its data.
func (tc *Cluster) MemberDataDir(name string) string { return filepath.Join(tc.DataDir, name) }

// Config builds the embed config of a member as etcd.env would configure it on a node.
func (tc *Cluster) Config(name, state string) (*embed.Config, error) {
	c := tc.Spec
	n, ok := c.NodeByName(name)
	if !ok {
		return nil, fmt.Errorf("no member %s", name)
	}
	cfg := embed.NewConfig()
	cfg.Name = name
	cfg.Dir = tc.MemberDataDir(name)
	cu, _ := url.Parse(c.ClientURL(n))
	pu, _ := url.Parse(c.PeerURL(n))
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.ListenMetricsUrls = nil
	cfg.InitialCluster = c.InitialCluster()
	cfg.InitialClusterToken = c.Etcd.Token
	cfg.ClusterState = state
	cfg.TickMs = uint(c.Etcd.HeartbeatInterval.D.Milliseconds())
	cfg.ElectionMs = uint(c.Etcd.ElectionTimeout.D.Milliseconds())
	ca, _ := pki.CAPath(tc.PKIDir, "ca")
	peerCA, _ := pki.CAPath(tc.PKIDir, "peer-ca")
	scrt, skey := pki.NodeCertPath(tc.PKIDir, name, "server")
	pcrt, pkey := pki.NodeCertPath(tc.PKIDir, name, "peer")
	cfg.ClientTLSInfo = transport.TLSInfo{CertFile: scrt, KeyFile: skey, TrustedCAFile: ca, ClientCertAuth: true}
	// On one machine every member's outgoing peer connection comes from 127.0.0.1, not
	// from its own 127.0.0.x, so etcd's check of the caller's IP against its peer
	// certificate's SANs would fail (and fall back to DNS lookups of the member names).
	// On real nodes the source address is the node's address; only this test seam skips it.
	cfg.PeerTLSInfo = transport.TLSInfo{CertFile: pcrt, KeyFile: pkey, TrustedCAFile: peerCA, ClientCertAuth: true, SkipClientSANVerify: true}
	cfg.TlsMinVersion = "TLS1.3"
	cfg.LogLevel = "error"
	cfg.LogOutputs = []string{"stderr"}
	return cfg, nil
}

// Start starts one member with the given initial cluster state and waits until it is ready.
func (tc *Cluster) Start(name, state string) error {
	cfg, err := tc.Config(name, state)
	if err != nil {
		return err
	}
	return tc.StartConfig(name, cfg)
}

// StartConfig starts one member from a prepared config.
func (tc *Cluster) StartConfig(name string, cfg *embed.Config) error {
	if err := os.MkdirAll(tc.DataDir, 0o700); err != nil {
		return err
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("starting %s: %w", name, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return fmt.Errorf("%s failed: %w", name, err)
	case <-time.After(60 * time.Second):
		e.Close()
		return fmt.Errorf("%s not ready after 60s", name)
	}
	tc.mu.Lock()
	tc.members[name] = e
	tc.mu.Unlock()
	return nil
}

// Stop stops one member (its data stays).
func (tc *Cluster) Stop(name string) {
	tc.mu.Lock()
	e := tc.members[name]
	delete(tc.members, name)
	tc.mu.Unlock()
	if e != nil {
		e.Close()
	}
}

// StopAll stops every running member.
func (tc *Cluster) StopAll() {
	tc.mu.Lock()
	names := make([]string, 0, len(tc.members))
	for n := range tc.members {
		names = append(names, n)
	}
	tc.mu.Unlock()
	for _, n := range names {
		tc.Stop(n)
	}
}

// ClientFiles returns CA, cert and key paths of a cluster-wide client certificate.
func (tc *Cluster) ClientFiles(client string) (ca, crt, key string) {
	ca, _ = pki.CAPath(tc.PKIDir, "ca")
	crt, key = pki.ClientCertPath(tc.PKIDir, client)
	return ca, crt, key
}

// ClientTLS is the client side of mutual TLS with a cluster-wide client certificate (etcd's
// own transport package builds it, as etcdctl does).
func (tc *Cluster) ClientTLS(t testing.TB, client string) *tls.Config {
	t.Helper()
	ca, crt, key := tc.ClientFiles(client)
	cfg, err := transport.TLSInfo{CertFile: crt, KeyFile: key, TrustedCAFile: ca}.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// WriteRelease writes a release under dir/<id> as imagebuild lays it out, as far as a
// rollout reads it: spec.json (c as JSON) and manifest.json (id, cluster, created, the
// etcd binary at version etcd, a node entry per spec node). Its spec hash names no real
// spec file, so a CLI comparing it with the spec it was given sees another revision.
func WriteRelease(t testing.TB, dir, id string, c *spec.Cluster, etcd string, created time.Time) {
	t.Helper()
	rdir := filepath.Join(dir, id)
	if err := os.MkdirAll(rdir, 0o755); err != nil {
		t.Fatal(err)
	}
	sb, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rdir, spec.ReleaseSpecName), sb, 0o644); err != nil {
		t.Fatal(err)
	}
	m := spec.ReleaseManifest{ID: id, Cluster: c.Name, Created: created, SpecSHA256: "0123",
		Spec:     spec.ReleaseFile{Path: spec.ReleaseSpecName, Size: int64(len(sb))},
		Binaries: []spec.ReleaseBinary{{Name: "etcd", Version: etcd}, {Name: "flanneld", Version: "v0.28.7"}}, Nodes: map[string]spec.ReleaseNode{}}
	for _, n := range c.Nodes {
		m.Nodes[n.Name] = spec.ReleaseNode{Node: spec.ReleaseFile{Path: "nodes/" + n.Name + "/node.ext4"}}
	}
	mb, _ := json.Marshal(m)
	if err := os.WriteFile(filepath.Join(rdir, spec.ReleaseManifestName), mb, 0o644); err != nil {
		t.Fatal(err)
	}
}
