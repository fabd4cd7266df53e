package firstboot

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdbake/etcdbake/spec"
)

// The node's rollout agent (etcd-firstboot rollout, a service after the health gate):
// it follows the desired release in etcd and takes this node through it, one node of the
// cluster at a time (the reboot lock), never while the cluster could not do without this
// member (RebootGate), the leader last in effect (it hands leadership off first).

// RolloutStateName is the agent's record on the data partition: it outlives the reboot.
const RolloutStateName = "rollout.json"

// Phases of RolloutState.
const (
	PhaseArmed      = "armed"       // the new slot's entry is written; rebooting into it
	PhaseDone       = "done"        // the new slot runs, verified; lock released
	PhaseRolledBack = "rolled-back" // the new slot failed; the node runs the old one
)

// RolloutState is what the agent keeps across the reboot.
type RolloutState struct {
	Phase       string `json:"phase"`
	Generation  int    `json:"generation"`
	Release     string `json:"release"`
	Slot        string `json:"slot"`
	FromSlot    string `json:"fromSlot"`
	FromRelease string `json:"fromRelease"`
	Lease       int64  `json:"lease"`
	MemberID    uint64 `json:"memberID"`
	// Subnet is flannel's subnet of this node before the reboot (FLANNEL_SUBNET): the
	// new slot must come back with the same lease.
	Subnet string    `json:"subnet,omitempty"`
	Reason string    `json:"reason,omitempty"`
	At     time.Time `json:"at"`
}

// RolloutStatePath is where the agent keeps its state.
func (a *Agent) RolloutStatePath() string { return filepath.Join(a.Cfg.StateDir, RolloutStateName) }

// RolloutOptions drive the agent.
type RolloutOptions struct {
	// Timeout is the bound on a new slot's verification (spec rollout.timeout); the reboot
	// lock outlives its holder by lockTTL.
	Timeout time.Duration
	// Reboot reboots the machine (systemctl reboot); tests stand in for it.
	Reboot func(ctx context.Context) error
	// Stage, if set, replaces the download (tests); default Agent.Stage.
	Stage func(ctx context.Context, o StageOptions) (*Staged, error)
}

// FinishRollout runs once after a boot: if the last boot was into a new slot (the state
// says armed), it either completes the step (the new slot runs and is verified: lock
// released) or, when the machine fell back, records why, sets the halt key and releases
// the lock. It returns the state it leaves (nil when nothing was pending).
func (a *Agent) FinishRollout(ctx context.Context, cli *clientv3.Client) (*RolloutState, error) {
	var st RolloutState
	ok, err := readJSON(a.RolloutStatePath(), &st)
	if err != nil || !ok || st.Phase != PhaseArmed {
		return nil, err
	}
	status, err := a.ReadStatus() // the boot, with the recorded verify result of a fallback
	if err != nil {
		return nil, err
	}
	bi := status.Boot
	lock, lerr := a.ReattachRolloutLock(ctx, cli, clientv3.LeaseID(st.Lease))
	if lerr != nil {
		a.logf("rollout: %v", lerr)
	}
	release := func() {
		if lock != nil {
			if err := lock.Release(ctx); err != nil {
				a.logf("rollout: releasing the reboot lock: %v", err)
			}
		}
	}
	if bi != nil && bi.Slot == st.Slot && bi.Release == st.Release {
		// The new slot runs; verify-boot decides the boot (blessed, or a reboot back).
		if err := a.waitBlessed(ctx); err != nil {
			return &st, err
		}
		st.Phase, st.At = PhaseDone, a.now().UTC()
		if err := writeJSON(a.RolloutStatePath(), st, 0o644); err != nil {
			return &st, err
		}
		release()
		a.logf("rollout: release %s runs on slot %s, verified (generation %d)", st.Release, st.Slot, st.Generation)
		return &st, nil
	}
	st.Reason = fmt.Sprintf("slot %s with release %s never reached verify-boot", st.Slot, st.Release)
	if bi != nil && bi.Fallback != nil && bi.Fallback.Verify != nil {
		st.Reason = bi.Fallback.Verify.Message
	}
	st.Phase, st.At = PhaseRolledBack, a.now().UTC()
	if err := writeJSON(a.RolloutStatePath(), st, 0o644); err != nil {
		return &st, err
	}
	halt, _ := json.Marshal(spec.RolloutHalt{Node: a.Cfg.Name, Release: st.Release, Generation: st.Generation, Reason: st.Reason, At: st.At})
	if _, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(spec.RolloutHaltKey), "=", 0)).
		Then(clientv3.OpPut(spec.RolloutHaltKey, string(halt))).Commit(); err != nil {
		return &st, fmt.Errorf("setting the rollout halt: %w", err)
	}
	release()
	a.logf("rollout: fell back to slot %s: %s; the rollout is halted", st.FromSlot, st.Reason)
	return &st, nil
}

// waitBlessed waits until this boot is blessed (systemd-bless-boot renamed the entry).
func (a *Agent) waitBlessed(ctx context.Context) error {
	for {
		bi, err := ReadBootInfo(a.BootPaths)
		if err == nil && bi != nil && (bi.State == BootGood || bi.State == BootClean) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for this boot to be blessed: %w", ctx.Err())
		case <-time.After(a.retryEvery()):
		}
	}
}

// errHalted: the rollout is halted.
var errHalted = errors.New("the rollout is halted")

// RolloutStep takes this node through the desired release once, if it needs to: it
// stages the release, waits for the reboot lock, checks the gate, hands leadership off,
// arms the new slot and reboots. It returns without doing anything when the node already
// runs the desired release, or when the rollout is halted (errHalted).
func (a *Agent) RolloutStep(ctx context.Context, cli *clientv3.Client, d spec.RolloutDesired, o RolloutOptions) error {
	bi, err := ReadBootInfo(a.BootPaths)
	if err != nil {
		return err
	}
	if bi == nil || bi.Slot == "" {
		return errors.New("rollout: this node has no A/B slots")
	}
	if bi.Release == d.Release {
		return nil
	}
	if halted, err := a.halted(ctx, cli); err != nil || halted {
		return errors.Join(err, errHalted)
	}
	stage := o.Stage
	if stage == nil {
		stage = a.Stage
	}
	var staged Staged
	if ok, _ := readJSON(a.StagedPath(), &staged); !ok || staged.Release != d.Release || staged.Slot == bi.Slot {
		a.reportRollout(ctx, cli, spec.RolloutNode{Generation: d.Generation, Release: d.Release, State: spec.RolloutStaging})
		reported := map[string]int64{}
		progress := func(file string, done, total int64) { // every 64 MiB
			if done-reported[file] >= 64<<20 || done == total {
				reported[file] = done
				a.logf("stage: %s: %d of %d MiB", filepath.Base(file), done>>20, total>>20)
				a.reportRollout(ctx, cli, spec.RolloutNode{Generation: d.Generation, Release: d.Release, State: spec.RolloutStaging,
					Progress: fmt.Sprintf("%s %d/%d MiB", filepath.Base(file), done>>20, total>>20)})
			}
		}
		if _, err := stage(ctx, StageOptions{URL: d.URL, Progress: progress}); err != nil {
			return err
		}
	}
	a.reportRollout(ctx, cli, spec.RolloutNode{Generation: d.Generation, Release: d.Release, Staged: d.Release, State: spec.RolloutWaiting})
	lock, err := a.AcquireRolloutLock(ctx, cli, lockTTL(o.Timeout))
	if err != nil {
		return fmt.Errorf("rollout: the reboot lock: %w", err)
	}
	// Under the lock, everything is checked again: another node may have failed.
	abort := func(err error) error {
		if rerr := lock.Release(ctx); rerr != nil {
			a.logf("rollout: releasing the reboot lock: %v", rerr)
		}
		return err
	}
	if halted, err := a.halted(ctx, cli); err != nil || halted {
		return abort(errors.Join(err, errHalted))
	}
	if cur, err := readDesired(ctx, cli); err != nil || cur.Generation != d.Generation {
		return abort(errors.Join(err, fmt.Errorf("rollout: generation %d was replaced", d.Generation)))
	}
	rep, err := a.RebootGate(ctx, cli)
	if err != nil {
		return abort(err)
	}
	if _, err := a.HandOffLeadership(ctx, cli); err != nil {
		return abort(err)
	}
	if _, err := a.RebootGate(ctx, cli); err != nil {
		return abort(err)
	}
	st := RolloutState{Phase: PhaseArmed, Generation: d.Generation, Release: d.Release, Slot: spec.OtherSlot(bi.Slot),
		FromSlot: bi.Slot, FromRelease: bi.Release, Lease: int64(lock.Lease), MemberID: rep.Self, Subnet: a.flannelSubnet(), At: a.now().UTC()}
	if err := writeJSON(a.RolloutStatePath(), st, 0o644); err != nil {
		return abort(err)
	}
	if _, err := a.Arm(d.Generation); err != nil {
		return abort(err)
	}
	a.reportRollout(ctx, cli, spec.RolloutNode{Generation: d.Generation, Release: d.Release, Staged: d.Release, State: spec.RolloutRebooting})
	lock.Orphan()
	a.logf("rollout: rebooting into slot %s (release %s, generation %d)", st.Slot, st.Release, st.Generation)
	return o.Reboot(ctx)
}

func (a *Agent) halted(ctx context.Context, cli *clientv3.Client) (bool, error) {
	resp, err := cli.Get(ctx, spec.RolloutHaltKey)
	if err != nil {
		return false, err
	}
	return len(resp.Kvs) > 0, nil
}

func readDesired(ctx context.Context, cli *clientv3.Client) (spec.RolloutDesired, error) {
	var d spec.RolloutDesired
	resp, err := cli.Get(ctx, spec.RolloutDesiredKey)
	if err != nil {
		return d, err
	}
	if len(resp.Kvs) == 0 {
		return d, errors.New("no release is desired")
	}
	return d, json.Unmarshal(resp.Kvs[0].Value, &d)
}
