package qemu

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/etcdbake/etcdbake/bake"
	"github.com/etcdbake/etcdbake/vmcluster"
)

// oneNodeSpec is one node on vmcluster's private segment, with etcd on ports other than
// its defaults, no time server (the gate then passes with a warning after 5 s) and a
// Butane fragment that reports the node's state on the serial console.
const oneNodeSpec = `apiVersion: etcdbake.dev/v1alpha1
kind: Cluster
name: boot
nodes:
  - name: etcd-1
    address: 10.88.0.11/24
    mac: "52:54:00:88:00:11"
etcd:
  version: v3.6.16
  clientPort: 12379
  peerPort: 12380
  heartbeatInterval: 250ms
  electionTimeout: 2500ms
flannel:
  version: v0.28.7
  network: 10.244.0.0/16
time:
  servers: []
  syncTimeout: 5s
rollout:
  timeout: 60s
binaries:
  sources: [go]
butane: report.bu
`

const reportBu = `variant: fcos
version: 1.5.0
systemd:
  units:
    - name: etcdbake-test-report.service
      enabled: true
      contents: |
        [Unit]
        Description=report the node's state on the console (etcdbake test)
        After=etcd-ready.service flanneld.service ` + afterGetty + `
        Requires=etcd-ready.service
        [Service]
        Type=oneshot
        ExecStartPre=` + waitGetty + `
        StandardOutput=tty
        TTYPath=/dev/ttyS0
        ExecStart=/bin/sh -c 'echo "REPORT root=$(findmnt -no OPTIONS /) var=$(findmnt -no SOURCE /var)"; /opt/etcdbake/bin/etcd-firstboot status; echo REPORT-END'
        [Install]
        WantedBy=multi-user.target
`

// TestBootOneNodeImage builds a 1-node cluster image from the real default base and
// boots it with vmcluster (QEMU, TCG, OVMF), as `etcdbake up` does: etcd-firstboot's gates
// pass, etcd answers /readyz over mutual TLS through the forwarded client port (the
// spec's 12379, not etcd's default), flanneld holds a lease, and the root is read-only.
// Then T-AB (checkABSlots) tries a bad entry, which falls back by itself.
func TestBootOneNodeImage(t *testing.T) {
	requireQEMU(t)
	// With TestPXEInstall, after the 3-node tests: neither measures time against a bound
	// (T-AB's slow boot fails its gate anyway), and one VM here shares the machine well.
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	dir := t.TempDir()
	keepOnFailure(t, filepath.Join(dir, "run", "*.log"))
	os.WriteFile(filepath.Join(dir, "report.bu"), []byte(reportBu), 0o644)
	bc := buildClusterImages(ctx, t, dir, []byte(oneNodeSpec), true)
	c, pkiDir := bc.c, bc.pkiDir

	step := time.Now()
	o := bake.QEMUCluster(c, bc.images, filepath.Join(dir, "run"))
	o.MemoryMiB = 1024
	cl, err := vmcluster.StartCluster(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Stop()
	vm := cl.VM("etcd-1")
	ep := cl.Endpoint("etcd-1")
	// The endpoint is the forward to the spec's client port.
	if port, err := vm.HostPort(ctx, 12379); err != nil || ep != fmt.Sprintf("https://127.0.0.1:%d", port) {
		t.Fatalf("endpoint %s is not the forward to guest port 12379 (%d, %v)", ep, port, err)
	}
	tlsCfg := adminTLS(t, pkiDir)
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsCfg}}
	var readyAt time.Duration
	for readyAt == 0 {
		resp, err := hc.Get(ep + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				readyAt = time.Since(step)
				break
			}
		}
		select {
		case <-ctx.Done():
			b, _ := os.ReadFile(vm.Console)
			t.Fatalf("etcd never answered /readyz: %v; console:\n%s", err, tail(b, 60))
		case <-time.After(time.Second):
		}
	}
	t.Logf("QEMU start to etcd /readyz over mTLS through %s: %s", ep, readyAt.Round(100*time.Millisecond))

	// etcd's peer listener is on the spec's peer port too: TLS answers through its forward.
	if port, err := vm.HostPort(ctx, 12380); err != nil || cl.PeerEndpoint("etcd-1") != fmt.Sprintf("https://127.0.0.1:%d", port) {
		t.Errorf("peer endpoint %s is not the forward to guest port 12380 (%d, %v)", cl.PeerEndpoint("etcd-1"), port, err)
	}
	peer, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", strings.TrimPrefix(cl.PeerEndpoint("etcd-1"), "https://"), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Errorf("no TLS on the forwarded peer port 12380: %v", err)
	} else {
		if len(peer.ConnectionState().PeerCertificates) == 0 {
			t.Errorf("the peer port presented no certificate")
		}
		peer.Close()
	}

	// Without a client certificate the same port refuses, in the TLS handshake (a timeout
	// or a reset would not show that the port checks client certificates).
	bare := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: tlsCfg.RootCAs}}}
	if resp, err := bare.Get(ep + "/readyz"); err == nil {
		resp.Body.Close()
		t.Errorf("etcd answered without a client certificate: %s", resp.Status)
	} else if !strings.Contains(err.Error(), "tls: certificate required") && !strings.Contains(err.Error(), "tls: bad certificate") {
		t.Errorf("without a client certificate: %v, want a TLS alert (certificate required)", err)
	}

	report, err := vm.WaitConsole(ctx, regexp.MustCompile(`(?s)REPORT root=.*?REPORT-END`))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("console report:\n%s", report)
	if !regexp.MustCompile(`REPORT root=ro[,\s]`).MatchString(report) {
		t.Errorf("root is not mounted read-only: %s", report)
	}
	for _, want := range []string{"time gate:  pass", "bootstrap:  new", "health:     ready", "flannel:    created"} {
		if !strings.Contains(report, want) {
			t.Errorf("etcd-firstboot status lacks %q", want)
		}
	}

	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, TLS: tlsCfg, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	var leases int
	for i := 0; i < 60 && leases == 0; i++ {
		resp, err := cli.Get(ctx, c.Flannel.Prefix+"/subnets/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err == nil {
			leases = int(resp.Count)
		}
		if leases == 0 {
			time.Sleep(time.Second)
		}
	}
	if leases != 1 {
		b, _ := os.ReadFile(vm.Console)
		t.Fatalf("flannel leases: %d; console:\n%s", leases, tail(b, 40))
	}
	t.Logf("flanneld holds a lease %s after QEMU start", time.Since(step).Round(100*time.Millisecond))

	checkABSlots(ctx, t, cl, bc, dir, ep, hc, tlsCfg)
}
