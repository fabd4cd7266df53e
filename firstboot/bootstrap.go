package firstboot

import (
	"context"
	"crypto/sha1"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdbake/etcdbake/spec"
)

// Bootstrap decisions.
const (
	DecisionRestart = "restart" // the data dir holds this member: etcd restarts from it
	DecisionNew     = "new"     // static bootstrap of the spec's member list
	DecisionJoin    = "join"    // already a member (added earlier) that has never started
	DecisionReplace = "replace" // data lost: stale member removed, added back as a learner
	DecisionRefuse  = "refuse"  // etcd must not start now; the unit fails and retries
)

// Marker files. The data-dir marker says which cluster a data dir belongs to; the state
// marker, kept off etcd's data dir, says this node's cluster has been bootstrapped.
const (
	DataMarkerName  = "etcdbake.json"
	StateMarkerName = "bootstrapped.json"
)

// Marker records a member's identity once the health gate has passed.
type Marker struct {
	Cluster   string    `json:"cluster"`
	Token     string    `json:"token"`
	ClusterID string    `json:"clusterID"`
	MemberID  string    `json:"memberID"`
	Name      string    `json:"name"`
	Written   time.Time `json:"written"`
}

// BootstrapResult is what the bootstrap phase decided and why.
type BootstrapResult struct {
	Decision          string        `json:"decision"`
	Reason            string        `json:"reason"`
	State             string        `json:"state,omitempty"` // initial-cluster-state written
	InitialCluster    string        `json:"initialCluster,omitempty"`
	ExpectedClusterID string        `json:"expectedClusterID"`
	FoundClusterID    string        `json:"foundClusterID,omitempty"`
	RemovedMemberID   string        `json:"removedMemberID,omitempty"`
	AddedMemberID     string        `json:"addedMemberID,omitempty"`
	Took              time.Duration `json:"took"`
}

// StaticMemberID is the member ID etcd gives a member of the initial static cluster.
func StaticMemberID(peerURL, token string) uint64 {
	h := sha1.Sum([]byte(peerURL + token))
	return binary.BigEndian.Uint64(h[:8])
}

// ExpectedClusterID is the cluster ID etcd derives from the static member list and token:
// it never changes afterwards, so it identifies "this" cluster across replacements.
func ExpectedClusterID(nc *spec.NodeConfig) uint64 {
	ids := make([]uint64, len(nc.Peers))
	for i, p := range nc.Peers {
		ids[i] = StaticMemberID(p.PeerURL, nc.Token)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	b := make([]byte, 8*len(ids))
	for i, id := range ids {
		binary.BigEndian.PutUint64(b[8*i:], id)
	}
	h := sha1.Sum(b)
	return binary.BigEndian.Uint64(h[:8])
}

func hexID(id uint64) string { return fmt.Sprintf("%x", id) }

// dataDirHasMember reports whether etcd has data in the data dir (a WAL or a backend).
func dataDirHasMember(dir string) bool {
	wals, _ := filepath.Glob(filepath.Join(dir, "member", "wal", "*.wal"))
	if len(wals) > 0 {
		return true
	}
	_, err := os.Stat(filepath.Join(dir, "member", "snap", "db"))
	return err == nil
}

// RefusalError is a refusal to start etcd, with the reason worded for the operator.
type RefusalError struct{ Reason string }

func (e *RefusalError) Error() string { return "etcd is not started: " + e.Reason }

// Bootstrap decides how etcd starts and writes the environment file etcd.service reads.
// On refusal the file is removed, so etcd cannot start with a stale decision.
func (a *Agent) Bootstrap(ctx context.Context) (BootstrapResult, error) {
	start := a.now()
	res, err := a.decide(ctx)
	res.Took = a.now().Sub(start)
	if err != nil {
		res.Decision, res.Reason = DecisionRefuse, err.Error()
		_ = os.Remove(a.Cfg.BootstrapEnv)
		a.logf("bootstrap: refuse after %s: %s", res.Took.Round(time.Millisecond), res.Reason)
		return res, err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# etcd-firstboot bootstrap decision for %s: %s\n# %s\n", a.Cfg.Name, res.Decision, res.Reason)
	fmt.Fprintf(&b, "ETCD_INITIAL_CLUSTER_STATE=%s\n", res.State)
	if res.InitialCluster != "" {
		fmt.Fprintf(&b, "ETCD_INITIAL_CLUSTER=%s\n", res.InitialCluster)
	}
	if err := writeFileAtomic(a.Cfg.BootstrapEnv, []byte(b.String()), 0o644); err != nil {
		return res, fmt.Errorf("writing %s: %w", a.Cfg.BootstrapEnv, err)
	}
	a.logf("bootstrap: %s in %s: %s", res.Decision, res.Took.Round(time.Millisecond), res.Reason)
	return res, nil
}

func (a *Agent) staticInitialCluster() string {
	parts := make([]string, len(a.Cfg.Peers))
	for i, p := range a.Cfg.Peers {
		parts[i] = p.Name + "=" + p.PeerURL
	}
	return strings.Join(parts, ",")
}

// restoreHint ends the refusals that only an operator can end.
const restoreHint = "If a majority of the members lost their data, the cluster cannot heal by itself: " +
	"restore it as the README's \"Restoring after losing a majority\" describes " +
	"(etcd --force-new-cluster once on a member that kept its data, or images from a snapshot: etcdbake restore SNAPSHOT)"

func (a *Agent) decide(ctx context.Context) (BootstrapResult, error) {
	nc := a.Cfg
	expected := ExpectedClusterID(nc)
	res := BootstrapResult{ExpectedClusterID: hexID(expected)}

	var dm Marker
	hasMarker, err := readJSON(filepath.Join(nc.DataDir, DataMarkerName), &dm)
	if err != nil {
		return res, &RefusalError{Reason: fmt.Sprintf("the data dir marker is unreadable (%v): nothing is deleted; inspect %s", err, nc.DataDir)}
	}
	if dataDirHasMember(nc.DataDir) {
		if hasMarker {
			res.FoundClusterID = dm.ClusterID
			if dm.ClusterID != hexID(expected) || dm.Token != nc.Token || dm.Name != nc.Name {
				return res, &RefusalError{Reason: fmt.Sprintf(
					"data dir %s belongs to member %q of cluster %s (token %q), but this node is %q of cluster %s (token %q); "+
						"it is never deleted automatically: if it is really stale, move it away and reboot, and etcd-firstboot will replace this member",
					nc.DataDir, dm.Name, dm.ClusterID, dm.Token, nc.Name, hexID(expected), nc.Token)}
			}
			res.Decision, res.State = DecisionRestart, "existing"
			res.Reason = fmt.Sprintf("data dir %s holds member %s of cluster %s", nc.DataDir, dm.MemberID, dm.ClusterID)
			return res, nil
		}
		res.Decision, res.State = DecisionRestart, "existing"
		res.Reason = fmt.Sprintf("data dir %s holds a member but no etcdbake marker yet (first start not completed); etcd itself checks the cluster ID with its peers", nc.DataDir)
		return res, nil
	}

	// No data: has this cluster ever been bootstrapped?
	var sm Marker
	bootstrapped, err := readJSON(filepath.Join(nc.StateDir, StateMarkerName), &sm)
	if err != nil {
		return res, &RefusalError{Reason: fmt.Sprintf("the bootstrap marker is unreadable: %v", err)}
	}
	view, err := a.peerView(ctx)
	if err != nil {
		return res, err
	}
	if view == nil {
		if bootstrapped {
			return res, &RefusalError{Reason: fmt.Sprintf(
				"the data dir %s is empty, the cluster was bootstrapped before (marker %s, member %s of cluster %s), and no peer answers: "+
					"waiting for the other members; a new cluster is never started here. "+restoreHint,
				nc.DataDir, filepath.Join(nc.StateDir, StateMarkerName), sm.MemberID, sm.ClusterID)}
		}
		// Fresh, or wiped with the marker: only every member being fresh at once tells.
		missing, err := a.rendezvous(ctx)
		if err != nil {
			return res, &RefusalError{Reason: fmt.Sprintf("the bootstrap rendezvous failed (%v): nothing is started", err)}
		}
		if len(missing) > 0 {
			return res, &RefusalError{Reason: fmt.Sprintf(
				"the data dir %s is empty and no peer reports a cluster, but a new cluster starts only when every member is fresh at once, and %s did not answer the bootstrap rendezvous within %s "+
					"(at a first boot they are still starting: this is retried; a member that kept its data never answers, so a node whose disk was wiped waits here instead of starting a second cluster). %s",
				nc.DataDir, strings.Join(missing, ", "), a.rendezvousWindow(), restoreHint)}
		}
		res.Decision, res.State = DecisionNew, "new"
		res.Reason = fmt.Sprintf("empty data dir, no bootstrap marker, no peer reports a cluster, and every member answered the bootstrap rendezvous as fresh: static bootstrap of %d members (cluster %s)", len(nc.Peers), hexID(expected))
		return res, nil
	}
	res.FoundClusterID = hexID(view.clusterID)
	if view.clusterID != expected {
		return res, &RefusalError{Reason: fmt.Sprintf("peer %s answers for cluster %s but this node expects cluster %s (token %q): the spec and the running cluster differ; nothing is started",
			view.endpoint, hexID(view.clusterID), hexID(expected), nc.Token)}
	}
	self := findSelf(view.members, nc)
	switch {
	case self != nil && !started(self) && !self.IsLearner && self.ID == StaticMemberID(nc.PeerURL, nc.Token):
		res.Decision, res.State = DecisionNew, "new"
		res.Reason = fmt.Sprintf("empty data dir; peer %s reports cluster %s where this static member has never started: joining the static bootstrap", view.endpoint, res.FoundClusterID)
		return res, nil
	case self != nil && !started(self):
		res.Decision, res.State = DecisionJoin, "existing"
		res.InitialCluster = a.initialClusterFrom(view.members, self.ID)
		res.Reason = fmt.Sprintf("member %x (learner %v) was added earlier and has never started: joining cluster %s", self.ID, self.IsLearner, res.FoundClusterID)
		return res, nil
	}
	// Replacement: the cluster exists and this node's data is gone.
	cli, err := a.client(a.peerClientURLs())
	if err != nil {
		return res, err
	}
	defer cli.Close()
	// Linearizable member list: proves a quorum is there before changing membership.
	ml, err := withTimeout(ctx, 2*a.dialTimeout(), func(c context.Context) (*clientv3.MemberListResponse, error) { return cli.MemberList(c) })
	if err != nil {
		return res, &RefusalError{Reason: fmt.Sprintf("the data dir %s is empty and cluster %s exists, but it has no quorum reachable (%v): waiting; a new cluster is never started here. %s", nc.DataDir, res.FoundClusterID, err, restoreHint)}
	}
	self = findSelf(ml.Members, nc)
	if self != nil && started(self) {
		a.logf("bootstrap: removing stale member %x (%s) whose data is gone", self.ID, self.Name)
		if _, err := retryUnhealthy(ctx, a, func(c context.Context) (*clientv3.MemberRemoveResponse, error) { return cli.MemberRemove(c, self.ID) }); err != nil {
			return res, &RefusalError{Reason: fmt.Sprintf("removing stale member %x failed: %v; retrying later", self.ID, err)}
		}
		res.RemovedMemberID = hexID(self.ID)
		self = nil
	}
	var members []*etcdserverpb.Member
	if self == nil {
		add, err := retryUnhealthy(ctx, a, func(c context.Context) (*clientv3.MemberAddResponse, error) {
			return cli.MemberAddAsLearner(c, []string{nc.PeerURL})
		})
		if err != nil {
			if errors.Is(err, rpctypes.ErrTooManyLearners) {
				return res, &RefusalError{Reason: "another member is being added as a learner right now (etcd allows one at a time): retrying later"}
			}
			return res, &RefusalError{Reason: fmt.Sprintf("adding this node as a learner failed: %v; retrying later", err)}
		}
		res.AddedMemberID = hexID(add.Member.ID)
		members = add.Members
		self = add.Member
	} else {
		members = ml.Members
	}
	res.Decision, res.State = DecisionReplace, "existing"
	res.InitialCluster = a.initialClusterFrom(members, self.ID)
	res.Reason = fmt.Sprintf("empty data dir but cluster %s exists: replaced this member (removed %q, added learner %s); it is promoted once caught up",
		res.FoundClusterID, res.RemovedMemberID, hexID(self.ID))
	return res, nil
}

// retryUnhealthy retries a membership change that etcd's strict reconfiguration check
// refuses for a while after a member (re)connected ("unhealthy cluster": the leader wants
// a quorum connected for 5 s before changing membership). Other errors return at once.
func retryUnhealthy[T any](ctx context.Context, a *Agent, f func(context.Context) (T, error)) (T, error) {
	deadline := a.now().Add(30 * time.Second)
	for {
		v, err := withTimeout(ctx, 2*a.dialTimeout(), f)
		if err == nil || !errors.Is(err, rpctypes.ErrUnhealthy) || !a.now().Before(deadline) {
			return v, err
		}
		a.logf("bootstrap: etcd refuses the membership change for now (%v): retrying", err)
		select {
		case <-ctx.Done():
			return v, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// started reports whether a member has ever run (it publishes its name and client URLs).
func started(m *etcdserverpb.Member) bool { return m.Name != "" || len(m.ClientURLs) > 0 }

func findSelf(members []*etcdserverpb.Member, nc *spec.NodeConfig) *etcdserverpb.Member {
	for _, m := range members {
		for _, u := range m.PeerURLs {
			if u == nc.PeerURL {
				return m
			}
		}
	}
	for _, m := range members {
		if m.Name == nc.Name {
			return m
		}
	}
	return nil
}

// initialClusterFrom lists every current member as name=peerURL, naming unstarted
// members from the spec (etcd requires the whole member list when joining).
func (a *Agent) initialClusterFrom(members []*etcdserverpb.Member, self uint64) string {
	byURL := map[string]string{}
	for _, p := range a.Cfg.Peers {
		byURL[p.PeerURL] = p.Name
	}
	var parts []string
	for _, m := range members {
		name := m.Name
		if m.ID == self {
			name = a.Cfg.Name
		}
		for _, u := range m.PeerURLs {
			n := name
			if n == "" {
				n = byURL[u]
			}
			if n == "" {
				n = hexID(m.ID)
			}
			parts = append(parts, n+"="+u)
		}
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

type peerView struct {
	endpoint  string
	clusterID uint64
	members   []*etcdserverpb.Member
}

// peerView asks every peer at once (serializable, so a single surviving member answers
// too) whether a cluster exists, and returns the first answer in spec order. nil means no
// peer answered.
func (a *Agent) peerView(ctx context.Context) (*peerView, error) {
	eps := a.peerClientURLs()
	views := make([]*peerView, len(eps))
	errs := make([]error, len(eps))
	var wg sync.WaitGroup
	for i, ep := range eps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cli, err := a.client([]string{ep})
			if err != nil {
				errs[i] = err
				return
			}
			defer cli.Close()
			// One dial timeout for the whole question, as before the connection check.
			pctx, cancel := context.WithTimeout(ctx, a.dialTimeout())
			defer cancel()
			var ml *clientv3.MemberListResponse
			if err = listening(pctx, ep); err == nil {
				ml, err = cli.MemberList(pctx, clientv3.WithSerializable())
			}
			if err != nil {
				a.logf("bootstrap: peer %s: no answer (%v)", ep, err)
				return
			}
			views[i] = &peerView{endpoint: ep, clusterID: ml.Header.ClusterId, members: ml.Members}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err // our own TLS files are unusable: not a statement about peers
	}
	for _, v := range views {
		if v != nil {
			return v, nil
		}
	}
	return nil, nil
}

// listening reports whether anything accepts TCP connections at a client URL's address.
// etcd's client retries a refused connection until its deadline, so without this a peer
// whose etcd is not running (every peer, at a cluster's first boot) would cost the whole
// dial timeout (issue 17: 3-4 s on every node's chain under TCG). A refusal proves that
// no etcd serves there now; an address that does not answer at all (a peer still
// booting) still waits until ctx ends, and one that accepts is asked as before.
func listening(ctx context.Context, clientURL string) error {
	u, err := url.Parse(clientURL)
	if err != nil {
		return fmt.Errorf("client URL %q: %w", clientURL, err)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", u.Host)
	if err != nil {
		return err
	}
	return conn.Close()
}
