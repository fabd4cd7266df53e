package testtools

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// S3Server is a real S3-compatible server (SeaweedFS's weed, built by `make setup`) on
// 127.0.0.1, started by a test and stopped at its end.
type S3Server struct {
	Endpoint             string // http://127.0.0.1:PORT
	AccessKey, SecretKey string
}

// StartS3 starts weed with an S3 gateway that accepts only the returned keys (anonymous
// and wrong-key requests get 403), its data under a temporary directory, and waits until
// it answers (about 15 s).
func StartS3(t testing.TB) *S3Server {
	t.Helper()
	weed := os.Getenv("ETCDBAKE_WEED")
	if weed == "" {
		weed = cachedTool("weed")
	}
	if weed == "" {
		Missing(t, "SeaweedFS weed (the etcdbake tools cache)")
	}
	dir := t.TempDir()
	s := &S3Server{AccessKey: "etcdbake-test", SecretKey: "s3cr3t-" + strconv.FormatInt(time.Now().UnixNano(), 36)}
	ids, _ := json.Marshal(map[string]any{"identities": []any{map[string]any{
		"name": "etcdbake", "credentials": []any{map[string]string{"accessKey": s.AccessKey, "secretKey": s.SecretKey}},
		"actions": []string{"Read", "Write", "List", "Admin", "Tagging"}}}})
	idsFile := filepath.Join(dir, "ids.json")
	if err := os.WriteFile(idsFile, ids, 0o600); err != nil {
		t.Fatal(err)
	}
	// weed also listens on each port + 10000 (gRPC): pick ports whose both are free.
	ports := freePortPairs(t, 4)
	s.Endpoint = fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	data := filepath.Join(dir, "data")
	if err := os.MkdirAll(data, 0o700); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(weed, "server", "-dir="+data, "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
		"-s3", "-s3.port="+strconv.Itoa(ports[0]), "-s3.config="+idsFile,
		"-master.port="+strconv.Itoa(ports[1]), "-volume.port="+strconv.Itoa(ports[2]), "-filer.port="+strconv.Itoa(ports[3]))
	logf, err := os.Create(filepath.Join(dir, "weed.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
		logf.Close()
	})
	// Ready: an unsigned request is answered (403) by the S3 gateway.
	deadline := time.Now().Add(90 * time.Second)
	for {
		resp, err := http.Get(s.Endpoint + "/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusForbidden {
				return s
			}
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logf.Name())
			t.Fatalf("weed's S3 gateway did not answer within 90 s (%v):\n%s", err, tailLines(b, 30))
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// freePortPairs finds n ports p, each with p+10000 free too, on 127.0.0.1.
func freePortPairs(t testing.TB, n int) []int {
	t.Helper()
	var out []int
	for tries := 0; len(out) < n && tries < 1000; tries++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if p+10000 > 65535 {
			continue
		}
		l2, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p+10000))
		if err != nil {
			continue
		}
		l2.Close()
		dup := false
		for _, q := range out {
			dup = dup || q == p
		}
		if !dup {
			out = append(out, p)
		}
	}
	if len(out) < n {
		t.Fatalf("found %d free port pairs of %d", len(out), n)
	}
	return out
}

func tailLines(b []byte, n int) string {
	lines := 0
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] == '\n' {
			lines++
			if lines > n {
				return string(b[i+1:])
			}
		}
	}
	return string(b)
}

// Client is an S3 client of the server with its keys.
func (s *S3Server) Client(t testing.TB) *minio.Client {
	t.Helper()
	cli, err := minio.New(strings.TrimPrefix(s.Endpoint, "http://"), &minio.Options{Creds: credentials.NewStaticV4(s.AccessKey, s.SecretKey, "")})
	if err != nil {
		t.Fatal(err)
	}
	return cli
}

// MakeBucket creates the bucket name with the server's keys.
func (s *S3Server) MakeBucket(t testing.TB, name string) {
	t.Helper()
	if err := s.Client(t).MakeBucket(context.Background(), name, minio.MakeBucketOptions{}); err != nil {
		t.Fatalf("creating bucket %s: %v", name, err)
	}
}
