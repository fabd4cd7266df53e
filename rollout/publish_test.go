package rollout

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/etcdbake/etcdbake/internal/testcluster"
	"github.com/etcdbake/etcdbake/spec"
	"github.com/etcdbake/etcdbake/status"
)

func putJSON(t *testing.T, cli *clientv3.Client, key string, v any) {
	t.Helper()
	b, _ := json.Marshal(v)
	if _, err := cli.Put(context.Background(), key, string(b)); err != nil {
		t.Fatal(err)
	}
}

func getDesired(t *testing.T, cli *clientv3.Client) (*spec.RolloutDesired, int64) {
	t.Helper()
	resp, err := cli.Get(context.Background(), spec.RolloutDesiredKey)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return nil, 0
	}
	var d spec.RolloutDesired
	if err := json.Unmarshal(resp.Kvs[0].Value, &d); err != nil {
		t.Fatalf("desired %s: %v", resp.Kvs[0].Value, err)
	}
	return &d, resp.Kvs[0].ModRevision
}

// TestRolloutPublish runs the checks and the publication against a real 3-member etcd
// with TLS: the desired JSON and its generation, a concurrent publication refused, the
// halt ended by a publication and by Resume, and refusals (a moved member, an etcd
// downgrade, a node without a record, a running release not on this machine) that write
// nothing.
func TestRolloutPublish(t *testing.T) {
	c := testcluster.Spec(t, "roll", 3, 121)
	tc := testcluster.StartAll(t, c)
	ca, crt, key := tc.ClientFiles("admin")
	tlsCfg, err := status.TLSConfig(ca, crt, key)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.ClientEndpoints(), TLS: tlsCfg, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx := context.Background()

	// The members' versions, as the embedded etcd reports them.
	versions := map[string]string{}
	for _, n := range c.Nodes {
		st, err := cli.Status(ctx, c.ClientURL(n))
		if err != nil {
			t.Fatal(err)
		}
		versions[n.Name] = st.Version
	}

	dir := t.TempDir()
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	testcluster.WriteRelease(t, dir, "rel000000001", c, "v3.6.16", t0)
	testcluster.WriteRelease(t, dir, "rel000000002", c, "v3.6.16", t0.Add(time.Hour))
	moved := *c
	moved.Nodes = append([]spec.Node(nil), c.Nodes...)
	moved.Nodes[1].Address = "127.0.0.200/8"
	testcluster.WriteRelease(t, dir, "relmoved0001", &moved, "v3.6.16", t0.Add(2*time.Hour))
	testcluster.WriteRelease(t, dir, "reldown00001", c, "v3.6.10", t0.Add(3*time.Hour))

	if id, err := NewestRelease(dir); err != nil || id != "reldown00001" {
		t.Errorf("newest release: %q, %v", id, err)
	}
	if _, err := LoadRelease(dir, "nosuchrelease"); err == nil || !strings.Contains(err.Error(), "not in "+dir) || !strings.Contains(err.Error(), "etcdbake image") {
		t.Errorf("unknown release: %v", err)
	}

	check := func(id string) (*Plan, error) {
		t.Helper()
		r, err := LoadRelease(dir, id)
		if err != nil {
			t.Fatal(err)
		}
		v, err := ReadView(ctx, cli)
		if err != nil {
			t.Fatal(err)
		}
		return Check(CheckOptions{Cluster: c, ReleasesDir: dir, Release: r, URL: "https://h:1/v1/releases/" + id, Versions: versions, View: v, Now: t0})
	}

	// No records yet: refused, naming the nodes.
	if _, err := check("rel000000002"); err == nil || !strings.Contains(err.Error(), "node m1, m2, m3 published no boot record") {
		t.Errorf("without records: %v", err)
	}
	for i, n := range c.Nodes {
		entry := "etcdbake-000000-a.conf"
		if i == 2 {
			entry = "etcdbake-000004-b.conf" // booted generation 4 before
		}
		putJSON(t, cli, spec.NodeRecordKey(n.Name), spec.NodeRecord{Node: n.Name, Slot: "a", Release: "rel000000001", Entry: entry, State: "good"})
	}

	// A moved member: CheckChange's reason, nothing written.
	_, err = check("relmoved0001")
	var ce *ChangeError
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), "nodes[1].address") || !strings.Contains(err.Error(), "run by m1, m2, m3") {
		t.Errorf("moved member: %v", err)
	}
	// A downgrade of etcd: CheckUpgrade's reason.
	if _, err := check("reldown00001"); err == nil || !strings.Contains(err.Error(), "downgrade refused") {
		t.Errorf("etcd downgrade: %v", err)
	}
	if d, _ := getDesired(t, cli); d != nil {
		t.Fatalf("a refused release was published: %+v", d)
	}

	// Publish: generation above every booted one (m3 booted 4), the desired JSON as planned.
	p, err := check("rel000000002")
	if err != nil {
		t.Fatal(err)
	}
	if p.Unchanged || strings.Join(p.Change, ",") != "m1,m2,m3" || p.Desired.Generation != 5 {
		t.Errorf("plan: %+v", p)
	}
	if err := Publish(ctx, cli, p); err != nil {
		t.Fatal(err)
	}
	want := spec.RolloutDesired{Generation: 5, Release: "rel000000002", URL: "https://h:1/v1/releases/rel000000002", Published: t0}
	if d, _ := getDesired(t, cli); d == nil || *d != want {
		t.Errorf("desired %+v, want %+v", d, want)
	}

	// A publication whose desired key changed after it was read: refused, nothing written.
	p2, err := check("rel000000002")
	if err != nil {
		t.Fatal(err)
	}
	if p2.Desired.Generation != 6 {
		t.Errorf("next generation %d, want 6", p2.Desired.Generation)
	}
	other := spec.RolloutDesired{Generation: 6, Release: "rel000000002", URL: "https://other/", Published: t0}
	putJSON(t, cli, spec.RolloutDesiredKey, other)
	_, rev := getDesired(t, cli)
	if err := Publish(ctx, cli, p2); !errors.Is(err, ErrConcurrent) {
		t.Errorf("publication over a concurrent one: %v", err)
	}
	if d, r := getDesired(t, cli); d == nil || *d != other || r != rev {
		t.Errorf("after the refused publication: desired %+v at %d, want %+v at %d", d, r, other, rev)
	}

	// A halt: a publication ends it, in the same transaction.
	halt := spec.RolloutHalt{Node: "m2", Release: "rel000000002", Generation: 6, Reason: "verify-boot failed: etcd not ready", At: t0}
	putJSON(t, cli, spec.RolloutHaltKey, halt)
	p3, err := check("rel000000002")
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := ReadView(ctx, cli); v.Halt == nil || *v.Halt != halt {
		t.Errorf("view's halt: %+v", v.Halt)
	}
	if err := Publish(ctx, cli, p3); err != nil {
		t.Fatal(err)
	}
	if d, _ := getDesired(t, cli); d == nil || d.Generation != 7 {
		t.Errorf("desired after the halt: %+v", d)
	}
	if v, _ := ReadView(ctx, cli); v.Halt != nil {
		t.Errorf("the publication left the halt: %+v", v.Halt)
	}

	// Resume deletes the halt and says what it was; without one it says none.
	putJSON(t, cli, spec.RolloutHaltKey, halt)
	if h, err := Resume(ctx, cli); err != nil || h == nil || *h != halt {
		t.Errorf("resume: %+v, %v", h, err)
	}
	if h, err := Resume(ctx, cli); err != nil || h != nil {
		t.Errorf("resume without a halt: %+v, %v", h, err)
	}

	// Every node runs the release: nothing to publish.
	for _, n := range c.Nodes {
		putJSON(t, cli, spec.NodeRecordKey(n.Name), spec.NodeRecord{Node: n.Name, Slot: "b", Release: "rel000000002", Entry: "etcdbake-000007-b.conf", State: "good"})
	}
	if p, err := check("rel000000002"); err != nil || !p.Unchanged {
		t.Errorf("the release every node runs: %+v, %v", p, err)
	} else if err := Publish(ctx, cli, p); err == nil {
		t.Error("an unchanged plan was published")
	}
	// ... unless another release is desired: publishing this one replaces it (a way back).
	putJSON(t, cli, spec.RolloutDesiredKey, spec.RolloutDesired{Generation: 8, Release: "rel000000001"})
	if p, err := check("rel000000002"); err != nil || p.Unchanged || len(p.Change) != 0 || p.Desired.Generation != 9 {
		t.Errorf("the release every node runs while another is desired: %+v, %v", p, err)
	}
	// A node running a release that is not on this machine: refused, naming the directory.
	putJSON(t, cli, spec.NodeRecordKey("m2"), spec.NodeRecord{Node: "m2", Slot: "a", Release: "gone00000000", Entry: "etcdbake-000001-a.conf"})
	if _, err := check("rel000000001"); err == nil || !strings.Contains(err.Error(), "node m2 runs release gone00000000") || !strings.Contains(err.Error(), "not in "+dir) {
		t.Errorf("running release unknown here: %v", err)
	}
}

// TestRolloutWait: Wait returns once every node's record names the release (with its
// state done where it published one), and with the reason when the rollout halts.
func TestRolloutWait(t *testing.T) {
	c := testcluster.Spec(t, "wait", 1, 131)
	tc := testcluster.StartAll(t, c)
	ca, crt, key := tc.ClientFiles("admin")
	tlsCfg, _ := status.TLSConfig(ca, crt, key)
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.ClientEndpoints(), TLS: tlsCfg, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx := context.Background()
	d := spec.RolloutDesired{Generation: 3, Release: "new", URL: "https://h/"}
	putJSON(t, cli, spec.RolloutDesiredKey, d)
	putJSON(t, cli, spec.NodeRecordKey("m1"), spec.NodeRecord{Node: "m1", Release: "old"})
	putJSON(t, cli, spec.RolloutNodeKey("m1"), spec.RolloutNode{Node: "m1", Generation: 3, Release: "new", State: spec.RolloutStaging})

	// Not done: the bound ends the wait.
	wctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	err = Wait(wctx, cli, d, []string{"m1"}, 50*time.Millisecond, func(*View) {})
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("wait while staging: %v", err)
	}
	// Runs it but still verifying: not done either.
	putJSON(t, cli, spec.NodeRecordKey("m1"), spec.NodeRecord{Node: "m1", Release: "new"})
	putJSON(t, cli, spec.RolloutNodeKey("m1"), spec.RolloutNode{Node: "m1", Generation: 3, Release: "new", State: spec.RolloutVerifying})
	wctx, cancel = context.WithTimeout(ctx, 300*time.Millisecond)
	err = Wait(wctx, cli, d, []string{"m1"}, 50*time.Millisecond, func(*View) {})
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("wait while verifying: %v", err)
	}
	// Done.
	go func() {
		time.Sleep(200 * time.Millisecond)
		putJSON(t, cli, spec.RolloutNodeKey("m1"), spec.RolloutNode{Node: "m1", Generation: 3, Release: "new", State: spec.RolloutDone})
	}()
	views := 0
	if err := Wait(ctx, cli, d, []string{"m1"}, 50*time.Millisecond, func(*View) { views++ }); err != nil || views < 2 {
		t.Errorf("wait until done: %v after %d views", err, views)
	}
	// A halt ends the wait with its reason.
	putJSON(t, cli, spec.RolloutHaltKey, spec.RolloutHalt{Node: "m1", Release: "new", Generation: 3, Reason: "flannel lease lost"})
	if err := Wait(ctx, cli, d, []string{"m1"}, 50*time.Millisecond, func(*View) {}); err == nil || !strings.Contains(err.Error(), "halted: node m1") || !strings.Contains(err.Error(), "flannel lease lost") {
		t.Errorf("wait on a halt: %v", err)
	}
}

func TestEntryGeneration(t *testing.T) {
	for in, want := range map[string]int{"etcdbake-000003-b+0-1.conf": 3, "etcdbake-000000-a.conf": 0, "other.conf": -1, "": -1} {
		if got := EntryGeneration(in); got != want {
			t.Errorf("%q: %d, want %d", in, got, want)
		}
	}
}
