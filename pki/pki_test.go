package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/etcdbake/etcdbake/internal/testtools"
	"github.com/etcdbake/etcdbake/spec"
)

// t0 is the test clock. It has a fractional second on purpose: certificates store whole
// seconds.
var t0 = time.Date(2026, 3, 1, 12, 0, 0, 500_000_000, time.UTC)

const oneDay = 24 * time.Hour

func parseSpec(t testing.TB, yml []byte) *spec.Cluster {
	t.Helper()
	c, rep := spec.Parse(yml)
	if c == nil || rep.HasErrors() {
		t.Fatalf("test spec is invalid:\n%s", rep.String())
	}
	return c
}

// example is the built-in 3-node example, with edits applied to its text.
func example(t testing.TB, edits ...string) *spec.Cluster {
	t.Helper()
	y := string(spec.Example)
	for i := 0; i+1 < len(edits); i += 2 {
		if !strings.Contains(y, edits[i]) {
			t.Fatalf("example spec has no %q to replace", edits[i])
		}
		y = strings.Replace(y, edits[i], edits[i+1], 1)
	}
	return parseSpec(t, []byte(y))
}

// generated builds an n-node spec (etcd-1 at 10.88.0.11, ...) in one /16.
func generated(t testing.TB, n int, algorithm string) *spec.Cluster {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: %s\nkind: Cluster\nname: gen\nnodes:\n", spec.APIVersion)
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, "  - name: etcd-%d\n    address: 10.88.%d.%d/16\n", i, (10+i)/256, (10+i)%256)
	}
	fmt.Fprintf(&b, "etcd: {version: v3.6.16}\nflannel: {version: v0.28.7, network: 10.244.0.0/16}\n")
	fmt.Fprintf(&b, "time: {servers: [pool.ntp.org]}\npki: {algorithm: %s}\n", algorithm)
	return parseSpec(t, []byte(b.String()))
}

func ensure(t testing.TB, c *spec.Cluster, dir string, now time.Time) *Result {
	t.Helper()
	res, err := Ensure(c, dir, now)
	if err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	return res
}

func verbs(res *Result) map[string]string {
	m := map[string]string{}
	for _, a := range res.Actions {
		m[a.Name] = a.Verb
	}
	return m
}

// onlyChanged returns the actions that are not "reused".
func onlyChanged(res *Result) []Action {
	var out []Action
	for _, a := range res.Actions {
		if a.Verb != Reused {
			out = append(out, a)
		}
	}
	return out
}

type fileState struct {
	data []byte
	mode fs.FileMode
	info fs.FileInfo
}

// snapshot records every file under dir (content, mode and identity).
func snapshot(t testing.TB, dir string) map[string]fileState {
	t.Helper()
	out := map[string]fileState{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fileState{mode: fi.Mode(), info: fi}
		if !d.IsDir() {
			if st.data, err = os.ReadFile(p); err != nil {
				return err
			}
		}
		out[rel] = st
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// sameFiles fails unless a and b hold the same files with the same bytes and modes,
// except the names in changed.
func sameFiles(t *testing.T, a, b map[string]fileState, changed ...string) {
	t.Helper()
	for name, sa := range a {
		sb, ok := b[name]
		switch {
		case !ok:
			t.Errorf("%s disappeared", name)
		case slices.Contains(changed, name):
			if bytes.Equal(sa.data, sb.data) {
				t.Errorf("%s should have changed", name)
			}
		case !bytes.Equal(sa.data, sb.data) || sa.mode != sb.mode:
			t.Errorf("%s changed", name)
		case !sa.info.IsDir() && !os.SameFile(sa.info, sb.info):
			t.Errorf("%s was rewritten with the same content", name)
		}
	}
	for name := range b {
		if _, ok := a[name]; !ok {
			t.Errorf("%s appeared", name)
		}
	}
}

func readCert(t testing.TB, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParseCert(b)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return c
}

func pool(certs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

// allLeaves lists (name, cert path, key path, issuer, EKUs) for the spec.
func allLeaves(t testing.TB, c *spec.Cluster, dir string) []leaf {
	t.Helper()
	l, err := plan(c, dir)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestEnsureCreatesLayout(t *testing.T) {
	c := example(t)
	dir := filepath.Join(t.TempDir(), "out", "pki")
	res := ensure(t, c, dir, t0)

	want := []string{"ca", "peer-ca"}
	for _, n := range []string{"etcd-1", "etcd-2", "etcd-3"} {
		for _, k := range []string{"server", "peer", "firstboot", "flanneld"} {
			want = append(want, "nodes/"+n+"/"+k)
		}
	}
	want = append(want, "clients/admin", "clients/kube-apiserver-etcd-client")
	var got []string
	for _, a := range res.Actions {
		got = append(got, a.Name)
		if a.Verb != Created {
			t.Errorf("%s: verb %q, want created", a, a.Verb)
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("actions\n got %v\nwant %v", got, want)
	}
	if len(res.Stale()) != 0 || !res.Changed() {
		t.Errorf("stale %v, changed %v", res.Stale(), res.Changed())
	}

	var files []string
	for _, f := range []string{"ca", "peer-ca"} {
		files = append(files, f+".crt", f+".key")
	}
	for _, l := range allLeaves(t, c, dir) {
		r1, _ := filepath.Rel(dir, l.crt)
		r2, _ := filepath.Rel(dir, l.key)
		files = append(files, r1, r2)
	}
	snap := snapshot(t, dir)
	for _, f := range files {
		st, ok := snap[f]
		if !ok {
			t.Errorf("%s not written", f)
			continue
		}
		wantMode := fs.FileMode(0o644)
		if strings.HasSuffix(f, ".key") {
			wantMode = 0o600
			if !bytes.HasPrefix(st.data, []byte("-----BEGIN PRIVATE KEY-----\n")) {
				t.Errorf("%s is not PKCS#8 PEM", f)
			}
		} else if !bytes.HasPrefix(st.data, []byte("-----BEGIN CERTIFICATE-----\n")) {
			t.Errorf("%s is not a PEM certificate", f)
		}
		if st.mode.Perm() != wantMode {
			t.Errorf("%s has mode %v, want %v", f, st.mode.Perm(), wantMode)
		}
	}
	for name, st := range snap {
		switch {
		case st.info.IsDir() && name != "." && st.mode.Perm() != 0o700:
			t.Errorf("directory %s has mode %v, want 0700", name, st.mode.Perm())
		case !st.info.IsDir() && !slices.Contains(files, name):
			t.Errorf("unexpected file %s", name)
		}
	}
	if st := snap["."]; st.mode.Perm() != 0o700 {
		t.Errorf("pki dir mode %v, want 0700", st.mode.Perm())
	}
	// The parent (out/) is an ordinary directory: compare with one made 0755 under the
	// same umask.
	ref := filepath.Join(t.TempDir(), "ref")
	os.Mkdir(ref, 0o755)
	refInfo, _ := os.Stat(ref)
	if fi, err := os.Stat(filepath.Dir(dir)); err != nil || fi.Mode() != refInfo.Mode() {
		t.Errorf("parent out/ has mode %v, want %v (%v)", fi.Mode(), refInfo.Mode(), err)
	}
}

func TestCertificatesMatchTheSpec(t *testing.T) {
	c := example(t, "# extraSANs: [etcd-3.example.internal]", "extraSANs: [etcd-3.example.internal, 192.0.2.7]",
		"# extraSANs: [etcd.example.internal]", "extraSANs: [etcd.example.internal]")
	dir := t.TempDir()
	ensure(t, c, dir, t0)
	caCrt, _ := CAPath(dir, CAName)
	peerCrt, _ := CAPath(dir, PeerCAName)
	ca, peerCA := readCert(t, caCrt), readCert(t, peerCrt)

	nb := t0.Truncate(time.Second).Add(-time.Hour)
	for _, x := range []*x509.Certificate{ca, peerCA} {
		if !x.IsCA || !x.BasicConstraintsValid || !x.MaxPathLenZero || x.KeyUsage&x509.KeyUsageCertSign == 0 {
			t.Errorf("%s is not a leaf-signing CA", x.Subject)
		}
		if !x.NotBefore.Equal(nb) || !x.NotAfter.Equal(t0.Truncate(time.Second).Add(10*365*oneDay)) {
			t.Errorf("%s validity %s - %s", x.Subject, x.NotBefore, x.NotAfter)
		}
		if !slices.Equal(x.Subject.Organization, []string{"etcdbake demo"}) {
			t.Errorf("%s organisation %v", x.Subject, x.Subject.Organization)
		}
	}
	if bytes.Equal(ca.RawSubject, peerCA.RawSubject) || bytes.Equal(ca.SubjectKeyId, peerCA.SubjectKeyId) {
		t.Errorf("ca and peer-ca are not distinct")
	}

	for _, l := range allLeaves(t, c, dir) {
		t.Run(l.name, func(t *testing.T) {
			x := readCert(t, l.crt)
			right, wrong := ca, peerCA
			if l.issuer == PeerCAName {
				right, wrong = peerCA, ca
			}
			// Chain: verifies against its own CA for exactly its usages.
			for _, eku := range l.eku {
				if _, err := x.Verify(x509.VerifyOptions{Roots: pool(right), CurrentTime: t0, KeyUsages: []x509.ExtKeyUsage{eku}}); err != nil {
					t.Errorf("does not verify against %s for %v: %v", l.issuer, eku, err)
				}
			}
			// Never against the other CA, whatever the usage.
			if _, err := x.Verify(x509.VerifyOptions{Roots: pool(wrong), CurrentTime: t0, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err == nil {
				t.Errorf("verifies against the wrong CA")
			}
			// Client-only certificates are not server certificates.
			if len(l.eku) == 1 {
				if _, err := x.Verify(x509.VerifyOptions{Roots: pool(right), CurrentTime: t0, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
					t.Errorf("client certificate verifies for serverAuth")
				}
			}
			// EKUs exact.
			if !slices.Equal(x.ExtKeyUsage, l.eku) || len(x.UnknownExtKeyUsage) != 0 {
				t.Errorf("EKU %v, want %v", x.ExtKeyUsage, l.eku)
			}
			if x.IsCA || x.KeyUsage != x509.KeyUsageDigitalSignature {
				t.Errorf("IsCA %v, key usage %v", x.IsCA, x.KeyUsage)
			}
			if x.Subject.CommonName != l.cn || !slices.Equal(x.Subject.Organization, []string{"etcdbake demo"}) {
				t.Errorf("subject %s", x.Subject)
			}
			// Lifetime: now-backdate .. now+leafLifetime, in whole seconds.
			if d := x.NotAfter.Sub(x.NotBefore) - (365*oneDay + time.Hour); d < -time.Second || d > time.Second {
				t.Errorf("lifetime %s, want 1y + 1h backdate", x.NotAfter.Sub(x.NotBefore))
			}
			if !x.NotBefore.Equal(nb) {
				t.Errorf("NotBefore %s, want %s", x.NotBefore, nb)
			}
			if x.SerialNumber.Sign() <= 0 || x.SerialNumber.BitLen() > 128 || x.SerialNumber.BitLen() < 64 {
				t.Errorf("serial %v is not a random 128-bit number", x.SerialNumber)
			}
		})
	}

	// SANs exact per node, and exactly what spec computes.
	for _, n := range c.Nodes {
		for kind, f := range map[string]func(spec.Node) ([]string, []netip.Addr){KindServer: c.ServerSANs, KindPeer: c.PeerSANs} {
			crt, _ := NodeCertPath(dir, n.Name, kind)
			x := readCert(t, crt)
			dns, ips := f(n)
			var gotIPs []netip.Addr
			for _, ip := range x.IPAddresses {
				a, _ := netip.AddrFromSlice(ip)
				gotIPs = append(gotIPs, a.Unmap())
			}
			if !slices.Equal(x.DNSNames, dns) || !slices.Equal(gotIPs, ips) || len(x.URIs)+len(x.EmailAddresses) != 0 {
				t.Errorf("%s %s SANs %v %v, want %v %v", n.Name, kind, x.DNSNames, gotIPs, dns, ips)
			}
		}
		for _, kind := range []string{KindFirstboot, KindFlanneld} {
			crt, _ := NodeCertPath(dir, n.Name, kind)
			if x := readCert(t, crt); len(x.DNSNames)+len(x.IPAddresses) != 0 {
				t.Errorf("%s %s has SANs", n.Name, kind)
			}
		}
	}
	// Spot-check the values (not only that they equal what spec computes).
	crt, _ := NodeCertPath(dir, "etcd-3", KindServer)
	x := readCert(t, crt)
	if got := fmt.Sprint(x.DNSNames, x.IPAddresses); got != "[etcd-3 localhost etcd.example.internal etcd-3.example.internal] [10.88.0.13 127.0.0.1 ::1 192.0.2.7]" {
		t.Errorf("etcd-3 server SANs: %s", got)
	}
	crt, _ = NodeCertPath(dir, "etcd-2", KindPeer)
	x = readCert(t, crt)
	if got := fmt.Sprint(x.DNSNames, x.IPAddresses); got != "[etcd-2] [10.88.0.12]" {
		t.Errorf("etcd-2 peer SANs: %s", got)
	}
	// CNs spelled out independently of plan.
	for _, l := range allLeaves(t, c, dir) {
		var want string
		if node, kind, ok := strings.Cut(strings.TrimPrefix(l.name, "nodes/"), "/"); ok && strings.HasPrefix(l.name, "nodes/") {
			want = map[string]string{"server": node, "peer": node, "firstboot": "etcd-firstboot:" + node, "flanneld": "flanneld:" + node}[kind]
		} else {
			want = map[string]string{"clients/admin": "admin", "clients/kube-apiserver-etcd-client": "kube-apiserver-etcd-client"}[l.name]
		}
		if x := readCert(t, l.crt); want == "" || x.Subject.CommonName != want {
			t.Errorf("%s CN %q, want %q", l.name, x.Subject.CommonName, want)
		}
	}
}

func TestKeyAlgorithms(t *testing.T) {
	for _, tc := range []struct {
		alg   string
		nodes int // RSA-4096 keys take about a second each: keep that case small
		check func(any) bool
	}{
		{"ecdsa-p256", 3, func(k any) bool { e, ok := k.(*ecdsa.PublicKey); return ok && e.Curve == elliptic.P256() }},
		{"ecdsa-p384", 3, func(k any) bool { e, ok := k.(*ecdsa.PublicKey); return ok && e.Curve == elliptic.P384() }},
		{"rsa-2048", 3, func(k any) bool { r, ok := k.(*rsa.PublicKey); return ok && r.N.BitLen() == 2048 }},
		{"rsa-4096", 1, func(k any) bool { r, ok := k.(*rsa.PublicKey); return ok && r.N.BitLen() == 4096 }},
	} {
		t.Run(tc.alg, func(t *testing.T) {
			if tc.alg == "rsa-4096" && testing.Short() {
				t.Skip("RSA-4096 key generation is slow")
			}
			c := generated(t, tc.nodes, tc.alg)
			dir := t.TempDir()
			res := ensure(t, c, dir, t0)
			if n := len(res.Actions); n != 4+4*tc.nodes {
				t.Fatalf("%d actions", n)
			}
			paths := [][2]string{}
			for _, name := range []string{CAName, PeerCAName} {
				crt, key := CAPath(dir, name)
				paths = append(paths, [2]string{crt, key})
			}
			for _, l := range allLeaves(t, c, dir) {
				paths = append(paths, [2]string{l.crt, l.key})
			}
			for _, p := range paths {
				x := readCert(t, p[0])
				if !tc.check(x.PublicKey) {
					t.Errorf("%s: key %T is not %s", p[0], x.PublicKey, tc.alg)
				}
				kb, _ := os.ReadFile(p[1])
				k, err := parseKey(kb)
				if err != nil || !tc.check(k.Public()) || !keyMatches(k, x.PublicKey) {
					t.Errorf("%s: key does not match (%v)", p[1], err)
				}
				if fi, err := os.Stat(p[1]); err != nil || fi.Mode().Perm() != 0o600 {
					t.Errorf("%s: mode %v", p[1], fi.Mode())
				}
				if strings.HasPrefix(tc.alg, "rsa") && !x.IsCA && x.KeyUsage != x509.KeyUsageDigitalSignature|x509.KeyUsageKeyEncipherment {
					t.Errorf("%s: RSA key usage %v", p[0], x.KeyUsage)
				}
			}
			// Everything still checks out and is reused.
			if cs, err := Check(c, dir, t0); err != nil || !allOK(cs) {
				t.Errorf("Check: %v %v", err, notOK(cs))
			}
		})
	}
}

func allOK(cs []CertInfo) bool { return len(notOK(cs)) == 0 }

func notOK(cs []CertInfo) map[string][]string {
	m := map[string][]string{}
	for _, ci := range cs {
		if !ci.OK() {
			m[ci.Name] = ci.Problems
		}
	}
	return m
}

func TestLoad(t *testing.T) {
	c := example(t)
	dir := t.TempDir()
	if _, err := Load(c, dir); err == nil || !strings.Contains(err.Error(), "run `etcdbake pki`") || !strings.Contains(err.Error(), "and 11 more") {
		t.Fatalf("empty dir: %v", err)
	}
	ensure(t, c, dir, t0)
	set, err := Load(c, dir)
	if err != nil {
		t.Fatal(err)
	}
	caCrt, _ := CAPath(dir, CAName)
	if b, _ := os.ReadFile(caCrt); !bytes.Equal(set.CA, b) || bytes.Equal(set.CA, set.PeerCA) || len(set.PeerCA) == 0 {
		t.Errorf("CA PEMs")
	}
	if len(set.Nodes) != 3 || len(set.Clients) != 2 {
		t.Fatalf("%d nodes, %d clients", len(set.Nodes), len(set.Clients))
	}
	for _, n := range c.Nodes {
		for _, kind := range NodeKinds {
			p, _ := set.Nodes[n.Name].Kind(kind)
			crt, key := NodeCertPath(dir, n.Name, kind)
			wc, _ := os.ReadFile(crt)
			wk, _ := os.ReadFile(key)
			if !bytes.Equal(p.Cert, wc) || !bytes.Equal(p.Key, wk) {
				t.Errorf("%s %s differs from disk", n.Name, kind)
			}
		}
	}
	for _, name := range Clients {
		crt, _ := ClientCertPath(dir, name)
		if wc, _ := os.ReadFile(crt); !bytes.Equal(set.Clients[name].Cert, wc) || len(set.Clients[name].Key) == 0 {
			t.Errorf("client %s", name)
		}
	}
	// A node added to the spec without running pki.
	five := generated(t, 5, "ecdsa-p256")
	if _, err := Load(five, dir); err == nil || !strings.Contains(err.Error(), "nodes/etcd-4/server: missing") {
		t.Errorf("added node: %v", err)
	}
	// Mismatched key.
	_, k1 := NodeCertPath(dir, "etcd-1", KindPeer)
	_, k2 := NodeCertPath(dir, "etcd-2", KindPeer)
	copyFile(t, k2, k1)
	if _, err := Load(c, dir); err == nil || !strings.Contains(err.Error(), "nodes/etcd-1/peer: key does not match the certificate") {
		t.Errorf("mismatch: %v", err)
	}
}

func TestParseCertAndDaysLeft(t *testing.T) {
	dir := t.TempDir()
	ensure(t, example(t), dir, t0)
	crt, key := NodeCertPath(dir, "etcd-1", KindServer)
	b, _ := os.ReadFile(crt)
	for _, tc := range []struct {
		at   time.Time
		want int
	}{
		{t0, 365}, {t0.Add(364 * oneDay), 1}, {t0.Add(364*oneDay + 23*time.Hour), 0}, {t0.Add(365*oneDay - time.Second), 0}, {t0.Add(365*oneDay + time.Hour), -1}, {t0.Add(367 * oneDay), -2},
	} {
		if got, err := DaysLeft(b, tc.at); err != nil || got != tc.want {
			t.Errorf("DaysLeft at %s = %d, %v; want %d", tc.at, got, err, tc.want)
		}
	}
	kb, _ := os.ReadFile(key)
	if _, err := ParseCert(kb); err == nil {
		t.Errorf("ParseCert accepted a key")
	}
	if _, err := DaysLeft([]byte("junk"), t0); err == nil {
		t.Errorf("DaysLeft accepted junk")
	}
	if x, err := ParseCert(append(kb, b...)); err != nil || x.Subject.CommonName != "etcd-1" {
		t.Errorf("ParseCert with a key block first: %v", err)
	}
}

func TestOpenSSLVerify(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		testtools.Missing(t, "openssl (make setup installs it)")
	}
	dir := t.TempDir()
	ensure(t, example(t), dir, time.Now())
	ca, _ := CAPath(dir, CAName)
	peerCA, _ := CAPath(dir, PeerCAName)
	run := func(args ...string) (string, error) {
		out, err := exec.Command(openssl, args...).CombinedOutput()
		return string(out), err
	}
	for _, tc := range []struct {
		caFile, cert, purpose string
		ok                    bool
	}{
		{ca, "nodes/etcd-1/server.crt", "sslserver", true},
		{ca, "nodes/etcd-1/server.crt", "sslclient", true},
		{peerCA, "nodes/etcd-2/peer.crt", "sslserver", true},
		{peerCA, "nodes/etcd-2/peer.crt", "sslclient", true},
		{ca, "nodes/etcd-3/firstboot.crt", "sslclient", true},
		{ca, "nodes/etcd-3/flanneld.crt", "sslclient", true},
		{ca, "clients/admin.crt", "sslclient", true},
		{ca, "clients/kube-apiserver-etcd-client.crt", "sslclient", true},
		{ca, "nodes/etcd-2/peer.crt", "sslclient", false},          // peer cert is no good on the client port
		{peerCA, "clients/admin.crt", "sslclient", false},          // client cert is no good on the peer port
		{peerCA, "nodes/etcd-1/server.crt", "sslserver", false},    // nor a server cert
		{ca, "clients/admin.crt", "sslserver", false},              // client certs cannot serve
		{ca, "nodes/etcd-1/flanneld.crt", "sslserver", false},      // nor can flanneld's
		{peerCA, "nodes/etcd-1/firstboot.crt", "sslclient", false}, // nor firstboot on the peer port
	} {
		out, err := run("verify", "-CAfile", tc.caFile, "-purpose", tc.purpose, filepath.Join(dir, tc.cert))
		if (err == nil) != tc.ok {
			t.Errorf("openssl verify -CAfile %s -purpose %s %s: ok=%v, want %v\n%s", filepath.Base(tc.caFile), tc.purpose, tc.cert, err == nil, tc.ok, out)
		}
	}
	// openssl reads the PKCS#8 keys and agrees they belong to the certificates.
	for _, kind := range NodeKinds {
		crt, key := NodeCertPath(dir, "etcd-1", kind)
		pubCert, err1 := run("x509", "-in", crt, "-noout", "-pubkey")
		pubKey, err2 := run("pkey", "-in", key, "-pubout")
		if err1 != nil || err2 != nil || pubCert != pubKey {
			t.Errorf("%s: openssl: %v %v\n%s\n%s", kind, err1, err2, pubCert, pubKey)
		}
	}
	if out, err := run("x509", "-in", filepath.Join(dir, "nodes/etcd-1/server.crt"), "-noout", "-ext", "subjectAltName,extendedKeyUsage"); err != nil ||
		!strings.Contains(out, "DNS:etcd-1, DNS:localhost, IP Address:10.88.0.11, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1") ||
		!strings.Contains(out, "TLS Web Server Authentication, TLS Web Client Authentication") {
		t.Errorf("openssl x509 -ext: %v\n%s", err, out)
	}
}

func TestBadInput(t *testing.T) {
	c := example(t)
	c.PKI.Algorithm = "ed25519"
	if _, err := Ensure(c, t.TempDir(), t0); err == nil || !strings.Contains(err.Error(), `unknown key algorithm "ed25519"`) {
		t.Errorf("%v", err)
	}
	c = example(t)
	c.Nodes[1].Name = "../etc"
	if _, err := Ensure(c, t.TempDir(), t0); err == nil || !strings.Contains(err.Error(), "cannot be used as a directory name") {
		t.Errorf("%v", err)
	}
	c = example(t)
	c.Nodes[2].Name = c.Nodes[0].Name
	if _, err := Ensure(c, t.TempDir(), t0); err == nil || !strings.Contains(err.Error(), "appears twice") {
		t.Errorf("%v", err)
	}
	// A hand-built spec without defaults gets them.
	c = example(t)
	c.PKI = spec.PKI{}
	dir := t.TempDir()
	ensure(t, c, dir, t0)
	crt, _ := NodeCertPath(dir, "etcd-1", KindServer)
	if x := readCert(t, crt); x.NotAfter.Sub(x.NotBefore) != spec.DefaultLeafLifetime+spec.DefaultBackdate || x.Subject.Organization[0] != "etcdbake demo" {
		t.Errorf("defaults not applied: %s %v", x.NotAfter.Sub(x.NotBefore), x.Subject)
	}
}

// BenchmarkEnsure100Nodes times a fresh Ensure for a large spec. etcd needs an odd member
// count (spec.Validate rejects 100), so it uses 101 nodes: 408 certificates.
func BenchmarkEnsure100Nodes(b *testing.B) {
	c := generated(b, 101, "ecdsa-p256")
	root := b.TempDir()
	certs := 0
	i := 0
	for b.Loop() {
		i++
		res, err := Ensure(c, filepath.Join(root, fmt.Sprint(i)), t0)
		if err != nil {
			b.Fatal(err)
		}
		certs = len(res.Actions)
	}
	b.ReportMetric(float64(certs), "certs/op")
}

// TestRenewReissuesEveryLeaf: Renew gives every leaf a new key and serial valid from now,
// still verified by its CA; the CAs stay byte-identical.
func TestRenewReissuesEveryLeaf(t *testing.T) {
	c := example(t)
	dir := t.TempDir()
	t0 := time.Now().Add(-30 * 24 * time.Hour)
	ensure(t, c, dir, t0)
	before := snapshot(t, dir)
	res, err := Renew(c, dir, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	var changed []string
	for _, l := range allLeaves(t, c, dir) {
		if v := verbs(res)[l.name]; v != Reissued {
			t.Errorf("%s: %s, want %s", l.name, v, Reissued)
		}
		for _, p := range []string{l.crt, l.key} {
			rel, _ := filepath.Rel(dir, p)
			changed = append(changed, rel)
		}
		old, err := ParseCert(before[mustRel(t, dir, l.crt)].data)
		if err != nil {
			t.Fatal(err)
		}
		now := readCert(t, l.crt)
		if now.SerialNumber.Cmp(old.SerialNumber) == 0 || !now.NotAfter.After(old.NotAfter) {
			t.Errorf("%s: serial %x -> %x, not after %s -> %s: not renewed", l.name, old.SerialNumber, now.SerialNumber, old.NotAfter, now.NotAfter)
		}
		caCrt, _ := CAPath(dir, l.issuer)
		if _, err := now.Verify(x509.VerifyOptions{Roots: pool(readCert(t, caCrt)), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			t.Errorf("%s: renewed certificate does not verify: %v", l.name, err)
		}
	}
	sameFiles(t, before, snapshot(t, dir), changed...)
}

func mustRel(t testing.TB, dir, p string) string {
	t.Helper()
	rel, err := filepath.Rel(dir, p)
	if err != nil {
		t.Fatal(err)
	}
	return rel
}
