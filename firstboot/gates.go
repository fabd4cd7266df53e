package firstboot

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/etcdbake/etcdbake/spec"
)

// The gates of a rolling upgrade, as a node runs them around its own reboot into a new
// slot: the cluster-wide reboot lock (one node at a time), the checks that the cluster can
// do without this member for a while, handing leadership off, and the checks after the
// reboot that the member came back whole.

// Keys of a rollout in etcd (spec's).
const (
	rolloutLock  = spec.RolloutLockPrefix
	rolloutProbe = spec.RolloutProbe
)

// GateReport is what RebootGate saw.
type GateReport struct {
	Leader   uint64 `json:"leader"`
	Self     uint64 `json:"self"`
	Revision int64  `json:"revision"` // the probe write every member applied
	Members  int    `json:"members"`
}

// memberEndpoint is a member's first client URL.
func memberEndpoint(m interface{ GetClientURLs() []string }) string {
	if u := m.GetClientURLs(); len(u) > 0 {
		return u[0]
	}
	return ""
}

// statusPatience is how many dial timeouts the reboot gate waits for each member's Status.
const statusPatience = 3

// RebootGate checks that the cluster can do without this member for a reboot: every
// member of the spec is a started voting member, answers Status without errors, agrees on
// one leader, and has applied a write made just now (so nobody is behind), and no alarm
// is raised. The error names every member that fails and why.
func (a *Agent) RebootGate(ctx context.Context, cli *clientv3.Client) (*GateReport, error) {
	cctx, cancel := context.WithTimeout(ctx, a.RequestTimeout())
	defer cancel()
	ml, err := cli.MemberList(cctx)
	if err != nil {
		return nil, fmt.Errorf("member list: %w", err)
	}
	rep := &GateReport{Members: len(ml.Members)}
	var problems []string
	byName := map[string]bool{}
	for _, m := range ml.Members {
		byName[m.Name] = true
		switch {
		case m.Name == "":
			problems = append(problems, fmt.Sprintf("member %x has not started", m.ID))
		case m.IsLearner:
			problems = append(problems, fmt.Sprintf("%s is a learner, not yet a voting member", m.Name))
		}
	}
	want := append([]string{a.Cfg.Name}, peerNames(a.Cfg)...)
	for _, n := range want {
		if !byName[n] {
			problems = append(problems, fmt.Sprintf("%s is not in the member list", n))
		}
	}
	if len(ml.Members) != len(want) {
		problems = append(problems, fmt.Sprintf("the cluster has %d members, the spec %d", len(ml.Members), len(want)))
	}
	if self := findSelf(ml.Members, a.Cfg); self != nil {
		rep.Self = self.ID
	}
	al, err := cli.AlarmList(cctx)
	if err != nil {
		return nil, fmt.Errorf("alarm list: %w", err)
	}
	for _, al := range al.Alarms {
		problems = append(problems, fmt.Sprintf("alarm %s raised on member %x", al.Alarm, al.MemberID))
	}
	if len(al.Alarms) > 0 { // no write gets through a NOSPACE alarm: report what is known
		sort.Strings(problems)
		return rep, fmt.Errorf("the cluster cannot do without %s now: %s", a.Cfg.Name, strings.Join(problems, "; "))
	}
	// A write every member must have applied: a linearizable put, then each member's own
	// view of the revision (Status is answered by the member itself).
	put, err := cli.Put(cctx, rolloutProbe+a.Cfg.Name, a.now().UTC().Format(time.RFC3339Nano))
	if err != nil {
		return nil, fmt.Errorf("probe write: %w", err)
	}
	rep.Revision = put.Header.Revision
	leaders := map[uint64]bool{}
	for _, m := range ml.Members {
		ep := memberEndpoint(m)
		name := m.Name
		if name == "" {
			continue
		}
		// A member gets statusPatience dial timeouts to answer and catch up: a busy one
		// (three emulated VMs on two cores) can take longer than one dial timeout to
		// answer Status without being down.
		var st *clientv3.StatusResponse
		sctx, scancel := context.WithTimeout(ctx, max(5*time.Second, statusPatience*a.dialTimeout()))
		for {
			st, err = cli.Status(sctx, ep)
			if err == nil && st.Header.Revision >= rep.Revision || sctx.Err() != nil {
				break
			}
			select {
			case <-sctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
		scancel()
		switch {
		case err != nil:
			problems = append(problems, fmt.Sprintf("%s (%s) does not answer: %v", name, ep, err))
			continue
		case len(st.Errors) > 0:
			problems = append(problems, fmt.Sprintf("%s reports %s", name, strings.Join(st.Errors, "; ")))
		case st.Header.Revision < rep.Revision:
			problems = append(problems, fmt.Sprintf("%s is behind: revision %d, the cluster's %d", name, st.Header.Revision, rep.Revision))
		}
		leaders[st.Leader] = true
	}
	if len(leaders) != 1 || leaders[0] {
		problems = append(problems, fmt.Sprintf("the members do not agree on one leader (%d seen)", len(leaders)))
	} else {
		for l := range leaders {
			rep.Leader = l
		}
	}
	if len(problems) > 0 {
		sort.Strings(problems)
		return rep, fmt.Errorf("the cluster cannot do without %s now: %s", a.Cfg.Name, strings.Join(problems, "; "))
	}
	return rep, nil
}

// peerNames are the other members' names in the node's config.
func peerNames(nc *spec.NodeConfig) []string {
	var out []string
	for _, p := range nc.Peers {
		if p.Name != nc.Name {
			out = append(out, p.Name)
		}
	}
	return out
}

// handOffTries is how many times HandOffLeadership asks the leader to transfer: raft
// gives up a transfer that the target has not completed within an election timeout, which
// a member that is busy (just rebooted, or emulated) can miss once.
const handOffTries = 3

// HandOffLeadership moves leadership away from this member, if it leads, to the voting
// member with the highest applied index among those that answer, and waits until another
// member leads. It returns the new leader's ID, or 0 when this member did not lead.
// Every step has its own time bound (a slow peer's Status does not eat the transfer's
// time), and a transfer that raft gave up is asked for again, handOffTries times in all.
func (a *Agent) HandOffLeadership(ctx context.Context, cli *clientv3.Client) (uint64, error) {
	local, err := a.client([]string{a.Cfg.LocalClientURL}) // MoveLeader goes to the leader itself
	if err != nil {
		return 0, err
	}
	defer local.Close()
	st, err := withTimeout(ctx, a.RequestTimeout(), func(c context.Context) (*clientv3.StatusResponse, error) {
		return local.Status(c, a.Cfg.LocalClientURL)
	})
	if err != nil {
		return 0, fmt.Errorf("local status: %w", err)
	}
	self := st.Header.MemberId
	if st.Leader != self {
		return 0, nil
	}
	ml, err := withTimeout(ctx, a.RequestTimeout(), func(c context.Context) (*clientv3.MemberListResponse, error) { return cli.MemberList(c) })
	if err != nil {
		return 0, fmt.Errorf("member list: %w", err)
	}
	// The candidates' Status, asked in parallel, each with statusPatience dial timeouts.
	type candidate struct {
		id      uint64
		applied uint64
		err     error
	}
	var wg sync.WaitGroup
	cands := make([]candidate, 0, len(ml.Members))
	for _, m := range ml.Members {
		if m.ID != self && !m.IsLearner && m.Name != "" {
			cands = append(cands, candidate{id: m.ID})
			wg.Add(1)
			go func(c *candidate, ep string) {
				defer wg.Done()
				ms, err := withTimeout(ctx, statusPatience*a.dialTimeout(), func(cc context.Context) (*clientv3.StatusResponse, error) { return cli.Status(cc, ep) })
				switch {
				case err != nil:
					c.err = err
				case len(ms.Errors) > 0:
					c.err = errors.New(strings.Join(ms.Errors, "; "))
				default:
					c.applied = ms.RaftAppliedIndex
				}
			}(&cands[len(cands)-1], memberEndpoint(m))
		}
	}
	wg.Wait()
	var to, best uint64
	var why []string
	for _, c := range cands {
		if c.err != nil {
			why = append(why, fmt.Sprintf("%x: %v", c.id, c.err))
			continue
		}
		if to == 0 || c.applied > best {
			to, best = c.id, c.applied
		}
	}
	if to == 0 {
		return 0, fmt.Errorf("no healthy voting member to hand leadership to (%s)", strings.Join(why, "; "))
	}
	var last error
	for try := 1; try <= handOffTries; try++ {
		_, err := withTimeout(ctx, a.RequestTimeout(), func(c context.Context) (*clientv3.MoveLeaderResponse, error) { return local.MoveLeader(c, to) })
		// Whatever the answer, the leader's own view decides: raft may have completed the
		// transfer after the call's deadline, or given it up after a success was sent.
		if id := a.leaderOtherThan(ctx, local, self); id != 0 {
			a.logf("rollout: leadership moved to %x", id)
			return id, nil
		}
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		last = fmt.Errorf("leadership did not move to %x", to)
		if err != nil {
			last = fmt.Errorf("moving leadership to %x: %w", to, err)
		}
		a.logf("rollout: handing leadership to %x, try %d of %d: %v", to, try, handOffTries, last)
	}
	return 0, last
}

// leaderOtherThan waits up to 4 dial timeouts for the local member to see a leader other
// than self, and returns it (0 if none).
func (a *Agent) leaderOtherThan(ctx context.Context, local *clientv3.Client, self uint64) uint64 {
	wait, cancel := context.WithTimeout(ctx, a.RequestTimeout())
	defer cancel()
	for {
		st, err := local.Status(wait, a.Cfg.LocalClientURL)
		if err == nil && st.Leader != self && st.Leader != 0 {
			return st.Leader
		}
		select {
		case <-wait.Done():
			return 0
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// CompareHash checks that this member holds the same data as a peer: both members'
// HashKV at one common revision (a linearizable read's), retried while a member has not
// applied it yet. It returns the revision compared.
func (a *Agent) CompareHash(ctx context.Context, cli *clientv3.Client) (int64, error) {
	cctx, cancel := context.WithTimeout(ctx, a.RequestTimeout())
	defer cancel()
	get, err := cli.Get(cctx, rolloutProbe+a.Cfg.Name)
	if err != nil {
		return 0, err
	}
	rev := get.Header.Revision
	eps := append([]string{a.Cfg.LocalClientURL}, a.peerClientURLs()...)
	var first *clientv3.HashKVResponse
	var mismatched []string
	for i, ep := range eps {
		var hr *clientv3.HashKVResponse
		for {
			hr, err = cli.HashKV(cctx, ep, rev)
			if err == nil || !errors.Is(err, rpctypes.ErrFutureRev) && !strings.Contains(err.Error(), "future revision") {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			if i == 0 {
				return rev, fmt.Errorf("HashKV of this member at revision %d: %w", rev, err)
			}
			continue // a peer that does not answer is asked no more; another must
		}
		if first == nil {
			first = hr
			continue
		}
		if hr.Hash == first.Hash && hr.CompactRevision == first.CompactRevision {
			return rev, nil
		}
		mismatched = append(mismatched, fmt.Sprintf("%s: hash %d (compacted at %d)", ep, hr.Hash, hr.CompactRevision))
	}
	if len(mismatched) > 0 {
		return rev, fmt.Errorf("this member's data differs at revision %d: hash %d (compacted at %d), %s", rev, first.Hash, first.CompactRevision, strings.Join(mismatched, ", "))
	}
	return rev, fmt.Errorf("no peer answered HashKV at revision %d", rev)
}

// RolloutLock is the cluster-wide reboot lock: an etcd mutex held by a lease that outlives
// the holder's reboot (its TTL) but not a node that never comes back.
type RolloutLock struct {
	Lease   clientv3.LeaseID
	session *concurrency.Session
	mutex   *concurrency.Mutex
}

// AcquireRolloutLock waits (FIFO) for the reboot lock; ttl bounds how long the lock
// outlives its holder once Orphan stops renewing it.
func (a *Agent) AcquireRolloutLock(ctx context.Context, cli *clientv3.Client, ttl time.Duration) (*RolloutLock, error) {
	s, err := concurrency.NewSession(cli, concurrency.WithTTL(int(ttl/time.Second)), concurrency.WithContext(ctx))
	if err != nil {
		return nil, err
	}
	m := concurrency.NewMutex(s, rolloutLock)
	if err := m.Lock(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return &RolloutLock{Lease: s.Lease(), session: s, mutex: m}, nil
}

// TryRolloutLock takes the reboot lock only if nobody holds or waits for it
// (concurrency.ErrLocked otherwise), for work that can wait for its next pass.
func (a *Agent) TryRolloutLock(ctx context.Context, cli *clientv3.Client, ttl time.Duration) (*RolloutLock, error) {
	s, err := concurrency.NewSession(cli, concurrency.WithTTL(int(ttl/time.Second)), concurrency.WithContext(ctx))
	if err != nil {
		return nil, err
	}
	m := concurrency.NewMutex(s, rolloutLock)
	if err := m.TryLock(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return &RolloutLock{Lease: s.Lease(), session: s, mutex: m}, nil
}

// ReattachRolloutLock takes back the lock held under lease (after this node's reboot):
// an error when the lease expired meanwhile or another holder is first.
func (a *Agent) ReattachRolloutLock(ctx context.Context, cli *clientv3.Client, lease clientv3.LeaseID) (*RolloutLock, error) {
	ttl, err := cli.TimeToLive(ctx, lease)
	if err != nil {
		return nil, err
	}
	if ttl.TTL <= 0 {
		return nil, fmt.Errorf("the reboot lock's lease %x has expired", int64(lease))
	}
	s, err := concurrency.NewSession(cli, concurrency.WithLease(lease), concurrency.WithContext(ctx))
	if err != nil {
		return nil, err
	}
	m := concurrency.NewMutex(s, rolloutLock)
	if err := m.TryLock(ctx); err != nil {
		s.Orphan()
		return nil, fmt.Errorf("the reboot lock under lease %x: %w", int64(lease), err)
	}
	return &RolloutLock{Lease: lease, session: s, mutex: m}, nil
}

// Orphan stops renewing the lock's lease (right before the reboot): the lock stays held
// until the node takes it back or the lease's TTL runs out.
func (l *RolloutLock) Orphan() { l.session.Orphan() }

// Release gives the lock up and revokes its lease.
func (l *RolloutLock) Release(ctx context.Context) error {
	err := l.mutex.Unlock(ctx)
	return errors.Join(err, l.session.Close())
}

// Holders lists the lease IDs waiting for or holding the lock, first the holder.
func RolloutLockHolders(ctx context.Context, cli *clientv3.Client) ([]int64, error) {
	resp, err := cli.Get(ctx, rolloutLock, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend))
	if err != nil {
		return nil, err
	}
	var out []int64
	for _, kv := range resp.Kvs {
		out = append(out, kv.Lease)
	}
	return slices.Clip(out), nil
}
