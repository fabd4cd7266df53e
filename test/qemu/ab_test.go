package qemu

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/etcdbake/etcdbake/imagebuild"
	"github.com/etcdbake/etcdbake/pki"
	"github.com/etcdbake/etcdbake/pxe"
	"github.com/etcdbake/etcdbake/spec"
	"github.com/etcdbake/etcdbake/vmcluster"
)

// releaseGuestAddr is where the VMs reach the release server (a guest forward).
const releaseGuestAddr = "10.0.2.100:8443"

// serveReleases serves bc's releases over mutual TLS (pxe.ReleaseHandler, the server
// certificate for releaseGuestAddr from the cluster CA) on a unix socket in dir, and
// returns the guest forward that lets the VMs reach it: QEMU runs `etcdbake qemu-relay`
// per connection, as `etcdbake up` does.
func serveReleases(ctx context.Context, t *testing.T, bc builtCluster, dir string) vmcluster.GuestForward {
	t.Helper()
	relay := filepath.Join(dir, "etcdbake")
	if out, err := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", relay, "../../cmd/etcdbake").CombinedOutput(); err != nil {
		t.Fatalf("building etcdbake (the relay): %v\n%s", err, out)
	}
	host, _, _ := net.SplitHostPort(releaseGuestAddr)
	crt, key, err := pki.EnsureServeCert(bc.c, bc.pkiDir, []string{host}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := pki.CAPath(bc.pkiDir, pki.CAName)
	tlsCfg, err := pxe.ReleaseTLSConfig(ca, crt, key)
	if err != nil {
		t.Fatal(err)
	}
	var nodes []string
	for _, n := range bc.c.Nodes {
		nodes = append(nodes, n.Name)
	}
	h, err := pxe.NewReleaseHandler(pxe.ReleaseOptions{Cluster: bc.c.Name, Dir: bc.releases, Nodes: nodes, Log: func(a pxe.Access) { t.Logf("release server: %s", a) }})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "release.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, TLSConfig: tlsCfg}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
	return vmcluster.GuestForward{Guest: releaseGuestAddr, Relay: []string{relay, "qemu-relay", sock}}
}

// abNode drives one node of a booted cluster through its A/B slots.
type abNode struct {
	t      *testing.T
	cl     *vmcluster.Cluster
	node   string
	ep     string
	hc     *http.Client
	tlsCfg *tls.Config
	guid   map[string]string // partition label -> PARTUUID
}

// sh runs a script in the guest and fails the test unless it exits 0.
func (n *abNode) sh(ctx context.Context, script string) string {
	n.t.Helper()
	res, err := n.cl.Exec(ctx, n.node, "/bin/sh", "-c", script)
	if err != nil {
		n.t.Fatalf("in the guest: %s: %v", script, err)
	}
	if res.ExitCode != 0 {
		n.t.Fatalf("in the guest: %s: exit %d\n%s%s", script, res.ExitCode, res.Stdout, res.Stderr)
	}
	return strings.TrimSpace(res.Stdout)
}

// facts is what the checks read on the booted node.
func (n *abNode) facts(ctx context.Context) map[string]string {
	n.t.Helper()
	out := n.sh(ctx, `echo "slot=$(sed -n 's/.*etcdbake.slot=\([ab]\).*/\1/p' /proc/cmdline)"
echo "release=$(sed -n 's/.*etcdbake.release=\([0-9a-f]*\).*/\1/p' /proc/cmdline)"
echo "node=$(findmnt -no SOURCE /node | xargs -r readlink -f)"
echo "nodea=$(readlink -f /dev/disk/by-partuuid/`+n.guid["node-a"]+`)"
echo "nodeb=$(readlink -f /dev/disk/by-partuuid/`+n.guid["node-b"]+`)"
echo "entries=$(ls /efi/loader/entries | tr '\n' ' ')"
echo "verify=$(systemctl show -P ActiveState `+imagebuild.VerifyUnit+`)/$(systemctl show -P Result `+imagebuild.VerifyUnit+`)"
echo "bless=$(systemctl show -P ActiveState systemd-bless-boot.service)"
echo "boots=$(journalctl --list-boots --no-pager | grep -cE '^ *-?[0-9]+ ')"
echo "staged=$(test -e /var/lib/etcdbake/staged.json && echo yes)"
echo "marker=$(cat /etc/etcdbake-test-release 2>/dev/null)"`)
	f := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			f[k] = strings.TrimSpace(v)
		}
	}
	n.t.Logf("node facts: %v", f)
	return f
}

// reboot asks the guest to reboot; its agent goes away with the answer, so the call is
// bounded and its result ignored (waitBoot checks what came back).
func (n *abNode) reboot(ctx context.Context) {
	rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	_, _ = n.cl.Exec(rctx, n.node, "systemctl", "reboot")
}

// waitBoot waits for the node to run slot on the given boot (counted in its journal),
// with etcd answering /readyz through the forward again and, on a trial boot (blessed),
// the boot blessed.
func (n *abNode) waitBoot(ctx context.Context, slot string, boots int, blessed bool) map[string]string {
	n.t.Helper()
	wctx, cancel := context.WithTimeout(ctx, 8*time.Minute)
	defer cancel()
	for {
		// Each attempt is bounded: a command caught by the reboot never answers.
		actx, acancel := context.WithTimeout(wctx, 30*time.Second)
		res, err := n.cl.Exec(actx, n.node, "/bin/sh", "-c", "journalctl --list-boots --no-pager | grep -cE '^ *-?[0-9]+ '; grep -o 'etcdbake.slot=[ab]' /proc/cmdline; test -e /run/etcdbake/ready && echo ready; systemctl is-active --quiet systemd-bless-boot.service && echo blessed")
		acancel()
		want := fmt.Sprintf("%d\n%s=%s\nready\n", boots, imagebuild.CmdlineSlot, slot)
		if blessed {
			want += "blessed\n"
		}
		if err == nil && res.Stdout == want {
			if resp, err := n.hc.Get(n.ep + "/readyz"); err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					return n.facts(wctx)
				}
			}
		}
		select {
		case <-wctx.Done():
			b, _ := os.ReadFile(n.cl.Console(n.node))
			n.t.Fatalf("node never came back on slot %s (boot %d): last %q %v; console:\n%s", slot, boots, res.Stdout, err, tail(b, 80))
		case <-time.After(2 * time.Second):
		}
	}
}

// record reads the record the node published in etcd (what `etcdbake status` shows).
func (n *abNode) record(ctx context.Context) spec.NodeRecord {
	n.t.Helper()
	// A new client: one kept across the reboots would still be in gRPC's reconnect
	// backoff (up to 2 min) after the minutes etcd was down on the bad boot.
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{n.ep}, TLS: n.tlsCfg, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		n.t.Fatal(err)
	}
	defer cli.Close()
	gctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := cli.Get(gctx, spec.NodeRecordKey(n.node))
	if err != nil || len(resp.Kvs) != 1 {
		n.t.Fatalf("the record of %s: %v", n.node, err)
	}
	var r spec.NodeRecord
	if err := json.Unmarshal(resp.Kvs[0].Value, &r); err != nil {
		n.t.Fatal(err)
	}
	n.t.Logf("%s's record in etcd: %+v", n.node, r)
	return r
}

// checkABSlots is T-AB, on TestBootOneNodeImage's booted node (its spec has a short
// rollout.timeout), with the release server reachable at releaseGuestAddr:
//
//  1. the fresh image boots slot A, /node is node-a, and no verify gate ran (no counter);
//  2. slot A is copied into slot B in the guest, with an entry for B with one try
//     (generation 1): after a reboot the node runs slot B, the verify gate passed, the
//     entry was blessed, etcd answers through the same forward, and the node's record
//     in etcd says so;
//  3. an entry for slot A with one try (generation 2) whose etcd cannot start (masked):
//     the gate times out, the node reboots by itself, and boot counting brings back
//     slot B with its data; `etcd-firstboot status` and the record name the fallback;
//  4. a second release (another config) is staged into slot A by `etcd-firstboot stage`
//     over mutual TLS, and the VM is killed in the middle of the download (a power
//     loss): it boots slot B, nothing boots slot A; staged again and armed (`arm 3`),
//     the node runs the new release on slot A, verified and blessed.
func checkABSlots(ctx context.Context, t *testing.T, cl *vmcluster.Cluster, bc builtCluster, dir, ep string, hc *http.Client, tlsCfg *tls.Config, release2 string) {
	const node = "etcd-1"
	var m imagebuild.Manifest
	mb, err := os.ReadFile(filepath.Join(filepath.Dir(bc.images[node]), node+".manifest.json"))
	if err != nil || json.Unmarshal(mb, &m) != nil {
		t.Fatalf("manifest: %v", err)
	}
	n := &abNode{t: t, cl: cl, node: node, ep: ep, hc: hc, tlsCfg: tlsCfg, guid: map[string]string{}}
	for _, p := range m.Layout {
		n.guid[p.Label] = strings.ToLower(p.GUID)
	}
	url := func(release string) string { return "https://" + releaseGuestAddr + "/v1/releases/" + release }

	// 1. The fresh image.
	f := n.facts(ctx)
	if f["slot"] != "a" || f["release"] != m.Release || f["node"] == "" || f["node"] != f["nodea"] || f["nodea"] == f["nodeb"] {
		t.Errorf("fresh image: slot %q release %q, /node on %q (node-a is %q): want slot a, release %s, node-a at /node", f["slot"], f["release"], f["node"], f["nodea"], m.Release)
	}
	if f["entries"] != m.Entry || f["verify"] != "inactive/success" || f["boots"] != "1" {
		t.Errorf("fresh image: entries %q, verify gate %q, boots %q: want only %s, the gate not run (no counter), 1 boot", f["entries"], f["verify"], f["boots"], m.Entry)
	}

	// 2. Slot B: a copy of slot A made in the guest (staging over the network is step
	// 4's; under emulation it takes minutes), its own entry, one try.
	step := time.Now()
	entryB := spec.EntryName(1, "b")
	n.sh(ctx, `set -e
blocks=$(dumpe2fs -h /dev/disk/by-partlabel/root-a 2>/dev/null | sed -n 's/^Block count: *//p')
dd if=/dev/disk/by-partlabel/root-a of=/dev/disk/by-partlabel/root-b bs=4M count=$(( blocks * 4096 / 4194304 + 1 )) conv=fsync status=none
dd if=/dev/disk/by-partlabel/node-a of=/dev/disk/by-partlabel/node-b bs=4M conv=fsync status=none
mkdir -p /efi/etcdbake/b
cp /efi/etcdbake/a/linux /efi/etcdbake/a/initrd /efi/etcdbake/b/
sed -e 's/`+n.guid["root-a"]+`/`+n.guid["root-b"]+`/; s/`+n.guid["node-a"]+`/`+n.guid["node-b"]+`/; s/etcdbake.slot=a/etcdbake.slot=b/; s/slot a,/slot b,/' /efi/loader/entries/`+m.Entry+` > /efi/loader/entries/`+entryB+`+1.tmp
mv /efi/loader/entries/`+entryB+`+1.tmp /efi/loader/entries/`+entryB+`+1.conf
sync`)
	t.Logf("T-AB: slot B copied from slot A in the guest (dd of root-a and node-a, kernel, entry) in %s", time.Since(step).Round(time.Second))
	step = time.Now()
	n.reboot(ctx)
	f = n.waitBoot(ctx, "b", 2, true)
	t.Logf("T-AB: reboot into slot B, verified and blessed, etcd ready in %s", time.Since(step).Round(time.Second))
	if f["node"] != f["nodeb"] {
		t.Errorf("slot B: /node on %q, want node-b %q", f["node"], f["nodeb"])
	}
	if f["verify"] != "active/success" || f["bless"] != "active" {
		t.Errorf("slot B: verify gate %q, systemd-bless-boot %q: want both run and passed", f["verify"], f["bless"])
	}
	if want := m.Entry + " " + entryB + ".conf"; f["entries"] != want {
		t.Errorf("slot B: entries %q, want %q (B's counter dropped: blessed)", f["entries"], want)
	}
	if r := n.record(ctx); r.Slot != "b" || r.Release != m.Release || !strings.HasPrefix(r.Verify, "good: ") || r.Fallback != "" {
		t.Errorf("slot B: the node's record in etcd: %+v, want slot b of release %s, verified", r, m.Release)
	}

	// 3. A bad release: slot A again (generation 2), with etcd masked. Nothing blesses it.
	step = time.Now()
	entryBad := spec.EntryName(2, "a")
	n.sh(ctx, `set -e
sed -e 's/^options .*/& systemd.mask=etcd.service/' /efi/loader/entries/`+m.Entry+` > /efi/loader/entries/`+entryBad+`+1.tmp
mv /efi/loader/entries/`+entryBad+`+1.tmp /efi/loader/entries/`+entryBad+`+1.conf
sync`)
	n.reboot(ctx)
	f = n.waitBoot(ctx, "b", 4, false)
	t.Logf("T-AB: bad entry tried, gate timed out, fell back to slot B, etcd ready in %s", time.Since(step).Round(time.Second))
	if want := m.Entry + " " + entryB + ".conf " + entryBad + "+0-1.conf"; f["entries"] != want {
		t.Errorf("after the fallback: entries %q, want %q (the bad entry's try used, not blessed)", f["entries"], want)
	}
	if f["node"] != f["nodeb"] {
		t.Errorf("after the fallback: /node on %q, want node-b %q", f["node"], f["nodeb"])
	}
	// The failed boot's gate: it ran on the previous boot and failed.
	prev := n.sh(ctx, "journalctl -b -1 --no-pager -o cat -u "+imagebuild.VerifyUnit+" | tail -n 5")
	if !regexp.MustCompile(`(?i)fail`).MatchString(prev) {
		t.Errorf("the bad boot's verify gate did not fail in its journal:\n%s", prev)
	}
	st := n.sh(ctx, "/opt/etcdbake/bin/etcd-firstboot status")
	t.Logf("etcd-firstboot status after the fallback:\n%s", st)
	for _, want := range []string{
		"boot:       slot b, release " + m.Release + ", entry " + entryB + ".conf, state clean",
		"fallback:   slot a (generation 2, " + entryBad + "+0-1.conf) failed its trial; this boot fell back to slot b",
		"verify-boot failed at ",
		"not verified after ",
		// etcd was masked on that boot: the health gate never passed.
		"the health gate has not written its ready flag",
	} {
		if !strings.Contains(st, want) {
			t.Errorf("etcd-firstboot status after the fallback lacks %q", want)
		}
	}
	if r := n.record(ctx); r.Slot != "b" || !strings.Contains(r.Fallback, "slot a (generation 2") || !strings.Contains(r.Fallback, "not verified after") {
		t.Errorf("after the fallback: the node's record in etcd: %+v", r)
	}

	// 4. The second release into slot A, with a power loss in the middle of the download.
	step = time.Now()
	n.sh(ctx, "systemd-run --unit=etcdbake-test-stage /opt/etcdbake/bin/etcd-firstboot stage "+url(release2))
	for {
		j := n.sh(ctx, "journalctl -b --no-pager -o cat -u etcdbake-test-stage")
		if regexp.MustCompile(`stage: root: [1-9][0-9]{2,} of`).MatchString(j) { // at least 100 MiB written
			t.Logf("T-AB: killing the VM while it stages:\n%s", j)
			break
		}
		if strings.Contains(j, "staged in slot") || strings.Contains(j, "Failed") {
			t.Fatalf("staging ended before the power loss could hit it:\n%s", j)
		}
		time.Sleep(time.Second)
	}
	if err := cl.Kill(node); err != nil {
		t.Fatal(err)
	}
	if err := cl.Restart(ctx, node); err != nil {
		t.Fatal(err)
	}
	f = n.waitBoot(ctx, "b", 5, false)
	t.Logf("T-AB: power loss while staging; back on slot B in %s", time.Since(step).Round(time.Second))
	if want := entryB + ".conf"; f["entries"] != want || f["staged"] != "" {
		t.Errorf("after the power loss: entries %q, staged %q: want only %s (slot A's entries removed before its partitions were written) and nothing staged", f["entries"], f["staged"], want)
	}
	step = time.Now()
	out := n.sh(ctx, "/opt/etcdbake/bin/etcd-firstboot stage "+url(release2)+" 2>&1 && /opt/etcdbake/bin/etcd-firstboot arm 3")
	t.Logf("T-AB: release %s staged into slot A and armed in %s:\n%s", release2, time.Since(step).Round(time.Second), out)
	entryA := spec.EntryName(3, "a")
	if !strings.Contains(out, "armed "+entryA+"+1.conf") {
		t.Errorf("stage and arm said:\n%s", out)
	}
	step = time.Now()
	n.reboot(ctx)
	f = n.waitBoot(ctx, "a", 6, true)
	t.Logf("T-AB: reboot into slot A with release %s, verified and blessed, etcd ready in %s", release2, time.Since(step).Round(time.Second))
	if f["release"] != release2 || f["node"] != f["nodea"] || f["marker"] != release2Marker || f["entries"] != entryB+".conf "+entryA+".conf" {
		t.Errorf("release %s on slot A: %v", release2, f)
	}
	if r := n.record(ctx); r.Slot != "a" || r.Release != release2 || !strings.HasPrefix(r.Verify, "good: ") {
		t.Errorf("release %s on slot A: the node's record in etcd: %+v", release2, r)
	}
}

// release2Marker is what the second release's Butane fragment writes to
// /etc/etcdbake-test-release.
const release2Marker = "second release"

// release2Fragment is the second release's extra Butane fragment.
const release2Fragment = `variant: fcos
version: 1.5.0
storage:
  files:
    - path: /etc/etcdbake-test-release
      mode: 0644
      contents:
        inline: "` + release2Marker + `"
`
