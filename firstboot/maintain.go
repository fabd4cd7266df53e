package firstboot

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/etcdbake/etcdbake/spec"
)

// MaintainOptions tune one maintenance pass; zero values take the spec's defaults (etcd's
// own alerts, etcd-druid's pause between members).
type MaintainOptions struct {
	// Defragment this node's member when in use / total < DefragRatio and total - in use
	// > DefragMinFree; at least DefragBetween after the last member's defragmentation.
	DefragRatio   float64
	DefragMinFree int64
	DefragBetween time.Duration
	// QuotaBytes is etcd's quota (the spec's etcd.quotaBackendBytes); a warning is
	// logged at QuotaWarn of it.
	QuotaBytes int64
	QuotaWarn  float64
}

func (o MaintainOptions) withDefaults() MaintainOptions {
	if o.DefragRatio == 0 {
		o.DefragRatio = spec.DefaultDefragRatio
	}
	if o.DefragMinFree == 0 {
		o.DefragMinFree = spec.DefaultDefragMinFreeBytes
	}
	if o.DefragBetween == 0 {
		o.DefragBetween = spec.DefaultDefragBetween
	}
	if o.QuotaWarn == 0 {
		o.QuotaWarn = spec.QuotaWarnRatio
	}
	return o
}

// MaintainReport is what one pass did.
type MaintainReport struct {
	// Repaired lists what a NOSPACE repair did (empty: none was needed or this node is
	// not the one to do it).
	Repaired []string `json:"repaired,omitempty"`
	// Defragmented is this member's defragmentation (nil: none).
	Defragmented *spec.DefragRecord `json:"defragmented,omitempty"`
	// Skipped says why nothing was done when something was due.
	Skipped  string   `json:"skipped,omitempty"`
	Warnings []string `json:"warnings,omitempty"`
}

// Maintain is one pass of the node's maintenance (`etcd-firstboot maintain`, run by a
// timer on every node):
//
//   - NOSPACE raised: the leader's node repairs it (compaction at the current revision,
//     every member defragmented, followers first, the alarm disarmed); under NOSPACE the
//     cluster takes no writes, so the lock (a write) cannot be taken: one node, the
//     leader's, acts;
//   - otherwise this node's own member is defragmented when fragmented, under the
//     cluster's lock (the rollouts' reboot lock: never during another node's reboot or
//     defragmentation), at least DefragBetween after the last member's, followers first:
//     the leader's node waits while a follower is fragmented, then hands leadership to a
//     caught-up follower before its own;
//   - a database over QuotaWarn of the quota is logged as a warning.
func (a *Agent) Maintain(ctx context.Context, o MaintainOptions) (MaintainReport, error) {
	o = o.withDefaults()
	var rep MaintainReport
	cli, err := a.client(a.Endpoints())
	if err != nil {
		return rep, err
	}
	defer cli.Close()
	self, err := withTimeout(ctx, a.RequestTimeout(), func(c context.Context) (*clientv3.StatusResponse, error) {
		return cli.Status(c, a.Cfg.LocalClientURL)
	})
	if err != nil {
		return rep, fmt.Errorf("maintain: this member's status: %w", err)
	}
	alarms, err := withTimeout(ctx, a.RequestTimeout(), func(c context.Context) (*clientv3.AlarmResponse, error) { return cli.AlarmList(c) })
	if err != nil {
		return rep, fmt.Errorf("maintain: listing alarms: %w", err)
	}
	var nospace []*pb.AlarmMember
	for _, al := range alarms.Alarms {
		if al.Alarm == pb.AlarmType_NOSPACE {
			nospace = append(nospace, al)
		}
	}
	if len(nospace) > 0 {
		if self.Leader != self.Header.MemberId {
			rep.Skipped = "NOSPACE raised: the leader's node repairs it"
			return rep, nil
		}
		rep.Repaired, err = a.repairNoSpace(ctx, cli, self, nospace, o)
		return rep, err
	}
	if o.QuotaBytes > 0 && float64(self.DbSize) >= o.QuotaWarn*float64(o.QuotaBytes) {
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("the database is %d%% of the quota (%d of %d bytes): at 100%% etcd raises NOSPACE; a cluster with this much live data needs a larger etcd.quotaBackendBytes",
			100*self.DbSize/o.QuotaBytes, self.DbSize, o.QuotaBytes))
	}
	if !fragmented(self, o) {
		return rep, nil
	}
	rep.Defragmented, rep.Skipped, err = a.defragSelf(ctx, cli, self, o)
	return rep, err
}

func fragmented(st *clientv3.StatusResponse, o MaintainOptions) bool {
	return st.DbSizeInUse > 0 && float64(st.DbSizeInUse) < o.DefragRatio*float64(st.DbSize) && st.DbSize-st.DbSizeInUse > o.DefragMinFree
}

// repairNoSpace compacts at the current revision, defragments every member (followers
// first, this one, the leader, last) and disarms the alarms.
func (a *Agent) repairNoSpace(ctx context.Context, cli *clientv3.Client, self *clientv3.StatusResponse, alarms []*pb.AlarmMember, o MaintainOptions) ([]string, error) {
	var did []string
	rev := self.Header.Revision
	if _, err := withTimeout(ctx, 10*a.dialTimeout(), func(c context.Context) (*clientv3.CompactResponse, error) {
		return cli.Compact(c, rev, clientv3.WithCompactPhysical())
	}); err != nil && !errors.Is(err, rpctypes.ErrCompacted) {
		return did, fmt.Errorf("NOSPACE repair: compacting at revision %d: %w", rev, err)
	}
	did = append(did, fmt.Sprintf("compacted at revision %d", rev))
	ml, err := withTimeout(ctx, a.RequestTimeout(), func(c context.Context) (*clientv3.MemberListResponse, error) { return cli.MemberList(c) })
	if err != nil {
		return did, err
	}
	members := ml.Members
	sort.SliceStable(members, func(i, j int) bool { // followers first, this member last
		return members[i].ID != self.Header.MemberId && members[j].ID == self.Header.MemberId
	})
	var failed []string
	for _, m := range members {
		if len(m.ClientURLs) == 0 || m.IsLearner && m.Name == "" {
			continue
		}
		ep := memberEndpoint(m)
		if m.ID == self.Header.MemberId {
			ep = a.Cfg.LocalClientURL
		}
		before, after, err := a.defragment(ctx, cli, ep)
		if err != nil {
			failed = append(failed, fmt.Sprintf("%s: %v", m.Name, err))
			continue
		}
		did = append(did, fmt.Sprintf("defragmented %s: %d -> %d bytes", m.Name, before, after))
	}
	if len(failed) > 0 {
		// The alarm stays: disarming a member still over its quota only raises it again.
		return did, fmt.Errorf("NOSPACE repair: defragmenting %s; the alarm stays raised, the next pass tries again", strings.Join(failed, "; "))
	}
	for _, al := range alarms {
		if _, err := withTimeout(ctx, a.RequestTimeout(), func(c context.Context) (*clientv3.AlarmResponse, error) {
			return cli.AlarmDisarm(c, &clientv3.AlarmMember{MemberID: al.MemberID, Alarm: al.Alarm})
		}); err != nil {
			return did, fmt.Errorf("NOSPACE repair: disarming %x: %w", al.MemberID, err)
		}
		did = append(did, fmt.Sprintf("disarmed NOSPACE of %x", al.MemberID))
	}
	for _, s := range did {
		a.logf("maintain: %s", s)
	}
	if st, err := cli.Status(ctx, a.Cfg.LocalClientURL); err == nil && o.QuotaBytes > 0 && float64(st.DbSizeInUse) >= o.QuotaWarn*float64(o.QuotaBytes) {
		a.logf("maintain: after the repair the data itself is %d of %d bytes of the quota: NOSPACE will come back; raise etcd.quotaBackendBytes", st.DbSizeInUse, o.QuotaBytes)
	}
	return did, nil
}

// defragment defragments the member at ep and returns its database size before and after.
func (a *Agent) defragment(ctx context.Context, cli *clientv3.Client, ep string) (int64, int64, error) {
	before, err := withTimeout(ctx, a.RequestTimeout(), func(c context.Context) (*clientv3.StatusResponse, error) { return cli.Status(c, ep) })
	if err != nil {
		return 0, 0, err
	}
	// Defragmentation of a large database takes long (about 5 s a GiB): no short bound.
	dctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	if _, err := cli.Defragment(dctx, ep); err != nil {
		return before.DbSize, 0, err
	}
	after, err := withTimeout(ctx, a.RequestTimeout(), func(c context.Context) (*clientv3.StatusResponse, error) { return cli.Status(c, ep) })
	if err != nil {
		return before.DbSize, 0, err
	}
	return before.DbSize, after.DbSize, nil
}

// defragSelf defragments this node's member under the cluster's lock.
func (a *Agent) defragSelf(ctx context.Context, cli *clientv3.Client, self *clientv3.StatusResponse, o MaintainOptions) (*spec.DefragRecord, string, error) {
	lock, err := a.TryRolloutLock(ctx, cli, lockTTL(10*time.Minute))
	if errors.Is(err, concurrency.ErrLocked) {
		return nil, "fragmented, but another node holds the cluster's lock (a rollout or a defragmentation): next pass", nil
	}
	if err != nil {
		return nil, "", err
	}
	defer lock.Release(context.WithoutCancel(ctx))
	var last spec.DefragRecord
	if resp, err := cli.Get(ctx, spec.DefragRecordKey); err != nil {
		return nil, "", err
	} else if len(resp.Kvs) > 0 {
		_ = json.Unmarshal(resp.Kvs[0].Value, &last)
	}
	if wait := last.At.Add(o.DefragBetween).Sub(a.now()); wait > 0 {
		return nil, fmt.Sprintf("fragmented, but %s was defragmented at %s: at least %s between members", last.Node, last.At.Format(time.RFC3339), o.DefragBetween), nil
	}
	wasLeader := self.Leader == self.Header.MemberId
	if wasLeader {
		// Followers first: the leader's member waits while a follower's is fragmented.
		ml, err := cli.MemberList(ctx)
		if err != nil {
			return nil, "", err
		}
		for _, mem := range ml.Members {
			if mem.ID == self.Header.MemberId || mem.IsLearner || len(mem.ClientURLs) == 0 {
				continue
			}
			st, err := cli.Status(ctx, memberEndpoint(mem))
			if err != nil {
				return nil, fmt.Sprintf("fragmented, but this member leads and the follower %s does not answer (%v): followers first", mem.Name, err), nil
			}
			if fragmented(st, o) {
				return nil, fmt.Sprintf("fragmented, but this member leads and the follower %s is fragmented too: followers first", mem.Name), nil
			}
		}
		if _, err := a.HandOffLeadership(ctx, cli); err != nil {
			return nil, "", fmt.Errorf("maintain: moving leadership away before defragmenting: %w", err)
		}
	}
	before, after, err := a.defragment(ctx, cli, a.Cfg.LocalClientURL)
	if err != nil {
		return nil, "", fmt.Errorf("maintain: defragmenting: %w", err)
	}
	rec := &spec.DefragRecord{Node: a.Cfg.Name, At: a.now().UTC(), Before: before, After: after, InUse: self.DbSizeInUse, Leader: wasLeader}
	b, _ := json.Marshal(rec)
	if _, err := cli.Put(ctx, spec.DefragRecordKey, string(b)); err != nil {
		return rec, "", err
	}
	a.logf("maintain: defragmented this member (leader before: %v): %d -> %d bytes (%d in use)", wasLeader, before, after, self.DbSizeInUse)
	return rec, "", nil
}
