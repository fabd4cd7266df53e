package backup

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/etcdbake/etcdbake/spec"
	"github.com/minio/minio-go/v7"
)

// testLock is the cluster's lock as firstboot takes it (an etcd mutex on a lease) on a key
// of the test's own: the narrow interface Scheduled takes.
func testLock(ctx context.Context, cli *clientv3.Client) (func(), error) {
	s, err := concurrency.NewSession(cli, concurrency.WithTTL(10), concurrency.WithContext(ctx))
	if err != nil {
		return nil, err
	}
	m := concurrency.NewMutex(s, "/test/lock")
	if err := m.Lock(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return func() { _ = m.Unlock(context.Background()); s.Close() }, nil
}

// TestScheduledOnePerPeriod: the three nodes' timers fire at once; exactly one node takes
// the snapshot, the others skip naming it; the file verifies as the cluster's; the record
// and the node's list are in etcd.
func TestScheduledOnePerPeriod(t *testing.T) {
	f := start(t, "sched", 80)
	want, _ := f.write(t, "/k", 30)
	ca, _, _ := f.tc.ClientFiles("admin")
	due := time.Now().Add(6 * time.Hour).Truncate(time.Second).UTC()
	var mu sync.Mutex
	reports := map[string]*ScheduledReport{}
	var wg sync.WaitGroup
	for _, n := range f.tc.Spec.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rep, err := Scheduled(context.Background(), ScheduledOptions{Endpoints: f.opts.Endpoints, TLS: f.opts.TLS,
				Node: n.Name, Cluster: f.tc.Spec.Name, CA: ca, Dir: filepath.Join(t.TempDir(), "snapshots"), Keep: 5,
				Lock: testLock, NextDue: due})
			if err != nil {
				t.Errorf("%s: %v", n.Name, err)
				return
			}
			mu.Lock()
			reports[n.Name] = rep
			mu.Unlock()
		}()
	}
	wg.Wait()
	var taker string
	var taken *spec.SnapshotRecord
	for n, rep := range reports {
		switch {
		case rep.Taken != nil && taker == "":
			taker, taken = n, rep.Taken
		case rep.Taken != nil:
			t.Errorf("two nodes took this period's snapshot: %s and %s", taker, n)
		}
	}
	if taken == nil {
		t.Fatalf("no node took the snapshot: %+v", reports)
	}
	for n, rep := range reports {
		if n != taker && !strings.Contains(rep.Skipped, taker+" took this period's snapshot") {
			t.Errorf("%s: skipped %q, want it to name %s", n, rep.Skipped, taker)
		}
	}
	m, err := Verify(taken.File, Expect{Cluster: f.tc.Spec.Name, CAFingerprint: f.opts.CAFingerprint})
	if err != nil {
		t.Fatal(err)
	}
	if m.By != "schedule on "+taker || m.Revision != taken.Revision || m.SHA256 != taken.SHA256 || m.Keys < len(want) {
		t.Errorf("manifest %+v does not match the record %+v (%d keys written)", m, taken, len(want))
	}
	if info, err := os.Stat(taken.File); err != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("%s: %v, mode %v (want 0600)", taken.File, err, info.Mode())
	}
	last, err := LastScheduled(context.Background(), f.cli, 5*time.Second)
	if err != nil || last == nil || last.File != taken.File || last.Node != taker || !last.NextDue.Equal(due) {
		t.Errorf("record at %s: %+v, %v; want %s by %s, next due %s", spec.SnapshotRecordKey, last, err, taken.File, taker, due)
	}
	lists, err := NodeSnapshots(context.Background(), f.cli, 5*time.Second, []string{"m1", "m2", "m3"})
	if err != nil || len(lists) != 1 || len(lists[taker].Snapshots) != 1 || lists[taker].Snapshots[0].File != taken.File {
		t.Errorf("node lists: %+v, %v; want only %s listing %s", lists, err, taker, taken.File)
	}
	t.Logf("%s took %s (revision %d, %d bytes); the others: %q, %q", taker, filepath.Base(taken.File), taken.Revision, taken.Size,
		reports[other(taker, 0)].Skipped, reports[other(taker, 1)].Skipped)
}

func other(taker string, i int) string {
	var out []string
	for _, n := range []string{"m1", "m2", "m3"} {
		if n != taker {
			out = append(out, n)
		}
	}
	return out[i]
}

// TestScheduledRetention: one node over several periods keeps backup.keep snapshots,
// removes its oldest and a crashed save's working directory, and touches no other file;
// its list in etcd names exactly what it keeps. A lock held elsewhere bounds the wait and
// says so, and nothing is written then.
func TestScheduledRetention(t *testing.T) {
	f := start(t, "keep", 90)
	ca, _, _ := f.tc.ClientFiles("admin")
	dir := filepath.Join(t.TempDir(), "snapshots")
	if err := os.MkdirAll(filepath.Join(dir, ".keep-20200101T000000Z.snapshot.tar.123"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("mine"), 0o600); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	const period = 6 * time.Hour
	o := ScheduledOptions{Endpoints: f.opts.Endpoints, TLS: f.opts.TLS, Node: "m1", Cluster: f.tc.Spec.Name, CA: ca,
		Dir: dir, Keep: 2, Lock: testLock, Now: func() time.Time { return now }, NextDue: now.Add(period)}
	var files []string
	for i := 0; i < 4; i++ {
		f.write(t, "/run"+string(rune('a'+i)), 5)
		rep, err := Scheduled(context.Background(), o)
		if err != nil {
			t.Fatal(err)
		}
		if rep.Taken == nil {
			t.Fatalf("period %d: skipped (%s)", i, rep.Skipped)
		}
		files = append(files, rep.Taken.File)
		if i >= 2 && (len(rep.Removed) != 1 || rep.Removed[0] != files[i-2]) {
			t.Errorf("period %d removed %v, want [%s]", i, rep.Removed, files[i-2])
		}
		// The same period again, an hour later: skipped, nothing written.
		now = now.Add(time.Hour)
		if rep, err := Scheduled(context.Background(), o); err != nil || rep.Taken != nil || !strings.Contains(rep.Skipped, "m1 took this period's snapshot 1h0m0s ago") {
			t.Errorf("period %d again: %+v, %v; want skipped", i, rep, err)
		}
		// The next period: the timer fires at NextDue.
		now = o.NextDue
		o.NextDue = now.Add(period)
	}
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	wantNames := []string{filepath.Base(files[2]), filepath.Base(files[3]), "notes.txt"}
	if strings.Join(names, " ") != strings.Join(wantNames, " ") {
		t.Errorf("%s holds %v, want %v", dir, names, wantNames)
	}
	lists, err := NodeSnapshots(context.Background(), f.cli, 5*time.Second, []string{"m1"})
	if err != nil || len(lists["m1"].Snapshots) != 2 || lists["m1"].Snapshots[0].File != files[3] || lists["m1"].Snapshots[1].File != files[2] || lists["m1"].Snapshots[1].Revision == 0 {
		t.Errorf("m1's list %+v, %v; want %s then %s with their revisions", lists, err, files[3], files[2])
	}

	// Another holder of the lock: the wait is bounded and named; no file appears.
	release, err := testLock(context.Background(), f.cli)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	o.LockWait = time.Second
	rep, err := Scheduled(context.Background(), o)
	if err == nil || !strings.Contains(err.Error(), "taking the cluster's lock") || rep.Taken != nil {
		t.Errorf("with the lock held elsewhere: %+v, %v", rep, err)
	}
	if after, _ := os.ReadDir(dir); len(after) != len(entries) {
		t.Errorf("a run that did not get the lock changed %s: %d entries, was %d", dir, len(after), len(entries))
	}
}

// TestScheduledUploads: with a target (a real S3 server), each period's snapshot is
// uploaded and recorded with its key, and the target keeps backup.keep; a failed upload
// keeps the local snapshot, records why and fails the run.
func TestScheduledUploads(t *testing.T) {
	f := start(t, "up", 110)
	tg, cli := s3Target(t, "")
	ca, _, _ := f.tc.ClientFiles("admin")
	now := time.Now().UTC()
	o := ScheduledOptions{Endpoints: f.opts.Endpoints, TLS: f.opts.TLS, Node: "m2", Cluster: f.tc.Spec.Name, CA: ca,
		Dir: filepath.Join(t.TempDir(), "snapshots"), Keep: 2, Lock: testLock, Now: func() time.Time { return now }, Target: &tg}
	var objects []string
	for i := 0; i < 3; i++ {
		o.NextDue = now.Add(time.Hour)
		rep, err := Scheduled(context.Background(), o)
		if err != nil || rep.Taken == nil || rep.Taken.Object != filepath.Base(rep.Taken.File) {
			t.Fatalf("period %d: %+v, %v", i, rep, err)
		}
		objects = append(objects, rep.Taken.Object)
		if i == 2 && (len(rep.RemovedFromTarget) != 1 || rep.RemovedFromTarget[0] != objects[0]) {
			t.Errorf("period 2 removed %v from the target, want [%s]", rep.RemovedFromTarget, objects[0])
		}
		now = o.NextDue
	}
	var left []string
	for obj := range cli.ListObjects(context.Background(), tg.Bucket, minio.ListObjectsOptions{Recursive: true}) {
		left = append(left, obj.Key)
	}
	if strings.Join(left, " ") != strings.Join(objects[1:], " ") {
		t.Errorf("the target holds %v, want %v", left, objects[1:])
	}
	last, err := LastScheduled(context.Background(), f.cli, 5*time.Second)
	if err != nil || last.Object != objects[2] || last.UploadError != "" {
		t.Errorf("the record: %+v, %v", last, err)
	}

	// Wrong keys: the snapshot is taken and kept here, the record says why it is not on
	// the target, and the run fails.
	bad := tg
	bad.SecretKey = "wrong"
	o.Target, o.NextDue = &bad, now.Add(time.Hour)
	rep, err := Scheduled(context.Background(), o)
	if err == nil || rep.Taken == nil || !strings.Contains(err.Error(), "uploading") {
		t.Fatalf("upload with wrong keys: %+v, %v", rep, err)
	}
	if _, serr := os.Stat(rep.Taken.File); serr != nil {
		t.Errorf("the snapshot whose upload failed is not kept: %v", serr)
	}
	if last, err := LastScheduled(context.Background(), f.cli, 5*time.Second); err != nil || last.File != rep.Taken.File || last.Object != "" || !strings.Contains(last.UploadError, "uploading") {
		t.Errorf("the record after a failed upload: %+v, %v", last, err)
	}
}
