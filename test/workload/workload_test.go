package workload

import (
	"context"
	"crypto/tls"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/etcdbake/etcdbake/internal/testcluster"
	"github.com/etcdbake/etcdbake/spec"
	"github.com/etcdbake/etcdbake/status"
)

// cluster starts a real 3-member etcd and returns it with an admin TLS config and client.
func cluster(t *testing.T, name string, base int) (*spec.Cluster, *testcluster.Cluster, *tls.Config, *clientv3.Client) {
	t.Helper()
	c := testcluster.Spec(t, name, 3, base)
	tc := testcluster.StartAll(t, c)
	tlsCfg, err := status.TLSConfig(tc.ClientFiles("admin"))
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.ClientEndpoints(), TLS: tlsCfg, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return c, tc, tlsCfg, cli
}

// checkAndVerify runs Check and Verify, logs the summary and saves the history on failure.
func checkAndVerify(t *testing.T, h *History, cli *clientv3.Client) (Result, Report) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := ReadBack(ctx, h, cli); err != nil {
		t.Fatal(err)
	}
	if len(h.Final) != h.Keys || h.Keys == 0 {
		t.Errorf("ReadBack: %d reads for %d register keys", len(h.Final), h.Keys)
	}
	r := Check(h, 30*time.Second)
	v, err := Verify(ctx, h, cli, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Log(r.Summary(&v))
	if paths, err := SaveOnFailure(t.TempDir(), h, r, &v); err != nil || paths != nil {
		// t.TempDir is removed at the end; the paths are for a developer rerunning with a debugger.
		t.Logf("failure saved to %v (err %v)", paths, err)
	}
	return r, v
}

func TestHealthyCluster(t *testing.T) {
	c, _, tlsCfg, cli := cluster(t, "wl", 81)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	h, err := Run(ctx, Options{Endpoints: c.ClientEndpoints(), TLS: tlsCfg, Registers: 3, Keys: 4, Set: true, Interval: 5 * time.Millisecond, OpTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	r, v := checkAndVerify(t, h, cli)
	if r.Linearizable != porcupine.Ok {
		t.Errorf("porcupine: %s", r.Linearizable)
	}
	if r.AckedPuts == 0 || r.Reads == 0 || r.AckedSet == 0 {
		t.Errorf("too little traffic: %+v", r)
	}
	if v.Lost != 0 || v.Acknowledged != r.AckedSet {
		t.Errorf("lost %d of %d acknowledged set keys: %v", v.Lost, v.Acknowledged, v.LostKeys)
	}
	if len(v.Members) != 3 || !v.HashesEqual {
		t.Errorf("HashKV: equal=%v %+v", v.HashesEqual, v.Members)
	}
	// Nothing fails on a healthy cluster (the generous timeout is for the loaded 2-core test
	// machine), so no gap can be longer than one operation.
	if r.Indeterminate() != 0 || r.FailedReads != 0 || r.GapSeconds > 5 {
		t.Errorf("healthy cluster: indeterminate %d, failed reads %d, gap %.2fs", r.Indeterminate(), r.FailedReads, r.GapSeconds)
	}
}

func TestMemberRestart(t *testing.T) {
	c, tc, tlsCfg, cli := cluster(t, "wlr", 84)
	// Stop the leader, so the cluster has to elect a new one while the workload runs.
	victim, victimURL := "", ""
	for _, n := range c.Nodes {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		st, err := cli.Status(ctx, c.ClientURL(n))
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if st.Leader == st.Header.MemberId {
			victim, victimURL = n.Name, c.ClientURL(n)
		}
	}
	if victim == "" {
		t.Fatal("no leader")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	type out struct {
		h   *History
		err error
	}
	done := make(chan out, 1)
	go func() {
		// A reader bound to the victim: it reads while the victim is up, fails while it is down.
		h, err := Run(ctx, Options{Endpoints: c.ClientEndpoints(), TLS: tlsCfg, Registers: 3, Keys: 4, Set: true, Interval: 5 * time.Millisecond, OpTimeout: time.Second,
			Readers: []string{victimURL}})
		done <- out{h, err}
	}()
	start := time.Now()
	time.Sleep(2 * time.Second)
	tc.Stop(victim)
	stopped := time.Since(start)
	time.Sleep(2 * time.Second)
	if err := tc.Start(victim, "existing"); err != nil {
		t.Fatal(err)
	}
	restarted := time.Since(start)
	t.Logf("stopped leader %s at %.2fs, started again at %.2fs", victim, stopped.Seconds(), restarted.Seconds())
	o := <-done
	if o.err != nil {
		t.Fatal(o.err)
	}
	h := o.h

	r, v := checkAndVerify(t, h, cli)
	t.Logf("longest unavailability gap %.3fs starting at %.2fs", r.GapSeconds, r.GapStartSeconds)
	if r.Linearizable != porcupine.Ok {
		t.Errorf("porcupine: %s", r.Linearizable)
	}
	if v.Lost != 0 {
		t.Errorf("lost %d acknowledged set keys: %v", v.Lost, v.LostKeys)
	}
	if len(v.Members) != 3 || !v.HashesEqual {
		t.Errorf("HashKV after %s caught up: equal=%v %+v", victim, v.HashesEqual, v.Members)
	}
	// The cluster kept quorum: writes were acknowledged both while the member was down and
	// after it came back.
	var during, after int
	for _, op := range h.Set {
		switch {
		case !op.Acked:
		case op.Call > stopped.Nanoseconds() && op.Return < restarted.Nanoseconds()-int64(500*time.Millisecond):
			during++
		case op.Call > restarted.Nanoseconds():
			after++
		}
	}
	if during == 0 || after == 0 {
		t.Errorf("acknowledged set writes while %s was down: %d, after it restarted: %d", victim, during, after)
	}
	if r.GapSeconds >= 4 {
		t.Errorf("gap %.2fs: the cluster should have stayed available with 2 of 3 members", r.GapSeconds)
	}
	// The victim's reader: its reads are in the checked history, before and after the stop.
	if len(h.Readers) != 1 || h.Readers[0].Endpoint != victimURL || h.Readers[0].Failed == 0 {
		t.Fatalf("reader bound to %s: %+v (want failures while it was down)", victimURL, h.Readers)
	}
	var before, later int
	for _, op := range h.Ops {
		if op.Client != h.Readers[0].Client {
			continue
		}
		if op.Kind != KindGet {
			t.Errorf("reader did a %s", op.Kind)
		}
		switch {
		case op.Return < stopped.Nanoseconds():
			before++
		case op.Call > restarted.Nanoseconds():
			later++
		}
	}
	if before == 0 || later == 0 || before+later > h.Readers[0].OK {
		t.Errorf("reader bound to %s: %d reads before the stop, %d after the restart, %+v", victim, before, later, h.Readers[0])
	}
}

// put, get and indeterminate put ops for hand-built histories (times in ms).
func put(client int, key, val string, call, ret int64) Op {
	return Op{Client: client, Kind: KindPut, Key: key, Value: val, Call: call * 1e6, Return: ret * 1e6}
}

func lostPut(client int, key, val string, call int64) Op {
	return Op{Client: client, Kind: KindPut, Key: key, Value: val, Call: call * 1e6, Return: Infinity, Err: "context deadline exceeded"}
}

func get(client int, key, val string, call, ret int64) Op {
	return Op{Client: client, Kind: KindGet, Key: key, Value: val, Found: val != "", Call: call * 1e6, Return: ret * 1e6}
}

func TestCheckerCatchesViolations(t *testing.T) {
	cases := []struct {
		name string
		ops  []Op
		want porcupine.CheckResult
	}{
		{"stale read", []Op{put(0, "k0", "a", 0, 10), put(0, "k0", "b", 20, 30), get(1, "k0", "a", 40, 50)}, porcupine.Illegal},
		{"fresh read", []Op{put(0, "k0", "a", 0, 10), put(0, "k0", "b", 20, 30), get(1, "k0", "b", 40, 50)}, porcupine.Ok},
		{"concurrent read may see either", []Op{put(0, "k0", "a", 0, 10), put(0, "k0", "b", 20, 60), get(1, "k0", "a", 40, 50)}, porcupine.Ok},
		{"read of a value never written", []Op{put(0, "k0", "a", 0, 10), get(1, "k0", "x", 20, 30)}, porcupine.Illegal},
		{"read before any write", []Op{get(1, "k0", "", 0, 5), put(0, "k0", "a", 10, 20)}, porcupine.Ok},
		{"indeterminate put took effect", []Op{put(0, "k0", "a", 0, 10), lostPut(0, "k0", "b", 20), get(1, "k0", "b", 40, 50)}, porcupine.Ok},
		{"indeterminate put never took effect", []Op{put(0, "k0", "a", 0, 10), lostPut(0, "k0", "b", 20), get(1, "k0", "a", 40, 50)}, porcupine.Ok},
		{"indeterminate put cannot act before its call", []Op{put(0, "k0", "a", 0, 10), get(1, "k0", "b", 12, 15), lostPut(0, "k0", "b", 20)}, porcupine.Illegal},
		{"indeterminate put observed then undone", []Op{put(0, "k0", "a", 0, 10), lostPut(0, "k0", "b", 20), get(1, "k0", "b", 40, 50), get(1, "k0", "a", 60, 70)}, porcupine.Illegal},
		{"keys are independent", []Op{put(0, "k0", "a", 0, 10), put(1, "k1", "b", 0, 10), get(2, "k1", "b", 20, 30), get(2, "k0", "a", 40, 50)}, porcupine.Ok},
	}
	for _, tc := range cases {
		r := Check(&History{Ops: tc.ops, End: 100e6}, 5*time.Second)
		if r.Linearizable != tc.want {
			t.Errorf("%s: porcupine %s, want %s", tc.name, r.Linearizable, tc.want)
		}
	}

	// An outage's many indeterminate puts, none of them read, leave the check quick, and a
	// stale read after them is still caught.
	outage := []Op{put(0, "k0", "a", 0, 10)}
	for i := 0; i < 200; i++ {
		outage = append(outage, lostPut(10+i, "k0", fmt.Sprintf("lost%d", i), int64(20+i)))
	}
	outage = append(outage, put(1, "k0", "b", 300, 310), get(2, "k0", "b", 320, 330))
	if r := Check(&History{Ops: outage, End: 400e6}, 5*time.Second); r.Linearizable != porcupine.Ok || r.IndeterminatePuts != 200 {
		t.Errorf("200 unread indeterminate puts: porcupine %s, %d indeterminate", r.Linearizable, r.IndeterminatePuts)
	}
	outage = append(outage, get(2, "k0", "a", 340, 350))
	if r := Check(&History{Ops: outage, End: 400e6}, 5*time.Second); r.Linearizable != porcupine.Illegal {
		t.Errorf("stale read after 200 unread indeterminate puts: porcupine %s, want Illegal", r.Linearizable)
	}

	// A stale read among otherwise healthy traffic, with an indeterminate set put, is caught,
	// counted and saved.
	h := &History{
		Prefix: "/workload",
		Ops: []Op{
			put(0, "/workload/reg/k0", "a", 0, 10), put(0, "/workload/reg/k1", "x", 0, 10),
			put(0, "/workload/reg/k0", "b", 20, 30), get(1, "/workload/reg/k1", "x", 20, 30),
			get(1, "/workload/reg/k0", "a", 40, 50), lostPut(2, "/workload/reg/k1", "y", 40),
		},
		Set:        []SetOp{{Key: "/workload/set/0", Call: 0, Return: 5e6, Acked: true}, {Key: "/workload/set/1", Call: 10e6, Return: 3000e6}},
		FailedGets: 2,
		End:        3100e6,
	}
	r := Check(h, 5*time.Second)
	if r.Linearizable != porcupine.Illegal || r.OK() {
		t.Fatalf("stale read: %s", r.Linearizable)
	}
	if r.AckedPuts != 3 || r.IndeterminatePuts != 1 || r.Reads != 2 || r.FailedReads != 2 || r.AckedSet != 1 || r.IndeterminateSet != 1 {
		t.Errorf("counts: %+v", r)
	}
	// The last success is the get returning at 50ms; nothing succeeded until the end at 3.1s.
	if math.Abs(r.GapSeconds-3.05) > 1e-9 || math.Abs(r.GapStartSeconds-0.05) > 1e-9 {
		t.Errorf("gap %vs at %vs, want 3.05s at 0.05s", r.GapSeconds, r.GapStartSeconds)
	}
	s := r.Summary(nil)
	for _, want := range []string{"acknowledged=4 ", "lost=?", "indeterminate=2 ", "porcupine=Illegal", "gap=3.05s"} {
		if !strings.Contains(s, want) {
			t.Errorf("summary %q lacks %q", s, want)
		}
	}

	dir := filepath.Join(t.TempDir(), "failure")
	paths, err := SaveOnFailure(dir, h, r, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) != 3 {
		t.Fatalf("saved %v", paths)
	}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil || len(b) == 0 {
			t.Fatalf("%s: %d bytes, %v", p, len(b), err)
		}
		if filepath.Ext(p) == ".html" && !strings.Contains(string(b), "put(k0, b)") {
			t.Errorf("%s does not show the stale read", p)
		}
	}

	// A passing check saves nothing.
	okHist := &History{Ops: []Op{put(0, "k0", "a", 0, 10), get(1, "k0", "a", 20, 30)}, End: 40e6}
	okDir := filepath.Join(t.TempDir(), "ok")
	if paths, err := SaveOnFailure(okDir, okHist, Check(okHist, 5*time.Second), &Report{HashesEqual: true}); err != nil || paths != nil {
		t.Errorf("passing check saved %v (%v)", paths, err)
	}
	if _, err := os.Stat(okDir); !os.IsNotExist(err) {
		t.Errorf("passing check created %s", okDir)
	}
}

func TestLostSetKey(t *testing.T) {
	c, _, tlsCfg, cli := cluster(t, "wll", 87)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	h, err := Run(ctx, Options{Endpoints: c.ClientEndpoints(), TLS: tlsCfg, Registers: 1, Set: true, Interval: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	vctx, vcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer vcancel()
	v, err := Verify(vctx, h, cli, nil)
	if err != nil {
		t.Fatal(err)
	}
	if v.Acknowledged < 2 || v.Lost != 0 {
		t.Fatalf("before the delete: %d acknowledged, %d lost", v.Acknowledged, v.Lost)
	}
	// Delete one acknowledged key behind the workload's back, with another client.
	var victim string
	for _, op := range h.Set {
		if op.Acked {
			victim = op.Key
			break
		}
	}
	other, err := clientv3.New(clientv3.Config{Endpoints: c.ClientEndpoints()[1:], TLS: tlsCfg, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if dr, err := other.Delete(vctx, victim); err != nil || dr.Deleted != 1 {
		t.Fatalf("deleting %s: %v, %+v", victim, err, dr)
	}
	v, err = Verify(vctx, h, cli, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := Check(h, 30*time.Second)
	t.Log(r.Summary(&v))
	if v.Lost != 1 || len(v.LostKeys) != 1 || v.LostKeys[0] != victim {
		t.Errorf("lost %d %v, want 1 [%s]", v.Lost, v.LostKeys, victim)
	}
	if v.OK() || !v.HashesEqual || !strings.Contains(r.Summary(&v), "lost=1 ") {
		t.Errorf("report %+v; summary %s", v, r.Summary(&v))
	}
}

// TestReady: Ready is closed while the workload runs, once every register key exists, so a
// fault test can start its fault after the initial puts.
func TestReady(t *testing.T) {
	c, _, tlsCfg, cli := cluster(t, "wr", 90)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		_, err := Run(ctx, Options{Endpoints: c.ClientEndpoints(), TLS: tlsCfg, Registers: 2, Keys: 3, Interval: 5 * time.Millisecond, OpTimeout: 5 * time.Second, Ready: ready})
		done <- err
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Run ended before Ready was closed: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("Ready not closed within 30 s")
	}
	for i := 0; i < 3; i++ {
		r, err := cli.Get(ctx, RegisterKey("/workload", i))
		if err != nil || len(r.Kvs) != 1 {
			t.Errorf("at Ready, register key %d: %v %v", i, r, err)
		}
	}
	select {
	case err := <-done:
		t.Fatalf("Run ended by itself: %v", err)
	default:
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestLostRegisterPut: a register key set back to an older value behind the workload's back
// (an acknowledged put lost) makes the checked history illegal through ReadBack; the same
// history without ReadBack's reads passes, so the reads are what catches it.
func TestLostRegisterPut(t *testing.T) {
	c, _, tlsCfg, cli := cluster(t, "wlp", 93)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	h, err := Run(ctx, Options{Endpoints: c.ClientEndpoints(), TLS: tlsCfg, Registers: 2, Keys: 2, Interval: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	// k0's first value (the initial put) was overwritten by later acknowledged puts:
	// putting it back loses every one of them.
	key, first := RegisterKey(h.Prefix, 0), ""
	later := 0
	for _, op := range h.Ops {
		if op.Kind != KindPut || op.Key != key || op.Indeterminate() {
			continue
		}
		if first == "" {
			first = op.Value
		} else {
			later++
		}
	}
	if first == "" || later == 0 {
		t.Fatalf("no acknowledged put after the first one of %s (%d ops)", key, len(h.Ops))
	}
	vctx, vcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer vcancel()
	if _, err := cli.Put(vctx, key, first); err != nil {
		t.Fatal(err)
	}
	if r := Check(h, 30*time.Second); !r.OK() {
		t.Fatalf("before ReadBack the history is already %s", r.Linearizable)
	}
	if err := ReadBack(vctx, h, cli); err != nil {
		t.Fatal(err)
	}
	r := Check(h, 30*time.Second)
	t.Logf("%s (%d later acknowledged puts of %s lost)", r.Summary(nil), later, key)
	if r.OK() || r.FinalReads != 2 {
		t.Errorf("a lost acknowledged register put: porcupine %s, %d final reads; want Illegal, 2", r.Linearizable, r.FinalReads)
	}
}

// TestHashKVDiverged: a member whose data diverged (forced into a cluster of its own, then
// written to on both sides) makes HashesEqual false, and each hash is the answer of the
// member the endpoint names.
func TestHashKVDiverged(t *testing.T) {
	c, tc, tlsCfg, cli := cluster(t, "wlh", 96)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	h := &History{Prefix: "/hk"}
	if _, err := cli.Put(ctx, "/hk/a", "1"); err != nil {
		t.Fatal(err)
	}
	ids := map[string]uint64{}
	for _, n := range c.Nodes {
		st, err := cli.Status(ctx, c.ClientURL(n))
		if err != nil {
			t.Fatal(err)
		}
		ids[c.ClientURL(n)] = st.Header.MemberId
	}
	v, err := Verify(ctx, h, cli, nil)
	if err != nil || !v.HashesEqual {
		t.Fatalf("healthy cluster: %+v %v", v, err)
	}
	for _, m := range v.Members {
		if m.MemberID != ids[m.Endpoint] {
			t.Errorf("%s answered by %x, it is member %x", m.Endpoint, m.MemberID, ids[m.Endpoint])
		}
	}

	// The third member is replaced, at its address, by a member of a cluster of its own
	// (another data dir and token: the others refuse its messages, and it theirs), filled
	// until its revision passes the majority's: at the revision Verify hashes at, both
	// sides have data, and different data.
	third := c.Nodes[2]
	tc.Stop(third.Name)
	cfg, err := tc.Config(third.Name, "new")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Dir = t.TempDir()
	cfg.InitialCluster = third.Name + "=" + c.PeerURL(third)
	cfg.InitialClusterToken = "diverged"
	if err := tc.StartConfig(third.Name, cfg); err != nil {
		t.Fatal(err)
	}
	rest, err := clientv3.New(clientv3.Config{Endpoints: c.ClientEndpoints()[:2], TLS: tlsCfg, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer rest.Close()
	pr, err := rest.Put(ctx, "/hk/b", "majority")
	if err != nil {
		t.Fatal(err)
	}
	alone, err := clientv3.New(clientv3.Config{Endpoints: []string{c.ClientURL(third)}, TLS: tlsCfg, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer alone.Close()
	for rev := int64(0); rev <= pr.Header.Revision; {
		r, err := alone.Put(ctx, "/hk/b", "alone")
		if err != nil {
			t.Fatal(err)
		}
		rev = r.Header.Revision
	}
	st, err := alone.Status(ctx, c.ClientURL(third))
	if err != nil {
		t.Fatal(err)
	}
	ids[c.ClientURL(third)] = st.Header.MemberId
	v, err = Verify(ctx, h, rest, c.ClientEndpoints())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("diverged: %+v", v.Members)
	if v.HashesEqual || v.OK() {
		t.Errorf("a diverged member hashes equal: %+v", v.Members)
	}
	for _, m := range v.Members {
		if m.MemberID != ids[m.Endpoint] {
			t.Errorf("%s answered by %x, it is member %x", m.Endpoint, m.MemberID, ids[m.Endpoint])
		}
	}
}

// TestWindow: acknowledged writes and the longest write gap inside a window, on a
// hand-built history (times in seconds since Start).
func TestWindow(t *testing.T) {
	start := time.Now()
	s := func(x float64) int64 { return int64(x * float64(time.Second)) }
	h := &History{Start: start, Ops: []Op{
		put(0, "k", "a", 1000, 1500),   // before the window
		put(0, "k", "b", 10000, 11000), // inside
		lostPut(1, "k", "c", 12000),    // indeterminate: not a write that was acknowledged
		get(0, "k", "b", 13000, 13500), // a read: not a write
		put(0, "k", "d", 19000, 21000), // returns after the window: ends no gap inside it
	}, Set: []SetOp{
		{Key: "s/0", Call: s(14), Return: s(15), Acked: true},
		{Key: "s/1", Call: s(16), Return: s(16.5)},
	}}
	w := h.Window(start.Add(5*time.Second), start.Add(20*time.Second))
	// Acknowledged within [5, 20]: b (10-11) and s/0 (14-15). Gaps: 5->11, 11->15, 15->20.
	if w.AckedWrites != 2 || w.WriteGap != 6*time.Second {
		t.Errorf("window: %+v, want 2 acknowledged writes and a 6s gap", w)
	}
	if w := h.Window(start.Add(22*time.Second), start.Add(30*time.Second)); w.AckedWrites != 0 || w.WriteGap != 8*time.Second {
		t.Errorf("an empty window: %+v, want 0 writes and the whole 8s as the gap", w)
	}
}
