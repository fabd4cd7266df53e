package backup

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/etcdbake/etcdbake/internal/testtools"
	"github.com/etcdbake/etcdbake/spec"
)

// s3Target starts a real S3 server (SeaweedFS) with a bucket and returns a target on it
// and a client of the bucket for the test's own looks.
func s3Target(t *testing.T, prefix string) (Target, *minio.Client) {
	t.Helper()
	s := testtools.StartS3(t)
	tg := Target{Endpoint: s.Endpoint, Bucket: "etcd-backups", Prefix: prefix, AccessKey: s.AccessKey, SecretKey: s.SecretKey}
	s.MakeBucket(t, tg.Bucket)
	return tg, s.Client(t)
}

// TestTargetUploadAndRetention: real snapshots uploaded to a real S3 server, listed newest
// first, pruned to keep (other objects untouched), one fetched back verifies; wrong keys
// and a bad endpoint are refused with the target named.
func TestTargetUploadAndRetention(t *testing.T) {
	f := start(t, "s3", 100)
	tg, cli := s3Target(t, "prod/")
	ctx := context.Background()
	dir := t.TempDir()
	t0 := time.Date(2026, 12, 4, 0, 0, 0, 0, time.UTC)
	var keys []string
	for i := 0; i < 3; i++ {
		f.write(t, "/s3/"+string(rune('a'+i)), 5)
		taken := t0.Add(time.Duration(i) * 6 * time.Hour)
		o := f.opts
		o.Now = func() time.Time { return taken }
		file := filepath.Join(dir, spec.SnapshotFileName(f.tc.Spec.Name, taken))
		if _, err := Save(ctx, file, o); err != nil {
			t.Fatal(err)
		}
		key, err := Upload(ctx, tg, file)
		if err != nil {
			t.Fatal(err)
		}
		if want := "prod/" + filepath.Base(file); key != want {
			t.Errorf("uploaded as %s, want %s", key, want)
		}
		keys = append(keys, key)
	}
	// Objects that are not this cluster's snapshots stay whatever happens.
	for _, k := range []string{"prod/notes.txt", "prod/other-20200101T000000Z" + spec.SnapshotExt, "s3-20200101T000000Z" + spec.SnapshotExt} {
		if _, err := cli.PutObject(ctx, tg.Bucket, k, bytes.NewReader([]byte("x")), 1, minio.PutObjectOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	objs, err := ListTarget(ctx, tg, f.tc.Spec.Name)
	if err != nil || len(objs) != 3 || objs[0].Key != keys[2] || objs[2].Key != keys[0] || objs[0].Size == 0 {
		t.Fatalf("list: %+v, %v; want %v newest first", objs, err, keys)
	}
	removed, err := PruneTarget(ctx, tg, f.tc.Spec.Name, 2)
	if err != nil || len(removed) != 1 || removed[0] != keys[0] {
		t.Errorf("prune to 2: removed %v, %v; want [%s]", removed, err, keys[0])
	}
	var left []string
	for o := range cli.ListObjects(ctx, tg.Bucket, minio.ListObjectsOptions{Recursive: true}) {
		left = append(left, o.Key)
	}
	if want := []string{"prod/notes.txt", "prod/other-20200101T000000Z" + spec.SnapshotExt, keys[1], keys[2], "s3-20200101T000000Z" + spec.SnapshotExt}; strings.Join(left, " ") != strings.Join(want, " ") {
		t.Errorf("the bucket holds %v, want %v", left, want)
	}
	back := filepath.Join(t.TempDir(), "back"+spec.SnapshotExt)
	if err := Download(ctx, tg, keys[2], back); err != nil {
		t.Fatal(err)
	}
	if m, err := Verify(back, Expect{Cluster: f.tc.Spec.Name, CAFingerprint: f.opts.CAFingerprint}); err != nil || !m.Taken.Equal(t0.Add(12*time.Hour)) {
		t.Errorf("the snapshot fetched back: %v, %+v", err, m)
	}
	if err := Download(ctx, tg, keys[2], back); err == nil {
		t.Error("Download wrote over an existing file")
	}

	bad := tg
	bad.SecretKey = "wrong"
	if _, err := Upload(ctx, bad, back); err == nil || !strings.Contains(err.Error(), "s3 bucket etcd-backups/prod at "+tg.Endpoint) {
		t.Errorf("upload with a wrong key: %v", err)
	}
	bad = tg
	bad.Endpoint = "s3.example.com"
	if _, err := ListTarget(ctx, bad, "s3"); err == nil || !strings.Contains(err.Error(), "want https://HOST[:PORT]") {
		t.Errorf("endpoint without a scheme: %v", err)
	}
}

// TestReadCredentials: the AWS environment's two keys, quotes and comments allowed; a file
// without them names what it needs.
func TestReadCredentials(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	os.WriteFile(good, []byte("# s3\nAWS_ACCESS_KEY_ID=AKIA1\nAWS_SECRET_ACCESS_KEY=\"se=cret\"\nAWS_REGION=x\n"), 0o600)
	if a, s, err := ReadCredentials(good); err != nil || a != "AKIA1" || s != "se=cret" {
		t.Errorf("good: %q %q %v", a, s, err)
	}
	bad := filepath.Join(dir, "bad")
	os.WriteFile(bad, []byte("AWS_ACCESS_KEY_ID=AKIA1\n"), 0o600)
	if _, _, err := ReadCredentials(bad); err == nil || !strings.Contains(err.Error(), bad+": needs AWS_ACCESS_KEY_ID=... and AWS_SECRET_ACCESS_KEY=... lines") {
		t.Errorf("bad: %v", err)
	}
}
