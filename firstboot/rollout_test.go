package firstboot

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/etcdbake/etcdbake/spec"
)

// slotCmdline is a kernel command line for slot and release.
func slotCmdline(slot, release string) string {
	return "root=PARTUUID=11111111-2222-3333-4444-555555555555 ro etcdbake.slot=" + slot + " etcdbake.release=" + release + " etcdbake.node=" + testNode
}

// TestRolloutStepAndFinish takes node m1 of a real 3-member cluster through two releases
// with the agent's steps, the reboots played by the test: the first is staged, armed
// under the reboot lock (leadership handed off first when m1 leads) and, after the
// "reboot" into the new slot, completed (lock released); the second falls back, which
// sets the halt key with the reason and stops every node's next step.
func TestRolloutStepAndFinish(t *testing.T) {
	fc := newFBCluster(t, "roll", 111)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	fc.bootAll(ctx, "m1", "m2", "m3")
	a := fc.agents["m1"]
	cli := agentClient(t, a)
	admin := fc.admin()
	rs1 := newReleaseServerID(t, fc, "m1", 3<<20, "aaaaaaaaaaa1")
	o := stageEnv(t, a, "a", 8<<20)
	publish := func(d spec.RolloutDesired) {
		b, _ := json.Marshal(d)
		if _, err := admin.Put(ctx, spec.RolloutDesiredKey, string(b)); err != nil {
			t.Fatal(err)
		}
	}
	var rebooted bool
	ro := RolloutOptions{Timeout: time.Minute, Reboot: func(context.Context) error { rebooted = true; return nil },
		Stage: func(ctx context.Context, so StageOptions) (*Staged, error) {
			so.Devices = o.Devices
			return a.Stage(ctx, so)
		}}

	// Release 1, generation 1.
	d1 := spec.RolloutDesired{Generation: 1, Release: rs1.manifest.ID, URL: rs1.url}
	publish(d1)
	if err := a.RolloutStep(ctx, cli, d1, ro); err != nil {
		t.Fatal(err)
	}
	var st RolloutState
	if ok, err := readJSON(a.RolloutStatePath(), &st); !ok || err != nil || st.Phase != PhaseArmed || st.Slot != "b" || st.Generation != 1 || st.Lease == 0 {
		t.Fatalf("after the step: %+v (%v)", st, err)
	}
	nodeState := func(n string) spec.RolloutNode {
		t.Helper()
		var rn spec.RolloutNode
		resp, err := admin.Get(ctx, spec.RolloutNodeKey(n))
		if err != nil || len(resp.Kvs) != 1 || json.Unmarshal(resp.Kvs[0].Value, &rn) != nil {
			t.Fatalf("%s's rollout state: %v", n, err)
		}
		return rn
	}
	if rn := nodeState("m1"); rn.State != spec.RolloutRebooting || rn.Generation != 1 || rn.Release != d1.Release || rn.Staged != d1.Release {
		t.Errorf("m1's published state before the reboot: %+v", rn)
	}
	holders, _ := RolloutLockHolders(ctx, admin)
	if !rebooted || len(holders) != 1 || holders[0] != st.Lease {
		t.Fatalf("rebooted %v, lock holders %v, want m1's lease %x", rebooted, holders, st.Lease)
	}
	if rep, err := fc.agents["m2"].RebootGate(ctx, agentClient(t, fc.agents["m2"])); err != nil || rep.Leader == st.MemberID {
		t.Errorf("m1 (%x) still leads before its reboot: %+v %v", st.MemberID, rep, err)
	}
	if got := strings.Join(entriesOnESP(t, a), " "); got != "etcdbake-000000-a.conf etcdbake-000001-b+1.conf" {
		t.Errorf("entries armed: %s", got)
	}
	// The reboot: systemd-boot takes the try, the boot is verified and blessed.
	a.BootPaths = fakeBoot{cmdline: slotCmdline("b", d1.Release), vars: map[string]string{"LoaderEntrySelected": "etcdbake-000001-b+1.conf", "LoaderBootCountPath": countPath("etcdbake-000001-b+0-1.conf")},
		entries: []string{"etcdbake-000000-a.conf", "etcdbake-000001-b.conf"}}.write(t)
	fin, err := a.FinishRollout(ctx, agentClient(t, a))
	if err != nil || fin == nil || fin.Phase != PhaseDone {
		t.Fatalf("finish: %+v %v", fin, err)
	}
	if holders, _ := RolloutLockHolders(ctx, admin); len(holders) != 0 {
		t.Errorf("the lock is still held after the step: %v", holders)
	}
	if err := a.RolloutStep(ctx, cli, d1, ro); err != nil {
		t.Errorf("a step on the release the node runs: %v", err)
	}

	// Release 2, generation 2, into slot a: it falls back.
	rs2 := newReleaseServerID(t, fc, "m1", 3<<20, "aaaaaaaaaaa2")
	devs := stageEnv(t, a, "b", 8<<20).Devices // slot a's devices as files; also a fresh ESP for a node on slot b
	a.BootPaths = fakeBoot{cmdline: slotCmdline("b", d1.Release), vars: map[string]string{"LoaderEntrySelected": "etcdbake-000001-b.conf"},
		entries: []string{"etcdbake-000001-b.conf"}}.write(t)
	ro.Stage = func(ctx context.Context, so StageOptions) (*Staged, error) {
		so.Devices = devs
		return a.Stage(ctx, so)
	}
	d2 := spec.RolloutDesired{Generation: 2, Release: rs2.manifest.ID, URL: rs2.url}
	publish(d2)
	rebooted = false
	if err := a.RolloutStep(ctx, cli, d2, ro); err != nil || !rebooted {
		t.Fatalf("step to release 2: %v (rebooted %v)", err, rebooted)
	}
	// The new slot failed its verification; the machine came back on slot b.
	os.MkdirAll(a.Cfg.StateDir, 0o755)
	writeJSON(a.VerifyRecordPath(), VerifyResult{Result: VerifyFailed, Slot: "a", Release: d2.Release, Generation: 2, Message: "etcd did not start", Started: time.Now()}, 0o644)
	a.BootPaths = fakeBoot{cmdline: slotCmdline("b", d1.Release), vars: map[string]string{"LoaderEntrySelected": "etcdbake-000001-b.conf"},
		entries: []string{"etcdbake-000001-b.conf", "etcdbake-000002-a+0-1.conf"}}.write(t)
	fin, err = a.FinishRollout(ctx, agentClient(t, a))
	if err != nil || fin.Phase != PhaseRolledBack || fin.Reason != "etcd did not start" {
		t.Fatalf("finish after the fallback: %+v %v", fin, err)
	}
	resp, err := admin.Get(ctx, spec.RolloutHaltKey)
	var halt spec.RolloutHalt
	if err != nil || len(resp.Kvs) != 1 || json.Unmarshal(resp.Kvs[0].Value, &halt) != nil || halt.Node != "m1" || halt.Generation != 2 || halt.Reason != "etcd did not start" {
		t.Fatalf("halt key: %+v (%v)", halt, err)
	}
	if holders, _ := RolloutLockHolders(ctx, admin); len(holders) != 0 {
		t.Errorf("the lock is still held after the fallback: %v", holders)
	}
	// Halted: no node takes a step (m2 would have to stage release 2 first: it does not).
	for _, n := range []string{"m1", "m2"} {
		ag := fc.agents[n]
		ag.BootPaths = fakeBoot{cmdline: slotCmdline("a", "0123456789ab"), vars: map[string]string{"LoaderEntrySelected": "etcdbake-000000-a.conf"}, entries: []string{"etcdbake-000000-a.conf"}}.write(t)
		if err := ag.RolloutStep(ctx, agentClient(t, ag), d2, RolloutOptions{Timeout: time.Minute, Reboot: func(context.Context) error { t.Errorf("%s rebooted while halted", n); return nil }}); !errors.Is(err, errHalted) {
			t.Errorf("%s: step while halted: %v", n, err)
		}
	}
	// The agent's loop says so: m2 is halted; m1 keeps saying it rolled back, and why.
	m2 := fc.agents["m2"]
	if err := m2.followDesired(ctx, agentClient(t, m2), RolloutOptions{Timeout: time.Minute, Reboot: func(context.Context) error { t.Error("m2 rebooted while halted"); return nil }}); err != nil {
		t.Errorf("m2 following the desired release while halted: %v", err)
	}
	if rn := nodeState("m2"); rn.State != spec.RolloutHalted || rn.Generation != 2 {
		t.Errorf("m2's published state while halted: %+v", rn)
	}
	a.reportRollout(ctx, cli, spec.RolloutNode{Generation: 2, Release: d2.Release, State: spec.RolloutRolledBack, Error: fin.Reason})
	if err := a.followDesired(ctx, cli, ro); err != nil {
		t.Errorf("m1 following the desired release after its fallback: %v", err)
	}
	if rn := nodeState("m1"); rn.State != spec.RolloutRolledBack || rn.Error != "etcd did not start" {
		t.Errorf("m1's published state after the fallback: %+v", rn)
	}
}
