package firstboot

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/etcdbake/etcdbake/internal/testcluster"
	"github.com/etcdbake/etcdbake/pki"
	"github.com/etcdbake/etcdbake/spec"
)

// fbCluster is a real etcd cluster (embed, 127.0.0.x, mutual TLS from the project's PKI)
// whose members are started the way etcd.service starts them: from the environment file
// etcd-firstboot writes.
type fbCluster struct {
	t      *testing.T
	tc     *testcluster.Cluster
	agents map[string]*Agent
	dir    string
	// configure, if set, changes each member's etcd config before it starts.
	configure func(*embed.Config)
}

func newFBCluster(t *testing.T, name string, base int) *fbCluster {
	t.Helper()
	return newFBClusterN(t, name, 3, base)
}

// newFBClusterN is newFBCluster with n members.
func newFBClusterN(t *testing.T, name string, n, base int) *fbCluster {
	t.Helper()
	c := testcluster.Spec(t, name, n, base)
	tc := testcluster.New(t, c)
	fc := &fbCluster{t: t, tc: tc, agents: map[string]*Agent{}, dir: t.TempDir()}
	for _, n := range c.Nodes {
		fc.agents[n.Name] = fc.agentFor(n)
	}
	return fc
}

func (fc *fbCluster) agentFor(n spec.Node) *Agent {
	c, dir := fc.tc.Spec, fc.tc.PKIDir
	nc := c.NodeConfigFor(n)
	nc.LocalClientURL = nc.ClientURL // test members listen on their 127.0.0.x only
	nc.DataDir = fc.tc.MemberDataDir(n.Name)
	nc.StateDir = filepath.Join(fc.dir, "state", n.Name)
	nc.RunDir = filepath.Join(fc.dir, "run", n.Name)
	nc.BootstrapEnv = filepath.Join(nc.RunDir, "etcd-bootstrap.env")
	nc.CA, _ = pki.CAPath(dir, "ca")
	nc.PeerCA, _ = pki.CAPath(dir, "peer-ca")
	nc.ServerCert, _ = pki.NodeCertPath(dir, n.Name, "server")
	nc.PeerCert, nc.PeerKey = pki.NodeCertPath(dir, n.Name, "peer")
	nc.ClientCert, nc.ClientKey = pki.NodeCertPath(dir, n.Name, "firstboot")
	nc.Time.Servers = nil // the time gate has its own tests
	return &Agent{Cfg: &nc, Logf: func(f string, a ...any) { fc.t.Logf(n.Name+": "+f, a...) }, RetryEvery: 100 * time.Millisecond, DialTimeout: 2 * time.Second, ReadyTimeout: time.Minute, RendezvousWindow: 5 * time.Second}
}

// bootEtcd starts the member as etcd.service would: only if the bootstrap env exists,
// with its state and initial cluster.
func (fc *fbCluster) bootEtcd(name string) error {
	a := fc.agents[name]
	env, err := readEnv(a.Cfg.BootstrapEnv)
	if err != nil {
		return fmt.Errorf("etcd.service would not start: %w", err)
	}
	cfg, err := fc.tc.Config(name, env["ETCD_INITIAL_CLUSTER_STATE"])
	if err != nil {
		return err
	}
	if ic := env["ETCD_INITIAL_CLUSTER"]; ic != "" {
		cfg.InitialCluster = ic
	}
	if fc.configure != nil {
		fc.configure(cfg)
	}
	return fc.tc.StartConfig(name, cfg)
}

func readEnv(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	m := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			m[k] = v
		}
	}
	return m, sc.Err()
}

// boot runs the whole boot sequence of one node: prepare, etcd, ready.
func (fc *fbCluster) boot(ctx context.Context, name string) error {
	a := fc.agents[name]
	if err := a.Prepare(ctx); err != nil {
		return fmt.Errorf("prepare: %w", err)
	}
	if err := fc.bootEtcd(name); err != nil {
		return err
	}
	return a.RunReady(ctx)
}

func (fc *fbCluster) bootAll(ctx context.Context, names ...string) {
	fc.t.Helper()
	var wg sync.WaitGroup
	errs := make([]error, len(names))
	for i, n := range names {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = fc.boot(ctx, n) }()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		fc.t.Fatal(err)
	}
}

func (fc *fbCluster) admin() *clientv3.Client {
	fc.t.Helper()
	ca, crt, key := fc.tc.ClientFiles("admin")
	a := &Agent{Cfg: &spec.NodeConfig{CA: ca, ClientCert: crt, ClientKey: key}}
	cli, err := a.client(fc.tc.Spec.ClientEndpoints())
	if err != nil {
		fc.t.Fatal(err)
	}
	fc.t.Cleanup(func() { cli.Close() })
	return cli
}

func (fc *fbCluster) members(ctx context.Context) (voters, learners map[string]uint64) {
	fc.t.Helper()
	ml, err := fc.admin().MemberList(ctx)
	if err != nil {
		fc.t.Fatal(err)
	}
	voters, learners = map[string]uint64{}, map[string]uint64{}
	for _, m := range ml.Members {
		if m.IsLearner {
			learners[m.Name] = m.ID
		} else {
			voters[m.Name] = m.ID
		}
	}
	return voters, learners
}

func (fc *fbCluster) status(name string) Status {
	fc.t.Helper()
	st, err := fc.agents[name].ReadStatus()
	if err != nil {
		fc.t.Fatal(err)
	}
	return st
}

var all = []string{"m1", "m2", "m3"}

// TestFirstbootLifecycle walks one cluster through fresh bootstrap, restart, replacement
// after disk loss, a second run of every phase, and a flannel conflict.
func TestFirstbootLifecycle(t *testing.T) {
	ctx := context.Background()
	fc := newFBCluster(t, "fb", 21)
	c := fc.tc.Spec

	// The cluster ID etcd-firstboot expects is the one etcd derives.
	step := time.Now()
	fc.bootAll(ctx, all...)
	t.Logf("fresh bootstrap of 3 concurrent members: %s", time.Since(step).Round(time.Millisecond))
	voters, learners := fc.members(ctx)
	if len(voters) != 3 || len(learners) != 0 {
		t.Fatalf("want 3 voters, got %v / learners %v", voters, learners)
	}
	resp, err := fc.admin().Get(ctx, c.Flannel.Prefix+"/config")
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("flannel config: %v %v", err, resp)
	}
	kv := resp.Kvs[0]
	if string(kv.Value) != string(c.FlannelNetworkConfig()) || kv.Version != 1 || kv.CreateRevision != kv.ModRevision {
		t.Fatalf("flannel config written more than once or wrong: %+v", kv)
	}
	created := 0
	for _, n := range all {
		st := fc.status(n)
		if st.Bootstrap.Decision != DecisionNew || st.Ready.Decision != "ready" {
			t.Errorf("%s: %+v %+v", n, st.Bootstrap, st.Ready)
		}
		if st.Ready.ClusterID != hexID(ExpectedClusterID(fc.agents[n].Cfg)) {
			t.Errorf("%s: cluster %s, etcd-firstboot expected %s", n, st.Ready.ClusterID, hexID(ExpectedClusterID(fc.agents[n].Cfg)))
		}
		if st.Flannel.Decision == "created" {
			created++
		}
		if st.CertDaysLeft["server.crt"] < 360 {
			t.Errorf("%s: cert days %v", n, st.CertDaysLeft)
		}
		if _, err := os.Stat(fc.agents[n].ReadyFlagPath()); err != nil {
			t.Errorf("%s: ready flag missing", n)
		}
	}
	if created != 1 {
		t.Fatalf("flannel config created by %d agents", created)
	}
	if _, err := fc.admin().Put(ctx, "/precious", "written before the disk loss"); err != nil {
		t.Fatal(err)
	}

	// Idempotent: running every phase again changes nothing.
	step = time.Now()
	before := snapshotFiles(t, fc.dir, fc.tc.DataDir)
	rev := kv.ModRevision
	for _, n := range all {
		a := fc.agents[n]
		if err := a.Prepare(ctx); err != nil {
			t.Fatal(err)
		}
		if st := fc.status(n); st.Bootstrap.Decision != DecisionRestart {
			t.Errorf("%s: second prepare decided %s", n, st.Bootstrap.Decision)
		}
		if err := a.RunReady(ctx); err != nil {
			t.Fatal(err)
		}
		if st := fc.status(n); st.Flannel.Decision != "present" || st.Ready.Promoted {
			t.Errorf("%s: second ready: %+v %+v", n, st.Flannel, st.Ready)
		}
	}
	after := snapshotFiles(t, fc.dir, fc.tc.DataDir)
	for p, h := range before {
		if strings.Contains(p, "/run/") { // status and env are rewritten each boot, by design
			continue
		}
		if after[p] != h {
			t.Errorf("second run changed %s", p)
		}
	}
	if resp, _ := fc.admin().Get(ctx, c.Flannel.Prefix+"/config"); resp.Kvs[0].ModRevision != rev {
		t.Error("second run rewrote the flannel config")
	}
	t.Logf("second run of every phase: %s", time.Since(step).Round(time.Millisecond))

	// Restart with data: no membership change.
	step = time.Now()
	votersBefore, _ := fc.members(ctx)
	fc.tc.Stop("m2")
	if err := fc.boot(ctx, "m2"); err != nil {
		t.Fatal(err)
	}
	if d := fc.status("m2").Bootstrap.Decision; d != DecisionRestart {
		t.Fatalf("restart with data decided %s", d)
	}
	votersAfter, _ := fc.members(ctx)
	if fmt.Sprint(votersBefore) != fmt.Sprint(votersAfter) {
		t.Fatalf("membership changed on restart: %v -> %v", votersBefore, votersAfter)
	}
	t.Logf("restart with data: %s", time.Since(step).Round(time.Millisecond))

	// Disk loss while the others run: replaced via a learner, promoted, new ID.
	step = time.Now()
	oldID := votersAfter["m3"]
	fc.tc.Stop("m3")
	if err := os.RemoveAll(fc.tc.MemberDataDir("m3")); err != nil {
		t.Fatal(err)
	}
	if err := fc.boot(ctx, "m3"); err != nil {
		t.Fatal(err)
	}
	st := fc.status("m3")
	if st.Bootstrap.Decision != DecisionReplace || st.Bootstrap.RemovedMemberID != hexID(oldID) || !st.Ready.Promoted {
		t.Fatalf("replacement: %+v %+v", st.Bootstrap, st.Ready)
	}
	voters, learners = fc.members(ctx)
	if len(voters) != 3 || len(learners) != 0 || voters["m3"] == oldID || voters["m3"] == 0 {
		t.Fatalf("after replacement: voters %v learners %v (old m3 %x)", voters, learners, oldID)
	}
	got, err := fc.admin().Get(ctx, "/precious", clientv3.WithSerializable())
	if err != nil || len(got.Kvs) != 1 {
		t.Fatalf("data written before the disk loss: %v %v", err, got)
	}
	// Read it from the replaced member itself.
	m3 := fc.memberClient("m3")
	if got, err := m3.Get(ctx, "/precious", clientv3.WithSerializable()); err != nil || len(got.Kvs) != 1 || string(got.Kvs[0].Value) != "written before the disk loss" {
		t.Fatalf("replaced member does not serve the old data: %v %v", err, got)
	}
	t.Logf("replacement after disk loss (remove, learner, promote): %s", time.Since(step).Round(time.Millisecond))

	// A different flannel config in etcd is reported, never overwritten.
	if _, err := fc.admin().Put(ctx, c.Flannel.Prefix+"/config", `{"Network":"10.50.0.0/16"}`); err != nil {
		t.Fatal(err)
	}
	if err := fc.agents["m1"].RunReady(ctx); err != nil {
		t.Fatal(err)
	}
	fl := fc.status("m1").Flannel
	if fl.Decision != "conflict" || !strings.Contains(fl.Message, "10.50.0.0/16") || !strings.Contains(fl.Message, c.Flannel.Network) {
		t.Fatalf("conflict not reported: %+v", fl)
	}
	if resp, _ := fc.admin().Get(ctx, c.Flannel.Prefix+"/config"); string(resp.Kvs[0].Value) != `{"Network":"10.50.0.0/16"}` {
		t.Fatal("existing flannel config was overwritten")
	}
	// ... unless the spec asks for it.
	fc.agents["m1"].Cfg.Flannel.Overwrite = true
	if err := fc.agents["m1"].RunReady(ctx); err != nil {
		t.Fatal(err)
	}
	if resp, _ := fc.admin().Get(ctx, c.Flannel.Prefix+"/config"); string(resp.Kvs[0].Value) != string(c.FlannelNetworkConfig()) || fc.status("m1").Flannel.Decision != "overwritten" {
		t.Fatal("flannel.overwrite did not replace the config")
	}

	// Wiped member while only one other runs: a cluster answers but there is no quorum:
	// refuses, starts nothing, never "new".
	step = time.Now()
	fc.tc.Stop("m1")
	fc.tc.Stop("m2")
	if err := os.RemoveAll(fc.tc.MemberDataDir("m2")); err != nil {
		t.Fatal(err)
	}
	if err := fc.agents["m2"].Prepare(ctx); err == nil || !strings.Contains(err.Error(), "no quorum reachable") || !strings.Contains(err.Error(), `"Restoring after losing a majority"`) {
		t.Fatalf("want a no-quorum refusal, got %v", err)
	}
	if _, err := os.Stat(fc.agents["m2"].Cfg.BootstrapEnv); !os.IsNotExist(err) {
		t.Fatal("the bootstrap env file exists after a refusal")
	}
	t.Logf("refusal with a cluster but no quorum: %s", time.Since(step).Round(time.Millisecond))

	// Wiped member while the others are stopped: refuses, starts nothing.
	step = time.Now()
	fc.tc.StopAll()
	if err := os.RemoveAll(fc.tc.MemberDataDir("m2")); err != nil {
		t.Fatal(err)
	}
	a2 := fc.agents["m2"]
	err = a2.Prepare(ctx)
	var ref *RefusalError
	if !errors.As(err, &ref) || !strings.Contains(err.Error(), "never started here") || !strings.Contains(err.Error(), "no peer answers") {
		t.Fatalf("want a refusal, got %v", err)
	}
	if _, err := os.Stat(a2.Cfg.BootstrapEnv); !os.IsNotExist(err) {
		t.Fatal("the bootstrap env file exists after a refusal: etcd.service could start")
	}
	if err := fc.bootEtcd("m2"); err == nil {
		t.Fatal("etcd started after a refusal")
	}
	if st := fc.status("m2"); st.Bootstrap.Decision != DecisionRefuse {
		t.Fatalf("status: %+v", st.Bootstrap)
	}
	t.Logf("refusal with no quorum reachable: %s", time.Since(step).Round(time.Millisecond))
}

func (fc *fbCluster) memberClient(name string) *clientv3.Client {
	fc.t.Helper()
	ca, crt, key := fc.tc.ClientFiles("admin")
	n, _ := fc.tc.Spec.NodeByName(name)
	a := &Agent{Cfg: &spec.NodeConfig{CA: ca, ClientCert: crt, ClientKey: key}}
	tc, err := a.tlsConfig()
	if err != nil {
		fc.t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{fc.tc.Spec.ClientURL(n)}, TLS: tc, DialTimeout: 3 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		fc.t.Fatal(err)
	}
	fc.t.Cleanup(func() { cli.Close() })
	return cli
}

// snapshotFiles maps every regular file under the dirs to its size and mtime.
func snapshotFiles(t *testing.T, dirs ...string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, d := range dirs {
		filepath.Walk(d, func(p string, info os.FileInfo, err error) error {
			if err == nil && info.Mode().IsRegular() && !strings.Contains(p, "/member/") {
				b, _ := os.ReadFile(p)
				out[p] = fmt.Sprintf("%x", b)
			}
			return nil
		})
	}
	return out
}

// TestForeignDataDirRefused points a node at a data dir made by a real member of another
// cluster: it refuses, names both clusters, and deletes nothing.
func TestForeignDataDirRefused(t *testing.T) {
	ctx := context.Background()
	other := newFBCluster(t, "other", 31)
	other.bootAll(ctx, all...)
	other.tc.StopAll()

	fc := newFBCluster(t, "fb2", 34)
	a := fc.agents["m1"]
	a.Cfg.DataDir = other.tc.MemberDataDir("m1")
	before := snapshotFiles(t, a.Cfg.DataDir)
	var walBefore []string
	filepath.Walk(a.Cfg.DataDir, func(p string, _ os.FileInfo, _ error) error { walBefore = append(walBefore, p); return nil })

	err := a.Prepare(ctx)
	var ref *RefusalError
	if !errors.As(err, &ref) {
		t.Fatalf("want a refusal, got %v", err)
	}
	otherID := hexID(ExpectedClusterID(other.agents["m1"].Cfg))
	for _, want := range []string{a.Cfg.DataDir, otherID, hexID(ExpectedClusterID(a.Cfg)), "never deleted"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("refusal does not mention %q: %v", want, err)
		}
	}
	var walAfter []string
	filepath.Walk(a.Cfg.DataDir, func(p string, _ os.FileInfo, _ error) error { walAfter = append(walAfter, p); return nil })
	if fmt.Sprint(walBefore) != fmt.Sprint(walAfter) || fmt.Sprint(before) != fmt.Sprint(snapshotFiles(t, a.Cfg.DataDir)) {
		t.Fatal("the foreign data dir was changed")
	}
	if _, err := os.Stat(a.Cfg.BootstrapEnv); !os.IsNotExist(err) {
		t.Fatal("bootstrap env written despite the refusal")
	}
}

// TestExpectedClusterIDMatchesEtcd checks the derivation against a cluster etcd made.
func TestExpectedClusterIDMatchesEtcd(t *testing.T) {
	c := testcluster.Spec(t, "cid", 3, 37)
	tc := testcluster.StartAll(t, c)
	ca, crt, key := tc.ClientFiles("admin")
	a := &Agent{Cfg: &spec.NodeConfig{CA: ca, ClientCert: crt, ClientKey: key}}
	cli, err := a.client(c.ClientEndpoints())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ml, err := cli.MemberList(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	nc := c.NodeConfigFor(c.Nodes[0])
	if got, want := ml.Header.ClusterId, ExpectedClusterID(&nc); got != want {
		t.Fatalf("etcd's cluster ID %x, derived %x", got, want)
	}
	for _, m := range ml.Members {
		n, _ := c.NodeByName(m.Name)
		if m.ID != StaticMemberID(c.PeerURL(n), c.Etcd.Token) {
			t.Errorf("%s: member ID %x, derived %x", m.Name, m.ID, StaticMemberID(c.PeerURL(n), c.Etcd.Token))
		}
	}
}

// TestMajorityWipedNeverNew is B10 in small: two of three members lose their disks (data
// dir and bootstrap marker). While the third, which kept its data, runs alone they see its
// cluster without a quorum and refuse, pointing to the restore procedure; while it is
// down too they see each other fresh at the rendezvous, but never the third, so neither
// starts a new cluster.
func TestMajorityWipedNeverNew(t *testing.T) {
	ctx := context.Background()
	fc := newFBCluster(t, "fbw", 44)
	fc.bootAll(ctx, all...)
	fc.tc.Stop("m1")
	fc.tc.Stop("m2")
	for _, n := range []string{"m1", "m2"} {
		a := fc.agents[n]
		if err := os.RemoveAll(a.Cfg.DataDir); err != nil {
			t.Fatal(err)
		}
		if err := os.RemoveAll(a.Cfg.StateDir); err != nil {
			t.Fatal(err)
		}
	}
	if err := fc.agents["m1"].Prepare(ctx); err == nil || !strings.Contains(err.Error(), "no quorum reachable") {
		t.Fatalf("m1 with only the survivor up: want a no-quorum refusal, got %v", err)
	}

	fc.tc.StopAll()
	var wg sync.WaitGroup
	errs := map[string]error{}
	var mu sync.Mutex
	for _, n := range []string{"m1", "m2"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := fc.agents[n].Prepare(ctx)
			mu.Lock()
			errs[n] = err
			mu.Unlock()
		}()
	}
	wg.Wait()
	for _, n := range []string{"m1", "m2"} {
		err := errs[n]
		var ref *RefusalError
		if !errors.As(err, &ref) || !strings.Contains(err.Error(), ", and m3 did not answer the bootstrap rendezvous") || !strings.Contains(err.Error(), "Restoring after losing a majority") {
			t.Errorf("%s with the survivor down: want a rendezvous refusal naming m3, got %v", n, err)
		}
		if _, err := os.Stat(fc.agents[n].Cfg.BootstrapEnv); !os.IsNotExist(err) {
			t.Errorf("%s: the bootstrap env exists after a refusal", n)
		}
		if st := fc.status(n); st.Bootstrap.Decision != DecisionRefuse {
			t.Errorf("%s: status %+v", n, st.Bootstrap)
		}
	}
}

// TestPeerViewRefusedIsNoAnswerAtOnce: at a cluster's first boot no peer runs etcd yet.
// A refused connection is "no answer" at once instead of after the dial timeout (etcd's
// client retries refused connections until its deadline: issue 17), and a peer that runs
// etcd is still asked and answers.
func TestPeerViewRefusedIsNoAnswerAtOnce(t *testing.T) {
	fc := newFBCluster(t, "fbr", 141)
	a := fc.agents["m1"]
	var mu sync.Mutex
	var logged []string
	a.Logf = func(f string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		logged = append(logged, fmt.Sprintf(f, args...))
	}
	// A dial timeout longer than the test's context: waiting it out would fail the test.
	a.DialTimeout = 10 * time.Minute
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	view, err := a.peerView(ctx)
	if err != nil || view != nil {
		t.Fatalf("no peer runs etcd: want no view and no error, got %+v, %v", view, err)
	}
	if ctx.Err() != nil {
		t.Fatalf("peerView waited out its context (%v): a refused connection should end the wait", ctx.Err())
	}
	mu.Lock()
	refused := 0
	for _, l := range logged {
		if strings.Contains(l, "no answer") && strings.Contains(l, "connection refused") {
			refused++
		}
	}
	mu.Unlock()
	if refused != 2 {
		t.Fatalf("want both peers logged as refusing, got %q", logged)
	}

	a.Logf = func(string, ...any) {}
	fc.bootAll(ctx, all...)
	view, err = a.peerView(ctx)
	if err != nil || view == nil {
		t.Fatalf("the peers run etcd: want their view, got %+v, %v", view, err)
	}
	if got, want := view.clusterID, ExpectedClusterID(a.Cfg); got != want {
		t.Fatalf("peer view cluster %x, want %x", got, want)
	}
}
