package main

import (
	"bytes"
	"context"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/etcdbake/etcdbake/ignition"
	"github.com/etcdbake/etcdbake/pki"
)

// syncBuffer is a bytes.Buffer safe for the server goroutine and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// TestServe runs `etcdbake serve` on 127.0.0.1 and fetches what a PXE-booted node would:
// its iPXE script and its Ignition config (valid for Ignition's parser, naming binaries on
// this server whose bytes match the sha512 the config names), while an unknown MAC gets
// a 404; the access log and `serve status` say who fetched what.
func TestServe(t *testing.T) {
	dir := t.TempDir()
	specPath := filepath.Join(dir, "cluster.yaml")
	out := filepath.Join(dir, "out")
	cache := filepath.Join(dir, "cache")
	os.WriteFile(specPath, []byte(fakeBinaries(t, dir)), 0o644)
	fb := staticFirstboot(t) // a real one: --firstboot is checked
	now := time.Now()

	for args, want := range map[string]string{
		"":                   "--listen is required",
		"--listen 0.0.0.0:0": "--all-interfaces",
		"--listen :8080":     "--all-interfaces",
		"--listen 127.0.0.1": "HOST:PORT",
	} {
		a := append([]string{"serve", "-f", specPath, "--out", out, "--cache", cache, "--firstboot", fb}, strings.Fields(args)...)
		if _, _, err := run(t, now, a...); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("serve %s: %v, want an error saying %q", args, err, want)
		}
	}
	if _, err := os.Stat(out); err == nil {
		t.Errorf("a refused serve left %s behind", out)
	}

	ctx, cancel := context.WithCancel(context.Background())
	a := &app{now: time.Now}
	cmd := newRootCmdFor(a)
	var stdout, stderr syncBuffer
	cmd.SetOut(&stdout)
	cmd.SetErr(&stderr)
	cmd.SetArgs([]string{"serve", "-f", specPath, "--out", out, "--cache", cache, "--firstboot", fb, "--listen", "127.0.0.1:0",
		"--fcos-kernel", "http://files.example/k", "--fcos-initramfs", "http://files.example/i", "--release-listen", "127.0.0.1:0"})
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve ended with %v", err)
		}
	}()
	re := regexp.MustCompile(`machines use (http://127\.0\.0\.1:\d+)\)`)
	var base string
	for deadline := time.Now().Add(time.Minute); base == ""; {
		if m := re.FindStringSubmatch(stdout.String()); m != nil {
			base = m[1]
			break
		}
		select {
		case err := <-done:
			t.Fatalf("serve ended early: %v\n%s\n%s", err, stdout.String(), stderr.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve did not start:\n%s", stdout.String())
		}
	}
	fetch := func(path string) (int, []byte) {
		t.Helper()
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}

	// Before any machine has fetched anything, serve status says so: the report, every
	// node "nothing yet", and exit 3.
	table, _, err := run(t, now, "serve", "status", "-f", specPath, "--out", out)
	wantExit(t, "serve status before any fetch", err, 3, "no machine has fetched anything yet")
	if strings.Count(table, "nothing yet") != 3 {
		t.Errorf("serve status before any fetch:\n%s", table)
	}
	js, _, err := run(t, now, "serve", "status", "-f", specPath, "--out", out, "-o", "json")
	var none []struct{ Node string }
	if exitCode(err) != 3 || json.Unmarshal([]byte(js), &none) != nil || len(none) != 3 {
		t.Errorf("serve status -o json before any fetch: %v\n%s", err, js)
	}
	_, _, err = run(t, now, "serve", "status", "-f", specPath, "--out", filepath.Join(dir, "elsewhere"))
	wantExit(t, "serve status where no server ran", err, 1, "no `etcdbake serve` has run with --out "+filepath.Join(dir, "elsewhere"))

	code, script := fetch("/ipxe?mac=52-54-00-88-00-12")
	if code != 200 || !strings.Contains(string(script), "ignition.config.url="+base+"/ignition?mac=52-54-00-88-00-12") {
		t.Errorf("iPXE script: %d\n%s", code, script)
	}
	code, cfg := fetch("/ignition?mac=52:54:00:88:00:12")
	if code != 200 {
		t.Fatalf("ignition: %d %s", code, cfg)
	}
	if err := ignition.Check(cfg); err != nil {
		t.Fatalf("served config: %v", err)
	}
	var conf struct {
		Storage struct {
			Files []struct {
				Path     string
				Contents struct {
					Source       *string
					Verification struct{ Hash *string }
				}
			}
		}
	}
	if err := json.Unmarshal(cfg, &conf); err != nil {
		t.Fatal(err)
	}
	served := 0
	for _, f := range conf.Storage.Files {
		src := f.Contents.Source
		if src == nil || !strings.HasPrefix(*src, base+"/binaries/") {
			continue
		}
		code, b := fetch(strings.TrimPrefix(*src, base))
		sum := sha512.Sum512(b)
		if code != 200 || f.Contents.Verification.Hash == nil || *f.Contents.Verification.Hash != "sha512-"+hex.EncodeToString(sum[:]) {
			t.Errorf("%s from %s: %d, sha512 of what was served differs from the config's %v", f.Path, *src, code, f.Contents.Verification.Hash)
		}
		served++
	}
	if served != 4 {
		t.Errorf("%d binaries fetched from the server, want 4 (etcd, etcdctl, flanneld, etcd-firstboot)", served)
	}
	if !strings.Contains(string(cfg), "etcd-2") || strings.Contains(string(cfg), `"etcd-1"`) {
		t.Error("etcd-2's MAC did not get etcd-2's config")
	}
	if code, body := fetch("/ignition?mac=52:54:00:88:00:99"); code != 404 || bytes.Contains(body, []byte("ignition")) && bytes.Contains(body, []byte("storage")) {
		t.Errorf("unknown MAC: %d %s", code, body)
	}

	log := stderr.String()
	for _, want := range []string{"mac=52:54:00:88:00:12 node=etcd-2 200", "ignition config", "mac=52:54:00:88:00:99 node=- 404"} {
		if !strings.Contains(log, want) {
			t.Errorf("access log lacks %q:\n%s", want, log)
		}
	}
	st, _, err := run(t, now, "serve", "status", "-f", specPath, "--out", out, "--output", "json")
	if err != nil {
		t.Fatal(err)
	}
	var nodes []struct {
		Node    string
		Fetched map[string]struct{ Count int }
	}
	if err := json.Unmarshal([]byte(st), &nodes); err != nil || len(nodes) != 3 || nodes[1].Node != "etcd-2" ||
		nodes[1].Fetched["ignition"].Count != 1 || nodes[1].Fetched["ipxe"].Count != 1 || len(nodes[0].Fetched) != 0 {
		t.Errorf("serve status --output json: %v\n%s", err, st)
	}
	if table, _, err := run(t, now, "serve", "status", "-f", specPath, "--out", out); err != nil || !strings.Contains(table, "etcd-1       52:54:00:88:00:11 nothing yet") {
		t.Errorf("serve status: %v\n%s", err, table)
	}

	// --release-listen next to --listen: the release server runs too, with the PKI the
	// configs were rendered with (no release published yet).
	m := releaseURLRe.FindStringSubmatch(stdout.String())
	if m == nil {
		t.Fatalf("serve --release-listen does not print the release URL:\n%s", stdout.String())
	}
	code, body := getBody(t, nodeClient(t, filepath.Join(out, "pki"), "etcd-3", pki.KindFirstboot, ""), m[1]+"/0123456789ab/etcd-3/manifest.json")
	if code != 404 || !strings.Contains(body, "no release 0123456789ab on this server (no releases yet)") {
		t.Errorf("release server next to PXE: %d %q", code, body)
	}
}
