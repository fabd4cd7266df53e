package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/etcdbake/etcdbake/pki"
)

// startServe runs `etcdbake serve args...` in the background until the test ends and
// returns the first submatch of re in its stdout (waiting for it), and its output.
func startServe(t *testing.T, re *regexp.Regexp, args ...string) (match string, stdout, stderr *syncBuffer, stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := newRootCmdFor(&app{now: time.Now})
	stdout, stderr = &syncBuffer{}, &syncBuffer{}
	cmd.SetOut(stdout)
	cmd.SetErr(stderr)
	cmd.SetArgs(args)
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve ended with %v", err)
		}
	}
	t.Cleanup(stop)
	for deadline := time.Now().Add(time.Minute); ; {
		if m := re.FindStringSubmatch(stdout.String()); m != nil {
			return m[1], stdout, stderr, stop
		}
		select {
		case err := <-done:
			stopped = true
			t.Fatalf("serve ended early: %v\n%s\n%s", err, stdout.String(), stderr.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve did not start:\n%s", stdout.String())
		}
	}
}

// nodeClient is a node's HTTPS client: the cluster CA as the only root, and the client
// certificate of the given kind of the node (none when node is "").
func nodeClient(t *testing.T, pkiDir, node, kind, serverName string) *http.Client {
	t.Helper()
	caFile, _ := pki.CAPath(pkiDir, pki.CAName)
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	conf := &tls.Config{RootCAs: roots, ServerName: serverName}
	if node != "" {
		crt, key := pki.NodeCertPath(pkiDir, node, kind)
		c, err := tls.LoadX509KeyPair(crt, key)
		if err != nil {
			t.Fatal(err)
		}
		conf.Certificates = []tls.Certificate{c}
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: conf}, Timeout: 20 * time.Second}
}

func getBody(t *testing.T, c *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

var releaseURLRe = regexp.MustCompile(`at (https://127\.0\.0\.1:\d+/v1/releases) \(nodes use this URL`)

// TestServeReleases: `serve --release-listen` alone serves OUT/releases over mutual TLS:
// a node gets its own manifest with its etcd-firstboot certificate and verifies the
// server against the cluster CA for the listen address and each --release-san; a client
// without a certificate gets no connection, another node's certificate a 403. The server
// certificate is kept on the next start. Bad flags are refused before anything is
// written.
func TestServeReleases(t *testing.T) {
	dir := t.TempDir()
	specPath := exampleSpec(t, dir)
	out := filepath.Join(dir, "out")
	now := time.Now()

	for args, want := range map[string]string{
		"--release-listen 0.0.0.0:0":                           "--all-interfaces",
		"--release-listen 127.0.0.1":                           "--release-listen \"127.0.0.1\": want HOST:PORT",
		"--release-listen 0.0.0.0:0 --all-interfaces":          "add --release-san",
		"--release-san 10.88.0.1 --listen 127.0.0.1:0":         "--release-san goes with --release-listen",
		"--release-listen 127.0.0.1:0 --release-san https://x": "neither an IP address nor a lowercase DNS name",
		"--release-listen 127.0.0.1:0":                         "create the PKI first with `etcdbake pki`",
	} {
		a := append([]string{"serve", "-f", specPath, "--out", out}, strings.Fields(args)...)
		if _, _, err := run(t, now, a...); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("serve %s: %v, want an error saying %q", args, err, want)
		}
	}
	if _, err := os.Stat(out); err == nil {
		t.Errorf("a refused serve left %s behind", out)
	}

	if _, _, err := run(t, now, "pki", "-f", specPath, "--out", out); err != nil {
		t.Fatal(err)
	}
	pkiDir := filepath.Join(out, "pki")
	const id = "0123456789ab"
	manifest := `{"id":"0123456789ab","nodes":{}}`
	if err := os.MkdirAll(filepath.Join(out, "releases", id), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(out, "releases", id, "manifest.json"), []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}

	args := []string{"serve", "-f", specPath, "--out", out, "--release-listen", "127.0.0.1:0", "--release-san", "localhost"}
	base, stdout, stderr, stop := startServe(t, releaseURLRe, args...)
	if !strings.Contains(stdout.String(), "release server certificate "+filepath.Join(pkiDir, "serve", "server.crt")+" for 127.0.0.1, localhost: created") {
		t.Errorf("serve output does not say the certificate was created:\n%s", stdout.String())
	}

	// The node's view: its firstboot certificate, the cluster CA, the address it dials.
	for _, name := range []string{"", "localhost"} {
		code, body := getBody(t, nodeClient(t, pkiDir, "etcd-2", pki.KindFirstboot, name), base+"/"+id+"/etcd-2/manifest.json")
		if code != 200 || body != manifest {
			t.Errorf("etcd-2's manifest (server name %q): %d %q", name, code, body)
		}
	}
	if code, body := getBody(t, nodeClient(t, pkiDir, "etcd-1", pki.KindFirstboot, ""), base+"/"+id+"/etcd-2/manifest.json"); code != 403 || !strings.Contains(body, "etcd-firstboot:etcd-1 may fetch only its own files") {
		t.Errorf("etcd-1 on etcd-2's manifest: %d %q", code, body)
	}
	if code, body := getBody(t, nodeClient(t, pkiDir, "etcd-2", pki.KindFirstboot, ""), base+"/ffffffffffff/etcd-2/manifest.json"); code != 404 || !strings.Contains(body, "no release ffffffffffff") {
		t.Errorf("an unknown release: %d %q", code, body)
	}
	if resp, err := nodeClient(t, pkiDir, "", "", "").Get(base + "/" + id + "/etcd-2/manifest.json"); err == nil {
		resp.Body.Close()
		t.Errorf("a client without a certificate got %d, want a failed handshake", resp.StatusCode)
	}
	if resp, err := http.Get(strings.Replace(base, "https://", "http://", 1) + "/" + id + "/etcd-2/manifest.json"); err == nil {
		if resp.StatusCode < 400 {
			t.Errorf("plain HTTP on the release port: %d", resp.StatusCode)
		}
		resp.Body.Close()
	}
	stop()
	log := stderr.String()
	for _, want := range []string{"node=etcd-2 200 ", "release " + id + " manifest.json of etcd-2", "node=etcd-1 403 ", "release server: http: TLS handshake error"} {
		if !strings.Contains(log, want) {
			t.Errorf("the log lacks %q:\n%s", want, log)
		}
	}
	if _, err := os.Stat(filepath.Join(out, "pxe")); err == nil {
		t.Error("serve --release-listen alone wrote a PXE status file")
	}

	// The next start keeps the certificate.
	_, stdout, _, _ = startServe(t, releaseURLRe, args...)
	if !strings.Contains(stdout.String(), "for 127.0.0.1, localhost: reused: valid until") {
		t.Errorf("second start:\n%s", stdout.String())
	}
}
