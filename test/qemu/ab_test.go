package qemu

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
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
	"github.com/etcdbake/etcdbake/spec"
	"github.com/etcdbake/etcdbake/vmcluster"
)

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
`)
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
// rollout.timeout):
//
//  1. the fresh image boots slot A, /node is node-a, and no verify gate ran (no counter);
//  2. an entry for slot A with one try (generation 1) whose etcd cannot start (masked):
//     the gate times out, the node reboots by itself, and boot counting brings back the
//     fresh entry, with the data; `etcd-firstboot status` and the node's record in etcd
//     name the fallback and why.
//
// Staging a release over the network into slot B, a power loss while staging, and the
// boot into slot B with verification are U1 and U3 (TestUpDown/Rollout), on 3 nodes.
func checkABSlots(ctx context.Context, t *testing.T, cl *vmcluster.Cluster, bc builtCluster, dir, ep string, hc *http.Client, tlsCfg *tls.Config) {
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
}
