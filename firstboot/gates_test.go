package firstboot

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// agentClient is the client a node's agent uses (its etcd-firstboot certificate, every
// member's endpoint).
func agentClient(t *testing.T, a *Agent) *clientv3.Client {
	t.Helper()
	cli, err := a.client(a.Endpoints())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// TestRebootGateAndHandOff on a real 3-member cluster: the gate passes when every member
// is a healthy, caught-up voter and names the problem otherwise (an alarm, a member
// down); the leader's node hands leadership to a follower first, and a follower's does
// nothing; HashKV agrees between the members.
func TestRebootGateAndHandOff(t *testing.T) {
	fc := newFBCluster(t, "gate", 91)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	fc.bootAll(ctx, "m1", "m2", "m3")
	a1 := fc.agents["m1"]
	cli := agentClient(t, a1)

	rep, err := a1.RebootGate(ctx, cli)
	if err != nil {
		t.Fatalf("gate on a healthy cluster: %v", err)
	}
	if rep.Members != 3 || rep.Leader == 0 || rep.Self == 0 || rep.Revision == 0 {
		t.Errorf("gate report %+v", rep)
	}
	if rev, err := a1.CompareHash(ctx, cli); err != nil || rev < rep.Revision {
		t.Errorf("CompareHash: revision %d, %v", rev, err)
	}

	// The leader's node moves leadership away; then it is a follower and moves nothing.
	leaderName := ""
	voters, _ := fc.members(ctx)
	for n, id := range voters {
		if id == rep.Leader {
			leaderName = n
		}
	}
	la := fc.agents[leaderName]
	to, err := la.HandOffLeadership(ctx, agentClient(t, la))
	if err != nil || to == 0 || to == rep.Leader {
		t.Fatalf("hand-off by the leader %s: to %x, %v", leaderName, to, err)
	}
	rep2, err := la.RebootGate(ctx, agentClient(t, la))
	if err != nil || rep2.Leader != to {
		t.Fatalf("after the hand-off the leader is %x (%v), want %x", rep2.Leader, err, to)
	}
	if to2, err := la.HandOffLeadership(ctx, agentClient(t, la)); err != nil || to2 != 0 {
		t.Errorf("hand-off by a follower: to %x, %v; want nothing moved", to2, err)
	}

	// An alarm closes the gate, naming it.
	admin := fc.admin()
	if _, err := pb.NewMaintenanceClient(admin.ActiveConnection()).Alarm(ctx, &pb.AlarmRequest{Action: pb.AlarmRequest_ACTIVATE, MemberID: rep.Self, Alarm: pb.AlarmType_NOSPACE}); err != nil {
		t.Fatal(err)
	}
	if _, err := a1.RebootGate(ctx, cli); err == nil || !strings.Contains(err.Error(), "alarm NOSPACE raised") {
		t.Errorf("gate with an alarm: %v", err)
	}
	if _, err := admin.AlarmDisarm(ctx, &clientv3.AlarmMember{MemberID: rep.Self, Alarm: pb.AlarmType_NOSPACE}); err != nil {
		t.Fatal(err)
	}
	// A member down closes it, naming the member.
	fc.tc.Stop("m3")
	if _, err := a1.RebootGate(ctx, cli); err == nil || !strings.Contains(err.Error(), "m3 (") || !strings.Contains(err.Error(), "does not answer") {
		t.Errorf("gate with m3 down: %v", err)
	}

	// With a member down, the leader still hands leadership to the one that answers.
	var lead string
	for deadline := time.Now().Add(30 * time.Second); lead == ""; time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no leader among m1 and m2 within 30s of stopping m3")
		}
		for _, n := range []string{"m1", "m2"} {
			if st, err := cli.Status(ctx, fc.agents[n].Cfg.LocalClientURL); err == nil && st.Leader == st.Header.MemberId {
				lead = n
			}
		}
	}
	other := map[string]string{"m1": "m2", "m2": "m1"}[lead]
	voters, _ = fc.members(ctx)
	t0 := time.Now()
	to, err = fc.agents[lead].HandOffLeadership(ctx, agentClient(t, fc.agents[lead]))
	if err != nil || to != voters[other] {
		t.Fatalf("hand-off by %s with m3 down: to %x, %v; want %s (%x)", lead, to, err, other, voters[other])
	}
	t.Logf("with m3 down, %s handed leadership to %s in %s", lead, other, time.Since(t0).Round(time.Millisecond))
}

// TestRolloutLock: one holder at a time, in order; the holder's lock survives its
// "reboot" (orphaned, taken back by lease) and ends with Release; a holder that never
// comes back loses it when the lease's TTL runs out.
func TestRolloutLock(t *testing.T) {
	fc := newFBCluster(t, "lock", 101)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	fc.bootAll(ctx, "m1", "m2", "m3")
	a1, a2, a3 := fc.agents["m1"], fc.agents["m2"], fc.agents["m3"]
	c1 := agentClient(t, a1)
	l1, err := a1.AcquireRolloutLock(ctx, c1, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// m2 waits.
	got2 := make(chan *RolloutLock, 1)
	go func() {
		l, err := a2.AcquireRolloutLock(ctx, agentClient(t, a2), 4*time.Second)
		if err != nil {
			t.Error(err)
		}
		got2 <- l
	}()
	select {
	case <-got2:
		t.Fatal("m2 took the lock m1 holds")
	case <-time.After(2 * time.Second):
	}
	// m1 "reboots": its session stops renewing, its client goes away; a new client
	// takes the lock back by its lease.
	l1.Orphan()
	c1.Close()
	l1b, err := a1.ReattachRolloutLock(ctx, agentClient(t, a1), l1.Lease)
	if err != nil {
		t.Fatalf("taking the lock back after the reboot: %v", err)
	}
	select {
	case <-got2:
		t.Fatal("m2 took the lock while m1 was rebooting")
	case <-time.After(time.Second):
	}
	if err := l1b.Release(ctx); err != nil {
		t.Fatal(err)
	}
	var l2 *RolloutLock
	select {
	case l2 = <-got2:
	case <-time.After(10 * time.Second):
		t.Fatal("m2 did not get the lock m1 released")
	}
	// m2 dies holding it (orphaned, never back): m3 gets it once the 4 s TTL ran out,
	// and m2 cannot take it back.
	l2.Orphan()
	start := time.Now()
	l3, err := a3.AcquireRolloutLock(ctx, agentClient(t, a3), 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	waited := time.Since(start)
	t.Logf("m3 got the lock %s after m2 stopped renewing it", waited.Round(100*time.Millisecond))
	if waited < 2*time.Second {
		t.Errorf("m3 got the lock %s after m2 stopped renewing: before m2's lease could have run out", waited)
	}
	if _, err := a2.ReattachRolloutLock(ctx, agentClient(t, a2), l2.Lease); err == nil {
		t.Error("m2 took back a lock whose lease expired")
	}
	if err := l3.Release(ctx); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
}
