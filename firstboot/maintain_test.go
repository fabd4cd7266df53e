package firstboot

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
)

// maintainAll runs one pass on every node at once, as their timers would; a pass that
// fails is an error of the test when strict (else it is logged: the next pass retries).
func (fc *fbCluster) maintainAll(ctx context.Context, o MaintainOptions, strict bool) map[string]MaintainReport {
	fc.t.Helper()
	var mu sync.Mutex
	out := map[string]MaintainReport{}
	var wg sync.WaitGroup
	for name, a := range fc.agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rep, err := a.Maintain(ctx, o)
			if err != nil && strict {
				fc.t.Errorf("%s: maintain: %v", name, err)
			} else if err != nil {
				fc.t.Logf("%s: maintain (the next pass retries): %v", name, err)
			}
			mu.Lock()
			out[name] = rep
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

// TestMaintainRepairsNOSPACE: a real cluster with a 4 MiB quota is written until etcd
// raises NOSPACE; one pass on every node: the leader's node compacts, defragments every
// member and disarms, the others leave it to it; writes are taken again and every
// acknowledged write is there.
func TestMaintainRepairsNOSPACE(t *testing.T) {
	fc := newFBCluster(t, "nospace", 101)
	const quota = 4 << 20
	fc.configure = func(c *embed.Config) { c.QuotaBackendBytes = quota }
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	fc.bootAll(ctx, "m1", "m2", "m3")
	cli := fc.admin()
	acked := map[string]string{}
	value := strings.Repeat("v", 64<<10)
	var full error
	var maybeKey, maybeValue string // the write that got NOSPACE: etcd applies it, then answers NOSPACE
	for i := 0; i < 1000 && full == nil; i++ {
		k, v := fmt.Sprintf("/k/%d", i%8), fmt.Sprintf("%d:%s", i, value)
		if _, err := cli.Put(ctx, k, v); err != nil {
			full, maybeKey, maybeValue = err, k, v
			break
		}
		acked[k] = v
	}
	if !errors.Is(full, rpctypes.ErrNoSpace) {
		t.Fatalf("writing 64 KiB values into a %d-byte quota ended with %v, want NOSPACE", quota, full)
	}
	reps := fc.maintainAll(ctx, MaintainOptions{QuotaBytes: quota}, true)
	repaired := 0
	for name, rep := range reps {
		t.Logf("%s: repaired %v, skipped %q", name, rep.Repaired, rep.Skipped)
		if len(rep.Repaired) > 0 {
			repaired++
			all := strings.Join(rep.Repaired, "; ")
			for _, w := range []string{"compacted at revision", "defragmented m1", "defragmented m2", "defragmented m3", "disarmed NOSPACE"} {
				if !strings.Contains(all, w) {
					t.Errorf("%s: the repair did not say %q: %s", name, w, all)
				}
			}
		} else if !strings.Contains(rep.Skipped, "the leader's node repairs it") {
			t.Errorf("%s: neither repaired nor left it to the leader's node: %+v", name, rep)
		}
	}
	if repaired != 1 {
		t.Fatalf("%d nodes repaired NOSPACE, want exactly one (the leader's)", repaired)
	}
	if al, err := cli.AlarmList(ctx); err != nil || len(al.Alarms) != 0 {
		t.Fatalf("alarms after the repair: %v %v", al, err)
	}
	if _, err := cli.Put(ctx, "/after", "taken"); err != nil {
		t.Fatalf("a write after the repair: %v", err)
	}
	for k, v := range acked {
		resp, err := cli.Get(ctx, k)
		if err == nil && len(resp.Kvs) == 1 && k == maybeKey && string(resp.Kvs[0].Value) == maybeValue {
			continue
		}
		if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != v {
			got := ""
			if err == nil && len(resp.Kvs) == 1 {
				got = string(resp.Kvs[0].Value)[:8]
			}
			t.Errorf("%s after the repair: %v, %q..., want the last acknowledged value %q...", k, err, got, v[:8])
		}
	}
	// Nothing raised: a pass does nothing.
	for name, rep := range fc.maintainAll(ctx, MaintainOptions{QuotaBytes: quota}, true) {
		if len(rep.Repaired) > 0 || rep.Defragmented != nil {
			t.Errorf("%s: a pass on a healthy cluster did %+v", name, rep)
		}
	}
}

// TestMaintainDefragmentsOneAtATime: every member made fragmented (32 KiB values
// written, deleted, compacted); passes on every node at once until each is
// defragmented: one member at a time, at least DefragBetween apart, the leader's last
// and only after it handed leadership to a follower (one leader change).
func TestMaintainDefragmentsOneAtATime(t *testing.T) {
	fc := newFBCluster(t, "defrag", 105)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	fc.bootAll(ctx, "m1", "m2", "m3")
	cli := fc.admin()
	value := strings.Repeat("d", 32<<10)
	for i := 0; i < 200; i++ {
		if _, err := cli.Put(ctx, fmt.Sprintf("/frag/%03d", i), value); err != nil {
			t.Fatal(err)
		}
	}
	del, err := cli.Delete(ctx, "/frag/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, del.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	o := MaintainOptions{DefragMinFree: 1 << 20, DefragBetween: 2 * time.Second}.withDefaults()
	// The compaction reaches every member (as the periodic one has long before a pass);
	// bbolt releases the freed pages at the next commits: a few writes, as a live cluster
	// always has.
	for _, ep := range fc.tc.Spec.ClientEndpoints() {
		for end := time.Now().Add(20 * time.Second); ; {
			if _, err := cli.Put(ctx, "/tick", time.Now().String()); err != nil {
				t.Fatal(err)
			}
			st, err := cli.Status(ctx, ep)
			if err != nil {
				t.Fatal(err)
			}
			if fragmented(st, o) {
				break
			}
			if time.Now().After(end) {
				t.Fatalf("%s never fragmented: %d of %d in use", ep, st.DbSizeInUse, st.DbSize)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	leaderOf := func() (uint64, uint64) {
		st, err := cli.Status(ctx, fc.tc.Spec.ClientEndpoints()[0])
		if err != nil {
			t.Fatal(err)
		}
		return st.Leader, st.RaftTerm
	}
	leader0, term0 := leaderOf()
	names := map[uint64]string{}
	voters, _ := fc.members(ctx)
	for n, id := range voters {
		names[id] = n
	}
	done := map[string]time.Time{}
	var recs []string
	for pass := 0; len(done) < 3 && pass < 100; pass++ {
		for name, rep := range fc.maintainAll(ctx, o, false) {
			if r := rep.Defragmented; r != nil {
				if _, again := done[name]; again {
					t.Errorf("%s defragmented twice", name)
				}
				done[name] = r.At
				recs = append(recs, fmt.Sprintf("%s at %s leader %v %d->%d", name, r.At.Format("15:04:05.000"), r.Leader, r.Before, r.After))
				if r.After >= r.Before || r.InUse <= 0 {
					t.Errorf("%s: %d -> %d bytes (%d in use): not defragmented", name, r.Before, r.After, r.InUse)
				}
				if r.Leader != (name == names[leader0]) {
					t.Errorf("%s: record says leader %v; the leader was %s", name, r.Leader, names[leader0])
				}
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("defragmentations: %s", strings.Join(recs, "; "))
	if len(done) != 3 {
		t.Fatalf("%d members defragmented after the passes, want 3", len(done))
	}
	var last string
	for n, at := range done {
		if last == "" || at.After(done[last]) {
			last = n
		}
		for m, bt := range done {
			if m != n && at.Sub(bt) >= 0 && at.Sub(bt) < o.DefragBetween {
				t.Errorf("%s defragmented %s after %s: less than %s apart", n, at.Sub(bt), m, o.DefragBetween)
			}
		}
	}
	if last != names[leader0] {
		t.Errorf("the last member defragmented is %s, want the leader's %s", last, names[leader0])
	}
	leader1, term1 := leaderOf()
	if leader1 == leader0 || term1 != term0+1 {
		t.Errorf("leader %x term %d -> %x term %d: want exactly one hand-off away from the leader", leader0, term0, leader1, term1)
	}
}
