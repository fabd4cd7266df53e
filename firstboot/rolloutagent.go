package firstboot

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdbake/etcdbake/spec"
)

// lockTTL is how long the reboot lock outlives a holder that stopped renewing it (it
// rebooted): long enough to boot, reach the health gate and verify (timeout), short
// enough that a node that never comes back does not stop the rollout for good.
func lockTTL(timeout time.Duration) time.Duration { return timeout + 5*time.Minute }

// RunRollout is the node's rollout agent (`etcd-firstboot rollout`, a service after the
// health gate on disk-image nodes). It first finishes the step of the last boot (a new
// slot verified: the lock is released; fallen back: the rollout is halted), then follows
// the desired release in etcd and takes this node through each new one (RolloutStep),
// publishing where it is at spec.RolloutNodeKey. Errors are reported and retried; it
// returns only when ctx ends or after it has asked for the reboot into a new slot.
func (a *Agent) RunRollout(ctx context.Context, o RolloutOptions) error {
	cli, err := a.client([]string{a.Cfg.LocalClientURL})
	if err != nil {
		return err
	}
	defer cli.Close()
	retry := func() bool {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(5 * a.retryEvery()):
			return true
		}
	}
	var pending RolloutState
	if ok, _ := readJSON(a.RolloutStatePath(), &pending); ok && pending.Phase == PhaseArmed {
		a.reportRollout(ctx, cli, spec.RolloutNode{Generation: pending.Generation, Release: pending.Release, Staged: pending.Release, State: spec.RolloutVerifying})
	}
	for {
		st, err := a.FinishRollout(ctx, cli)
		if err == nil {
			switch {
			case st == nil:
			case st.Phase == PhaseDone:
				a.reportRollout(ctx, cli, spec.RolloutNode{Generation: st.Generation, Release: st.Release, Staged: st.Release, State: spec.RolloutDone})
			case st.Phase == PhaseRolledBack:
				a.reportRollout(ctx, cli, spec.RolloutNode{Generation: st.Generation, Release: st.Release, Staged: st.Release, State: spec.RolloutRolledBack, Error: st.Reason})
			}
			break
		}
		a.logf("rollout: finishing the last step: %v", err)
		if st != nil {
			a.reportRollout(ctx, cli, spec.RolloutNode{Generation: st.Generation, Release: st.Release, Staged: st.Release, State: spec.RolloutVerifying, Error: err.Error()})
		}
		if !retry() {
			return ctx.Err()
		}
	}

	// Wake up on every change of the desired release or the halt; poll as well, since a
	// gate that failed (a peer not healthy yet) is worth trying again on its own.
	wake := make(chan struct{}, 1)
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	go func() {
		for range cli.Watch(wctx, spec.RolloutPrefix, clientv3.WithPrefix(), clientv3.WithFilterDelete()) {
			select {
			case wake <- struct{}{}:
			default:
			}
		}
	}()
	var last string
	for ctx.Err() == nil {
		err := a.followDesired(ctx, cli, o)
		if errors.Is(err, errRebooting) {
			<-ctx.Done() // systemd stops the agent on the way down
			return nil
		}
		if err != nil && err.Error() != last {
			a.logf("rollout: %v", err)
		}
		last = ""
		if err != nil {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
		case <-wake:
		case <-time.After(10 * a.retryEvery()):
		}
	}
	return ctx.Err()
}

// errRebooting: the step ended with the reboot into the new slot.
var errRebooting = errors.New("rebooting into the new slot")

// followDesired takes one look at the desired release and acts on it.
func (a *Agent) followDesired(ctx context.Context, cli *clientv3.Client, o RolloutOptions) error {
	resp, err := cli.Get(ctx, spec.RolloutDesiredKey)
	if err != nil {
		return err
	}
	if len(resp.Kvs) == 0 {
		return nil // nothing was ever published
	}
	var d spec.RolloutDesired
	if err := json.Unmarshal(resp.Kvs[0].Value, &d); err != nil {
		return fmt.Errorf("%s: %w", spec.RolloutDesiredKey, err)
	}
	bi, err := ReadBootInfo(a.BootPaths)
	if err != nil {
		return err
	}
	cur := a.lastReport(ctx, cli)
	if bi != nil && bi.Release == d.Release {
		if cur == nil || cur.Generation != d.Generation || cur.State != spec.RolloutDone {
			a.reportRollout(ctx, cli, spec.RolloutNode{Generation: d.Generation, Release: d.Release, Staged: d.Release, State: spec.RolloutDone})
		}
		return nil
	}
	rebooting := false
	reboot := o.Reboot
	o.Reboot = func(ctx context.Context) error {
		rebooting = true
		return reboot(ctx)
	}
	err = a.RolloutStep(ctx, cli, d, o)
	switch {
	case err == nil && rebooting:
		return errRebooting
	case errors.Is(err, errHalted):
		// A node that rolled back keeps saying so; the others say they wait.
		if cur == nil || cur.Generation != d.Generation || cur.State != spec.RolloutRolledBack {
			a.reportRollout(ctx, cli, spec.RolloutNode{Generation: d.Generation, Release: d.Release, State: spec.RolloutHalted})
		}
		return nil
	case err != nil:
		n := spec.RolloutNode{Generation: d.Generation, Release: d.Release, State: spec.RolloutWaiting, Error: err.Error()}
		if cur != nil && cur.Generation == d.Generation {
			n.State, n.Staged = cur.State, cur.Staged
		}
		a.reportRollout(ctx, cli, n)
		return err
	}
	return nil
}

// reportRollout publishes this node's rollout state (best effort: the rollout goes on
// without it).
func (a *Agent) reportRollout(ctx context.Context, cli *clientv3.Client, n spec.RolloutNode) {
	n.Node, n.Updated = a.Cfg.Name, a.now().UTC()
	b, _ := json.Marshal(n)
	cctx, cancel := context.WithTimeout(ctx, a.RequestTimeout())
	defer cancel()
	if _, err := cli.Put(cctx, spec.RolloutNodeKey(a.Cfg.Name), string(b)); err != nil {
		a.logf("rollout: publishing this node's state (%s): %v", n.State, err)
	}
}

// lastReport reads this node's published rollout state; nil when there is none.
func (a *Agent) lastReport(ctx context.Context, cli *clientv3.Client) *spec.RolloutNode {
	resp, err := cli.Get(ctx, spec.RolloutNodeKey(a.Cfg.Name))
	if err != nil || len(resp.Kvs) == 0 {
		return nil
	}
	var n spec.RolloutNode
	if json.Unmarshal(resp.Kvs[0].Value, &n) != nil {
		return nil
	}
	return &n
}

// flannelSubnet is this node's flannel subnet from flanneld's subnet file ("" when
// flannel is off or the file is missing).
func (a *Agent) flannelSubnet() string {
	if a.Cfg.Flannel.Key == "" {
		return ""
	}
	s, _ := subnetFromFile(a.flannelSubnetFile())
	return s
}
