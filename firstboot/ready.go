package firstboot

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdbake/etcdbake/spec"
)

// ReadyResult is what the health gate saw.
type ReadyResult struct {
	Decision  string        `json:"decision"` // "ready" or "not ready"
	MemberID  string        `json:"memberID"`
	ClusterID string        `json:"clusterID"`
	Promoted  bool          `json:"promoted"`
	Voters    int           `json:"voters"`
	Learners  int           `json:"learners"`
	Took      time.Duration `json:"took"`
	Message   string        `json:"message"`
}

// FlannelResult is the outcome of seeding flannel's network config.
type FlannelResult struct {
	Decision string `json:"decision"` // created, present, conflict, overwritten
	Key      string `json:"key"`
	Wanted   string `json:"wanted"`
	Existing string `json:"existing,omitempty"`
	Revision int64  `json:"revision"`
	Message  string `json:"message"`
}

// probe GETs one of etcd's health endpoints on the local member over mutual TLS.
func (a *Agent) probe(ctx context.Context, path string) error {
	tc, err := a.tlsConfig()
	if err != nil {
		return err
	}
	hc := &http.Client{Timeout: a.dialTimeout(), Transport: &http.Transport{TLSClientConfig: tc}}
	defer hc.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.Cfg.LocalClientURL+path+"?verbose", nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s: %s", path, resp.Status, bytes.TrimSpace(body))
	}
	return nil
}

// waitFor retries f until it succeeds or the deadline passes, logging what it waits for.
func (a *Agent) waitFor(ctx context.Context, deadline time.Time, what string, f func() error) error {
	start, lastLog := a.now(), time.Time{}
	for {
		err := f()
		if err == nil {
			return nil
		}
		if !a.now().Before(deadline) {
			return fmt.Errorf("%s: gave up after %s: %w", what, a.now().Sub(start).Round(time.Second), err)
		}
		if a.now().Sub(lastLog) >= 5*time.Second {
			a.logf("health: waiting for %s (%s so far): %v", what, a.now().Sub(start).Round(time.Second), err)
			lastLog = a.now()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(a.retryEvery()):
		}
	}
}

// Ready is the health gate: the local member is live, a learner is promoted once caught
// up, the local member is ready (including a linearizable read, i.e. quorum), flannel's
// config is seeded, and the markers and status are written.
func (a *Agent) Ready(ctx context.Context) (ReadyResult, FlannelResult, error) {
	start := a.now()
	deadline := start.Add(a.readyTimeout())
	res := ReadyResult{Decision: "not ready"}
	var fl FlannelResult
	// The boot record reads the ESP, an automount: its first access mounts it, which
	// takes seconds on an emulated machine. It needs nothing from etcd, so it is read
	// while the gate waits for etcd, and published once the gate has passed.
	type bootRecord struct {
		r   *spec.NodeRecord
		err error
	}
	recc := make(chan bootRecord, 1)
	go func() {
		r, err := a.BootRecord()
		recc <- bootRecord{r, err}
	}()
	if err := a.waitFor(ctx, deadline, "the local member to be live (/livez)", func() error { return a.probe(ctx, "/livez") }); err != nil {
		res.Message = err.Error()
		return res, fl, err
	}
	cli, err := a.client(a.Endpoints())
	if err != nil {
		return res, fl, err
	}
	defer cli.Close()

	// Find this member; promote it while it is a learner.
	var self uint64
	err = a.waitFor(ctx, deadline, "this member to be a voting member", func() error {
		ml, err := withTimeout(ctx, 2*a.dialTimeout(), func(c context.Context) (*clientv3.MemberListResponse, error) { return cli.MemberList(c) })
		if err != nil {
			return err
		}
		m := findSelf(ml.Members, a.Cfg)
		if m == nil {
			return fmt.Errorf("this node (%s) is not in the member list", a.Cfg.PeerURL)
		}
		self = m.ID
		res.ClusterID = hexID(ml.Header.ClusterId)
		if !m.IsLearner {
			return nil
		}
		_, err = withTimeout(ctx, 2*a.dialTimeout(), func(c context.Context) (*clientv3.MemberPromoteResponse, error) { return cli.MemberPromote(c, m.ID) })
		switch {
		case err == nil:
			res.Promoted = true
			a.logf("health: promoted learner %x to voting member", m.ID)
			return nil
		case errors.Is(err, rpctypes.ErrMemberNotLearner):
			return nil // promoted meanwhile
		case errors.Is(err, rpctypes.ErrMemberLearnerNotReady):
			return fmt.Errorf("learner %x is still catching up with the leader", m.ID)
		}
		return err
	})
	if err != nil {
		res.Message = err.Error()
		return res, fl, err
	}
	res.MemberID = hexID(self)
	if err := a.waitFor(ctx, deadline, "the local member to be ready with quorum (/readyz)", func() error { return a.probe(ctx, "/readyz") }); err != nil {
		res.Message = err.Error()
		return res, fl, err
	}
	ml, err := withTimeout(ctx, 2*a.dialTimeout(), func(c context.Context) (*clientv3.MemberListResponse, error) { return cli.MemberList(c) })
	if err != nil {
		return res, fl, fmt.Errorf("member list after readiness: %w", err)
	}
	for _, m := range ml.Members {
		if m.IsLearner {
			res.Learners++
		} else {
			res.Voters++
		}
	}
	fl, err = a.SeedFlannel(ctx, cli)
	if err != nil {
		return res, fl, err
	}
	// What this boot runs (A/B slot, release, fallback), for `etcdbake status`; a failure
	// here does not hold the node back.
	if rec := <-recc; rec.err != nil {
		a.logf("health: reading this node's boot record: %v", rec.err)
	} else if err := a.publishRecord(ctx, cli, rec.r); err != nil {
		a.logf("health: publishing this node's boot record: %v", err)
	}
	marker := Marker{Cluster: a.Cfg.Cluster, Token: a.Cfg.Token, ClusterID: res.ClusterID, MemberID: res.MemberID, Name: a.Cfg.Name, Written: a.now().UTC()}
	if err := a.writeMarkerOnce(filepath.Join(a.Cfg.DataDir, DataMarkerName), marker, 0o600); err != nil {
		return res, fl, err
	}
	if err := a.writeMarkerOnce(filepath.Join(a.Cfg.StateDir, StateMarkerName), marker, 0o644); err != nil {
		return res, fl, err
	}
	res.Decision = "ready"
	res.Took = a.now().Sub(start)
	res.Message = fmt.Sprintf("member %s of cluster %s is ready: %d voting member(s), %d learner(s)", res.MemberID, res.ClusterID, res.Voters, res.Learners)
	a.logf("health: %s (after %s)", res.Message, res.Took.Round(time.Millisecond))
	return res, fl, nil
}

// writeMarkerOnce writes a marker unless an identical identity is already recorded, so
// a second run changes nothing.
func (a *Agent) writeMarkerOnce(path string, m Marker, mode os.FileMode) error {
	var old Marker
	if ok, err := readJSON(path, &old); err == nil && ok {
		if old.ClusterID == m.ClusterID && old.MemberID == m.MemberID && old.Name == m.Name && old.Token == m.Token {
			return nil
		}
	}
	if err := writeJSON(path, m, mode); err != nil {
		return fmt.Errorf("writing marker %s: %w", path, err)
	}
	return nil
}

// SeedFlannel creates <prefix>/config only if it does not exist (one transaction, so all
// nodes may do it at once). A different existing value is never overwritten unless the
// spec says flannel.overwrite.
func (a *Agent) SeedFlannel(ctx context.Context, cli *clientv3.Client) (FlannelResult, error) {
	key, want := a.Cfg.Flannel.Key, string(a.Cfg.Flannel.Config)
	res := FlannelResult{Key: key, Wanted: want}
	txn, err := withTimeout(ctx, 2*a.dialTimeout(), func(c context.Context) (*clientv3.TxnResponse, error) {
		return cli.Txn(c).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, want)).Else(clientv3.OpGet(key)).Commit()
	})
	if err != nil {
		return res, fmt.Errorf("seeding flannel config %s: %w", key, err)
	}
	if txn.Succeeded {
		res.Decision, res.Revision = "created", txn.Header.Revision
		res.Message = fmt.Sprintf("created %s at revision %d", key, res.Revision)
		a.logf("flannel: %s", res.Message)
		return res, nil
	}
	kv := txn.Responses[0].GetResponseRange().Kvs[0]
	res.Existing, res.Revision = string(kv.Value), kv.ModRevision
	if jsonEqual(kv.Value, a.Cfg.Flannel.Config) {
		res.Decision = "present"
		res.Message = fmt.Sprintf("%s already holds the spec's config (revision %d)", key, kv.CreateRevision)
		a.logf("flannel: %s", res.Message)
		return res, nil
	}
	if !a.Cfg.Flannel.Overwrite {
		res.Decision = "conflict"
		res.Message = fmt.Sprintf("%s holds %s but the spec wants %s: left unchanged (set flannel.overwrite: true in the spec to replace it)", key, res.Existing, want)
		a.logf("flannel: CONFLICT: %s", res.Message)
		return res, nil
	}
	put, err := withTimeout(ctx, 2*a.dialTimeout(), func(c context.Context) (*clientv3.TxnResponse, error) {
		return cli.Txn(c).If(clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision)).Then(clientv3.OpPut(key, want)).Commit()
	})
	if err != nil {
		return res, fmt.Errorf("overwriting flannel config %s: %w", key, err)
	}
	if !put.Succeeded {
		return res, fmt.Errorf("flannel config %s changed while it was being replaced: retrying", key)
	}
	res.Decision, res.Revision = "overwritten", put.Header.Revision
	res.Message = fmt.Sprintf("%s held %s; replaced with %s as flannel.overwrite asks", key, res.Existing, want)
	a.logf("flannel: %s", res.Message)
	return res, nil
}

func jsonEqual(a, b []byte) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return bytes.Equal(a, b)
	}
	xb, _ := json.Marshal(x)
	yb, _ := json.Marshal(y)
	return bytes.Equal(xb, yb)
}
