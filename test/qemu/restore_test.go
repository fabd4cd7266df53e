package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/etcdbake/etcdbake/spec"
	"github.com/etcdbake/etcdbake/vmcluster"
)

// r1Snapshot is what R1 wrote around its snapshot: what a restore must bring back and
// what it must not.
type r1Snapshot struct {
	file     string
	m        spec.SnapshotManifest
	want     map[string]string // key -> value, written before the snapshot
	after    []string          // keys written after it
	lastSeen int64             // the newest revision a client saw before the loss
	ids      map[string]string // node -> member ID
	saved    time.Duration
}

func (u upCluster) client(t *testing.T) *clientv3.Client {
	t.Helper()
	var eps []string
	for _, ep := range u.endpoints() {
		eps = append(eps, ep)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, TLS: adminTLS(t, u.pkiDir()), DialTimeout: 10 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	return cli
}

// snapshotForRestore (R1, first half): keys, `etcdbake snapshot save`, more keys.
func snapshotForRestore(t *testing.T, u upCluster) *r1Snapshot {
	t.Helper()
	cli := u.client(t)
	defer cli.Close()
	r := &r1Snapshot{want: map[string]string{}, ids: map[string]string{}}
	put := func(k, v string) int64 {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		resp, err := cli.Put(ctx, k, v)
		if err != nil {
			t.Fatalf("put %s: %v", k, err)
		}
		return resp.Header.Revision
	}
	var acked int64
	for i := 0; i < 40; i++ {
		k, v := fmt.Sprintf("/r1/before/%02d", i), fmt.Sprintf("value %d, %s", i, strings.Repeat("r", i))
		acked = put(k, v)
		r.want[k] = v
	}
	// A snapshot from the workstation (etcdbake snapshot save).
	start := time.Now()
	stdout, stderr, err := u.run(5*time.Minute, "snapshot", "save")
	r.saved = time.Since(start)
	if err != nil {
		t.Fatalf("snapshot save: %v\n%s", err, stderr)
	}
	var saved spec.SnapshotManifest
	stdout, _, err = u.run(2*time.Minute, "snapshot", "verify", strings.TrimSpace(stdout), "-o", "json")
	if err != nil || json.Unmarshal([]byte(stdout), &saved) != nil {
		t.Fatalf("snapshot verify -o json: %v\n%s", err, stdout)
	}
	t.Logf("R1 snapshot save: revision %d, %d keys, %d bytes from %s, saved and verified in %s", saved.Revision, saved.Keys, saved.Size, saved.From, r.saved.Round(100*time.Millisecond))
	if saved.Revision < acked {
		t.Errorf("snapshot save: revision %d is older than the last write acknowledged before it (%d)", saved.Revision, acked)
	}

	// The one R1 restores from: the nodes' next scheduled snapshot (every 2 minutes here),
	// uploaded to the S3 target and fetched from there, as after losing every disk.
	rec := waitScheduledSnapshot(t, cli, acked, 2*r1Period+3*time.Minute)
	// The record says when the schedule runs next (the other nodes skip this period by
	// it): the next 2-minute boundary after the snapshot.
	if !rec.NextDue.After(rec.Taken) || rec.NextDue.Sub(rec.Taken) > r1Period {
		t.Errorf("R1: the scheduled snapshot taken at %s records its schedule's next run at %s, want within %s after", rec.Taken.Format(time.TimeOnly), rec.NextDue.Format(time.TimeOnly), r1Period)
	}
	if rec.Object == "" || rec.UploadError != "" {
		t.Fatalf("R1: the scheduled snapshot %s on %s was not uploaded: object %q, error %q", rec.File, rec.Node, rec.Object, rec.UploadError)
	}
	// The node lists what it keeps last (after the record and the retention): a minute.
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(5 * time.Second) {
		stdout, _, err = u.run(2*time.Minute, "snapshot", "list")
		if err == nil && strings.Contains(stdout, "node "+rec.Node+" ") && strings.Contains(stdout, rec.File) && strings.Contains(stdout, "s3 etcd-backups") && strings.Contains(stdout, rec.Object) {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("R1: snapshot list does not show %s on %s and %s on the target: %v\n%s", rec.File, rec.Node, rec.Object, err, stdout)
			break
		}
	}
	start = time.Now()
	stdout, stderr, err = u.run(5*time.Minute, "snapshot", "fetch")
	if err != nil {
		t.Fatalf("R1: snapshot fetch: %v\n%s", err, stderr)
	}
	r.file = strings.TrimSpace(stdout)
	stdout, _, err = u.run(2*time.Minute, "snapshot", "verify", r.file, "-o", "json")
	if err != nil || json.Unmarshal([]byte(stdout), &r.m) != nil {
		t.Fatalf("snapshot verify -o json: %v\n%s", err, stdout)
	}
	fi, _ := os.Stat(r.file)
	t.Logf("R1 scheduled snapshot: taken by %s at %s, revision %d, %d keys, %d bytes (file %d), uploaded as %s; fetched and verified in %s",
		rec.Node, rec.Taken.Format(time.TimeOnly), r.m.Revision, r.m.Keys, r.m.Size, fi.Size(), rec.Object, time.Since(start).Round(100*time.Millisecond))
	if r.m.Revision != rec.Revision || r.m.SHA256 != rec.SHA256 || r.m.By != "schedule on "+rec.Node {
		t.Errorf("R1: the fetched snapshot (revision %d, sha256 %s, by %q) is not the one the node recorded (revision %d, sha256 %s)", r.m.Revision, r.m.SHA256, r.m.By, rec.Revision, rec.SHA256)
	}
	for i := 0; i < 10; i++ {
		k := fmt.Sprintf("/r1/after/%02d", i)
		r.lastSeen = put(k, "written after the snapshot")
		r.after = append(r.after, k)
	}
	for _, m := range u.status(t).Members {
		r.ids[m.Name] = m.ID
	}
	return r
}

// r1Schedule is TestUpDown's backup.schedule (every 2 minutes, r1Period).
const (
	r1Schedule = "*:0/2"
	r1Period   = 2 * time.Minute
)

// waitScheduledSnapshot waits until the cluster's record of its newest scheduled snapshot
// (spec.SnapshotRecordKey) is of a revision at least rev, and returns it.
func waitScheduledSnapshot(t *testing.T, cli *clientv3.Client, rev int64, within time.Duration) spec.SnapshotRecord {
	t.Helper()
	deadline := time.Now().Add(within)
	var last string
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		resp, err := cli.Get(ctx, spec.SnapshotRecordKey)
		cancel()
		var rec spec.SnapshotRecord
		switch {
		case err != nil:
			last = err.Error()
		case len(resp.Kvs) == 0:
			last = "no record yet"
		case json.Unmarshal(resp.Kvs[0].Value, &rec) != nil:
			last = "record " + string(resp.Kvs[0].Value)
		case rec.Revision >= rev:
			return rec
		default:
			last = fmt.Sprintf("newest scheduled snapshot at revision %d (by %s at %s)", rec.Revision, rec.Node, rec.Taken.Format(time.TimeOnly))
		}
		if time.Now().After(deadline) {
			t.Fatalf("no scheduled snapshot of revision >= %d within %s: %s", rev, within, last)
		}
		time.Sleep(5 * time.Second)
	}
}

// checkRestore (R2 and R1's second half), on a cluster whose disks were all discarded:
// a corrupted snapshot is refused with nothing written; `up --restore` boots the three
// nodes from the snapshot: every key before it with its value, none after, the same
// member IDs, three healthy voters with flannel leases, and a watch from before the loss
// told it was compacted instead of rewound.
func checkRestore(t *testing.T, u upCluster, r *r1Snapshot, healthyTable func(string)) (*vmcluster.RunState, string) {
	t.Helper()
	// R2: a byte changed in the database.
	b, err := os.ReadFile(r.file)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x01
	bad := filepath.Join(filepath.Dir(r.file), "corrupted"+spec.SnapshotExt)
	if err := os.WriteFile(bad, b, 0o600); err != nil {
		t.Fatal(err)
	}
	_, stderr, err := u.run(5*time.Minute, "up", "--restore", bad)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(stderr, "corrupt") {
		t.Errorf("R2: up --restore of a corrupted snapshot: %v, want exit 1 saying corrupt", err)
	}
	for _, p := range []string{filepath.Join(u.out, "qemu", "restored"), filepath.Join(u.out, "run", vmcluster.RunStateFile)} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("R2: a refused restore left %s", p)
		}
	}
	if m, _ := filepath.Glob(filepath.Join(u.out, ".restore-*")); len(m) > 0 {
		t.Errorf("R2: a refused restore left %v", m)
	}

	// R1: the restore.
	start := time.Now()
	stdout, stderr, err := u.run(25*time.Minute, "up", "--restore", r.file)
	took := time.Since(start)
	if err != nil {
		t.Fatalf("R1: up --restore: %v", err)
	}
	healthyTable(stdout)
	t.Logf("R1: up --restore -> healthy with 3 flannel leases in %s (restore, images, boot)", took.Round(time.Second))
	if !strings.Contains(stderr, "verified and restored for 3 members") {
		t.Errorf("R1: up --restore does not say it verified and restored the snapshot")
	}
	st, err := vmcluster.ReadRunState(filepath.Join(u.out, "run"))
	if err != nil {
		t.Fatal(err)
	}
	u.st = st
	for _, m := range u.status(t).Members {
		if r.ids[m.Name] != m.ID || m.Learner || !m.Healthy {
			t.Errorf("R1: %s is member %s (learner %v, healthy %v) after the restore; it was %s", m.Name, m.ID, m.Learner, m.Healthy, r.ids[m.Name])
		}
	}
	cli := u.client(t)
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	got, err := cli.Get(ctx, "/r1/", clientv3.WithPrefix())
	if err != nil {
		t.Fatalf("R1: reading the restored keys: %v", err)
	}
	have := map[string]string{}
	for _, kv := range got.Kvs {
		have[string(kv.Key)] = string(kv.Value)
	}
	for k, v := range r.want {
		if have[k] != v {
			t.Errorf("R1: %s = %q after the restore, want %q", k, have[k], v)
		}
	}
	for _, k := range r.after {
		if _, ok := have[k]; ok {
			t.Errorf("R1: %s, written after the snapshot, is there after the restore", k)
		}
	}
	if got.Header.Revision <= r.lastSeen {
		t.Errorf("R1: the restored revision %d is not past the last one seen before the loss (%d)", got.Header.Revision, r.lastSeen)
	}
	t.Logf("R1: %d keys of %d back, none of the %d written after; revision %d (snapshot %d, last seen %d)", len(have), len(r.want), len(r.after), got.Header.Revision, r.m.Revision, r.lastSeen)
	wctx, wcancel := context.WithTimeout(ctx, time.Minute)
	defer wcancel()
	wr := <-cli.Watch(wctx, "/r1/", clientv3.WithPrefix(), clientv3.WithRev(r.lastSeen+1))
	if wr.CompactRevision == 0 || !errors.Is(wr.Err(), rpctypes.ErrCompacted) {
		t.Errorf("R1: a watch resuming at revision %d: compact revision %d, %v; want a compaction error", r.lastSeen+1, wr.CompactRevision, wr.Err())
	}
	return st, stdout
}
