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
	// overlay is the node's disk (for espListing when it does not come back).
	overlay string
}

// espListing is what the node's ESP holds, read on this machine from its disk: the files
// as fsck.vfat lists them and what it finds wrong.
func espListing(overlay string) string {
	dir, err := os.MkdirTemp("", "esp-listing-")
	if err != nil {
		return err.Error()
	}
	defer os.RemoveAll(dir)
	raw := filepath.Join(dir, "disk.raw")
	if out, err := exec.Command("qemu-img", "convert", "-U", "-O", "raw", overlay, raw).CombinedOutput(); err != nil {
		return fmt.Sprintf("qemu-img convert: %v %s", err, out)
	}
	esp := filepath.Join(dir, "esp.img")
	if out, err := exec.Command("dd", "if="+raw, "of="+esp, "bs=1M", "skip=1", "count=256", "status=none").CombinedOutput(); err != nil {
		return fmt.Sprintf("dd: %v %s", err, out)
	}
	out, _ := exec.Command("fsck.vfat", "-n", "-l", "-v", esp).CombinedOutput()
	return string(out)
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
			n.t.Fatalf("node never came back on slot %s (boot %d): last %q %v; console:\n%s\nits ESP:\n%s", slot, boots, res.Stdout, err, tail(b, 80), espListing(n.overlay))
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
//  2. an entry for slot A with one try (generation 1) whose etcd cannot start (masked):
//     the gate times out, the node reboots by itself, and boot counting brings back the
//     fresh entry, with the data; `etcd-firstboot status` and the node's record in etcd
//     name the fallback and why;
//  3. a second release (another config) is staged into slot B by `etcd-firstboot stage`
//     over mutual TLS, and the VM is killed in the middle of the download (a power
//     loss): it boots slot A, nothing boots slot B; staged again and armed (`arm 2`),
//     the node runs the new release on slot B with node-b at /node, the verify gate
//     passed, the entry was blessed (its counter dropped), etcd answers through the same
//     forward, and the node's record says so.
func checkABSlots(ctx context.Context, t *testing.T, cl *vmcluster.Cluster, bc builtCluster, dir, ep string, hc *http.Client, tlsCfg *tls.Config, release2 string) {
	const node = "etcd-1"
	var m imagebuild.Manifest
	mb, err := os.ReadFile(filepath.Join(filepath.Dir(bc.images[node]), node+".manifest.json"))
	if err != nil || json.Unmarshal(mb, &m) != nil {
		t.Fatalf("manifest: %v", err)
	}
	n := &abNode{t: t, cl: cl, node: node, ep: ep, hc: hc, tlsCfg: tlsCfg, guid: map[string]string{}, overlay: filepath.Join(dir, "run", node+".overlay.qcow2")}
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

	// 2. A bad release: slot A again (generation 1), with etcd masked. Nothing blesses it.
	step := time.Now()
	entryBad := spec.EntryName(1, "a")
	n.sh(ctx, `set -e
sed -e 's/^options .*/& systemd.mask=etcd.service/' /efi/loader/entries/`+m.Entry+` > /efi/loader/entries/`+entryBad+`+1.tmp
mv /efi/loader/entries/`+entryBad+`+1.tmp /efi/loader/entries/`+entryBad+`+1.conf
sync`)
	n.reboot(ctx)
	f = n.waitBoot(ctx, "a", 3, false)
	t.Logf("T-AB: bad entry tried, gate timed out, fell back to the fresh entry, etcd ready in %s", time.Since(step).Round(time.Second))
	if want := m.Entry + " " + entryBad + "+0-1.conf"; f["entries"] != want {
		t.Errorf("after the fallback: entries %q, want %q (the bad entry's try used, not blessed)", f["entries"], want)
	}
	if f["node"] != f["nodea"] || f["release"] != m.Release {
		t.Errorf("after the fallback: /node on %q (node-a %q), release %q", f["node"], f["nodea"], f["release"])
	}
	// The failed boot's gate: it ran on the previous boot and failed.
	prev := n.sh(ctx, "journalctl -b -1 --no-pager -o cat -u "+imagebuild.VerifyUnit+" | tail -n 5")
	if !regexp.MustCompile(`(?i)fail`).MatchString(prev) {
		t.Errorf("the bad boot's verify gate did not fail in its journal:\n%s", prev)
	}
	st := n.sh(ctx, "/opt/etcdbake/bin/etcd-firstboot status")
	t.Logf("etcd-firstboot status after the fallback:\n%s", st)
	for _, want := range []string{
		"boot:       slot a, release " + m.Release + ", entry " + m.Entry + ", state clean",
		"fallback:   slot a (generation 1, " + entryBad + "+0-1.conf) failed its trial; this boot fell back to slot a",
		"verify-boot failed at ",
		"not verified after ",
		// etcd was masked on that boot: the health gate never passed.
		"the health gate has not written its ready flag",
	} {
		if !strings.Contains(st, want) {
			t.Errorf("etcd-firstboot status after the fallback lacks %q", want)
		}
	}
	if r := n.record(ctx); r.Slot != "a" || !strings.Contains(r.Fallback, "slot a (generation 1") || !strings.Contains(r.Fallback, "not verified after") {
		t.Errorf("after the fallback: the node's record in etcd: %+v", r)
	}

	// 3. The second release into slot B, with a power loss in the middle of the download.
	step = time.Now()
	n.sh(ctx, "systemd-run --unit=etcdbake-test-stage /opt/etcdbake/bin/etcd-firstboot stage "+url(release2))
	for {
		j := n.sh(ctx, "journalctl -b --no-pager -o cat -u etcdbake-test-stage")
		if regexp.MustCompile(`stage: root: [1-9][0-9]* of`).MatchString(j) { // 64 MiB or more written
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
	f = n.waitBoot(ctx, "a", 4, false)
	t.Logf("T-AB: power loss while staging; back on slot A in %s", time.Since(step).Round(time.Second))
	if want := m.Entry + " " + entryBad + "+0-1.conf"; f["entries"] != want || f["staged"] != "" {
		t.Errorf("after the power loss: entries %q, staged %q: want %s only (nothing for slot B) and nothing staged", f["entries"], f["staged"], want)
	}
	step = time.Now()
	out := n.sh(ctx, "/opt/etcdbake/bin/etcd-firstboot stage "+url(release2)+" 2>&1 && /opt/etcdbake/bin/etcd-firstboot arm 2")
	t.Logf("T-AB: release %s staged into slot B and armed in %s:\n%s", release2, time.Since(step).Round(time.Second), out)
	entryB := spec.EntryName(2, "b")
	if !strings.Contains(out, "release "+release2+" staged in slot b") || !strings.Contains(out, "armed "+entryB+"+1.conf") {
		t.Errorf("stage and arm said:\n%s", out)
	}
	step = time.Now()
	n.reboot(ctx)
	f = n.waitBoot(ctx, "b", 5, true)
	t.Logf("T-AB: reboot into slot B with release %s, verified and blessed, etcd ready in %s", release2, time.Since(step).Round(time.Second))
	if f["release"] != release2 || f["node"] != f["nodeb"] || f["marker"] != release2Marker {
		t.Errorf("release %s on slot B: %v (want node-b %q at /node and the release's marker file)", release2, f, f["nodeb"])
	}
	if f["verify"] != "active/success" || f["bless"] != "active" {
		t.Errorf("slot B: verify gate %q, systemd-bless-boot %q: want both run and passed", f["verify"], f["bless"])
	}
	if want := m.Entry + " " + entryBad + "+0-1.conf " + entryB + ".conf"; f["entries"] != want {
		t.Errorf("slot B: entries %q, want %q (B's counter dropped: blessed)", f["entries"], want)
	}
	if r := n.record(ctx); r.Slot != "b" || r.Release != release2 || !strings.HasPrefix(r.Verify, "good: ") {
		t.Errorf("release %s on slot B: the node's record in etcd: %+v", release2, r)
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
