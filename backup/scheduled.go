package backup

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/etcdbake/etcdbake/spec"
)

// DefaultFresh is how recent a snapshot must be to count for this run of the schedule when
// its record does not say when the schedule runs next (taken by hand, no timer).
const DefaultFresh = 15 * time.Minute

// ScheduledOptions configure one run of the snapshot schedule on a node.
type ScheduledOptions struct {
	// Endpoints (this member first) and TLS reach the cluster with the node's client
	// certificate.
	Endpoints []string
	TLS       *tls.Config
	// Node and Cluster name this node and the spec's cluster; CA is the cluster CA's
	// certificate file (its fingerprint goes into the manifest).
	Node, Cluster, CA string
	// Dir holds this node's snapshots; Keep of them stay, the oldest go.
	Dir  string
	Keep int
	// Lock takes the cluster's lock (the rollouts' reboot lock), waiting as long as ctx
	// allows; the returned function releases it.
	Lock func(ctx context.Context, cli *clientv3.Client) (release func(), err error)
	// LockWait bounds the wait for the lock (default 15 min: a reboot under the lock).
	LockWait time.Duration
	// Fresh: when the newest snapshot's record has no NextDue, one taken less than this ago
	// counts for this run (DefaultFresh).
	Fresh time.Duration
	// NextDue is when the schedule runs next, recorded with the snapshot (zero: unknown).
	NextDue time.Time
	// Target, when set, gets every snapshot uploaded and keeps Keep of them.
	Target  *Target
	Timeout time.Duration
	Now     func() time.Time
}

// ScheduledReport is what one run did: the snapshot taken, or why none was.
type ScheduledReport struct {
	Taken   *spec.SnapshotRecord `json:"taken,omitempty"`
	Skipped string               `json:"skipped,omitempty"`
	// Removed are the files retention removed (this node's oldest beyond Keep), and
	// RemovedFromTarget the target's objects beyond Keep.
	Removed           []string `json:"removed,omitempty"`
	RemovedFromTarget []string `json:"removedFromTarget,omitempty"`
}

// Scheduled is one run of the snapshot schedule on a node (`etcd-firstboot snapshot`,
// started by a timer on every node at the same calendar times): under the cluster's lock,
// unless this period's snapshot exists (the newest one's record says the schedule runs
// next after now: another node took it), it saves a verified snapshot (Save) into Dir,
// records it at spec.SnapshotRecordKey with NextDue, removes this node's oldest beyond
// Keep and lists what the node keeps at spec.SnapshotNodeKey.
func Scheduled(ctx context.Context, o ScheduledOptions) (*ScheduledReport, error) {
	if o.Timeout == 0 {
		o.Timeout = 5 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Fresh == 0 {
		o.Fresh = DefaultFresh
	}
	if o.LockWait == 0 {
		o.LockWait = 15 * time.Minute
	}
	if o.Keep < 1 {
		return nil, fmt.Errorf("keep %d: at least one snapshot must be kept", o.Keep)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: o.Endpoints, TLS: o.TLS, DialTimeout: o.Timeout, Logger: zap.NewNop()})
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	rep := &ScheduledReport{}
	fresh := func() (bool, error) {
		last, err := LastScheduled(ctx, cli, o.Timeout)
		if err != nil || last == nil {
			return false, err
		}
		now := o.Now()
		// The timers fire at the next run's time or after it, never before: a record
		// whose next run is still ahead is this period's.
		this := now.Before(last.NextDue) || last.NextDue.IsZero() && now.Sub(last.Taken) < o.Fresh
		if this {
			rep.Skipped = fmt.Sprintf("%s took this period's snapshot %s ago (%s, revision %d)", last.Node, now.Sub(last.Taken).Round(time.Second), filepath.Base(last.File), last.Revision)
		}
		return this, nil
	}
	if done, err := fresh(); err != nil || done {
		return rep, err
	}
	lctx, cancel := context.WithTimeout(ctx, o.LockWait)
	release, err := o.Lock(lctx, cli)
	cancel()
	if err != nil {
		return rep, fmt.Errorf("taking the cluster's lock (held by a reboot or another node's maintenance) within %s: %w", o.LockWait, err)
	}
	defer release()
	if done, err := fresh(); err != nil || done {
		return rep, err
	}
	fp, err := CAFingerprint(o.CA)
	if err != nil {
		return rep, fmt.Errorf("the cluster CA: %w", err)
	}
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return rep, err
	}
	path := filepath.Join(o.Dir, spec.SnapshotFileName(o.Cluster, o.Now()))
	m, err := Save(ctx, path, SaveOptions{Endpoints: o.Endpoints, TLS: o.TLS, Cluster: o.Cluster, CAFingerprint: fp,
		By: "schedule on " + o.Node, Timeout: o.Timeout, Now: o.Now})
	if err != nil {
		return rep, err
	}
	rec := spec.SnapshotRecord{Node: o.Node, File: path, Taken: m.Taken, Revision: m.Revision, Size: m.Size, SHA256: m.SHA256, NextDue: o.NextDue}
	rep.Taken = &rec
	var uploadErr error
	if o.Target != nil {
		// A failed upload keeps the local snapshot and is recorded (status warns) and
		// returned (the unit fails); the next period uploads its own.
		if rec.Object, uploadErr = Upload(ctx, *o.Target, path); uploadErr != nil {
			rec.UploadError = uploadErr.Error()
		}
	}
	if err := putJSON(ctx, cli, o.Timeout, spec.SnapshotRecordKey, rec); err != nil {
		return rep, fmt.Errorf("recording the snapshot %s: %w", path, err)
	}
	kept, removed, err := prune(o.Dir, o.Cluster, o.Keep)
	rep.Removed = removed
	if err != nil {
		return rep, fmt.Errorf("removing snapshots beyond the %d kept: %w", o.Keep, err)
	}
	if o.Target != nil && uploadErr == nil {
		if rep.RemovedFromTarget, err = PruneTarget(ctx, *o.Target, o.Cluster, o.Keep); err != nil {
			return rep, fmt.Errorf("removing the target's snapshots beyond the %d kept: %w", o.Keep, err)
		}
	}
	list := spec.NodeSnapshots{Node: o.Node, Updated: o.Now().UTC()}
	for _, f := range kept {
		if f == path {
			list.Snapshots = append(list.Snapshots, rec)
			continue
		}
		km, err := ReadManifest(f)
		if err != nil {
			continue // listed only when readable: `snapshot verify` on the node says why
		}
		list.Snapshots = append(list.Snapshots, spec.SnapshotRecord{Node: o.Node, File: f, Taken: km.Taken, Revision: km.Revision, Size: km.Size, SHA256: km.SHA256})
	}
	if err := putJSON(ctx, cli, o.Timeout, spec.SnapshotNodeKey(o.Node), list); err != nil {
		return rep, fmt.Errorf("listing %s's snapshots: %w", o.Node, err)
	}
	return rep, uploadErr
}

// prune keeps the keep newest snapshot files of cluster in dir (their names sort by time)
// and removes the rest, plus working directories a crashed save left; it returns the kept
// files, newest first, and the removed ones. Other files are never touched.
func prune(dir, cluster string, keep int) (kept, removed []string, err error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, err
	}
	var files []string
	for _, e := range entries {
		name := e.Name()
		switch {
		case e.Type().IsRegular() && strings.HasPrefix(name, cluster+"-") && strings.HasSuffix(name, spec.SnapshotExt):
			files = append(files, filepath.Join(dir, name))
		case e.IsDir() && strings.HasPrefix(name, "."+cluster+"-") && strings.Contains(name, spec.SnapshotExt+"."):
			// Save's working directory (".NAME.snapshot.tar.RANDOM"): only a crashed save
			// leaves one, and saves run one at a time under the lock.
			if err := os.RemoveAll(filepath.Join(dir, name)); err != nil {
				return nil, nil, err
			}
		}
	}
	slices.Sort(files)
	slices.Reverse(files)
	for i, f := range files {
		if i < keep {
			kept = append(kept, f)
			continue
		}
		if err := os.Remove(f); err != nil {
			return kept, removed, err
		}
		removed = append(removed, f)
	}
	return kept, removed, nil
}

// LastScheduled reads the cluster's newest scheduled snapshot (nil: none yet).
func LastScheduled(ctx context.Context, cli *clientv3.Client, timeout time.Duration) (*spec.SnapshotRecord, error) {
	var rec spec.SnapshotRecord
	ok, err := getJSON(ctx, cli, timeout, spec.SnapshotRecordKey, &rec)
	if err != nil || !ok {
		return nil, err
	}
	return &rec, nil
}

// NodeSnapshots reads what each node lists at spec.SnapshotNodeKey, by node.
func NodeSnapshots(ctx context.Context, cli *clientv3.Client, timeout time.Duration, nodes []string) (map[string]spec.NodeSnapshots, error) {
	out := map[string]spec.NodeSnapshots{}
	for _, n := range nodes {
		var l spec.NodeSnapshots
		ok, err := getJSON(ctx, cli, timeout, spec.SnapshotNodeKey(n), &l)
		if err != nil {
			return nil, err
		}
		if ok {
			out[n] = l
		}
	}
	return out, nil
}

func putJSON(ctx context.Context, cli *clientv3.Client, timeout time.Duration, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	_, err = cli.Put(rctx, key, string(b))
	return err
}

func getJSON(ctx context.Context, cli *clientv3.Client, timeout time.Duration, key string, v any) (bool, error) {
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := cli.Get(rctx, key)
	if err != nil {
		return false, err
	}
	if len(resp.Kvs) == 0 {
		return false, nil
	}
	if err := json.Unmarshal(resp.Kvs[0].Value, v); err != nil {
		return false, fmt.Errorf("%s: %w", key, err)
	}
	return true, nil
}
