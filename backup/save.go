package backup

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/etcdbake/etcdbake/spec"
)

// SaveOptions say which cluster to snapshot and what to record about it.
type SaveOptions struct {
	// Endpoints and TLS reach the cluster (a client certificate allowed to snapshot).
	Endpoints []string
	TLS       *tls.Config
	// Cluster is the spec's cluster name; CAFingerprint the cluster CA's (CAFingerprint).
	Cluster       string
	CAFingerprint string
	SpecSHA256    string
	By            string
	// Timeout bounds each request but the snapshot stream (default 5s).
	Timeout time.Duration
	Now     func() time.Time
}

// Save takes a snapshot of the cluster into the snapshot file path: the database from one
// member (a caught-up follower when there is one: the leader keeps serving), verified
// before path is written: etcd's own checksum, bbolt's integrity check, and the HashKV at
// the database's revision computed from the file equal to what every member answers for
// that revision. On error nothing is left at path.
func Save(ctx context.Context, path string, o SaveOptions) (*spec.SnapshotManifest, error) {
	if o.Timeout == 0 {
		o.Timeout = 5 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: o.Endpoints, TLS: o.TLS, DialTimeout: o.Timeout, Logger: zap.NewNop()})
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	rctx, cancel := context.WithTimeout(ctx, o.Timeout)
	ml, err := cli.MemberList(rctx)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("listing the members: %w", err)
	}
	m := &spec.SnapshotManifest{Format: spec.SnapshotFormat, Cluster: o.Cluster, ClusterID: fmt.Sprintf("%x", ml.Header.ClusterId),
		CAFingerprint: o.CAFingerprint, SpecSHA256: o.SpecSHA256, By: o.By}
	names := map[uint64]string{}
	for _, mem := range ml.Members {
		m.Members = append(m.Members, spec.SnapshotMember{Name: mem.Name, ID: fmt.Sprintf("%x", mem.ID), PeerURLs: mem.PeerURLs, Learner: mem.IsLearner})
		names[mem.ID] = mem.Name
	}
	sort.Slice(m.Members, func(i, j int) bool { return m.Members[i].Name < m.Members[j].Name })

	ep, st, err := pickSource(ctx, cli, o)
	if err != nil {
		return nil, err
	}
	m.From, m.EtcdVersion = names[st.Header.MemberId], st.Version
	if m.From == "" {
		m.From = ep
	}

	dir := filepath.Dir(path)
	scratch, err := os.MkdirTemp(dir, "."+filepath.Base(path)+".")
	if err != nil {
		return nil, fmt.Errorf("a working directory next to %s: %w", path, err)
	}
	defer os.RemoveAll(scratch)
	db := filepath.Join(scratch, spec.SnapshotDBName)
	m.Taken = o.Now().UTC()
	if m.SHA256, m.Size, err = stream(ctx, ep, o, db); err != nil {
		return nil, fmt.Errorf("snapshot from %s (%s): %w", m.From, ep, err)
	}
	info, err := inspect(db, scratch)
	if err != nil {
		return nil, fmt.Errorf("the snapshot from %s (%s): %w", m.From, ep, err)
	}
	m.Revision, m.CompactRevision, m.HashKV, m.Keys, m.StorageVersion = info.Revision, info.CompactRevision, info.HashKV, info.Keys, info.StorageVersion
	if err := compareHashes(ctx, cli, o, m, names); err != nil {
		return nil, err
	}
	if err := writeArchive(path, m, db); err != nil {
		return nil, fmt.Errorf("writing %s: %w", path, err)
	}
	return m, nil
}

// pickSource chooses the member to stream from: the follower nearest the leader's raft
// index, else the leader.
func pickSource(ctx context.Context, cli *clientv3.Client, o SaveOptions) (string, *clientv3.StatusResponse, error) {
	var best string
	var bestSt *clientv3.StatusResponse
	var why []string
	for _, ep := range o.Endpoints {
		rctx, cancel := context.WithTimeout(ctx, o.Timeout)
		st, err := cli.Status(rctx, ep)
		cancel()
		if err != nil {
			why = append(why, fmt.Sprintf("%s: %v", ep, err))
			continue
		}
		if st.IsLearner {
			continue
		}
		follower := st.Leader != st.Header.MemberId
		switch {
		case bestSt == nil,
			follower && bestSt.Leader == bestSt.Header.MemberId,
			follower == (bestSt.Leader != bestSt.Header.MemberId) && st.RaftIndex > bestSt.RaftIndex:
			best, bestSt = ep, st
		}
	}
	if bestSt == nil {
		return "", nil, fmt.Errorf("no voting member answers: %s", strings.Join(why, "; "))
	}
	return best, bestSt, nil
}

// stream writes one member's database to db and returns its sha256 and size.
func stream(ctx context.Context, ep string, o SaveOptions, db string) (string, int64, error) {
	one, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, TLS: o.TLS, DialTimeout: o.Timeout, Logger: zap.NewNop()})
	if err != nil {
		return "", 0, err
	}
	defer one.Close()
	resp, err := one.SnapshotWithVersion(ctx)
	if err != nil {
		return "", 0, err
	}
	defer resp.Snapshot.Close()
	f, err := os.OpenFile(db, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", 0, err
	}
	sum := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, sum), resp.Snapshot)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(sum.Sum(nil)), n, nil
}

// compareHashes asks every member for its HashKV at the snapshot's revision: each must
// equal the hash computed from the file.
func compareHashes(ctx context.Context, cli *clientv3.Client, o SaveOptions, m *spec.SnapshotManifest, names map[uint64]string) error {
	var bad []string
	agreed := 0
	for _, ep := range o.Endpoints {
		rctx, cancel := context.WithTimeout(ctx, o.Timeout)
		hr, err := cli.HashKV(rctx, ep, m.Revision)
		cancel()
		switch {
		case errors.Is(err, rpctypes.ErrCompacted):
			return fmt.Errorf("the cluster was compacted past the snapshot's revision %d while it was saved: save it again", m.Revision)
		case err != nil:
			continue // a member that does not answer is not a disagreement
		case hr.Hash != m.HashKV || hr.CompactRevision != m.CompactRevision:
			bad = append(bad, fmt.Sprintf("%s (%s) has hash %d compacted at %d", names[hr.Header.MemberId], ep, hr.Hash, hr.CompactRevision))
		default:
			agreed++
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("the snapshot's keys at revision %d hash to %d (compacted at %d), but %s: a member's data differs, so the snapshot is not written; run `etcdbake status` and check the members",
			m.Revision, m.HashKV, m.CompactRevision, strings.Join(bad, "; "))
	}
	if agreed == 0 {
		return fmt.Errorf("no member answered HashKV at revision %d: the snapshot cannot be checked against the cluster", m.Revision)
	}
	return nil
}
