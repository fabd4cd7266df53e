package backup

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"

	"github.com/etcdbake/etcdbake/internal/testcluster"
	"github.com/etcdbake/etcdbake/spec"
)

type fixture struct {
	tc   *testcluster.Cluster
	cli  *clientv3.Client
	opts SaveOptions
}

func start(t *testing.T, name string, base int) *fixture {
	t.Helper()
	tc := testcluster.StartAll(t, testcluster.Spec(t, name, 3, base))
	ca, _, _ := tc.ClientFiles("admin")
	tlsCfg := tc.ClientTLS(t, "admin")
	fp, err := CAFingerprint(ca)
	if err != nil {
		t.Fatal(err)
	}
	eps := tc.Spec.ClientEndpoints()
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, TLS: tlsCfg, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return &fixture{tc: tc, cli: cli, opts: SaveOptions{Endpoints: eps, TLS: tlsCfg, Cluster: tc.Spec.Name, CAFingerprint: fp, By: "test"}}
}

// write puts keys /k/0000.. (each twice, so history exists), deletes every tenth, and
// returns the expected contents and the revision after the last write.
func (f *fixture) write(t *testing.T, prefix string, n int) (map[string]string, int64) {
	t.Helper()
	ctx := context.Background()
	want := map[string]string{}
	var rev int64
	for i := 0; i < n; i++ {
		k := fmt.Sprintf("%s/%04d", prefix, i)
		for v := 0; v < 2; v++ {
			val := fmt.Sprintf("value-%d-%d-%s", i, v, strings.Repeat("x", i%50))
			r, err := f.cli.Put(ctx, k, val)
			if err != nil {
				t.Fatal(err)
			}
			want[k], rev = val, r.Header.Revision
		}
		if i%10 == 0 {
			r, err := f.cli.Delete(ctx, k)
			if err != nil {
				t.Fatal(err)
			}
			delete(want, k)
			rev = r.Header.Revision
		}
	}
	return want, rev
}

// holdLock takes the cluster's reboot lock under a 5-minute lease (as a scheduled
// snapshot does) and has a second session wait for it; the returned func stops waiting.
func holdLock(t *testing.T, cli *clientv3.Client) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var sessions [2]*concurrency.Session
	for i := range sessions {
		s, err := concurrency.NewSession(cli, concurrency.WithTTL(300), concurrency.WithContext(ctx))
		if err != nil {
			t.Fatal(err)
		}
		sessions[i] = s
	}
	if err := concurrency.NewMutex(sessions[0], spec.RolloutLockPrefix).Lock(ctx); err != nil {
		t.Fatal(err)
	}
	waiting := make(chan error, 1)
	go func() { waiting <- concurrency.NewMutex(sessions[1], spec.RolloutLockPrefix).Lock(ctx) }()
	for {
		r, err := cli.Get(ctx, spec.RolloutLockPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		if r.Count == 2 {
			break
		}
		select {
		case err := <-waiting:
			t.Fatalf("the second session did not wait for the lock: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	return func() {
		for _, s := range sessions {
			s.Orphan() // the leases live on, as a crashed holder's would
		}
		cancel()
		<-waiting
	}
}

func TestSaveVerifyRestore(t *testing.T) {
	f := start(t, "snap", 60)
	ctx := context.Background()
	c := f.tc.Spec
	want, _ := f.write(t, "/k", 200)
	// A compaction in the history: the snapshot's compact revision is kept and checked.
	r, err := f.cli.Get(ctx, "/k/0001")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.cli.Compact(ctx, r.Header.Revision-50, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	// The reboot lock is held, as a scheduled snapshot holds it, and a node waits for it.
	locked := holdLock(t, f.cli)
	_, rev := f.write(t, "/k2", 20)
	all, err := f.cli.Get(ctx, "/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	want = map[string]string{}
	for _, kv := range all.Kvs {
		if !strings.HasPrefix(string(kv.Key), spec.RolloutLockPrefix) {
			want[string(kv.Key)] = string(kv.Value)
		}
	}
	if len(want) != len(all.Kvs)-2 {
		t.Fatalf("%d keys, %d outside the lock: want the lock's holder and waiter", len(all.Kvs), len(want))
	}
	ml, err := f.cli.MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}

	file := filepath.Join(t.TempDir(), "s"+spec.SnapshotExt)
	t0 := time.Now()
	m, err := Save(ctx, file, f.opts)
	if err != nil {
		t.Fatalf("Save: %v", err)
	}
	t.Logf("saved revision %d (%d keys, %d bytes, from %s) in %s", m.Revision, m.Keys, m.Size, m.From, time.Since(t0).Round(time.Millisecond))
	if m.Revision != rev || m.Keys != len(all.Kvs) || m.Cluster != c.Name || m.ClusterID != fmt.Sprintf("%x", ml.Header.ClusterId) || len(m.Members) != 3 || m.CompactRevision != r.Header.Revision-50 {
		t.Fatalf("manifest %+v: want revision %d, %d keys, cluster %s/%x, 3 members, compacted at %d", m, rev, len(want), c.Name, ml.Header.ClusterId, r.Header.Revision-50)
	}
	hr, err := f.cli.HashKV(ctx, c.ClientEndpoints()[0], m.Revision)
	if err != nil || hr.Hash != m.HashKV {
		t.Fatalf("HashKV at %d from a member: %v %v; the manifest says %d", m.Revision, hr, err, m.HashKV)
	}
	if m.From == "" || m.EtcdVersion == "" || m.SHA256 == "" || m.CAFingerprint != f.opts.CAFingerprint {
		t.Fatalf("manifest lacks its source, version, sha256 or CA: %+v", m)
	}
	// The leader keeps serving: a follower streams the snapshot.
	for _, ep := range c.ClientEndpoints() {
		st, err := f.cli.Status(ctx, ep)
		if err == nil && st.Leader == st.Header.MemberId {
			if n, _ := c.NodeByName(m.From); c.ClientURL(n) == ep {
				t.Errorf("the snapshot came from the leader %s", m.From)
			}
		}
	}
	// Nothing but the file is left next to it.
	if ents, _ := os.ReadDir(filepath.Dir(file)); len(ents) != 1 {
		t.Errorf("Save left %d entries in the directory, want only the snapshot", len(ents))
	}
	if _, err := Verify(file, Expect{Cluster: c.Name, CAFingerprint: f.opts.CAFingerprint}); err != nil {
		t.Fatalf("Verify of a fresh snapshot: %v", err)
	}

	// Writes after the snapshot, and a watcher that saw them.
	if _, err := f.cli.Put(ctx, "/after", "lost"); err != nil {
		t.Fatal(err)
	}
	seen, err := f.cli.Get(ctx, "/after")
	if err != nil {
		t.Fatal(err)
	}
	lastSeen := seen.Header.Revision
	locked()
	f.cli.Close()

	// Every member loses its data.
	f.tc.StopAll()
	dirs := map[string]string{}
	for _, n := range c.Nodes {
		if err := os.RemoveAll(f.tc.MemberDataDir(n.Name)); err != nil {
			t.Fatal(err)
		}
		dirs[n.Name] = f.tc.MemberDataDir(n.Name)
	}
	t0 = time.Now()
	if _, err := Restore(ctx, file, c, Expect{Cluster: c.Name, CAFingerprint: f.opts.CAFingerprint}, dirs); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	built := time.Since(t0)
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	for _, n := range c.Nodes {
		wg.Add(1)
		go func(name string) {
			defer wg.Done()
			errs <- f.tc.Start(name, "new")
		}(n.Name)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("a restored member does not start: %v", err)
		}
	}
	t.Logf("restored 3 members in %s, healthy %s later", built.Round(time.Millisecond), (time.Since(t0) - built).Round(time.Millisecond))
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.ClientEndpoints(), TLS: f.opts.TLS, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	got, err := cli.Get(ctx, "/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Kvs) != len(want) {
		t.Errorf("restored %d keys, want %d", len(got.Kvs), len(want))
	}
	for _, kv := range got.Kvs {
		if w, ok := want[string(kv.Key)]; !ok || w != string(kv.Value) {
			t.Errorf("restored %s=%q, want %q (present %v)", kv.Key, kv.Value, w, ok)
		}
	}
	if got.Header.Revision <= lastSeen+RevisionBump/2 {
		t.Errorf("restored revision %d: not bumped past the lost writes (last seen %d)", got.Header.Revision, lastSeen)
	}
	ml2, err := cli.MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ml2.Header.ClusterId != ml.Header.ClusterId || len(ml2.Members) != 3 {
		t.Errorf("restored cluster %x with %d members, want the same ID %x and 3 members", ml2.Header.ClusterId, len(ml2.Members), ml.Header.ClusterId)
	}
	ids := map[uint64]bool{}
	for _, mem := range ml.Members {
		ids[mem.ID] = true
	}
	for _, mem := range ml2.Members {
		if !ids[mem.ID] || mem.IsLearner {
			t.Errorf("restored member %s %x (learner %v): not one of the old voters", mem.Name, mem.ID, mem.IsLearner)
		}
	}
	// Nobody holds or waits for the reboot lock in the restored cluster.
	sess, err := concurrency.NewSession(cli, concurrency.WithTTL(30))
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	if err := concurrency.NewMutex(sess, spec.RolloutLockPrefix).TryLock(ctx); err != nil {
		t.Errorf("the reboot lock in the restored cluster: %v; want it free", err)
	}
	// A watcher resuming after the last revision it saw is told it was compacted.
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	wr := <-cli.Watch(wctx, "/", clientv3.WithPrefix(), clientv3.WithRev(lastSeen+1))
	if wr.CompactRevision == 0 || !errors.Is(wr.Err(), rpctypes.ErrCompacted) {
		t.Errorf("a watch from revision %d after the restore: compact revision %d, err %v; want a compaction error", lastSeen+1, wr.CompactRevision, wr.Err())
	}
}

// rewrite copies a snapshot file to dst with its database bytes changed by dbEdit, then
// its manifest by edit (nil: unchanged).
func rewrite(t *testing.T, src, dst string, dbEdit func([]byte), edit func(m *spec.SnapshotManifest, db []byte)) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	tr := tar.NewReader(in)
	var m spec.SnapshotManifest
	var db []byte
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		if h.Name == spec.SnapshotManifestName {
			if err := json.Unmarshal(b, &m); err != nil {
				t.Fatal(err)
			}
		} else {
			db = b
		}
	}
	if dbEdit != nil {
		dbEdit(db)
	}
	if edit != nil {
		edit(&m, db)
	}
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	tw := tar.NewWriter(out)
	mb, _ := json.Marshal(m)
	tw.WriteHeader(&tar.Header{Name: spec.SnapshotManifestName, Mode: 0o600, Size: int64(len(mb))})
	tw.Write(mb)
	tw.WriteHeader(&tar.Header{Name: spec.SnapshotDBName, Mode: 0o600, Size: int64(len(db))})
	tw.Write(db)
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestVerifyAndRestoreRefuse(t *testing.T) {
	f := start(t, "snapbad", 70)
	ctx := context.Background()
	c := f.tc.Spec
	f.write(t, "/k", 50)
	dir := t.TempDir()
	good := filepath.Join(dir, "good"+spec.SnapshotExt)
	if _, err := Save(ctx, good, f.opts); err != nil {
		t.Fatal(err)
	}
	want := Expect{Cluster: c.Name, CAFingerprint: f.opts.CAFingerprint}
	cases := []struct {
		name    string
		make    func(path string)
		want    Expect
		corrupt bool   // IsCorrupt
		foreign string // a ForeignError on this field
		says    string
	}{
		{"a byte flipped in the database", func(p string) {
			rewrite(t, good, p, func(db []byte) { db[len(db)/2] ^= 0xff }, nil)
		}, want, true, "", "sha256"},
		{"a byte flipped, the manifest's sha256 made to match", func(p string) {
			rewrite(t, good, p, func(db []byte) { db[len(db)/2] ^= 0xff }, func(m *spec.SnapshotManifest, db []byte) {
				m.SHA256 = fmt.Sprintf("%x", sha256.Sum256(db))
			})
		}, want, true, "", "etcd's own sha256"},
		{"a value changed, both checksums made to match", func(p string) {
			rewrite(t, good, p, func(db []byte) {
				// Every copy: bbolt's freed pages can keep an old copy of the value, and
				// changing only that one would change nothing the hash covers.
				pat := []byte("value-7-1-")
				n := 0
				for off := 0; ; n++ {
					j := bytes.Index(db[off:], pat)
					if j < 0 {
						break
					}
					off += j + len(pat)
					db[off] = 'y'
				}
				if n == 0 {
					t.Fatal("no value-7-1- in the database")
				}
				body := db[:len(db)-sha256.Size]
				s := sha256.Sum256(body)
				copy(db[len(body):], s[:])
			}, func(m *spec.SnapshotManifest, db []byte) { m.SHA256 = fmt.Sprintf("%x", sha256.Sum256(db)) })
		}, want, true, "", "the manifest says revision"},
		{"the manifest's hash changed", func(p string) {
			rewrite(t, good, p, nil, func(m *spec.SnapshotManifest, _ []byte) { m.HashKV++ })
		}, want, true, "", "the manifest says revision"},
		{"cut short", func(p string) {
			b, _ := os.ReadFile(good)
			os.WriteFile(p, b[:len(b)/3], 0o600)
		}, want, true, "", "cut short"},
		{"not a snapshot", func(p string) { os.WriteFile(p, []byte("hello"), 0o600) }, want, true, "", "not an etcdbake snapshot"},
		{"another cluster's name", func(p string) { rewrite(t, good, p, nil, nil) }, Expect{Cluster: "other", CAFingerprint: want.CAFingerprint}, false, "cluster name", "belongs to another cluster"},
		{"another cluster's CA", func(p string) { rewrite(t, good, p, nil, nil) }, Expect{Cluster: c.Name, CAFingerprint: "00ff"}, false, "CA (sha256 of ca.crt)", "belongs to another cluster"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, fmt.Sprintf("bad%d%s", i, spec.SnapshotExt))
			tc.make(p)
			_, err := Verify(p, tc.want)
			if err == nil {
				t.Fatalf("Verify accepted it")
			}
			t.Logf("Verify: %v", err)
			var fe *ForeignError
			if IsCorrupt(err) != tc.corrupt || (tc.foreign != "") != errors.As(err, &fe) || (fe != nil && fe.Field != tc.foreign) {
				t.Errorf("corrupt %v, foreign %v; want corrupt %v, foreign %q", IsCorrupt(err), fe, tc.corrupt, tc.foreign)
			}
			if !strings.Contains(err.Error(), tc.says) || !strings.Contains(err.Error(), p) {
				t.Errorf("the error does not name the file and say %q", tc.says)
			}
			// Restore refuses it before anything is written.
			out := t.TempDir()
			dirs := map[string]string{}
			for _, n := range c.Nodes {
				dirs[n.Name] = filepath.Join(out, n.Name, "etcd")
			}
			if _, err := Restore(ctx, p, c, tc.want, dirs); err == nil {
				t.Fatal("Restore accepted it")
			}
			if ents, _ := os.ReadDir(out); len(ents) != 0 {
				t.Errorf("Restore of a refused snapshot wrote %d entries", len(ents))
			}
		})
	}
	// A good snapshot is not restored over data.
	out := t.TempDir()
	dirs := map[string]string{}
	for _, n := range c.Nodes {
		dirs[n.Name] = filepath.Join(out, n.Name)
	}
	os.MkdirAll(dirs["m2"], 0o700)
	os.WriteFile(filepath.Join(dirs["m2"], "keep"), []byte("x"), 0o600)
	if _, err := Restore(ctx, good, c, want, dirs); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Errorf("Restore over a non-empty data dir: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(dirs["m2"], "keep")); err != nil || string(b) != "x" {
		t.Errorf("the existing data was touched: %v", err)
	}
	if _, err := os.Stat(dirs["m1"]); !os.IsNotExist(err) {
		t.Errorf("m1's data dir was made although the restore was refused")
	}
}
