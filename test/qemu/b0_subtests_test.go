package qemu

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/etcdbake/etcdbake/backup"
	"github.com/etcdbake/etcdbake/pki"
	"github.com/etcdbake/etcdbake/spec"
	"github.com/etcdbake/etcdbake/vmcluster"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// b0Env is what the subtests of TestCluster share: the booted cluster and
// its clients.
type b0Env struct {
	ctx      context.Context
	bc       builtCluster
	c        *spec.Cluster
	cl       *vmcluster.Cluster
	runDir   string
	tlsCfg   *tls.Config
	crt, key string // the admin client certificate's files (B2 uses them raw)
	hc       *http.Client
	epList   []string
	members  *clientv3.MemberListResponse
	consoles func(lines int) string
	// sshKey is the login key in the spec; hostKeys are the nodes' SSH host key
	// fingerprints as B11 saw them.
	sshKey   sshKey
	hostKeys map[string]string
}

// b2TLSRejections (B2): every node refuses clients without the cluster's client
// certificates, with a foreign CA, with an expired certificate, and a client certificate on
// the peer port.
func (e *b0Env) b2TLSRejections(t *testing.T) {
	bc, cl, tlsCfg, crt, key := e.bc, e.cl, e.tlsCfg, e.crt, e.key
	// Four kinds of bad client on every node: no certificate, a certificate from a CA
	// the test makes, an expired certificate from the right CA, and a valid client
	// certificate against the peer port (whose CA is the separate peer CA).
	foreign := filepath.Join(t.TempDir(), "pki")
	if _, err := pki.Ensure(bc.c, foreign, time.Now()); err != nil {
		t.Fatal(err)
	}
	fcrt, fkey := pki.ClientCertPath(foreign, "admin")
	foreignPair, err := tls.LoadX509KeyPair(fcrt, fkey)
	if err != nil {
		t.Fatal(err)
	}
	expired := expiredClientCert(t, bc.pkiDir)
	adminPair, err := tls.LoadX509KeyPair(crt, key)
	if err != nil {
		t.Fatal(err)
	}
	try := func(url string, certs []tls.Certificate, rootCAs *x509.CertPool) error {
		cfg := &tls.Config{
			RootCAs: rootCAs, MinVersion: tls.VersionTLS13,
			// The peer port presents the peer CA's certificate: the test is about
			// what the server accepts, so it does not judge the server here.
			InsecureSkipVerify: rootCAs == nil,
		}
		if len(certs) > 0 {
			// Always present the certificate, even when the server asks for another
			// CA, so the server has to judge it.
			cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &certs[0], nil }
		}
		c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
		defer c.CloseIdleConnections()
		resp, err := c.Get(url)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("HTTP %s", resp.Status)
		}
		return nil
	}
	// Under TCG a busy guest can miss a 10 s deadline: a timeout or a dropped
	// connection says nothing about the certificate, so such attempts are retried
	// (for up to 2 minutes) until the server answers: 200 or a TLS alert.
	isRejection := func(err error) bool { return err != nil && strings.Contains(err.Error(), "remote error: tls:") }
	answer := func(url string, certs []tls.Certificate, roots *x509.CertPool) error {
		deadline := time.Now().Add(2 * time.Minute)
		for {
			err := try(url, certs, roots)
			if err == nil || isRejection(err) || time.Now().After(deadline) {
				return err
			}
			t.Logf("%s: no answer yet (%v); retrying", url, err)
			time.Sleep(3 * time.Second)
		}
	}
	rejected, accepted := 0, 0
	for _, n := range cl.Nodes() {
		ep, peer := cl.Endpoint(n), cl.PeerEndpoint(n)
		// The valid admin certificate works on the client port: the checks below are
		// about the certificate, not a dead port.
		if err := answer(ep+"/health", []tls.Certificate{adminPair}, tlsCfg.RootCAs); err != nil {
			t.Fatalf("%s: the admin certificate is refused on the client port: %v", n, err)
		}
		for _, a := range []struct {
			what  string
			url   string
			certs []tls.Certificate
			roots *x509.CertPool
		}{
			{"no client certificate", ep + "/health", nil, tlsCfg.RootCAs},
			{"certificate from another CA", ep + "/health", []tls.Certificate{foreignPair}, tlsCfg.RootCAs},
			{"expired certificate", ep + "/health", []tls.Certificate{expired}, tlsCfg.RootCAs},
			{"client certificate on the peer port", peer + "/members", []tls.Certificate{adminPair}, nil},
		} {
			switch err := answer(a.url, a.certs, a.roots); {
			case isRejection(err):
				rejected++
				t.Logf("%s: %s: rejected (%v)", n, a.what, err)
			case err == nil:
				accepted++
				t.Errorf("%s: %s: ACCEPTED", n, a.what)
			default:
				t.Errorf("%s: %s: no TLS verdict within 2 minutes: %v", n, a.what, err)
			}
		}
	}
	t.Logf("B2: %d/%d rejected, %d accepted", rejected, rejected+accepted, accepted)
	if rejected != 12 || accepted != 0 {
		t.Fatalf("want 12/12 rejected, got %d rejected, %d accepted", rejected, accepted)
	}
}

// b3b9Report (B3, B9): each node's console report of flannel (leases, routes, pings) and
// its security posture (owners, modes, users, read-only root, no CA key).
func (e *b0Env) b3b9Report(t *testing.T) {
	ctx, bc, c, cl := e.ctx, e.bc, e.c, e.cl
	// Each node's report (reportFragment): subnet.env, pings to the other nodes'
	// flannel.1 addresses, and its security posture.
	pings, lossy := 0, 0
	for _, n := range cl.Nodes() {
		out, err := cl.VM(n).WaitConsole(ctx, regexp.MustCompile(`(?s)REPORT-B3 .*?REPORT-END `+n))
		if err != nil {
			t.Fatalf("%s: %v", n, err)
		}
		t.Logf("%s report:\n%s", n, out)
		m := regexp.MustCompile(`FLANNEL_SUBNET=(\S+) FLANNEL_NETWORK=(\S+)`).FindStringSubmatch(out)
		if m == nil {
			t.Errorf("%s: no subnet.env", n)
		} else {
			sub, err1 := netip.ParsePrefix(m[1])
			nw, err2 := netip.ParsePrefix(m[2])
			if err1 != nil || err2 != nil || !nw.Contains(sub.Addr()) || nw.String() != c.Flannel.Network {
				t.Errorf("%s: subnet.env %s not inside %s", n, m[1], c.Flannel.Network)
			}
		}
		for _, pm := range regexp.MustCompile(`REPORT-PING \S+ -> (\S+) loss=(\S*)%`).FindAllStringSubmatch(out, -1) {
			pings++
			if pm[2] != "0" {
				lossy++
				t.Errorf("%s: ping %s over flannel: loss %s%%", n, pm[1], pm[2])
			}
		}
		if nm := regexp.MustCompile(`REPORT-NFT \S+ masquerade=(\d+) iptables=(\d+)`).FindStringSubmatch(out); nm == nil || nm[1] == "0" || nm[2] != "0" {
			t.Errorf("%s: flanneld's rules: %v, want masquerade rules in nftables (table ip flannel-ipv4) and no FLANNEL rule in iptables", n, nm)
		}
		if !regexp.MustCompile(`REPORT-TIME \S+ time gate:\s+pass via ntp ` + regexp.QuoteMeta(qemuTimeServer) + `:123`).MatchString(out) {
			t.Errorf("%s: the time gate did not pass via the hub's NTP server", n)
		}
		b9 := regexp.MustCompile(`REPORT-B9 \S+ datadir=(\S+) etcduser=(\S+) root=(\S+) exposure=(.*)`).FindStringSubmatch(out)
		if b9 == nil {
			t.Errorf("%s: no posture line", n)
			continue
		}
		if b9[1] != "700:etcd:etcd" || b9[2] != "etcd" || !strings.HasPrefix(b9[3], "ro,") {
			t.Errorf("%s: data dir %s (want 700:etcd:etcd), etcd runs as %s, root mounted %s", n, b9[1], b9[2], b9[3])
		}
		t.Logf("B9 %s: data dir %s, etcd user %s, root %s, systemd-analyze security: %s", n, b9[1], b9[2], b9[3], strings.TrimSpace(b9[4]))
	}
	// No CA private key anywhere on any node's disk image, and each disk holds its
	// own server key and no other node's.
	var needles [][]byte
	var names []string
	for _, ca := range []string{"ca", "peer-ca"} {
		_, kp := pki.CAPath(bc.pkiDir, ca)
		b, err := os.ReadFile(kp)
		if err != nil {
			t.Fatal(err)
		}
		needles, names = append(needles, pemBody(b)), append(names, ca+".key")
	}
	for _, n := range cl.Nodes() {
		_, kp := pki.NodeCertPath(bc.pkiDir, n, "server")
		b, err := os.ReadFile(kp)
		if err != nil {
			t.Fatal(err)
		}
		needles, names = append(needles, pemBody(b)), append(names, n+"/server.key")
	}
	for _, n := range cl.Nodes() {
		found := imageContains(t, bc.images[n], needles)
		for i, name := range names {
			own := name == n+"/server.key"
			if found[i] != own {
				t.Errorf("%s's disk: %s present=%v (want %v)", n, name, found[i], own)
			}
		}
	}
	t.Logf("B3: %d pings between nodes over flannel.1, %d with loss", pings, lossy)
	if pings != 6 {
		t.Errorf("want 6 node-to-node pings (3 nodes x 2 peers), got %d", pings)
	}
}

// maintenance: every node's maintenance and snapshot timers are enabled and scheduled; a
// maintenance pass started by hand succeeds against the live cluster (the host-level tests
// make it defragment and repair NOSPACE); the snapshot service started on each node in
// turn takes exactly one snapshot (the first node), the others skip naming it, and the
// file, copied out of the node, verifies as this cluster's.
func (e *b0Env) maintenance(t *testing.T) {
	for _, n := range e.cl.Nodes() {
		// The timers are read after the pass by hand: while a timer's own run is under
		// way (the maintenance timer's first run falls 5-6 min after boot, when this
		// subtest may run) systemd shows no next elapse; once the service is done it
		// schedules the next run from OnUnitActiveSec. The loop waits briefly for that.
		res, err := e.cl.Exec(e.ctx, n, "/bin/sh", "-c", `systemctl start etcdbake-maintain.service; echo "maintain rc=$?"
systemctl show -p Result etcdbake-maintain.service
journalctl -b --no-pager -o cat -u etcdbake-maintain.service | tail -n 5
next() { systemctl show -p NextElapseUSecMonotonic -p NextElapseUSecRealtime --value $1 | grep -v -x -e '' -e infinity -e 0; }
for i in $(seq 20); do
  next etcdbake-maintain.timer >/dev/null && next etcdbake-snapshot.timer >/dev/null && break
  sleep 0.5
done
for u in etcdbake-maintain.timer etcdbake-snapshot.timer; do
  echo "$u $(systemctl is-enabled $u) $(systemctl is-active $u) $(systemctl show -p NextElapseUSecMonotonic -p NextElapseUSecRealtime --value $u | tr '\n' ' ')"
  echo "  ($u: $(systemctl show -p SubState -p LastTriggerUSec $u | tr '\n' ' '))"
done`)
		if err != nil {
			t.Fatalf("%s: %v", n, err)
		}
		out := res.Stdout
		for _, want := range []string{"etcdbake-maintain.timer enabled active", "etcdbake-snapshot.timer enabled active", "maintain rc=0", "Result=success", "etcd-firstboot: maintain done in"} {
			if !strings.Contains(out, want) {
				t.Errorf("%s: the maintenance timer and pass: want %q in:\n%s%s", n, want, out, res.Stderr)
			}
		}
		for _, timer := range []string{"etcdbake-maintain.timer", "etcdbake-snapshot.timer"} {
			// The next elapse, realtime and/or monotonic (e.g. "5min 52.188490s" before
			// the maintenance timer's first OnBootSec run): at least one set.
			m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(timer) + ` enabled active (.*)$`).FindStringSubmatch(out)
			if next := ""; m != nil {
				next = strings.Join(strings.Fields(strings.NewReplacer("infinity", "", " 0 ", " ").Replace(" "+m[1]+" ")), " ")
				if next == "" {
					m = nil
				}
			}
			if m == nil {
				t.Errorf("%s: %s is not scheduled:\n%s", n, timer, out)
			}
		}
		t.Logf("%s: timers and a maintenance pass by hand:\n%s", n, strings.TrimSpace(out))
	}

	// The snapshot schedule, run on each node in turn (as the timers would at once).
	var taker, file string
	for i, n := range e.cl.Nodes() {
		res, err := e.cl.Exec(e.ctx, n, "/bin/sh", "-c", `systemctl start etcdbake-snapshot.service; echo "snapshot rc=$?"
journalctl -b --no-pager -o cat -u etcdbake-snapshot.service | grep 'etcd-firstboot: '`)
		if err != nil {
			t.Fatalf("%s: %v", n, err)
		}
		t.Logf("%s: the snapshot service:\n%s", n, strings.TrimSpace(res.Stdout))
		took := regexp.MustCompile(`snapshot: took (\S+) \(revision`).FindStringSubmatch(res.Stdout)
		switch {
		case !strings.Contains(res.Stdout, "snapshot rc=0"):
			t.Errorf("%s: the snapshot service failed:\n%s%s", n, res.Stdout, res.Stderr)
		case i == 0 && took == nil:
			t.Errorf("%s, the first to run, took no snapshot:\n%s", n, res.Stdout)
		case i == 0:
			taker, file = n, took[1]
		case took != nil || !strings.Contains(res.Stdout, "skipped: "+taker+" took this period's snapshot"):
			t.Errorf("%s, after %s took this period's snapshot, did not skip naming it:\n%s", n, taker, res.Stdout)
		}
	}
	if file == "" {
		return
	}
	res, err := e.cl.Exec(e.ctx, taker, "/bin/sh", "-c", "stat -c '%a %U' "+file+"; findmnt -n -o TARGET -T "+file+"; base64 -w0 "+file)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitN(res.Stdout, "\n", 3)
	if len(lines) < 3 || lines[0] != "600 root" || lines[1] == "/" {
		t.Errorf("%s on %s: mode and owner %q (want 600 root), on the mount %q (want the data partition, not /)", file, taker, lines[0], lines[1])
	}
	db, err := base64.StdEncoding.DecodeString(strings.TrimSpace(lines[len(lines)-1]))
	if err != nil {
		t.Fatalf("copying %s out of %s: %v", file, taker, err)
	}
	local := filepath.Join(t.TempDir(), filepath.Base(file))
	if err := os.WriteFile(local, db, 0o600); err != nil {
		t.Fatal(err)
	}
	ca, _ := pki.CAPath(e.bc.pkiDir, pki.CAName)
	fp, err := backup.CAFingerprint(ca)
	if err != nil {
		t.Fatal(err)
	}
	m, err := backup.Verify(local, backup.Expect{Cluster: e.c.Name, CAFingerprint: fp})
	if err != nil {
		t.Fatalf("the scheduled snapshot %s from %s: %v", file, taker, err)
	}
	t.Logf("scheduled snapshot: %s took %s (%d bytes, revision %d, %d keys, from %s, by %q); copied out, it verifies as cluster %s",
		taker, file, m.Size, m.Revision, m.Keys, m.From, m.By, e.c.Name)
}

// b1Stability (B1): no leader change while idle, then sequential puts with their
// latencies.
func (e *b0Env) b1Stability(t *testing.T) {
	ctx, tlsCfg, epList := e.ctx, e.tlsCfg, e.epList
	// 60 s idle: the leader must not change. Then a short write load through the
	// client library: p50/p99 latency and throughput.
	cli, err := clientv3.New(clientv3.Config{Endpoints: epList, TLS: tlsCfg, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	leaderOf := func() (uint64, uint64) {
		for _, ep := range epList {
			sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			st, err := cli.Status(sctx, ep)
			cancel()
			if err == nil {
				return st.Leader, st.RaftTerm
			}
		}
		return 0, 0
	}
	first, term0 := leaderOf()
	changes, samples := 0, 0
	last := first
	for end := time.Now().Add(60 * time.Second); time.Now().Before(end); time.Sleep(2 * time.Second) {
		l, _ := leaderOf()
		samples++
		if l != last {
			changes++
			last = l
		}
	}
	_, term1 := leaderOf()
	t.Logf("B1 idle 60 s: %d samples, leader changes %d, raft term %d -> %d", samples, changes, term0, term1)
	if changes != 0 || term1 != term0 || first == 0 {
		t.Errorf("leader changed while idle: %d changes, term %d -> %d", changes, term0, term1)
	}
	const ops = 300
	lat := make([]time.Duration, 0, ops)
	start := time.Now()
	for i := 0; i < ops; i++ {
		t0 := time.Now()
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := cli.Put(wctx, fmt.Sprintf("/b1/key-%04d", i), fmt.Sprintf("value-%d", i))
		cancel()
		if err != nil {
			t.Fatalf("put %d: %v", i, err)
		}
		lat = append(lat, time.Since(t0))
	}
	total := time.Since(start)
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	t.Logf("B1 write load: %d sequential puts in %s: %.1f ops/s, p50 %s, p99 %s", ops, total.Round(time.Millisecond),
		float64(ops)/total.Seconds(), lat[ops/2].Round(100*time.Microsecond), lat[ops*99/100].Round(100*time.Microsecond))
}

// harness checks the fault-injection primitives on the booted cluster that the fault
// suite does not already exercise the same way: CutLink and RestoreLink, and a clock
// offset with the time source answering (Restart and a wiped disk are B4 and B7). It is one
// sequence because each step starts from the cluster state the previous one left (booting
// anew costs minutes under TCG).
func (e *b0Env) harness(t *testing.T) {
	ctx, cl, tlsCfg, hc, consoles := e.ctx, e.cl, e.tlsCfg, e.hc, e.consoles
	ready := func(node string) bool {
		ep := cl.Endpoint(node)
		if ep == "" {
			return false
		}
		resp, err := hc.Get(ep + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
	waitFor := func(what string, limit time.Duration, cond func() bool) time.Duration {
		t.Helper()
		t0 := time.Now()
		for !cond() {
			if time.Since(t0) > limit || ctx.Err() != nil {
				t.Fatalf("%s: not within %s\n%s", what, limit, consoles(30))
			}
			time.Sleep(time.Second)
		}
		return time.Since(t0)
	}
	// A cut link isolates etcd-3: it stops being ready, the other two keep quorum.
	if err := cl.CutLink("etcd-3"); err != nil {
		t.Fatal(err)
	}
	d := waitFor("etcd-3 not ready after CutLink", 2*time.Minute, func() bool { return !ready("etcd-3") })
	// If etcd-3 led, the other two elect a new leader first (their /readyz
	// includes a linearizable read, which fails until then): they must be
	// ready again within a few election timeouts, and stay so.
	el := waitFor("etcd-1 and etcd-2 ready while etcd-3 is cut off", time.Minute, func() bool { return ready("etcd-1") && ready("etcd-2") })
	if !ready("etcd-1") || !ready("etcd-2") {
		t.Fatal("etcd-1/etcd-2 lost readiness again while only etcd-3 was cut off")
	}
	two, err := clientv3.New(clientv3.Config{Endpoints: []string{cl.Endpoint("etcd-1"), cl.Endpoint("etcd-2")}, TLS: tlsCfg, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer two.Close()
	pctx, pcancel := context.WithTimeout(ctx, 30*time.Second)
	_, err = two.Put(pctx, "/etcdbake-test/while-cut", "yes")
	pcancel()
	if err != nil {
		t.Fatalf("put with etcd-3 cut off: %v", err)
	}
	t.Logf("CutLink(etcd-3): not ready after %s; the other two ready %s later and serve writes", d.Round(100*time.Millisecond), el.Round(100*time.Millisecond))

	if err := cl.RestoreLink("etcd-3"); err != nil {
		t.Fatal(err)
	}
	d = waitFor("etcd-3 ready after RestoreLink", 3*time.Minute, func() bool { return ready("etcd-3") })
	three, err := clientv3.New(clientv3.Config{Endpoints: []string{cl.Endpoint("etcd-3")}, TLS: tlsCfg, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer three.Close()
	gctx, gcancel := context.WithTimeout(ctx, 10*time.Second)
	got, err := three.Get(gctx, "/etcdbake-test/while-cut", clientv3.WithSerializable())
	gcancel()
	if err != nil || len(got.Kvs) != 1 {
		t.Fatalf("etcd-3 did not catch up with the write made while it was cut off: %v %v", err, got)
	}
	t.Logf("RestoreLink(etcd-3): ready again after %s and caught up", d.Round(100*time.Millisecond))

	// Restart (disk kept) and RestartWith(WipeDisk) are the fault suite's B4 and B7, with
	// the same member ID, the new member and the unchanged forwarded ports checked there.

	// A wrong hardware clock: etcd-2 boots with its RTC an hour ahead. The kernel logs
	// the RTC time it starts from (the RTC itself is corrected soon after, by
	// chrony's rtcsync); chrony steps the clock from the hub's NTP and the node rejoins.
	t0 := time.Now()
	if err := cl.RestartWith(ctx, "etcd-2", vmcluster.RestartOptions{ClockOffset: time.Hour}); err != nil {
		t.Fatal(err)
	}
	res, err := cl.Exec(ctx, "etcd-2", "dmesg")
	if err != nil {
		t.Fatal(err)
	}
	if m := regexp.MustCompile(`setting system clock to \S+ UTC \((\d+)\)`).FindStringSubmatch(res.Stdout); m == nil {
		t.Errorf("etcd-2's kernel log does not say what the RTC read at boot:\n%s", tail([]byte(res.Stdout), 40))
	} else {
		rtc, _ := strconv.ParseInt(m[1], 10, 64)
		// From launch to the kernel reading the RTC takes seconds, not minutes.
		if skew := time.Duration(rtc-t0.Unix()) * time.Second; skew < 59*time.Minute || skew > 62*time.Minute {
			t.Errorf("etcd-2's kernel read its RTC as %s after the launch, want about 1h", skew)
		} else {
			t.Logf("RestartWith(etcd-2, ClockOffset 1h): the kernel started from an RTC %s ahead of the launch time", skew)
		}
	}
	waitFor("etcd-2 ready with its RTC an hour ahead", 10*time.Minute, func() bool { return ready("etcd-2") })
	res, _ = cl.Exec(ctx, "etcd-2", "/opt/etcdbake/bin/etcd-firstboot", "status")
	t.Logf("etcd-2 ready again %s after relaunch; etcd-firstboot says:\n%s", time.Since(t0).Round(100*time.Millisecond), res.Stdout)
}
