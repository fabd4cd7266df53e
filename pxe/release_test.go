package pxe

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/etcdbake/etcdbake/pki"
	"github.com/etcdbake/etcdbake/spec"
)

const relID = "0123456789ab"

// relEnv is a release server over real mutual TLS on 127.0.0.1 with the PKI of the
// example spec (nodes etcd-1, etcd-2, etcd-3).
type relEnv struct {
	pkiDir, dir string
	files       map[string][]byte // by path below dir
	srv         *httptest.Server
	addr        string // 127.0.0.1:PORT
	mu          sync.Mutex
	log         []Access
}

func exampleSpec(t *testing.T) *spec.Cluster {
	t.Helper()
	c, rep := spec.Parse(spec.Example)
	if c == nil || rep.HasErrors() {
		t.Fatalf("example spec: %s", rep)
	}
	return c
}

func newRelEnv(t *testing.T, nodes []string) *relEnv {
	t.Helper()
	e := &relEnv{pkiDir: filepath.Join(t.TempDir(), "pki"), dir: filepath.Join(t.TempDir(), "releases"), files: map[string][]byte{}}
	c := exampleSpec(t)
	if _, err := pki.Ensure(c, e.pkiDir, time.Now()); err != nil {
		t.Fatal(err)
	}
	crt, key, err := pki.EnsureServeCert(c, e.pkiDir, []string{"127.0.0.1"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	// The layout of a release: a shared root, boot files, one node image per node.
	for _, p := range []string{relID + "/manifest.json", relID + "/root.ext4", relID + "/boot/linux", relID + "/boot/initrd",
		relID + "/nodes/etcd-1/node.ext4", relID + "/nodes/etcd-2/node.ext4", relID + "/nodes/etcd-3/node.ext4"} {
		size := 200_000
		if strings.HasSuffix(p, ".json") {
			size = 300
		}
		b := make([]byte, size)
		rand.Read(b)
		e.write(t, p, b)
	}
	caFile, _ := pki.CAPath(e.pkiDir, pki.CAName)
	tlsConf, err := ReleaseTLSConfig(caFile, crt, key)
	if err != nil {
		t.Fatal(err)
	}
	h, err := NewReleaseHandler(ReleaseOptions{Cluster: "demo", Dir: e.dir, Nodes: nodes,
		Log: func(a Access) { e.mu.Lock(); e.log = append(e.log, a); e.mu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	e.srv = httptest.NewUnstartedServer(h)
	e.srv.TLS = tlsConf
	e.srv.StartTLS()
	t.Cleanup(e.srv.Close)
	e.addr = e.srv.Listener.Addr().String()
	return e
}

func (e *relEnv) write(t *testing.T, p string, b []byte) {
	t.Helper()
	full := filepath.Join(e.dir, p)
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(full, b, 0o644); err != nil {
		t.Fatal(err)
	}
	e.files[p] = b
}

// client is the node's view: its client certificate (a pair from the PKI directory, or
// none), the cluster CA as the only root, and the address it dials as the server name.
func (e *relEnv) client(t *testing.T, certPath, keyPath string) *http.Client {
	t.Helper()
	caFile, _ := pki.CAPath(e.pkiDir, pki.CAName)
	return tlsClient(t, caFile, certPath, keyPath, "127.0.0.1")
}

func tlsClient(t *testing.T, caFile, certPath, keyPath, serverName string) *http.Client {
	t.Helper()
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	conf := &tls.Config{RootCAs: roots, ServerName: serverName}
	if certPath != "" {
		c, err := tls.LoadX509KeyPair(certPath, keyPath)
		if err != nil {
			t.Fatal(err)
		}
		// Always present it, even when the server's list of acceptable CAs does not name
		// its issuer (Go's client would otherwise send none): the server must refuse it.
		conf.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &c, nil }
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: conf}, Timeout: 20 * time.Second}
}

func (e *relEnv) nodeClient(t *testing.T, node, kind string) *http.Client {
	crt, key := pki.NodeCertPath(e.pkiDir, node, kind)
	return e.client(t, crt, key)
}

type relResp struct {
	code int
	hdr  http.Header
	body []byte
}

func do(t *testing.T, c *http.Client, method, url string, hdr map[string]string) relResp {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return relResp{resp.StatusCode, resp.Header, b}
}

func (e *relEnv) url(rest string) string { return "https://" + e.addr + ReleasePrefix + rest }

func sha(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// TestReleaseOwnFiles: a node fetches each of its files with its etcd-firstboot
// certificate, byte for byte, with the file's sha256 as its ETag; HEAD gives the size
// without the body.
func TestReleaseOwnFiles(t *testing.T) {
	e := newRelEnv(t, []string{"etcd-1", "etcd-2", "etcd-3"})
	for _, node := range []string{"etcd-1", "etcd-2"} {
		c := e.nodeClient(t, node, pki.KindFirstboot)
		for file, p := range map[string]string{
			ReleaseManifest: relID + "/manifest.json",
			ReleaseRoot:     relID + "/root.ext4",
			ReleaseNode:     relID + "/nodes/" + node + "/node.ext4",
			ReleaseLinux:    relID + "/boot/linux",
			ReleaseInitrd:   relID + "/boot/initrd",
		} {
			want := e.files[p]
			r := do(t, c, "GET", e.url(relID+"/"+node+"/"+file), nil)
			if r.code != 200 || !bytes.Equal(r.body, want) || sha(r.body) != sha(want) {
				t.Errorf("%s %s: %d, %d bytes sha256 %s, want 200, %d bytes sha256 %s", node, file, r.code, len(r.body), sha(r.body), len(want), sha(want))
			}
			if got := r.hdr.Get("ETag"); got != `"sha256-`+sha(want)+`"` {
				t.Errorf("%s %s: ETag %s, want the file's sha256", node, file, got)
			}
			wantType := "application/octet-stream"
			if file == ReleaseManifest {
				wantType = "application/json"
			}
			if got := r.hdr.Get("Content-Type"); got != wantType || r.hdr.Get("Accept-Ranges") != "bytes" {
				t.Errorf("%s %s: Content-Type %q, Accept-Ranges %q", node, file, got, r.hdr.Get("Accept-Ranges"))
			}
			h := do(t, c, "HEAD", e.url(relID+"/"+node+"/"+file), nil)
			if h.code != 200 || len(h.body) != 0 || h.hdr.Get("Content-Length") != fmt.Sprint(len(want)) || h.hdr.Get("ETag") != r.hdr.Get("ETag") {
				t.Errorf("HEAD %s %s: %d, %d body bytes, Content-Length %s, ETag %s", node, file, h.code, len(h.body), h.hdr.Get("Content-Length"), h.hdr.Get("ETag"))
			}
		}
	}
	if r := do(t, e.nodeClient(t, "etcd-1", pki.KindFirstboot), "POST", e.url(relID+"/etcd-1/root"), nil); r.code != 405 || r.hdr.Get("Allow") != "GET, HEAD" {
		t.Errorf("POST: %d %.200q", r.code, r.body)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	found := false
	for _, a := range e.log {
		if a.Node == "etcd-2" && a.Status == 200 && a.What == "release "+relID+" node of etcd-2" && a.Bytes == int64(len(e.files[relID+"/nodes/etcd-2/node.ext4"])) {
			found = true
		}
	}
	if !found {
		t.Errorf("no access record of etcd-2 fetching its node image: %v", e.log)
	}
}

// TestReleaseRange: a node resumes a partial download: Range gives 206 and exactly those
// bytes; If-Range with the ETag resumes, with another ETag sends the whole (changed)
// file; If-None-Match with the ETag is a 304.
func TestReleaseRange(t *testing.T) {
	e := newRelEnv(t, []string{"etcd-1", "etcd-2", "etcd-3"})
	c := e.nodeClient(t, "etcd-3", pki.KindFirstboot)
	want := e.files[relID+"/root.ext4"]
	u := e.url(relID + "/etcd-3/root")
	tag := `"sha256-` + sha(want) + `"`

	r := do(t, c, "GET", u, map[string]string{"Range": "bytes=1000-"})
	if r.code != 206 || !bytes.Equal(r.body, want[1000:]) || r.hdr.Get("Content-Range") != fmt.Sprintf("bytes 1000-%d/%d", len(want)-1, len(want)) {
		t.Errorf("Range bytes=1000-: %d, %d bytes, Content-Range %q", r.code, len(r.body), r.hdr.Get("Content-Range"))
	}
	r = do(t, c, "GET", u, map[string]string{"Range": "bytes=5-9", "If-Range": tag})
	if r.code != 206 || !bytes.Equal(r.body, want[5:10]) {
		t.Errorf("Range with a matching If-Range: %d %x", r.code, r.body)
	}
	r = do(t, c, "GET", u, map[string]string{"Range": "bytes=5-9", "If-Range": `"sha256-0000"`})
	if r.code != 200 || !bytes.Equal(r.body, want) {
		t.Errorf("Range with a stale If-Range: %d, %d bytes, want the whole file", r.code, len(r.body))
	}
	if r = do(t, c, "GET", u, map[string]string{"If-None-Match": tag}); r.code != 304 || len(r.body) != 0 {
		t.Errorf("If-None-Match with the ETag: %d, %d bytes", r.code, len(r.body))
	}
	if r = do(t, c, "GET", u, map[string]string{"Range": fmt.Sprintf("bytes=%d-", len(want)+10)}); r.code != 416 {
		t.Errorf("Range past the end: %d", r.code)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if a := e.log[0]; a.Status != 206 || a.Node != "etcd-3" || !strings.Contains(a.What, "(bytes=1000-)") || a.Bytes != int64(len(want)-1000) {
		t.Errorf("access record of the range request: %+v", a)
	}
}

// TestReleaseOnlyOwnFiles: every certificate of the cluster CA that is not the node's own
// etcd-firstboot certificate gets a 403 with the reason, and the node can read nothing of
// another node's.
func TestReleaseOnlyOwnFiles(t *testing.T) {
	e := newRelEnv(t, []string{"etcd-1", "etcd-2"}) // etcd-3 has left the spec
	adminCrt, adminKey := pki.ClientCertPath(e.pkiDir, pki.ClientAdmin)
	kubeCrt, kubeKey := pki.ClientCertPath(e.pkiDir, pki.ClientKubeAPIServer)
	for _, tc := range []struct {
		name   string
		c      *http.Client
		path   string
		reason string
	}{
		{"etcd-1's firstboot cert on etcd-2's node image", e.nodeClient(t, "etcd-1", pki.KindFirstboot), "etcd-2/node", "etcd-firstboot:etcd-1 may fetch only its own files"},
		{"etcd-1's firstboot cert on etcd-2's manifest", e.nodeClient(t, "etcd-1", pki.KindFirstboot), "etcd-2/manifest.json", "may fetch only its own files"},
		{"etcd-1's firstboot cert on etcd-2's missing file", e.nodeClient(t, "etcd-1", pki.KindFirstboot), "etcd-2/nothing", "may fetch only its own files"},
		{"etcd-1's server cert", e.nodeClient(t, "etcd-1", pki.KindServer), "etcd-1/node", `"etcd-1" is not a node's etcd-firstboot certificate`},
		{"etcd-1's flanneld cert", e.nodeClient(t, "etcd-1", pki.KindFlanneld), "etcd-1/node", `"flanneld:etcd-1" is not a node's etcd-firstboot certificate`},
		{"the admin cert", e.client(t, adminCrt, adminKey), "etcd-1/node", `"admin" is not a node's etcd-firstboot certificate`},
		{"the kube-apiserver cert", e.client(t, kubeCrt, kubeKey), "etcd-1/root", "is not a node's etcd-firstboot certificate"},
		{"a node no longer in the spec", e.nodeClient(t, "etcd-3", pki.KindFirstboot), "etcd-3/node", "node etcd-3 is not in the spec of cluster demo"},
	} {
		r := do(t, tc.c, "GET", e.url(relID+"/"+tc.path), nil)
		if r.code != 403 || !strings.Contains(string(r.body), tc.reason) {
			t.Errorf("%s: %d %.200q, want 403 saying %q", tc.name, r.code, r.body, tc.reason)
		}
		for _, f := range e.files {
			if len(r.body) > 100 && bytes.Contains(f, r.body[:100]) {
				t.Errorf("%s: the 403 carries file content", tc.name)
			}
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if a := e.log[0]; a.Status != 403 || a.Node != "etcd-1" || !strings.Contains(a.What, "not etcd-2's") {
		t.Errorf("access record of the refused request: %+v", a)
	}
}

// TestReleaseHandshake: without a certificate of the cluster's client/server CA there is
// no connection at all (no certificate, a peer certificate, another cluster's
// certificate, TLS 1.2), and the node verifies the server against its cluster CA for
// the address it dials.
func TestReleaseHandshake(t *testing.T) {
	e := newRelEnv(t, []string{"etcd-1", "etcd-2", "etcd-3"})
	other := filepath.Join(t.TempDir(), "pki")
	if _, err := pki.Ensure(exampleSpec(t), other, time.Now()); err != nil {
		t.Fatal(err)
	}
	otherCrt, otherKey := pki.NodeCertPath(other, "etcd-1", pki.KindFirstboot)
	caFile, _ := pki.CAPath(e.pkiDir, pki.CAName)
	otherCA, _ := pki.CAPath(other, pki.CAName)
	fbCrt, fbKey := pki.NodeCertPath(e.pkiDir, "etcd-1", pki.KindFirstboot)
	u := e.url(relID + "/etcd-1/manifest.json")

	for _, tc := range []struct {
		name string
		c    *http.Client
		want string
	}{
		{"no client certificate", e.client(t, "", ""), "certificate required"},
		{"etcd-1's peer certificate (peer CA)", e.nodeClient(t, "etcd-1", pki.KindPeer), "unknown certificate authority"},
		{"etcd-1's firstboot certificate of another cluster", e.client(t, otherCrt, otherKey), "unknown certificate authority"},
		{"a node that trusts another CA", tlsClient(t, otherCA, fbCrt, fbKey, "127.0.0.1"), "certificate signed by unknown authority"},
		{"a node dialling a name not in the certificate", tlsClient(t, caFile, fbCrt, fbKey, "releases.example.net"), "wanted to match releases.example.net"},
	} {
		resp, err := tc.c.Get(u)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			t.Errorf("%s: %d %.200q, want a failed handshake", tc.name, resp.StatusCode, b)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error saying %q", tc.name, err, tc.want)
		}
	}
	tls12 := e.client(t, fbCrt, fbKey)
	tls12.Transport.(*http.Transport).TLSClientConfig.MaxVersion = tls.VersionTLS12
	if _, err := tls12.Get(u); err == nil || !strings.Contains(err.Error(), "protocol version") {
		t.Errorf("TLS 1.2 client: %v, want a refused handshake", err)
	}
	// And the node's own view: the cluster CA, the address it dials.
	if r := do(t, e.client(t, fbCrt, fbKey), "GET", u, nil); r.code != 200 || !bytes.Equal(r.body, e.files[relID+"/manifest.json"]) {
		t.Errorf("etcd-1 with its firstboot certificate: %d", r.code)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.log) != 1 {
		t.Errorf("refused handshakes reached the handler: %v", e.log)
	}
}

// TestReleaseBadPaths: paths that try to leave a node's files, malformed ids and names
// are refused before any file is opened; unknown releases and files are 404s; symbolic
// links do not lead out of the releases directory.
func TestReleaseBadPaths(t *testing.T) {
	e := newRelEnv(t, []string{"etcd-1", "etcd-2", "etcd-3"})
	c := e.nodeClient(t, "etcd-1", pki.KindFirstboot)
	secret := filepath.Join(filepath.Dir(e.dir), "secret")
	os.WriteFile(secret, []byte("outside the releases directory"), 0o644)
	// A release whose node image is a link out of the directory, and one whose root is a
	// link to another release's (which stays inside).
	const linked = "abcdefabcdef"
	e.write(t, linked+"/manifest.json", []byte("{}"))
	os.MkdirAll(filepath.Join(e.dir, linked, "nodes", "etcd-1"), 0o755)
	if err := os.Symlink(secret, filepath.Join(e.dir, linked, "nodes", "etcd-1", "node.ext4")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../"+relID+"/root.ext4", filepath.Join(e.dir, linked, "root.ext4")); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(e.dir, linked, "boot", "linux"), 0o755) // a directory, not a file

	for _, tc := range []struct {
		path string
		code int
	}{
		{"/v1/releases/" + relID + "/etcd-1/../etcd-2/node", 400},
		{"/v1/releases/" + relID + "/../../../secret", 400},
		{"/v1/releases/" + relID + "/etcd-1/..", 404},
		{"/v1/releases/../releases/" + relID + "/etcd-1/node", 400},
		{"/v1/releases/" + relID + "/etcd-1%2F..%2Fetcd-2/node", 400},
		{"/v1/releases/" + relID + "%2Fetcd-1/node", 400},
		{"/v1/releases/" + relID + "/etcd-1/node%2e", 400},
		{"/v1/releases/" + relID + "/etcd-1//node", 400},
		{"/v1/releases/" + relID + "/etcd-1/node/", 400},
		{"/v1/releases/" + relID + "/etcd-1", 400},
		{"/v1/releases/", 400},
		{"/v1/releases/0123456789AB/etcd-1/node", 400},
		{"/v1/releases/0123456789a/etcd-1/node", 400},
		{"/v1/releases/0123456789abc/etcd-1/node", 400},
		{"/v1/releases/.tmp-0123456/etcd-1/node", 400},
		{"/v1/releases/" + relID + "/ETCD-1/node", 400},
		{"/v1/releases/" + relID + "/etcd-1/node.ext4", 404},
		{"/v1/releases/" + relID + "/etcd-1/root.ext4", 404},
		{"/v1/releases/ffffffffffff/etcd-1/manifest.json", 404},
		{"/v1/releases", 404},
		{"/", 404},
		{"/v1/releases/" + linked + "/etcd-1/node", 500},
		{"/v1/releases/" + linked + "/etcd-1/linux", 404},
		{"/v1/releases/" + linked + "/etcd-1/initrd", 404},
	} {
		r := do(t, c, "GET", "https://"+e.addr+tc.path, nil)
		if r.code != tc.code {
			t.Errorf("GET %s: %d %.200q, want %d", tc.path, r.code, r.body, tc.code)
		}
		if bytes.Contains(r.body, []byte("outside the releases directory")) {
			t.Errorf("GET %s served a file outside the releases directory", tc.path)
		}
	}
	if r := do(t, c, "GET", e.url(linked+"/etcd-1/root"), nil); r.code != 200 || !bytes.Equal(r.body, e.files[relID+"/root.ext4"]) {
		t.Errorf("a root linked to another release's: %d", r.code)
	}
	if r := do(t, c, "GET", e.url("ffffffffffff/etcd-1/manifest.json"), nil); !strings.Contains(string(r.body), "no release ffffffffffff on this server") {
		t.Errorf("unknown release: %.200q", r.body)
	}
	// Before any release exists, the answer is the same 404.
	os.RemoveAll(e.dir)
	if r := do(t, c, "GET", e.url(relID+"/etcd-1/manifest.json"), nil); r.code != 404 || !strings.Contains(string(r.body), "no release "+relID) {
		t.Errorf("no releases directory: %d %.200q", r.code, r.body)
	}
}

// TestReleaseFilePath: the URL's file names map to the release layout, and nothing else
// maps at all.
func TestReleaseFilePath(t *testing.T) {
	for _, tc := range []struct {
		id, node, file, want string
	}{
		{relID, "etcd-1", "manifest.json", relID + "/manifest.json"},
		{relID, "etcd-1", "root", relID + "/root.ext4"},
		{relID, "etcd-1", "node", relID + "/nodes/etcd-1/node.ext4"},
		{relID, "etcd-1", "linux", relID + "/boot/linux"},
		{relID, "etcd-1", "initrd", relID + "/boot/initrd"},
		{relID, "etcd-1", "node.ext4", ""},
		{relID, "..", "node", ""},
		{relID, "a/b", "node", ""},
		{"../x", "etcd-1", "root", ""},
	} {
		got, ok := ReleaseFilePath(tc.id, tc.node, tc.file)
		if got != tc.want || ok != (tc.want != "") {
			t.Errorf("ReleaseFilePath(%q, %q, %q) = %q, %v; want %q", tc.id, tc.node, tc.file, got, ok, tc.want)
		}
	}
	if _, err := NewReleaseHandler(ReleaseOptions{Dir: "x", Nodes: []string{"../etc"}}); err == nil {
		t.Error("NewReleaseHandler accepted a node name that is not a path element")
	}
	if _, err := NewReleaseHandler(ReleaseOptions{Dir: "", Nodes: []string{"etcd-1"}}); err == nil {
		t.Error("NewReleaseHandler accepted no directory")
	}
}

// issueByHand signs a certificate for CN with the cluster CA's key, as no etcdbake code
// would: for the handler's own checks behind the TLS layer's.
func issueByHand(t *testing.T, pkiDir, cn string, eku []x509.ExtKeyUsage) tls.Certificate {
	t.Helper()
	caCrt, caKeyPath := pki.CAPath(pkiDir, pki.CAName)
	cb, _ := os.ReadFile(caCrt)
	ca, err := pki.ParseCert(cb)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := os.ReadFile(caKeyPath)
	blk, _ := pem.Decode(kb)
	caKey, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: eku}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestReleaseClientAuthUsage: a certificate of the cluster CA with the right CN is not
// enough: without the clientAuth usage it gets a 403 (no usage at all passes the TLS
// layer, which reads it as "any") or no connection (serverAuth only).
func TestReleaseClientAuthUsage(t *testing.T) {
	e := newRelEnv(t, []string{"etcd-1", "etcd-2", "etcd-3"})
	caFile, _ := pki.CAPath(e.pkiDir, pki.CAName)
	u := e.url(relID + "/etcd-1/manifest.json")
	withCert := func(c tls.Certificate) *http.Client {
		cl := tlsClient(t, caFile, "", "", "127.0.0.1")
		cl.Transport.(*http.Transport).TLSClientConfig.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &c, nil }
		return cl
	}
	if r := do(t, withCert(issueByHand(t, e.pkiDir, "etcd-firstboot:etcd-1", nil)), "GET", u, nil); r.code != 403 || !strings.Contains(string(r.body), "no clientAuth extended key usage") {
		t.Errorf("no extended key usage: %d %.200q", r.code, r.body)
	}
	if _, err := withCert(issueByHand(t, e.pkiDir, "etcd-firstboot:etcd-1", []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth})).Get(u); err == nil {
		t.Error("a serverAuth-only certificate got a response, want a failed handshake")
	}
	if r := do(t, withCert(issueByHand(t, e.pkiDir, "etcd-firstboot:etcd-1", []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth})), "GET", u, nil); r.code != 200 {
		t.Errorf("the same by hand with clientAuth: %d %.200q", r.code, r.body)
	}
}

// TestReleaseResumedSession: a node that resumes its TLS session on a new connection is
// still known by its certificate.
func TestReleaseResumedSession(t *testing.T) {
	e := newRelEnv(t, []string{"etcd-1", "etcd-2", "etcd-3"})
	c := e.nodeClient(t, "etcd-2", pki.KindFirstboot)
	tr := c.Transport.(*http.Transport)
	tr.TLSClientConfig.ClientSessionCache = tls.NewLRUClientSessionCache(4)
	tr.DisableKeepAlives = true // a new connection for every request
	resumed := false
	for range 3 {
		resp, err := c.Get(e.url(relID + "/etcd-2/manifest.json"))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !bytes.Equal(b, e.files[relID+"/manifest.json"]) {
			t.Errorf("resumed=%v: %d", resp.TLS.DidResume, resp.StatusCode)
		}
		resumed = resumed || resp.TLS.DidResume
	}
	if !resumed {
		t.Error("no connection resumed its session: the test did not test resumption")
	}
}
