package qemu

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/etcdbake/etcdbake/bake"
	"github.com/etcdbake/etcdbake/binaries"
	"github.com/etcdbake/etcdbake/ignition"
	"github.com/etcdbake/etcdbake/imagebuild"
	"github.com/etcdbake/etcdbake/imagebuild/base"
	"github.com/etcdbake/etcdbake/pki"
	"github.com/etcdbake/etcdbake/spec"
	"github.com/etcdbake/etcdbake/status"
	"github.com/etcdbake/etcdbake/vmcluster"
)

// adminTLS is mutual TLS with the admin client certificate of a PKI directory.
func adminTLS(t testing.TB, pkiDir string) *tls.Config {
	t.Helper()
	ca, _ := pki.CAPath(pkiDir, "ca")
	crt, key := pki.ClientCertPath(pkiDir, "admin")
	c, err := status.TLSConfig(ca, crt, key)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// qemuTimeServer is where the L2 hub serves time to the VMs.
const qemuTimeServer = "10.88.0.254"

// exampleSpecForQEMU is the example spec (3 nodes on 10.88.0.0/24, their MACs, heartbeat
// 250ms / election 2500ms) with the hub's time server instead of the public pool, which a
// VM cannot reach here.
func exampleSpecForQEMU(t testing.TB) []byte {
	t.Helper()
	b := spec.Example
	for _, r := range [][2]string{
		// The hub answers NTP on this segment address (ClusterOptions.TimeServer).
		{"servers: [0.pool.ntp.org, 1.pool.ntp.org]", "servers: [" + qemuTimeServer + "]"},
		{"syncTimeout: 2m ", "syncTimeout: 30s "},
		// The release downloads need github.com; the cached Go builds do not.
		{"sources: [release, go]", "sources: [go]"},
	} {
		if !bytes.Contains(b, []byte(r[0])) {
			t.Fatalf("spec.Example no longer contains %q: update the test", r[0])
		}
		b = bytes.Replace(b, []byte(r[0]), []byte(r[1]), 1)
	}
	return b
}

// reportFragment adds a unit that, once flanneld runs, waits for the three leases, pings
// every other node's flannel.1 address, and prints the node's security posture on its
// serial console (B3, B9), so the test needs no way into the node.
func reportFragment() ignition.Fragment {
	script := `#!/bin/sh
# The lease list, retried: a single etcdctl call may time out on a busy emulated host.
keys=""
for i in $(seq 1 120); do
  keys=$(/usr/local/bin/etcdctl --command-timeout=15s get /coreos.com/network/subnets --prefix --keys-only 2>/dev/null | grep subnets)
  [ "$(echo "$keys" | grep -c subnets)" -ge 3 ] && break
  sleep 2
done
. /run/flannel/subnet.env
host=$(hostname)
echo "REPORT-B3 $host FLANNEL_SUBNET=$FLANNEL_SUBNET FLANNEL_NETWORK=$FLANNEL_NETWORK"
own=${FLANNEL_SUBNET%/*}
for k in $keys; do
  sn=${k##*/}
  ip=${sn%-*}
  [ "$ip" = "${own%.*}.0" ] && continue
  # flanneld installs routes and neighbour entries (here and on the peer, for the
  # replies) as it processes the leases: wait until the peer has answered three times in
  # a row (at most 90 s), so the path is settled, then measure.
  ok=0
  for j in $(seq 1 90); do
    if ping -c 1 -W 2 "$ip" >/dev/null 2>&1; then ok=$((ok+1)); else ok=0; fi
    [ $ok -ge 3 ] && break
    sleep 1
  done
  loss=$(ping -c 10 -i 0.2 -W 5 "$ip" | sed -n 's/.* \([0-9.]*\)% packet loss.*/\1/p')
  echo "REPORT-PING $host -> $ip loss=$loss%"
done
pid=$(systemctl show -p MainPID --value etcd.service)
exposure=$(systemd-analyze security etcd.service --no-pager 2>/dev/null | tail -1)
echo "REPORT-B9 $host datadir=$(stat -c %a:%U:%G /var/lib/etcd) etcduser=$(stat -c %U /proc/$pid) root=$(findmnt -no OPTIONS /) exposure=$exposure"
echo "REPORT-TIME $host $(/opt/etcdbake/bin/etcd-firstboot status | grep 'time gate:')"
echo "REPORT-END $host"
`
	bu := "variant: fcos\nversion: 1.5.0\nstorage:\n  files:\n    - path: /usr/local/sbin/etcdbake-test-report\n      mode: 0755\n      contents:\n        inline: |\n" +
		indent(script, "          ") +
		"systemd:\n  units:\n    - name: etcdbake-test-report.service\n      enabled: true\n      contents: |\n" +
		indent("[Unit]\nDescription=etcdbake test report on the console\nAfter=flanneld.service\nRequires=flanneld.service\n[Service]\nType=exec\nStandardOutput=tty\nTTYPath=/dev/ttyS0\nExecStart=/usr/local/sbin/etcdbake-test-report\n[Install]\nWantedBy=multi-user.target\n", "        ")
	return ignition.Fragment{Source: "test report fragment", Data: []byte(bu)}
}

func indent(s, prefix string) string {
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		b.WriteString(prefix + l + "\n")
	}
	return b.String()
}

// builtCluster is a spec with its PKI and one disk image per node.
type builtCluster struct {
	c      *spec.Cluster
	pkiDir string
	images map[string]string
	macs   map[string]string
}

// options are what vmcluster needs to boot the nodes (their spec MACs, forwards to the
// spec's etcd ports; see bake.QEMUCluster) with 768 MiB each, their disks and consoles in
// dir, and the hub answering NTP on timeServer unless it is empty.
func (bc builtCluster) options(dir, timeServer string) vmcluster.ClusterOptions {
	o := bake.QEMUCluster(bc.c, bc.images, dir)
	o.MemoryMiB = 768
	if timeServer != "" {
		o.TimeServer = netip.MustParseAddr(timeServer)
	}
	return o
}

// buildClusterImages builds every node's qcow2 image from the real default base with
// the same pipeline as `etcdbake image` (package bake), plus extra fragments for every node.
//
// With guest set, the QEMU guest fragment (second NIC, etcd on all addresses; see
// bake.QEMUFragment) is merged too, as vmcluster needs.
func buildClusterImages(ctx context.Context, t testing.TB, dir string, specText []byte, guest bool, extra ...ignition.Fragment) builtCluster {
	t.Helper()
	bc, _ := buildClusterImagesAs(ctx, t, dir, specText, guest, []string{"raw"}, extra...)
	return bc
}

// buildClusterImagesAs is buildClusterImages with the image formats given; it also
// returns what the build wrote (the first file of each node is what the VMs boot).
func buildClusterImagesAs(ctx context.Context, t testing.TB, dir string, specText []byte, guest bool, formats []string, extra ...ignition.Fragment) (builtCluster, []imagebuild.Image) {
	t.Helper()
	specPath := filepath.Join(dir, "cluster.yaml")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(specPath, specText, 0o644); err != nil {
		t.Fatal(err)
	}
	c, _, err := spec.Load(specPath)
	if err != nil {
		t.Fatal(err)
	}
	binCache := os.Getenv("ETCDBAKE_TEST_CACHE")
	if binCache == "" {
		binCache, _ = binaries.DefaultCacheDir()
	}
	baseCache, err := base.DefaultCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	fb := filepath.Join(dir, "etcd-firstboot")
	build := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", fb, "../../cmd/etcd-firstboot")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building etcd-firstboot: %v\n%s", err, out)
	}
	pkiDir := filepath.Join(dir, "pki")
	if _, err := pki.Ensure(c, pkiDir, time.Now()); err != nil {
		t.Fatal(err)
	}
	macs := map[string]string{}
	for _, n := range c.Nodes {
		macs[n.Name] = n.MAC
	}
	if guest {
		extra = append(extra, bake.QEMUFragment(c))
	}
	step := time.Now()
	_, imgs, err := bake.Images(ctx, bake.Sources{
		Cluster: c, SpecBytes: specText, PKIDir: pkiDir, Cache: &binaries.Cache{Dir: binCache, Progress: t.Logf},
		Firstboot: fb, FirstbootVersion: "test", Fragments: extra, Progress: t.Logf,
	}, bake.ImageOptions{
		BaseCacheDir: baseCache, OutDir: filepath.Join(dir, "images"), Formats: formats, DataSize: 1 << 30,
	})
	if err != nil {
		t.Fatal(err)
	}
	images := map[string]string{}
	for _, img := range imgs {
		images[img.Node] = img.Files[0]
	}
	t.Logf("%d images built in %s", len(imgs), time.Since(step).Round(time.Millisecond))
	return builtCluster{c: c, pkiDir: pkiDir, images: images, macs: macs}, imgs
}

// TestClusterBootstrapB0 boots the example's 3-node cluster (issue B0): three VMs on a
// private L2 segment, each reached from the host only through a forward to its etcd. It
// measures the time from launching the VMs until all three members vote and answer
// /readyz and flanneld holds three distinct leases, and checks that the flannel network
// config was written once.
func TestClusterBootstrapB0(t *testing.T) {
	requireQEMU(t)
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	dir := t.TempDir()
	bc := buildClusterImages(ctx, t, dir, exampleSpecForQEMU(t), true, reportFragment())
	c := bc.c

	tlsCfg := adminTLS(t, bc.pkiDir)
	crt, key := pki.ClientCertPath(bc.pkiDir, "admin") // also used as raw files by B2

	// The yardstick: the plain base, booted the same way on as many VMs at once.
	plain := bootPlainBase(ctx, t, dir, bc.macs)
	var plainMax time.Duration
	for _, d := range plain {
		plainMax = max(plainMax, d)
	}
	t.Logf("plain base (%d VMs at once): launch -> multi-user.target %v, last %s", len(plain), roundAll(plain), plainMax.Round(100*time.Millisecond))

	runDir := filepath.Join(dir, "run")
	cl, err := vmcluster.StartCluster(ctx, bc.options(runDir, qemuTimeServer))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Stop()
	start := cl.Started
	multiUser := make(chan map[string]time.Duration, 1)
	go func() { multiUser <- waitMultiUser(ctx, t, cl) }()
	eps := cl.Endpoints()
	t.Logf("VMs launched; endpoints %v", eps)
	if b, err := os.ReadFile(filepath.Join(runDir, "endpoints.json")); err != nil || !bytes.Contains(b, []byte(eps["etcd-1"])) {
		t.Errorf("endpoints.json: %v %s", err, b)
	}
	consoles := func(lines int) string {
		var s strings.Builder
		for _, n := range cl.Nodes() {
			b, _ := os.ReadFile(cl.Console(n))
			fmt.Fprintf(&s, "--- %s console (last %d lines) ---\n%s\n", n, lines, tail(b, lines))
		}
		return s.String()
	}

	// Phase 1: every member answers /readyz through its forward.
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsCfg}}
	wait := 10 * time.Minute
	deadline := time.Now().Add(wait)
	readyAt := map[string]time.Duration{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, n := range cl.Nodes() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) && ctx.Err() == nil {
				if vm := cl.VM(n); vm != nil && !vm.Running() {
					return // QEMU exited: reported below
				}
				resp, err := hc.Get(cl.Endpoint(n) + "/readyz")
				if err == nil {
					resp.Body.Close()
					if resp.StatusCode == http.StatusOK {
						mu.Lock()
						readyAt[n] = time.Since(start)
						mu.Unlock()
						return
					}
				}
				time.Sleep(time.Second)
			}
		}()
	}
	wg.Wait()
	if len(readyAt) != len(c.Nodes) {
		t.Fatalf("only %d of %d members answered /readyz within %s (%v)\n%s", len(readyAt), len(c.Nodes), wait, readyAt, consoles(50))
	}
	var lastReady time.Duration
	for _, n := range cl.Nodes() {
		lastReady = max(lastReady, readyAt[n])
		t.Logf("%s: /readyz %s after launch", n, readyAt[n].Round(100*time.Millisecond))
	}

	var epList []string
	for _, n := range cl.Nodes() {
		epList = append(epList, cl.Endpoint(n))
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: epList, TLS: tlsCfg, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()

	// Phase 2: three voting, started members, one leader agreed by all, three leases.
	prefix := c.Flannel.Prefix
	var votingAt, leasesAt time.Duration
	var members *clientv3.MemberListResponse
	var leases *clientv3.GetResponse
	var problem string
	for time.Now().Before(deadline) {
		qctx, qcancel := context.WithTimeout(ctx, 5*time.Second)
		if votingAt == 0 {
			problem = ""
			ml, err := cli.MemberList(qctx)
			if err != nil {
				problem = "member list: " + err.Error()
			} else {
				members = ml
				voting := 0
				for _, m := range ml.Members {
					if !m.IsLearner && m.Name != "" && len(m.ClientURLs) > 0 {
						voting++
					}
				}
				leaders := map[uint64]bool{}
				for _, ep := range epList {
					st, err := cli.Status(qctx, ep)
					if err != nil {
						problem = fmt.Sprintf("status %s: %v", ep, err)
						break
					}
					leaders[st.Leader] = true
				}
				if voting != len(c.Nodes) || len(ml.Members) != len(c.Nodes) {
					problem = fmt.Sprintf("%d members, %d voting and started", len(ml.Members), voting)
				} else if problem == "" && (len(leaders) != 1 || leaders[0]) {
					problem = fmt.Sprintf("leaders seen: %v", leaders)
				}
				if problem == "" {
					votingAt = time.Since(start)
				}
			}
		}
		if leasesAt == 0 {
			resp, err := cli.Get(qctx, prefix+"/subnets/", clientv3.WithPrefix())
			if err != nil {
				problem += "; leases: " + err.Error()
			} else {
				leases = resp
				if len(resp.Kvs) == len(c.Nodes) {
					leasesAt = time.Since(start)
				} else {
					problem += fmt.Sprintf("; %d flannel leases", len(resp.Kvs))
				}
			}
		}
		qcancel()
		if votingAt != 0 && leasesAt != 0 {
			break
		}
		time.Sleep(time.Second)
	}
	if votingAt == 0 || leasesAt == 0 {
		t.Fatalf("cluster not bootstrapped within %s: %s\n%s", wait, problem, consoles(60))
	}
	total := max(lastReady, votingAt, leasesAt)
	t.Logf("B0 figures (TCG, %d VMs x 768 MiB): launch -> last /readyz %s; -> 3 voting members with one leader %s; -> %d flannel leases %s; bootstrap total %s",
		len(c.Nodes), lastReady.Round(100*time.Millisecond), votingAt.Round(100*time.Millisecond), len(leases.Kvs), leasesAt.Round(100*time.Millisecond), total.Round(100*time.Millisecond))
	for _, m := range members.Members {
		t.Logf("member %s id=%x peers=%v clients=%v learner=%v", m.Name, m.ID, m.PeerURLs, m.ClientURLs, m.IsLearner)
	}
	muAt := <-multiUser
	var muMax time.Duration
	for _, d := range muAt {
		muMax = max(muMax, d)
	}
	t.Logf("B0 vs the plain base: plain base -> multi-user.target %s; etcdbake image -> multi-user.target %s (%v); -> bootstrapped %s; overhead of gates, bootstrap and flannel %s (target <= 5s)",
		plainMax.Round(100*time.Millisecond), muMax.Round(100*time.Millisecond), roundAll(muAt), total.Round(100*time.Millisecond), (total - plainMax).Round(100*time.Millisecond))

	// The flannel network config was created once.
	cfg, err := cli.Get(ctx, prefix+"/config")
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Kvs) != 1 {
		t.Fatalf("flannel config %s/config: %d keys", prefix, len(cfg.Kvs))
	}
	if v := cfg.Kvs[0].Version; v != 1 {
		t.Errorf("flannel config has Version %d, want 1 (written once): %s", v, cfg.Kvs[0].Value)
	}
	t.Logf("flannel config (version %d, create rev %d): %s", cfg.Kvs[0].Version, cfg.Kvs[0].CreateRevision, cfg.Kvs[0].Value)

	// Each node holds one lease, all distinct and inside the flannel network.
	network := netip.MustParsePrefix(c.Flannel.Network)
	seen := map[netip.Prefix]string{}
	byIP := map[string]netip.Prefix{}
	for _, kv := range leases.Kvs {
		k := strings.TrimPrefix(string(kv.Key), prefix+"/subnets/")
		sub, err := netip.ParsePrefix(strings.Replace(k, "-", "/", 1))
		if err != nil {
			t.Errorf("lease key %s: %v", kv.Key, err)
			continue
		}
		if sub.Bits() != c.Flannel.SubnetLen || !network.Contains(sub.Addr()) || sub.Masked() != sub {
			t.Errorf("lease %s is not a /%d inside %s", sub, c.Flannel.SubnetLen, network)
		}
		var lease struct{ PublicIP string }
		if err := json.Unmarshal(kv.Value, &lease); err != nil {
			t.Errorf("lease %s value: %v: %s", kv.Key, err, kv.Value)
		}
		if other, dup := seen[sub]; dup {
			t.Errorf("subnet %s leased twice (%s, %s)", sub, other, lease.PublicIP)
		}
		seen[sub] = lease.PublicIP
		byIP[lease.PublicIP] = sub
	}
	var got []string
	for _, n := range c.Nodes {
		ip := n.IP().String()
		sub, ok := byIP[ip]
		if !ok {
			t.Errorf("node %s (%s) holds no flannel lease", n.Name, ip)
			continue
		}
		got = append(got, fmt.Sprintf("%s=%s", n.Name, sub))
	}
	sort.Strings(got)
	t.Logf("flannel leases: %s", strings.Join(got, " "))
	fw, dropped := cl.Hub().Stats()
	t.Logf("L2 hub: %d frames delivered, %d dropped", fw, dropped)

	// The harness's fault controls, which later fault tests rely on.
	t.Run("B2-tls-rejections", func(t *testing.T) {
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
	})

	t.Run("B3-B9-report", func(t *testing.T) {
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
	})

	t.Run("B1-stability", func(t *testing.T) {
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
	})

	t.Run("harness", func(t *testing.T) {
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
		ids := map[string]uint64{}
		for _, m := range members.Members {
			ids[m.Name] = m.ID
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

		// Restart keeps the disk: etcd-1 comes back as the same member.
		old := cl.Endpoint("etcd-1")
		t0 := time.Now()
		if err := cl.Restart(ctx, "etcd-1"); err != nil {
			t.Fatal(err)
		}
		if cl.Endpoint("etcd-1") == "" || cl.Endpoint("etcd-1") == old {
			t.Logf("note: endpoint after restart %q (before %q)", cl.Endpoint("etcd-1"), old)
		}
		waitFor("etcd-1 ready after Restart", 8*time.Minute, func() bool { return ready("etcd-1") })
		b, _ := os.ReadFile(filepath.Join(runDir, "endpoints.json"))
		if !bytes.Contains(b, []byte(cl.Endpoint("etcd-1"))) {
			t.Errorf("endpoints.json lacks etcd-1's new endpoint: %s", b)
		}
		mctx, mcancel := context.WithTimeout(ctx, 10*time.Second)
		ml, err := two.MemberList(mctx)
		mcancel()
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range ml.Members {
			if ids[m.Name] != m.ID {
				t.Errorf("member %s has ID %x after restart, was %x", m.Name, m.ID, ids[m.Name])
			}
		}
		if len(ml.Members) != len(ids) {
			t.Errorf("%d members after restart, want %d", len(ml.Members), len(ids))
		}
		t.Logf("Restart(etcd-1): ready again %s after relaunch, same member ID, endpoint %s -> %s", time.Since(t0).Round(100*time.Millisecond), old, cl.Endpoint("etcd-1"))

		// A wiped disk: etcd-2 boots from a blank copy of its image. etcd-firstboot finds
		// the cluster through its peers and replaces the stale member (remove, add as a
		// learner, promote): a new member ID, three voters, and the data replicated back.
		t0 = time.Now()
		if err := cl.RestartWith(ctx, "etcd-2", vmcluster.RestartOptions{WipeDisk: true}); err != nil {
			t.Fatal(err)
		}
		var newID uint64
		waitFor("etcd-2 replaced and voting after a wiped disk", 10*time.Minute, func() bool {
			// The forwarded ports change with every relaunch: a client on today's.
			now, err := clientv3.New(clientv3.Config{Endpoints: []string{cl.Endpoint("etcd-1"), cl.Endpoint("etcd-3")}, TLS: tlsCfg, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
			if err != nil {
				return false
			}
			defer now.Close()
			mctx, mcancel := context.WithTimeout(ctx, 10*time.Second)
			defer mcancel()
			ml, err := now.MemberList(mctx)
			if err != nil || len(ml.Members) != 3 {
				return false
			}
			for _, m := range ml.Members {
				if m.IsLearner || m.Name == "" {
					return false
				}
				if m.Name == "etcd-2" {
					newID = m.ID
				}
			}
			return newID != 0 && newID != ids["etcd-2"] && ready("etcd-2")
		})
		res, err := cl.Exec(ctx, "etcd-2", "/bin/sh", "-c", "/opt/etcdbake/bin/etcd-firstboot status; /usr/local/bin/etcdctl --command-timeout=30s get --print-value-only --consistency=s /etcdbake-test/while-cut")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(res.Stdout, "bootstrap:  replace") || !strings.HasSuffix(strings.TrimSpace(res.Stdout), "yes") {
			t.Errorf("etcd-2 after the wiped disk: status and data:\n%s%s", res.Stdout, res.Stderr)
		}
		t.Logf("RestartWith(etcd-2, WipeDisk): member %x replaced by %x, voting and ready %s after relaunch; etcd-firstboot says:\n%s",
			ids["etcd-2"], newID, time.Since(t0).Round(100*time.Millisecond), res.Stdout)
		ids["etcd-2"] = newID

		// A wrong hardware clock: etcd-2 boots with its RTC an hour ahead. The kernel logs
		// the RTC time it starts from (the RTC itself is corrected soon after, by
		// chrony's rtcsync); chrony steps the clock from the hub's NTP and the node rejoins.
		t0 = time.Now()
		if err := cl.RestartWith(ctx, "etcd-2", vmcluster.RestartOptions{ClockOffset: time.Hour}); err != nil {
			t.Fatal(err)
		}
		res, err = cl.Exec(ctx, "etcd-2", "dmesg")
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
	})
}

// expiredClientCert issues, with the cluster's real CA key, a client certificate that
// expired an hour ago.
func expiredClientCert(t *testing.T, pkiDir string) tls.Certificate {
	t.Helper()
	caCrt, caKey := pki.CAPath(pkiDir, "ca")
	caPair, err := tls.LoadX509KeyPair(caCrt, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caPair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "admin", Organization: caCert.Subject.Organization},
		NotBefore:    time.Now().Add(-48 * time.Hour),
		NotAfter:     time.Now().Add(-time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caPair.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// imageContains reports which needles occur anywhere in a disk image (qcow2 images are
// converted to raw first), reading it as a stream with an overlap between chunks.
func imageContains(t *testing.T, img string, needles [][]byte) []bool {
	t.Helper()
	raw := img
	if strings.HasSuffix(img, ".qcow2") {
		raw = filepath.Join(t.TempDir(), "disk.raw")
		if out, err := exec.Command("qemu-img", "convert", "-O", "raw", img, raw).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img convert: %v\n%s", err, out)
		}
		defer os.Remove(raw)
	}
	f, err := os.Open(raw)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	found := make([]bool, len(needles))
	maxLen := 0
	for _, n := range needles {
		maxLen = max(maxLen, len(n))
	}
	buf := make([]byte, 8<<20)
	carry := 0
	for {
		n, err := io.ReadFull(f, buf[carry:])
		chunk := buf[:carry+n]
		for i, nd := range needles {
			if !found[i] && bytes.Contains(chunk, nd) {
				found[i] = true
			}
		}
		if err != nil {
			break
		}
		carry = min(maxLen, len(chunk))
		copy(buf, chunk[len(chunk)-carry:])
	}
	return found
}

// pemBody is the first 64 base64 characters of a PEM block: what any copy of the key
// on a disk would contain.
func pemBody(b []byte) []byte {
	var body []byte
	for _, l := range bytes.Split(b, []byte("\n")) {
		if len(l) == 0 || bytes.HasPrefix(l, []byte("-----")) {
			continue
		}
		body = append(body, l...)
	}
	return body[:min(64, len(body))]
}

func roundAll(m map[string]time.Duration) map[string]string {
	out := map[string]string{}
	for k, v := range m {
		out[k] = v.Round(100 * time.Millisecond).String()
	}
	return out
}
