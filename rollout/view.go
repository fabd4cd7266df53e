package rollout

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdbake/etcdbake/spec"
)

// View is the rollout as etcd holds it, read at one revision: what the operator
// published (desired, halt), who holds the reboot lock, and what each node's agent and
// etcd-firstboot published (rollout state, boot record).
type View struct {
	Revision int64 `json:"revision"`
	// Desired is nil when nothing was ever published; DesiredRevision is the desired key's
	// ModRevision (0 when absent), what a publication compares against.
	Desired         *spec.RolloutDesired `json:"desired,omitempty"`
	DesiredRevision int64                `json:"desiredRevision"`
	Halt            *spec.RolloutHalt    `json:"halt,omitempty"`
	// Locks are the keys under spec.RolloutLockPrefix, oldest first: the first holds
	// the reboot lock, the others wait.
	Locks   []Lock                      `json:"locks,omitempty"`
	Nodes   map[string]spec.RolloutNode `json:"nodes"`
	Records map[string]spec.NodeRecord  `json:"records"`
	// Problems are values that could not be read (they are left out above).
	Problems []string `json:"problems,omitempty"`
}

// Lock is one key of the reboot lock (a concurrency.Mutex): its lease and when it was
// created.
type Lock struct {
	Key      string `json:"key"`
	Lease    int64  `json:"lease"`
	Revision int64  `json:"createRevision"`
}

// ReadView reads the rollout keys and the nodes' records in one transaction.
func ReadView(ctx context.Context, cli *clientv3.Client) (*View, error) {
	resp, err := cli.Txn(ctx).Then(
		clientv3.OpGet(spec.RolloutPrefix, clientv3.WithPrefix()),
		clientv3.OpGet(spec.NodeRecordPrefix, clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return nil, fmt.Errorf("reading %s and %s: %w", spec.RolloutPrefix, spec.NodeRecordPrefix, err)
	}
	v := &View{Revision: resp.Header.Revision, Nodes: map[string]spec.RolloutNode{}, Records: map[string]spec.NodeRecord{}}
	bad := func(key string, err error) { v.Problems = append(v.Problems, fmt.Sprintf("%s: %v", key, err)) }
	for _, kv := range resp.Responses[0].GetResponseRange().Kvs {
		key := string(kv.Key)
		switch {
		case key == spec.RolloutDesiredKey:
			var d spec.RolloutDesired
			if err := json.Unmarshal(kv.Value, &d); err != nil {
				// The publication still compares against this revision.
				v.DesiredRevision = kv.ModRevision
				bad(key, err)
				continue
			}
			v.Desired, v.DesiredRevision = &d, kv.ModRevision
		case key == spec.RolloutHaltKey:
			var h spec.RolloutHalt
			if err := json.Unmarshal(kv.Value, &h); err != nil {
				h.Reason = "unreadable halt value: " + string(kv.Value)
			}
			v.Halt = &h
		case strings.HasPrefix(key, spec.RolloutLockPrefix):
			v.Locks = append(v.Locks, Lock{Key: key, Lease: kv.Lease, Revision: kv.CreateRevision})
		case strings.HasPrefix(key, spec.RolloutNodesPrefix):
			var n spec.RolloutNode
			name := strings.TrimPrefix(key, spec.RolloutNodesPrefix)
			if err := json.Unmarshal(kv.Value, &n); err != nil {
				bad(key, err)
				continue
			}
			if n.Node == "" {
				n.Node = name
			}
			v.Nodes[name] = n
		}
	}
	sort.Slice(v.Locks, func(i, j int) bool { return v.Locks[i].Revision < v.Locks[j].Revision })
	for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
		key := string(kv.Key)
		var r spec.NodeRecord
		if err := json.Unmarshal(kv.Value, &r); err != nil {
			bad(key, err)
			continue
		}
		if name := strings.TrimPrefix(key, spec.NodeRecordPrefix); r.Node != name {
			bad(key, fmt.Errorf("the record names node %q", r.Node))
			continue
		}
		v.Records[r.Node] = r
	}
	return v, nil
}

var entryGenRe = regexp.MustCompile(`^etcdbake-(\d{6,9})-[a-z]`)

// EntryGeneration is the generation in a boot entry's name (etcdbake-000003-b+0-1.conf:
// 3), -1 when the name is not an etcdbake entry.
func EntryGeneration(entry string) int {
	m := entryGenRe.FindStringSubmatch(entry)
	if m == nil {
		return -1
	}
	g, _ := strconv.Atoi(m[1])
	return g
}

// NextGeneration is the generation of the next publication: above the one desired now
// and above every generation a node has booted (a node arms only a newer generation than
// its running entry's).
func (v *View) NextGeneration() int {
	g := 0
	if v.Desired != nil {
		g = v.Desired.Generation
	}
	for _, r := range v.Records {
		g = max(g, EntryGeneration(r.Entry))
	}
	return g + 1
}

// NodeDone says whether node runs release d, done with it: its record names the release
// and its rollout state for d's generation (if it published one: a node that already ran
// the release publishes none) is done.
func (v *View) NodeDone(node string, d spec.RolloutDesired) bool {
	r, ok := v.Records[node]
	if !ok || r.Release != d.Release {
		return false
	}
	n, ok := v.Nodes[node]
	return !ok || n.Generation != d.Generation || n.State == spec.RolloutDone
}
