package pki

import (
	"bytes"
	"crypto/x509"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/etcdbake/etcdbake/internal/testtools"
)

func ensureServe(t *testing.T, dir string, sans []string, now time.Time, wantVerb string) (*x509.Certificate, []byte) {
	t.Helper()
	act, err := EnsureServe(example(t), dir, sans, now)
	if err != nil {
		t.Fatalf("EnsureServe(%v): %v", sans, err)
	}
	if act.Name != ServeName || act.Verb != wantVerb {
		t.Fatalf("EnsureServe(%v) = %s, want %s", sans, act, wantVerb)
	}
	crt, key := ServeCertPath(dir)
	b, err := os.ReadFile(crt)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParseCert(b)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := os.ReadFile(key)
	return c, kb
}

func caCert(t *testing.T, dir string) *x509.Certificate {
	t.Helper()
	crt, _ := CAPath(dir, CAName)
	b, err := os.ReadFile(crt)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParseCert(b)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestServeCertVerifies: the release server's certificate verifies against the cluster's
// client/server CA for every SAN it was asked for, as a TLS server only, with the spec's
// policy, and its key is private.
func TestServeCertVerifies(t *testing.T) {
	dir := t.TempDir()
	ensure(t, example(t), dir, t0)
	crtPath, keyPath, err := EnsureServeCert(example(t), dir, []string{"10.88.0.1", "releases.example.net", "fd00::1"}, t0)
	if err != nil {
		t.Fatal(err)
	}
	if wc, wk := ServeCertPath(dir); crtPath != wc || keyPath != wk || filepath.Dir(crtPath) != filepath.Join(dir, "serve") {
		t.Errorf("EnsureServeCert returned %s %s, want %s %s", crtPath, keyPath, wc, wk)
	}
	b, _ := os.ReadFile(crtPath)
	c, err := ParseCert(b)
	if err != nil {
		t.Fatal(err)
	}
	ca := caCert(t, dir)
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	at := t0.Add(time.Hour)
	for _, name := range []string{"10.88.0.1", "releases.example.net", "fd00::1"} {
		if _, err := c.Verify(x509.VerifyOptions{Roots: roots, DNSName: name, CurrentTime: at, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			t.Errorf("verify for %s: %v", name, err)
		}
	}
	if _, err := c.Verify(x509.VerifyOptions{Roots: roots, DNSName: "10.88.0.2", CurrentTime: at}); err == nil {
		t.Error("the certificate verifies for 10.88.0.2, which it was not issued for")
	}
	if _, err := c.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: at, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Error("the release server's certificate verifies as a client certificate")
	}
	if c.Subject.CommonName != ServeCN || !slices.Equal(c.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}) || c.IsCA {
		t.Errorf("CN %q, EKU %v, CA %v", c.Subject.CommonName, c.ExtKeyUsage, c.IsCA)
	}
	pol, _ := policyFor(example(t))
	if want := t0.Truncate(time.Second).Add(-pol.backdate); !c.NotBefore.Equal(want) || !c.NotAfter.Equal(t0.Truncate(time.Second).Add(pol.leafLife)) {
		t.Errorf("validity %s - %s, want the leaf policy (from %s, %s)", c.NotBefore, c.NotAfter, want, pol.leafLife)
	}
	if got := keyAlgorithm(c.PublicKey); got != pol.alg {
		t.Errorf("key %s, want %s", got, pol.alg)
	}
	if fi, err := os.Stat(keyPath); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("key file: %v %v, want mode 0600", fi.Mode(), err)
	}
	// The cluster's own PKI does not notice it: Ensure reuses everything, reports nothing
	// stale, and Check is clean.
	res := ensure(t, example(t), dir, t0.Add(time.Minute))
	if res.Changed() || len(res.Stale()) > 0 {
		t.Errorf("Ensure after EnsureServe: changed %v, stale %v", res.Changed(), res.Stale())
	}
	infos, err := Check(example(t), dir, t0.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	for _, ci := range infos {
		if !ci.OK() {
			t.Errorf("Check: %s: %v", ci.Name, ci.Problems)
		}
	}
}

// TestServeCertReuseAndReissue: the same SANs (in any order, repeated) keep the
// certificate byte for byte; other SANs, the renewal window or another key algorithm
// re-issue it with a new key and say why.
func TestServeCertReuseAndReissue(t *testing.T) {
	dir := t.TempDir()
	ensure(t, example(t), dir, t0)
	first, firstKey := ensureServe(t, dir, []string{"10.88.0.1", "releases.example.net"}, t0, Created)
	again, againKey := ensureServe(t, dir, []string{"releases.example.net", "10.88.0.1", "10.88.0.1"}, t0.Add(24*time.Hour), Reused)
	if again.SerialNumber.Cmp(first.SerialNumber) != 0 || !bytes.Equal(firstKey, againKey) {
		t.Errorf("second call: serial %s, was %s (key changed: %v)", again.SerialNumber, first.SerialNumber, !bytes.Equal(firstKey, againKey))
	}

	act, err := EnsureServe(example(t), dir, []string{"10.88.0.2", "releases.example.net"}, t0)
	if err != nil {
		t.Fatal(err)
	}
	if act.Verb != Reissued || !strings.Contains(act.Reason, "missing 10.88.0.2") || !strings.Contains(act.Reason, "unexpected 10.88.0.1") {
		t.Errorf("other SANs: %s", act)
	}
	moved, movedKey := ensureServe(t, dir, []string{"10.88.0.2", "releases.example.net"}, t0, Reused)
	if moved.SerialNumber.Cmp(first.SerialNumber) == 0 || bytes.Equal(movedKey, firstKey) {
		t.Error("re-issued for other SANs with the same serial or key")
	}
	if err := moved.VerifyHostname("10.88.0.2"); err != nil {
		t.Errorf("re-issued certificate: %v", err)
	}

	pol, _ := policyFor(example(t))
	late := t0.Add(pol.leafLife - pol.renew + 24*time.Hour)
	act, err = EnsureServe(example(t), dir, []string{"10.88.0.2", "releases.example.net"}, late)
	if err != nil || act.Verb != Reissued || !strings.Contains(act.Reason, "within pki.renewBefore") {
		t.Errorf("within the renewal window: %s %v", act, err)
	}

	rsa := example(t, "algorithm: ecdsa-p256", "algorithm: rsa-2048")
	act, err = EnsureServe(rsa, dir, []string{"10.88.0.2", "releases.example.net"}, late)
	if err != nil || act.Verb != Reissued || !strings.Contains(act.Reason, "pki.algorithm is rsa-2048") {
		t.Errorf("algorithm change: %s %v", act, err)
	}
}

// TestServeCertBadInput: no SAN, SANs nobody can dial and a missing CA are errors that say
// what to do, and nothing is written.
func TestServeCertBadInput(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		sans []string
		want string
	}{
		{nil, "needs at least one SAN"},
		{[]string{}, "needs at least one SAN"},
		{[]string{"0.0.0.0"}, "not an address a node can dial"},
		{[]string{"10.88.0.1", "::"}, "not an address a node can dial"},
		{[]string{"https://10.88.0.1:8443"}, "neither an IP address nor a lowercase DNS name"},
		{[]string{"Releases.Example"}, "neither an IP address nor a lowercase DNS name"},
		{[]string{""}, "neither an IP address nor a lowercase DNS name"},
	} {
		if _, err := EnsureServe(example(t), dir, tc.sans, t0); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("SANs %q: %v, want an error saying %q", tc.sans, err, tc.want)
		}
	}
	_, _, err := EnsureServeCert(example(t), dir, []string{"10.88.0.1"}, t0)
	if err == nil || !strings.Contains(err.Error(), "`etcdbake pki`") {
		t.Errorf("without a CA: %v, want an error naming `etcdbake pki`", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) > 0 {
		t.Errorf("refused calls left %d entries in %s", len(entries), dir)
	}
}

// TestServeCertOpenSSL: openssl agrees the certificate serves TLS for its address under
// the cluster CA, and is no client certificate.
func TestServeCertOpenSSL(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		testtools.Missing(t, "openssl (make setup installs it)")
	}
	dir := t.TempDir()
	ensure(t, example(t), dir, time.Now())
	crt, key, err := EnsureServeCert(example(t), dir, []string{"10.88.0.1", "releases.example.net"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := CAPath(dir, CAName)
	peerCA, _ := CAPath(dir, PeerCAName)
	run := func(args ...string) (string, error) {
		out, err := exec.Command(openssl, args...).CombinedOutput()
		return string(out), err
	}
	for _, tc := range []struct {
		args []string
		ok   bool
	}{
		{[]string{"verify", "-CAfile", ca, "-purpose", "sslserver", "-verify_ip", "10.88.0.1", crt}, true},
		{[]string{"verify", "-CAfile", ca, "-purpose", "sslserver", "-verify_hostname", "releases.example.net", crt}, true},
		{[]string{"verify", "-CAfile", ca, "-purpose", "sslserver", "-verify_ip", "10.88.0.2", crt}, false},
		{[]string{"verify", "-CAfile", ca, "-purpose", "sslclient", crt}, false},
		{[]string{"verify", "-CAfile", peerCA, "-purpose", "sslserver", crt}, false},
	} {
		out, err := run(tc.args...)
		if (err == nil) != tc.ok {
			t.Errorf("openssl %s: ok=%v, want %v\n%s", strings.Join(tc.args, " "), err == nil, tc.ok, out)
		}
	}
	pubCert, err1 := run("x509", "-in", crt, "-noout", "-pubkey")
	pubKey, err2 := run("pkey", "-in", key, "-pubout")
	if err1 != nil || err2 != nil || pubCert != pubKey {
		t.Errorf("openssl: the key does not belong to the certificate: %v %v", err1, err2)
	}
}
