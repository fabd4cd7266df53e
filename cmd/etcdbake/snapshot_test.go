package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/etcdbake/etcdbake/internal/testtools"
	"github.com/etcdbake/etcdbake/spec"
	"github.com/minio/minio-go/v7"
)

// TestSnapshotCommands runs `snapshot save` and `snapshot verify` against a real
// 3-member etcd with TLS (embedded, on loopback: --endpoints) with the admin certificate
// from OUT/pki.
func TestSnapshotCommands(t *testing.T) {
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	c, tc, out, specPath, ex := demoCluster(t, now, 151)
	eps := strings.Join(c.ClientEndpoints(), ",")

	stdout, stderr, err := run(t, now, "snapshot", "save", "-f", specPath, "--out", out, "--endpoints", eps)
	if err != nil {
		t.Fatalf("snapshot save: %v\n%s", err, stderr)
	}
	file := strings.TrimSpace(stdout)
	if want := filepath.Join(out, "snapshots", ex.Name+"-20261203T120000Z"+spec.SnapshotExt); file != want {
		t.Errorf("saved to %q, want %q", file, want)
	}
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("the snapshot file: %v (mode %v), want mode 0600", err, fi)
	}
	for _, w := range []string{"saved and verified", "cluster " + ex.Name, "members: [etcd-1 etcd-2 etcd-3]", "taken 2026-12-03T12:00:00Z"} {
		if !strings.Contains(stderr, w) {
			t.Errorf("save's report lacks %q:\n%s", w, stderr)
		}
	}
	// list shows it from its manifest; a file that is not a snapshot, with why.
	os.WriteFile(filepath.Join(out, "snapshots", "junk"+spec.SnapshotExt), []byte("junk"), 0o600)
	// The nodes' scheduled snapshots come from what each node lists in etcd.
	nodeFile := spec.NodeSnapshotDir + "/" + spec.SnapshotFileName(ex.Name, now.Add(time.Hour))
	rec, _ := json.Marshal(spec.NodeSnapshots{Node: "etcd-2", Snapshots: []spec.SnapshotRecord{{Node: "etcd-2", File: nodeFile, Taken: now.Add(time.Hour), Revision: 42, Size: 3 << 20}}})
	cli := adminClient(t, tc)
	if _, err := cli.Put(context.Background(), spec.SnapshotNodeKey("etcd-2"), string(rec)); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, err = run(t, now.Add(2*time.Hour), "snapshot", "list", "-f", specPath, "--out", out, "--endpoints", eps)
	lines := strings.Split(stdout, "\n")
	if err != nil || len(lines) < 4 || strings.Join(strings.Fields(lines[1]), " ") != "2026-12-03T13:00:00Z 1h0m0s 42 3.0 MiB node etcd-2 "+nodeFile ||
		!strings.HasPrefix(lines[2], "2026-12-03T12:00:00Z  2h0m0s") || !strings.HasSuffix(lines[2], file) || !strings.Contains(lines[2], "here (from etcd-") ||
		!strings.Contains(lines[3], "junk"+spec.SnapshotExt+": corrupt snapshot") {
		t.Errorf("snapshot list: %v\n%s%s", err, stdout, stderr)
	}
	// Without the cluster: the files here, and a note.
	stdout, stderr, err = run(t, now.Add(2*time.Hour), "snapshot", "list", "-f", specPath, "--out", out, "--endpoints", "https://127.0.0.1:1")
	if err != nil || !strings.Contains(stdout, file) || strings.Contains(stdout, "node etcd-2") || !strings.Contains(stderr, "the nodes' snapshots are not listed") {
		t.Errorf("snapshot list without the cluster: %v\n%s%s", err, stdout, stderr)
	}
	// A snapshot never replaces a file: a named one is refused, a default name taken in
	// the same second gets a number.
	_, _, err = run(t, now, "snapshot", "save", file, "-f", specPath, "--out", out, "--endpoints", eps)
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 2 || !strings.Contains(ee.msg, "exists") {
		t.Errorf("save over an existing file: %v", err)
	}
	stdout, _, err = run(t, now, "snapshot", "save", "-f", specPath, "--out", out, "--endpoints", eps)
	if want := strings.TrimSuffix(file, spec.SnapshotExt) + "-2" + spec.SnapshotExt; err != nil || strings.TrimSpace(stdout) != want {
		t.Errorf("a second save in the same second: %v %q, want %s", err, stdout, want)
	}
	os.Remove(strings.TrimSpace(stdout))

	stdout, _, err = run(t, now, "snapshot", "verify", file, "-f", specPath, "--out", out, "-o", "json")
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	var m spec.SnapshotManifest
	if err := json.Unmarshal([]byte(stdout), &m); err != nil || m.Cluster != ex.Name || m.Revision == 0 || len(m.Members) != 3 || m.SpecSHA256 == "" {
		t.Errorf("verify -o json: %v, %+v", err, m)
	}

	// Damaged: exit 1 naming the file.
	b, _ := os.ReadFile(file)
	cut := filepath.Join(t.TempDir(), "cut"+spec.SnapshotExt)
	os.WriteFile(cut, b[:len(b)-4096], 0o600)
	_, _, err = run(t, now, "snapshot", "verify", cut, "-f", specPath, "--out", out)
	if !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(ee.msg, cut) || !strings.Contains(ee.msg, "corrupt") {
		t.Errorf("verify of a cut file: %v", err)
	}
	// Another cluster's PKI: refused.
	other := filepath.Join(t.TempDir(), "other")
	if _, _, err := run(t, now, "pki", "-f", specPath, "--out", other); err != nil {
		t.Fatal(err)
	}
	_, _, err = run(t, now, "snapshot", "verify", file, "-f", specPath, "--out", other)
	if !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(ee.msg, "belongs to another cluster") {
		t.Errorf("verify with another CA: %v", err)
	}

	// restore verifies first: a damaged or foreign snapshot writes nothing (no images, no
	// restored data left under OUT).
	before, _ := os.ReadDir(out)
	for _, tt := range []struct{ file, pkiOut, says string }{
		{cut, out, "corrupt"},
		{file, other, "belongs to another cluster"},
	} {
		_, _, err = run(t, now, "restore", tt.file, "-f", specPath, "--out", tt.pkiOut, "--format", "raw")
		if !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(ee.msg, tt.says) {
			t.Errorf("restore %s: %v, want exit 1 saying %q", tt.file, err, tt.says)
		}
	}
	after, _ := os.ReadDir(out)
	if len(after) != len(before) {
		t.Errorf("a refused restore left entries in OUT: %v -> %v", before, after)
	}
	for _, d := range []string{out, other} {
		if m, _ := filepath.Glob(filepath.Join(d, ".restore-*")); len(m) > 0 {
			t.Errorf("a refused restore left %v", m)
		}
		if _, err := os.Stat(filepath.Join(d, "restore")); !os.IsNotExist(err) {
			t.Errorf("a refused restore made %s/restore", d)
		}
	}
}

// TestSnapshotListTarget: `snapshot list` lists the backup target's snapshots (a real S3
// server) with the credentials file the spec names, and says so when it cannot.
func TestSnapshotListTarget(t *testing.T) {
	now := time.Date(2026, 12, 3, 18, 0, 0, 0, time.UTC)
	dir := t.TempDir()
	specPath, out := filepath.Join(dir, "cluster.yaml"), filepath.Join(dir, "out")
	if _, _, err := run(t, now, "init", "-f", specPath); err != nil {
		t.Fatal(err)
	}
	ex, _, err := spec.Load(specPath)
	if err != nil {
		t.Fatal(err)
	}
	s3 := testtools.StartS3(t)
	s3.MakeBucket(t, "etcd-backups")
	mc, ctx := s3.Client(t), context.Background()
	key := "prod/" + spec.SnapshotFileName(ex.Name, now.Add(-6*time.Hour))
	if _, err := mc.PutObject(ctx, "etcd-backups", key, strings.NewReader("snapshot"), 8, minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "s3.env"), []byte("AWS_ACCESS_KEY_ID="+s3.AccessKey+"\nAWS_SECRET_ACCESS_KEY="+s3.SecretKey+"\n"), 0o600)
	f, _ := os.OpenFile(specPath, os.O_APPEND|os.O_WRONLY, 0)
	fmt.Fprintf(f, "\nbackup:\n  target:\n    endpoint: %s\n    bucket: etcd-backups\n    prefix: prod/\n    credentialsFile: s3.env\n", s3.Endpoint)
	f.Close()
	stdout, stderr, err := run(t, now, "snapshot", "list", "-f", specPath, "--out", out, "--endpoints", "https://127.0.0.1:1")
	if err != nil || !strings.Contains(strings.Join(strings.Fields(stdout), " "), "2026-12-03T12:00:00Z 6h0m0s - 8 B s3 etcd-backups "+key) {
		t.Errorf("snapshot list with a target: %v\n%s%s", err, stdout, stderr)
	}
	os.WriteFile(filepath.Join(dir, "s3.env"), []byte("AWS_ACCESS_KEY_ID="+s3.AccessKey+"\nAWS_SECRET_ACCESS_KEY=wrong\n"), 0o600)
	stdout, stderr, err = run(t, now, "snapshot", "list", "-f", specPath, "--out", out, "--endpoints", "https://127.0.0.1:1")
	if err != nil || strings.Contains(stdout, key) || !strings.Contains(stderr, "the target's snapshots are not listed: listing s3 bucket etcd-backups/prod at "+s3.Endpoint) {
		t.Errorf("snapshot list with wrong keys: %v\n%s%s", err, stdout, stderr)
	}
}

// TestSnapshotFetch: `snapshot fetch` takes the newest snapshot of the cluster from the
// backup target (a real S3 server), verifies it and writes it to OUT/snapshots, the same
// bytes as uploaded; an object that does not verify is refused with exit 1 and nothing
// written; a file is never replaced, the same snapshot is kept once, and one of another
// snapshot's name gets a numbered name.
func TestSnapshotFetch(t *testing.T) {
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	c, _, out, specPath, ex := demoCluster(t, now, 161)
	stdout, stderr, err := run(t, now, "snapshot", "save", filepath.Join(t.TempDir(), "saved"+spec.SnapshotExt), "-f", specPath, "--out", out, "--endpoints", strings.Join(c.ClientEndpoints(), ","))
	if err != nil {
		t.Fatalf("snapshot save: %v\n%s", err, stderr)
	}
	saved, _ := os.ReadFile(strings.TrimSpace(stdout))

	s3 := testtools.StartS3(t)
	s3.MakeBucket(t, "etcd-backups")
	mc, ctx := s3.Client(t), context.Background()
	good := spec.SnapshotFileName(ex.Name, now)
	bad := spec.SnapshotFileName(ex.Name, now.Add(-time.Hour))
	for key, b := range map[string][]byte{good: saved, bad: saved[:len(saved)/2]} {
		if _, err := mc.PutObject(ctx, "etcd-backups", key, bytes.NewReader(b), int64(len(b)), minio.PutObjectOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(filepath.Dir(specPath), "s3.env"), []byte("AWS_ACCESS_KEY_ID="+s3.AccessKey+"\nAWS_SECRET_ACCESS_KEY="+s3.SecretKey+"\n"), 0o600)
	f, _ := os.OpenFile(specPath, os.O_APPEND|os.O_WRONLY, 0)
	fmt.Fprintf(f, "\nbackup:\n  target:\n    endpoint: %s\n    bucket: etcd-backups\n    credentialsFile: s3.env\n", s3.Endpoint)
	f.Close()

	stdout, stderr, err = run(t, now, "snapshot", "fetch", "-f", specPath, "--out", out)
	want := filepath.Join(out, "snapshots", good)
	if err != nil || strings.TrimSpace(stdout) != want || !strings.Contains(stderr, "verified") {
		t.Fatalf("snapshot fetch: %v %q, want %s\n%s", err, stdout, want, stderr)
	}
	if b, err := os.ReadFile(want); err != nil || !bytes.Equal(b, saved) {
		t.Errorf("the fetched file differs from the uploaded snapshot (%v)", err)
	}
	// The same snapshot again: kept once.
	if stdout, _, err := run(t, now, "snapshot", "fetch", "-f", specPath, "--out", out); err != nil || strings.TrimSpace(stdout) != want {
		t.Errorf("fetch of a snapshot already here: %v %q, want %s", err, stdout, want)
	}
	if files, _ := filepath.Glob(filepath.Join(out, "snapshots", "*")); len(files) != 1 {
		t.Errorf("fetching the same snapshot twice left %v", files)
	}
	var ee *exitError
	if _, _, err := run(t, now, "snapshot", "fetch", "-f", specPath, "--out", out, "--file", want); !errors.As(err, &ee) || ee.code != 2 || !strings.Contains(ee.msg, "exists") {
		t.Errorf("fetch over an existing --file: %v", err)
	}
	// Another snapshot of that name (a save in the same second as the schedule's) is
	// neither replaced nor in the way: the fetched one is NAME-2.
	other := []byte("another snapshot of the same second")
	os.WriteFile(want, other, 0o600)
	second := strings.TrimSuffix(want, spec.SnapshotExt) + "-2" + spec.SnapshotExt
	if stdout, _, err := run(t, now, "snapshot", "fetch", "-f", specPath, "--out", out); err != nil || strings.TrimSpace(stdout) != second {
		t.Errorf("fetch beside another snapshot of the same name: %v %q, want %s", err, stdout, second)
	}
	if b, _ := os.ReadFile(want); !bytes.Equal(b, other) {
		t.Errorf("fetch replaced %s", want)
	}
	if b, err := os.ReadFile(second); err != nil || !bytes.Equal(b, saved) {
		t.Errorf("%s differs from the uploaded snapshot (%v)", second, err)
	}
	before, _ := os.ReadDir(filepath.Join(out, "snapshots"))
	_, _, err = run(t, now, "snapshot", "fetch", bad, "-f", specPath, "--out", out)
	if !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(ee.msg, bad) || !strings.Contains(ee.msg, "nothing was written") {
		t.Errorf("fetch of a cut object: %v, want exit 1 naming it", err)
	}
	if after, _ := os.ReadDir(filepath.Join(out, "snapshots")); len(after) != len(before) {
		t.Errorf("a refused fetch left files: %v -> %v", before, after)
	}
}
