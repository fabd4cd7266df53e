package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/etcdbake/etcdbake/internal/testcluster"
	"github.com/etcdbake/etcdbake/rollout"
	"github.com/etcdbake/etcdbake/spec"
)

// TestRolloutCommands runs `etcdbake rollout`, `rollout status` and `rollout resume`
// against a real 3-member etcd with TLS (embedded, on loopback: --endpoints) whose
// members carry the example spec's names, with the admin certificate from OUT/pki.
func TestRolloutCommands(t *testing.T) {
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	c, tc, out, specPath, ex := demoCluster(t, now, 141)
	rels := filepath.Join(out, "releases")
	t0 := now.Add(-24 * time.Hour)
	testcluster.WriteRelease(t, rels, "rel1", ex, "v3.6.16", t0)
	moved := *ex
	moved.Nodes = append([]spec.Node(nil), ex.Nodes...)
	moved.Nodes[1].Address = "10.88.0.22/24"
	testcluster.WriteRelease(t, rels, "relmoved", &moved, "v3.6.16", t0.Add(time.Hour))
	testcluster.WriteRelease(t, rels, "reldown", ex, "v3.6.9", t0.Add(2*time.Hour))
	testcluster.WriteRelease(t, rels, "rel2", ex, "v3.6.16", t0.Add(3*time.Hour))

	cli := adminClient(t, tc)
	ctx := context.Background()
	put := func(key string, v any) {
		t.Helper()
		b, _ := json.Marshal(v)
		if _, err := cli.Put(ctx, key, string(b)); err != nil {
			t.Fatal(err)
		}
	}
	desired := func() (*spec.RolloutDesired, int64) {
		t.Helper()
		resp, err := cli.Get(ctx, spec.RolloutDesiredKey)
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Kvs) == 0 {
			return nil, 0
		}
		var d spec.RolloutDesired
		if err := json.Unmarshal(resp.Kvs[0].Value, &d); err != nil {
			t.Fatal(err)
		}
		return &d, resp.Kvs[0].ModRevision
	}
	for _, n := range c.Nodes {
		put(spec.NodeRecordKey(n.Name), spec.NodeRecord{Node: n.Name, Slot: "a", Release: "rel1", Entry: "etcdbake-000000-a.conf", State: "good"})
	}
	eps := strings.Join(c.ClientEndpoints(), ",")
	roll := func(args ...string) (string, string, error) {
		t.Helper()
		return run(t, now, append([]string{"rollout", "-f", specPath, "--out", out, "--endpoints", eps}, args...)...)
	}
	const base = "https://10.88.0.1:8443"

	// Refusals: each says why, and nothing is published.
	for _, tt := range []struct {
		args []string
		want []string
	}{
		{nil, []string{"--url is required", "etcdbake serve --release-listen"}},
		{[]string{"--url", "http://10.88.0.1:8443"}, []string{"--url http://10.88.0.1:8443: want https://HOST:PORT"}},
		{[]string{"--release", "nosuch", "--url", base}, []string{"release nosuch is not in " + rels, "etcdbake image"}},
		{[]string{"--release", "relmoved", "--url", base}, []string{"nothing published", "cannot replace release rel1 (run by etcd-1, etcd-2, etcd-3)", `nodes[1].address: "10.88.0.12/24" -> "10.88.0.22/24"`}},
		{[]string{"--release", "reldown", "--url", base}, []string{"nothing published", "downgrade refused", "etcd-1 runs 3.6.16"}},
	} {
		_, _, err := roll(tt.args...)
		for _, w := range tt.want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("rollout %v: %v, want %q in the error", tt.args, err, w)
			}
		}
		if d, _ := desired(); d != nil {
			t.Fatalf("rollout %v published %+v", tt.args, d)
		}
	}

	// The newest release is published, generation 1, with the URL of the release server.
	stdout, stderr, err := roll("--url", base)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stderr, "release rel2 was built from another revision of "+specPath) {
		t.Errorf("no note that the release is from another spec revision:\n%s", stderr)
	}
	want := spec.RolloutDesired{Generation: 1, Release: "rel2", URL: base + "/v1/releases/rel2", Published: now}
	if d, _ := desired(); d == nil || *d != want {
		t.Errorf("desired %+v, want %+v", d, want)
	}
	for _, w := range []string{"published release rel2 (etcd v3.6.16), generation 1, from " + want.URL,
		"nodes to take it, one at a time: etcd-1 (runs rel1), etcd-2 (runs rel1), etcd-3 (runs rel1)"} {
		if !strings.Contains(stdout, w) {
			t.Errorf("rollout output lacks %q:\n%s", w, stdout)
		}
	}

	// status: the desired release, the halt, the lock and a row per node.
	put(spec.RolloutHaltKey, spec.RolloutHalt{Node: "etcd-2", Release: "rel2", Generation: 1, Reason: "verify-boot failed: etcd not ready", At: now.Add(-time.Minute)})
	put(spec.RolloutNodeKey("etcd-1"), spec.RolloutNode{Node: "etcd-1", Generation: 1, Release: "rel2", Staged: "rel2", State: spec.RolloutWaiting, Updated: now.Add(-30 * time.Second)})
	put(spec.RolloutNodeKey("etcd-2"), spec.RolloutNode{Node: "etcd-2", Generation: 1, Release: "rel2", State: spec.RolloutRolledBack, Error: "verify-boot failed: etcd not ready", Updated: now.Add(-time.Minute)})
	lease, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, spec.RolloutLockPrefix+"x", "", clientv3.WithLease(lease.ID)); err != nil {
		t.Fatal(err)
	}
	stdout, _, err = roll("status")
	if err != nil {
		t.Fatalf("rollout status while halted: %v", err)
	}
	for _, w := range []string{
		"desired: release rel2, generation 1, published 2026-12-03T12:00:00Z (0s ago), from " + want.URL,
		"HALTED by etcd-2 (release rel2, generation 1) 1m0s ago: verify-boot failed: etcd not ready",
		fmt.Sprintf("reboot lock: held by lease %x", int64(lease.ID)),
	} {
		if !strings.Contains(stdout, w) {
			t.Errorf("rollout status lacks %q:\n%s", w, stdout)
		}
	}
	for _, re := range []string{
		`(?m)^NODE +SLOT +RELEASE +STAGED +STATE +UPDATED +ERROR$`,
		`(?m)^etcd-1 +a +rel1 +rel2 +waiting for lock +30s ago *$`,
		`(?m)^etcd-2 +a +rel1 +- +rolled back +1m0s ago +verify-boot failed: etcd not ready$`,
		`(?m)^etcd-3 +a +rel1 +- +- +- *$`,
	} {
		if !regexp.MustCompile(re).MatchString(stdout) {
			t.Errorf("rollout status lacks a line matching %s:\n%s", re, stdout)
		}
	}
	stdout, _, err = roll("status", "-o", "json")
	var v rollout.View
	if err != nil || json.Unmarshal([]byte(stdout), &v) != nil || v.Halt == nil || v.Halt.Node != "etcd-2" || v.Desired == nil || v.Desired.Release != "rel2" ||
		v.Nodes["etcd-1"].State != spec.RolloutWaiting || v.Records["etcd-3"].Release != "rel1" {
		t.Errorf("rollout status -o json: %v\n%s", err, stdout)
	}

	// resume: deletes the halt, saying what it was; then there is none.
	stdout, _, err = roll("resume")
	if err != nil || !strings.Contains(stdout, "resumed: removed the halt set by etcd-2 (release rel2, generation 1)") || !strings.Contains(stdout, "verify-boot failed: etcd not ready") {
		t.Errorf("rollout resume: %v\n%s", err, stdout)
	}
	if resp, _ := cli.Get(ctx, spec.RolloutHaltKey); resp == nil || len(resp.Kvs) != 0 {
		t.Errorf("the halt is still there after resume")
	}
	if stdout, _, err = roll("resume"); err != nil || !strings.Contains(stdout, "not halted") {
		t.Errorf("rollout resume without a halt: %v\n%s", err, stdout)
	}

	// A publication ends a halt, and --wait follows the nodes until each runs the release.
	put(spec.RolloutHaltKey, spec.RolloutHalt{Node: "etcd-2", Release: "rel2", Generation: 1, Reason: "boom"})
	testcluster.WriteRelease(t, rels, "rel3", ex, "v3.6.16", t0.Add(4*time.Hour))
	go func() {
		for {
			if d, _ := desired(); d != nil && d.Generation == 2 {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		for _, n := range c.Nodes {
			put(spec.RolloutNodeKey(n.Name), spec.RolloutNode{Node: n.Name, Generation: 2, Release: "rel3", State: spec.RolloutStaging})
		}
		time.Sleep(2500 * time.Millisecond)
		for _, n := range c.Nodes {
			put(spec.NodeRecordKey(n.Name), spec.NodeRecord{Node: n.Name, Slot: "b", Release: "rel3", Entry: "etcdbake-000002-b.conf"})
			put(spec.RolloutNodeKey(n.Name), spec.RolloutNode{Node: n.Name, Generation: 2, Release: "rel3", State: spec.RolloutDone})
		}
	}()
	stdout, _, err = roll("--url", base, "--wait", "--timeout", "30s")
	if err != nil {
		t.Fatalf("rollout --wait: %v\n%s", err, stdout)
	}
	for _, w := range []string{"this ends the halt set by etcd-2: boom", "etcd-3: staging\n", "etcd-3: done\n", "every node runs release rel3 (generation 2)"} {
		if !strings.Contains(stdout, w) {
			t.Errorf("rollout --wait output lacks %q:\n%s", w, stdout)
		}
	}
	if strings.Count(stdout, "etcd-1: staging") != 1 {
		t.Errorf("a state change printed more than once:\n%s", stdout)
	}

	// Every node runs the newest release: nothing is published.
	_, rev := desired()
	stdout, _, err = roll("--url", base)
	if err != nil || !strings.Contains(stdout, "every node runs release rel3 already: nothing published") {
		t.Errorf("rollout of the running release: %v\n%s", err, stdout)
	}
	if _, r := desired(); r != rev {
		t.Errorf("the running release was published again (revision %d -> %d)", rev, r)
	}

	// --wait ends with the halt's reason when a node halts the rollout.
	go func() {
		for {
			if d, _ := desired(); d != nil && d.Generation == 3 {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		put(spec.RolloutHaltKey, spec.RolloutHalt{Node: "etcd-1", Release: "rel2", Generation: 3, Reason: "flannel lease lost"})
	}()
	_, _, err = roll("--release", "rel2", "--url", base, "--wait", "--timeout", "30s")
	var ee *exitError
	if err == nil || errors.As(err, &ee) || !strings.Contains(err.Error(), "halted: node etcd-1 (release rel2, generation 3): flannel lease lost") {
		t.Errorf("rollout --wait on a halt: %v", err)
	}
}

// demoCluster starts a real 3-member etcd with TLS (embedded, on loopback) whose members
// carry the example spec's names, with its PKI in OUT/pki, and writes the example spec:
// the commands reach it with --endpoints and the admin certificate from OUT/pki.
func demoCluster(t *testing.T, now time.Time, base int) (c *spec.Cluster, tc *testcluster.Cluster, out, specPath string, ex *spec.Cluster) {
	t.Helper()
	c = testcluster.Spec(t, "demo", 3, base)
	for i := range c.Nodes {
		c.Nodes[i].Name = fmt.Sprintf("etcd-%d", i+1)
	}
	tc = testcluster.StartAll(t, c)
	out = filepath.Dir(tc.PKIDir)
	specPath = filepath.Join(t.TempDir(), "cluster.yaml")
	if _, _, err := run(t, now, "init", "-f", specPath); err != nil {
		t.Fatal(err)
	}
	ex, _, err := spec.Load(specPath)
	if err != nil {
		t.Fatal(err)
	}
	return c, tc, out, specPath, ex
}

// adminClient is a client of demoCluster's cluster with the admin certificate, closed at
// the end of the test.
func adminClient(t *testing.T, tc *testcluster.Cluster) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: tc.Spec.ClientEndpoints(), TLS: tc.ClientTLS(t, "admin"), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}
