package workload

import (
	"context"
	"fmt"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// MemberHash is one member's HashKV at Report.Revision.
type MemberHash struct {
	Endpoint        string `json:"endpoint"`
	MemberID        uint64 `json:"memberId"` // the member that answered (its response header)
	Hash            uint32 `json:"hash"`
	HashRevision    int64  `json:"hashRevision"`
	CompactRevision int64  `json:"compactRevision"`
}

// Report is the outcome of Verify.
type Report struct {
	Acknowledged         int          `json:"acknowledged"`         // acknowledged set keys checked
	Lost                 int          `json:"lost"`                 // acknowledged set keys missing (or with another value)
	LostKeys             []string     `json:"lostKeys,omitempty"`   // which
	Indeterminate        int          `json:"indeterminate"`        // set puts with unknown outcome
	IndeterminatePresent int          `json:"indeterminatePresent"` // of those, how many took effect
	Revision             int64        `json:"revision"`             // the revision the hashes are taken at
	Members              []MemberHash `json:"members"`
	HashesEqual          bool         `json:"hashesEqual"`
}

// OK reports whether nothing was lost and every member has the same hash.
func (v Report) OK() bool { return v.Lost == 0 && v.HashesEqual }

// Verify checks a recovered cluster after the workload: every acknowledged set key must
// exist with its value, and every member in endpoints (all of cli's endpoints when nil)
// must have the same HashKV at one common revision, the revision of the linearizable read
// of the set keys. A member that is behind (or still restarting) is retried until it can
// answer at that revision or ctx is done, so ctx bounds how long Verify waits for members
// to catch up: give it a deadline. The value is compared too, so a key of the same name
// left by an earlier run does not hide a lost put. A returned error means the verification could not be completed; a
// completed verification's verdict is Report.OK.
func Verify(ctx context.Context, h *History, cli *clientv3.Client, endpoints []string) (Report, error) {
	var v Report
	if endpoints == nil {
		endpoints = cli.Endpoints()
	}
	resp, err := retry(ctx, func(ctx context.Context) (*clientv3.GetResponse, error) {
		return cli.Get(ctx, SetPrefix(h.Prefix), clientv3.WithPrefix())
	})
	if err != nil {
		return v, fmt.Errorf("workload: reading the set keys: %w", err)
	}
	v.Revision = resp.Header.Revision
	stored := make(map[string]string, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		stored[string(kv.Key)] = string(kv.Value)
	}
	for _, op := range h.Set {
		val, ok := stored[op.Key]
		switch {
		case op.Acked:
			v.Acknowledged++
			if !ok || val != op.Value {
				v.Lost++
				v.LostKeys = append(v.LostKeys, op.Key)
			}
		default:
			v.Indeterminate++
			if ok && val == op.Value {
				v.IndeterminatePresent++
			}
		}
	}

	for _, ep := range endpoints {
		hr, err := retry(ctx, func(ctx context.Context) (*clientv3.HashKVResponse, error) {
			return cli.HashKV(ctx, ep, v.Revision)
		})
		if err != nil {
			return v, fmt.Errorf("workload: HashKV of %s at revision %d: %w", ep, v.Revision, err)
		}
		v.Members = append(v.Members, MemberHash{Endpoint: ep, MemberID: hr.Header.MemberId, Hash: hr.Hash, HashRevision: hr.HashRevision, CompactRevision: hr.CompactRevision})
	}
	// Equal only if every endpoint was answered by a member of its own: two endpoints
	// answered by one member would compare that member with itself.
	v.HashesEqual = len(v.Members) > 0
	answered := map[uint64]string{}
	for _, m := range v.Members {
		if m.Hash != v.Members[0].Hash || m.HashRevision != v.Members[0].HashRevision {
			v.HashesEqual = false
		}
		if other, dup := answered[m.MemberID]; dup {
			return v, fmt.Errorf("workload: HashKV: member %x answered for both %s and %s", m.MemberID, other, m.Endpoint)
		}
		answered[m.MemberID] = m.Endpoint
	}
	return v, nil
}

// ReadBack reads every register key once more, linearizably, after the workload and adds
// the reads to h.Final, so that Check's linearizability check covers the register puts:
// a lost acknowledged put then shows as a read of an older value. Call it after Run and
// before Check, once the cluster has recovered (ctx bounds the retries).
func ReadBack(ctx context.Context, h *History, cli *clientv3.Client) error {
	id := 0
	for _, op := range slices.Concat(h.Ops, h.Final) {
		id = max(id, op.Client+1)
	}
	for i := 0; i < h.Keys; i++ {
		op := Op{Client: id, Kind: KindGet, Key: RegisterKey(h.Prefix, i), Call: time.Since(h.Start).Nanoseconds()}
		resp, err := retry(ctx, func(ctx context.Context) (*clientv3.GetResponse, error) { return cli.Get(ctx, op.Key) })
		if err != nil {
			return fmt.Errorf("workload: reading back %s: %w", op.Key, err)
		}
		op.Return = time.Since(h.Start).Nanoseconds()
		if len(resp.Kvs) > 0 {
			op.Found, op.Value = true, string(resp.Kvs[0].Value)
		}
		h.Final = append(h.Final, op)
	}
	return nil
}

// retry calls f, each attempt with a 2s timeout, every 200ms until it succeeds or ctx is
// done; the error is then the last attempt's.
func retry[T any](ctx context.Context, f func(context.Context) (T, error)) (T, error) {
	for {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		r, err := f(actx)
		cancel()
		if err == nil {
			return r, nil
		}
		select {
		case <-ctx.Done():
			return r, err
		case <-time.After(200 * time.Millisecond):
		}
	}
}
