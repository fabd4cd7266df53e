package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/etcdbake/etcdbake/spec"
)

func TestReuseIsByteIdentical(t *testing.T) {
	c := example(t)
	dir := t.TempDir()
	ensure(t, c, dir, t0)
	before := snapshot(t, dir)
	res := ensure(t, c, dir, t0.Add(30*oneDay))
	if ch := onlyChanged(res); len(ch) != 0 || res.Changed() {
		t.Fatalf("second run changed: %v", ch)
	}
	if len(res.Actions) != 16 {
		t.Fatalf("%d actions", len(res.Actions))
	}
	for _, a := range res.Actions {
		if !strings.HasPrefix(a.Reason, "valid until ") {
			t.Errorf("reuse reason %q", a)
		}
	}
	sameFiles(t, before, snapshot(t, dir))
}

func TestReissueOnSANDrift(t *testing.T) {
	dir := t.TempDir()
	ensure(t, example(t), dir, t0)
	before := snapshot(t, dir)

	drift := example(t, `mac: "52:54:00:88:00:12"`, `mac: "52:54:00:88:00:12"`+"\n    extraSANs: [10.88.0.99]")
	res := ensure(t, drift, dir, t0.Add(time.Hour))
	ch := onlyChanged(res)
	if len(ch) != 1 || ch[0].String() != "nodes/etcd-2/server: re-issued: SANs differ (missing 10.88.0.99)" {
		t.Fatalf("changes: %v", ch)
	}
	sameFiles(t, before, snapshot(t, dir), "nodes/etcd-2/server.crt", "nodes/etcd-2/server.key")
	crt, _ := NodeCertPath(dir, "etcd-2", KindServer)
	if x := readCert(t, crt); !slices.ContainsFunc(x.IPAddresses, func(ip net.IP) bool { return toAddr(ip).String() == "10.88.0.99" }) {
		t.Errorf("new server cert lacks the SAN: %v", x.IPAddresses)
	}

	// Dropping the SAN again re-issues it once more, naming what is now extra.
	res = ensure(t, example(t), dir, t0.Add(2*time.Hour))
	if ch := onlyChanged(res); len(ch) != 1 || ch[0].Reason != "SANs differ (unexpected 10.88.0.99)" {
		t.Fatalf("changes: %v", ch)
	}

	// A cluster-wide SAN touches every server certificate and nothing else.
	res = ensure(t, example(t, "# extraSANs: [etcd.example.internal]", "extraSANs: [etcd.example.internal]"), dir, t0.Add(3*time.Hour))
	var names []string
	for _, a := range onlyChanged(res) {
		names = append(names, a.Name)
		if a.Reason != "SANs differ (missing etcd.example.internal)" {
			t.Errorf("%s", a)
		}
	}
	if !slices.Equal(names, []string{"nodes/etcd-1/server", "nodes/etcd-2/server", "nodes/etcd-3/server"}) {
		t.Errorf("re-issued %v", names)
	}
}

func TestReissueWhenExpiring(t *testing.T) {
	c := example(t)
	dir := t.TempDir()
	ensure(t, c, dir, t0)

	// Still outside renewBefore (30d) at 334 days: reused.
	if ch := onlyChanged(ensure(t, c, dir, t0.Add(334*oneDay))); len(ch) != 0 {
		t.Fatalf("re-issued too early: %v", ch)
	}
	later := t0.Add(340 * oneDay) // 25 days left
	res := ensure(t, c, dir, later)
	for _, a := range res.Actions {
		isCA := a.Name == CAName || a.Name == PeerCAName
		switch {
		case isCA && a.Verb != Reused:
			t.Errorf("%s", a)
		case !isCA && (a.Verb != Reissued || !strings.HasPrefix(a.Reason, "expires on ") || !strings.Contains(a.Reason, "in 25 days), within pki.renewBefore 30d")):
			t.Errorf("%s", a)
		}
	}
	crt, _ := NodeCertPath(dir, "etcd-1", KindServer)
	if x := readCert(t, crt); !x.NotBefore.Equal(later.Truncate(time.Second).Add(-time.Hour)) {
		t.Errorf("re-issued NotBefore %s", x.NotBefore)
	}

	// Long expired: re-issued, and the reason says so.
	res = ensure(t, c, dir, later.Add(400*oneDay))
	if a := res.Actions[2]; a.Verb != Reissued || a.Reason != "expired on 2028-02-04 12:00 UTC (35 days ago)" {
		t.Errorf("%s", a)
	}
}

func TestAlgorithmChangeReissuesLeaves(t *testing.T) {
	dir := t.TempDir()
	ensure(t, example(t), dir, t0)
	caCrt, _ := CAPath(dir, CAName)
	caBefore, _ := os.ReadFile(caCrt)

	c := example(t, "algorithm: ecdsa-p256", "algorithm: ecdsa-p384")
	res := ensure(t, c, dir, t0.Add(time.Hour))
	for _, a := range res.Actions {
		if a.Name == CAName || a.Name == PeerCAName {
			if a.Verb != Reused || !strings.Contains(a.Reason, "the CA key stays ecdsa-p256") {
				t.Errorf("%s", a)
			}
			continue
		}
		if a.Verb != Reissued || a.Reason != "key is ecdsa-p256, pki.algorithm is ecdsa-p384" {
			t.Errorf("%s", a)
		}
	}
	if caAfter, _ := os.ReadFile(caCrt); !bytes.Equal(caBefore, caAfter) {
		t.Errorf("CA was replaced")
	}
	ca := readCert(t, caCrt)
	crt, _ := NodeCertPath(dir, "etcd-1", KindServer)
	x := readCert(t, crt)
	if k, ok := x.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P384() {
		t.Errorf("leaf key %T", x.PublicKey)
	}
	if _, err := x.Verify(x509.VerifyOptions{Roots: pool(ca), CurrentTime: t0.Add(time.Hour)}); err != nil {
		t.Errorf("P-384 leaf under P-256 CA: %v", err)
	}
	if ch := onlyChanged(ensure(t, c, dir, t0.Add(2*time.Hour))); len(ch) != 0 {
		t.Errorf("not stable after algorithm change: %v", ch)
	}
}

func TestOtherDriftReissues(t *testing.T) {
	dir := t.TempDir()
	ensure(t, example(t), dir, t0)
	res := ensure(t, example(t, "leafLifetime: 1y", "leafLifetime: 90d"), dir, t0.Add(time.Hour))
	if ch := onlyChanged(res); len(ch) != 14 || ch[0].Reason != "lifetime 1y is longer than pki.leafLifetime 90d" {
		t.Errorf("lifetime: %d changed, first %v", len(ch), ch)
	}

	dir = t.TempDir()
	ensure(t, example(t), dir, t0)
	res = ensure(t, example(t, "caLifetime: 10y", "caLifetime: 10y\n  organization: Example Ltd"), dir, t0.Add(time.Hour))
	if ch := onlyChanged(res); len(ch) != 14 || ch[0].Reason != `organization is "etcdbake demo", want "Example Ltd"` {
		t.Errorf("organisation: %d changed, first %v", len(ch), ch)
	}

	// A certificate whose key was lost, or a key for another certificate.
	_, key := NodeCertPath(dir, "etcd-1", KindFlanneld)
	os.Remove(key)
	_, key2 := NodeCertPath(dir, "etcd-2", KindFlanneld)
	_, key3 := NodeCertPath(dir, "etcd-3", KindFlanneld)
	copyFile(t, key3, key2)
	res = ensure(t, example(t, "caLifetime: 10y", "caLifetime: 10y\n  organization: Example Ltd"), dir, t0.Add(2*time.Hour))
	got := fmt.Sprint(onlyChanged(res))
	if got != "[nodes/etcd-1/flanneld: re-issued: key file missing nodes/etcd-2/flanneld: re-issued: key does not match the certificate]" {
		t.Errorf("key problems: %s", got)
	}
}

func copyFile(t testing.TB, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestWrongIssuerIsReissued(t *testing.T) {
	c := example(t)
	dir := t.TempDir()
	ensure(t, c, dir, t0)
	// Put the server pair where the peer pair belongs: valid signature, valid key, but
	// issued by the client CA (and with the server's SANs).
	scrt, skey := NodeCertPath(dir, "etcd-1", KindServer)
	pcrt, pkey := NodeCertPath(dir, "etcd-1", KindPeer)
	copyFile(t, scrt, pcrt)
	copyFile(t, skey, pkey)

	cs, err := Check(c, dir, t0)
	if err != nil {
		t.Fatal(err)
	}
	bad := notOK(cs)
	if len(bad) != 1 || !strings.HasPrefix(strings.Join(bad["nodes/etcd-1/peer"], "|"), `wrong issuer: issued by "CN=demo etcd CA,O=etcdbake demo", not by the current peer-ca "CN=demo etcd peer CA,O=etcdbake demo"|SANs differ (unexpected localhost, 127.0.0.1, ::1)`) {
		t.Fatalf("Check: %v", bad)
	}
	res := ensure(t, c, dir, t0)
	if ch := onlyChanged(res); len(ch) != 1 || ch[0].Name != "nodes/etcd-1/peer" || !strings.Contains(ch[0].Reason, "wrong issuer") {
		t.Fatalf("%v", ch)
	}

	// A CA replaced under the same name: the signature no longer verifies.
	for _, f := range []string{"peer-ca.crt", "peer-ca.key"} {
		os.Remove(filepath.Join(dir, f))
	}
	res = ensure(t, c, dir, t0)
	for _, a := range onlyChanged(res) {
		switch {
		case a.Name == PeerCAName && a.Verb == Created:
		case strings.HasSuffix(a.Name, "/peer") && a.Reason == "wrong issuer: signature does not verify against the current peer-ca (was it replaced?)":
		default:
			t.Errorf("%s", a)
		}
	}
	if n := len(onlyChanged(res)); n != 4 {
		t.Errorf("%d changed, want peer-ca and 3 peer certs", n)
	}
}

func TestCAProblemsAreErrorsAndWriteNothing(t *testing.T) {
	c := example(t)
	for _, tc := range []struct {
		name   string
		break_ func(dir string)
		want   []string
	}{
		{"ca key missing", func(dir string) { os.Remove(filepath.Join(dir, "ca.key")) },
			[]string{"ca.crt) cannot be used: key file missing", "does not create a new CA over an existing one"}},
		{"ca key mismatched", func(dir string) {
			copyFile(t, filepath.Join(dir, "peer-ca.key"), filepath.Join(dir, "ca.key"))
		}, []string{"ca.crt) cannot be used: key does not match the certificate", "restore"}},
		{"peer-ca cert missing", func(dir string) { os.Remove(filepath.Join(dir, "peer-ca.crt")) },
			[]string{"peer-ca.key exists but", "peer-ca.crt does not"}},
		{"ca is a leaf", func(dir string) {
			crt, key := ClientCertPath(dir, ClientAdmin)
			copyFile(t, crt, filepath.Join(dir, "ca.crt"))
			copyFile(t, key, filepath.Join(dir, "ca.key"))
		}, []string{"not a CA certificate"}},
		{"peer-ca is ca", func(dir string) {
			copyFile(t, filepath.Join(dir, "ca.crt"), filepath.Join(dir, "peer-ca.crt"))
			copyFile(t, filepath.Join(dir, "ca.key"), filepath.Join(dir, "peer-ca.key"))
		}, []string{"hold the same key", "separate"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			ensure(t, c, dir, t0)
			tc.break_(dir)
			// Also remove a leaf that Ensure would otherwise recreate.
			crt, key := NodeCertPath(dir, "etcd-1", KindServer)
			os.Remove(crt)
			os.Remove(key)
			before := snapshot(t, dir)
			_, err := Ensure(c, dir, t0.Add(time.Hour))
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
			sameFiles(t, before, snapshot(t, dir))
			// Check reports the same without failing.
			cs, err := Check(c, dir, t0.Add(time.Hour))
			if err != nil {
				t.Fatal(err)
			}
			if allOK(cs) {
				t.Errorf("Check found nothing")
			}
		})
	}
}

func TestCAExpiringIsAnError(t *testing.T) {
	c := example(t)
	dir := t.TempDir()
	ensure(t, c, dir, t0)
	before := snapshot(t, dir)
	for _, tc := range []struct {
		at   time.Time
		want string
	}{
		{t0.Add(10*365*oneDay - 10*oneDay), "expires on 2036-02-27 12:00 UTC (in 10 days), within pki.renewBefore 30d; rotating a CA is not automatic"},
		{t0.Add(11 * 365 * oneDay), "expired on 2036-02-27 12:00 UTC (365 days ago); rotating a CA is not automatic"},
		{t0.Add(-2 * time.Hour), "not yet valid (valid from 2026-03-01 11:00 UTC): check this machine's clock"},
	} {
		_, err := Ensure(c, dir, tc.at)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("at %s: %v", tc.at, err)
		}
	}
	sameFiles(t, before, snapshot(t, dir))

	// Leaves never outlive their CA: 200 days before CA expiry, a new leaf gets 200 days.
	crt, key := NodeCertPath(dir, "etcd-1", KindServer)
	os.Remove(crt)
	os.Remove(key)
	caCrt, _ := CAPath(dir, CAName)
	ca := readCert(t, caCrt)
	ensure(t, c, dir, ca.NotAfter.Add(-200*oneDay))
	if x := readCert(t, crt); !x.NotAfter.Equal(ca.NotAfter) {
		t.Errorf("leaf NotAfter %s, CA %s", x.NotAfter, ca.NotAfter)
	}
}

func TestCheck(t *testing.T) {
	c := example(t)
	dir := t.TempDir()

	cs, err := Check(c, dir, t0)
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 16 {
		t.Fatalf("%d infos", len(cs))
	}
	for _, ci := range cs {
		if len(ci.Problems) != 1 || ci.Problems[0] != "missing: run `etcdbake pki`" {
			t.Errorf("empty dir: %s %v", ci.Name, ci.Problems)
		}
	}

	ensure(t, c, dir, t0)
	cs, err = Check(c, dir, t0)
	if err != nil || !allOK(cs) {
		t.Fatalf("good set: %v %v", err, notOK(cs))
	}
	for _, ci := range cs {
		if ci.DaysLeft != map[bool]int{true: 3650, false: 365}[ci.Name == "ca" || ci.Name == "peer-ca"] {
			t.Errorf("%s: %d days left", ci.Name, ci.DaysLeft)
		}
		if ci.Path == "" || ci.Subject == "" || ci.Issuer == "" {
			t.Errorf("%+v", ci)
		}
	}
	if ci := cs[2]; ci.Name != "nodes/etcd-1/server" || fmt.Sprint(ci.DNSNames, ci.IPs) != "[etcd-1 localhost] [10.88.0.11 127.0.0.1 ::1]" ||
		ci.Issuer != "CN=demo etcd CA,O=etcdbake demo" || ci.Subject != "CN=etcd-1,O=etcdbake demo" {
		t.Errorf("%+v", ci)
	}

	check := func(c *spec.Cluster, at time.Time) map[string][]string {
		t.Helper()
		cs, err := Check(c, dir, at)
		if err != nil {
			t.Fatal(err)
		}
		return notOK(cs)
	}
	// Expired: every leaf, and only leaves.
	bad := check(c, t0.Add(400*oneDay))
	if len(bad) != 14 || bad["ca"] != nil || !strings.HasPrefix(bad["clients/admin"][0], "expired on 2027-03-01 12:00 UTC (35 days ago)") {
		t.Errorf("expired: %v", bad)
	}
	// Not yet valid (before the backdated NotBefore): everything.
	bad = check(c, t0.Add(-90*time.Minute))
	if len(bad) != 16 || !strings.HasPrefix(bad["nodes/etcd-3/flanneld"][0], "not yet valid (valid from 2026-03-01 11:00 UTC)") {
		t.Errorf("not yet valid: %v", bad)
	}
	// Expiring soon: a problem too (Ensure would re-issue).
	if bad = check(c, t0.Add(350*oneDay)); len(bad) != 14 || !strings.Contains(bad["nodes/etcd-2/peer"][0], "within pki.renewBefore 30d") {
		t.Errorf("expiring: %v", bad)
	}
	// SAN drift on one node names that certificate only.
	drift := example(t, `address: 10.88.0.13/24`, `address: 10.88.0.13/24`+"\n    extraSANs: [etcd-3.example.internal]")
	bad = check(drift, t0)
	if len(bad) != 1 || fmt.Sprint(bad["nodes/etcd-3/server"]) != "[SANs differ (missing etcd-3.example.internal)]" {
		t.Errorf("drift: %v", bad)
	}
	// Wrong key type: every leaf.
	bad = check(example(t, "algorithm: ecdsa-p256", "algorithm: rsa-2048"), t0)
	if len(bad) != 14 || fmt.Sprint(bad["nodes/etcd-1/firstboot"]) != "[key is ecdsa-p256, pki.algorithm is rsa-2048]" {
		t.Errorf("key type: %v", bad)
	}
	// A key readable by others.
	_, key := ClientCertPath(dir, ClientKubeAPIServer)
	os.Chmod(key, 0o640)
	bad = check(c, t0)
	if len(bad) != 1 || !strings.Contains(bad["clients/kube-apiserver-etcd-client"][0], "has mode 0640: it must be 0600") {
		t.Errorf("mode: %v", bad)
	}
	res := ensure(t, c, dir, t0)
	if ch := onlyChanged(res); len(ch) != 0 || !strings.HasSuffix(res.Actions[15].Reason, "key file mode 0640 tightened to 0600") {
		t.Errorf("mode fix: %v", res.Actions[15])
	}
	if fi, _ := os.Stat(key); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode not fixed: %v", fi.Mode())
	}
	// Missing files.
	crt, key := ClientCertPath(dir, ClientAdmin)
	os.Remove(crt)
	os.Remove(key)
	crt, _ = NodeCertPath(dir, "etcd-2", KindPeer)
	os.Remove(crt)
	bad = check(c, t0)
	if len(bad) != 2 || fmt.Sprint(bad["clients/admin"]) != "[missing: run `etcdbake pki`]" || fmt.Sprint(bad["nodes/etcd-2/peer"]) != "[certificate file missing]" {
		t.Errorf("missing: %v", bad)
	}
	// Check OK exactly when Ensure reuses.
	res = ensure(t, c, dir, t0)
	if fmt.Sprint(onlyChanged(res)) != "[nodes/etcd-2/peer: re-issued: certificate file missing clients/admin: created]" {
		t.Errorf("%v", onlyChanged(res))
	}
	if bad = check(c, t0); len(bad) != 0 {
		t.Errorf("after repair: %v", bad)
	}
}

func TestStaleNodesAreReportedNotDeleted(t *testing.T) {
	dir := t.TempDir()
	ensure(t, generated(t, 5, "ecdsa-p256"), dir, t0)
	res := ensure(t, example(t), dir, t0.Add(time.Hour))
	want := []string{
		"nodes/etcd-4/firstboot", "nodes/etcd-4/flanneld", "nodes/etcd-4/peer", "nodes/etcd-4/server",
		"nodes/etcd-5/firstboot", "nodes/etcd-5/flanneld", "nodes/etcd-5/peer", "nodes/etcd-5/server",
	}
	if !slices.Equal(res.Stale(), want) {
		t.Errorf("stale %v", res.Stale())
	}
	if crt, _ := NodeCertPath(dir, "etcd-5", KindServer); !fileExists(crt) {
		t.Errorf("stale certificate deleted")
	}
	// The removed nodes do not affect the rest (the example's organisation differs from
	// the generated spec's, so everything else is re-issued for that reason only).
	for _, a := range res.Actions[2:] {
		if a.Verb != Reissued || a.Reason != `organization is "etcdbake gen", want "etcdbake demo"` {
			t.Errorf("%s", a)
		}
	}
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func TestNothingWrittenOnWriteFailure(t *testing.T) {
	c := example(t)
	dir := t.TempDir()
	// A file where the clients directory belongs: the nodes' directories and every
	// temporary file would be created before this fails.
	if err := os.WriteFile(filepath.Join(dir, "clients"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, dir)
	_, err := Ensure(c, dir, t0)
	if err == nil || !strings.Contains(err.Error(), "clients exists and is not a directory") {
		t.Fatalf("err = %v", err)
	}
	sameFiles(t, before, snapshot(t, dir))

	// Same with an existing PKI that needs changes.
	os.Remove(filepath.Join(dir, "clients"))
	ensure(t, c, dir, t0)
	os.RemoveAll(filepath.Join(dir, "clients"))
	os.WriteFile(filepath.Join(dir, "clients"), nil, 0o644)
	before = snapshot(t, dir)
	drift := example(t, "algorithm: ecdsa-p256", "algorithm: ecdsa-p384")
	if _, err := Ensure(drift, dir, t0); err == nil {
		t.Fatal("no error")
	}
	sameFiles(t, before, snapshot(t, dir))
}
