package qemu

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
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

// checkABSlots is T-AB, run on TestBootOneNodeImage's booted node (its spec has a short
// rollout.timeout). It drives systemd-boot's boot counting by hand, as a rollout's staging
// and arming will:
//
//  1. the fresh image boots slot A, /node is node-a, and no verify gate ran (no counter);
//  2. slot A is copied into slot B, and an entry for B with one try (generation 1) is
//     written: after a reboot the node runs slot B, the verify gate passed, the entry was
//     blessed (its counter dropped), etcd answers again through the same forward;
//  3. an entry for slot A with one try (generation 2) whose etcd cannot start (masked):
//     the gate times out, the node reboots by itself, and boot counting brings back
//     slot B with its data; `etcd-firstboot status` names the fallback.
func checkABSlots(ctx context.Context, t *testing.T, cl *vmcluster.Cluster, imagesDir, node, ep string, hc *http.Client, tlsCfg *tls.Config) {
	var m imagebuild.Manifest
	mb, err := os.ReadFile(filepath.Join(imagesDir, node+".manifest.json"))
	if err != nil || json.Unmarshal(mb, &m) != nil {
		t.Fatalf("manifest: %v", err)
	}
	guid := map[string]string{}
	for _, p := range m.Layout {
		guid[p.Label] = strings.ToLower(p.GUID)
	}
	sh := func(ctx context.Context, script string) string {
		t.Helper()
		res, err := cl.Exec(ctx, node, "/bin/sh", "-c", script)
		if err != nil {
			t.Fatalf("in the guest: %s: %v", script, err)
		}
		if res.ExitCode != 0 {
			t.Fatalf("in the guest: %s: exit %d\n%s%s", script, res.ExitCode, res.Stdout, res.Stderr)
		}
		return strings.TrimSpace(res.Stdout)
	}
	// facts is what the checks read on a booted node.
	facts := func(ctx context.Context) map[string]string {
		t.Helper()
		out := sh(ctx, `echo "slot=$(sed -n 's/.*etcdbake.slot=\([ab]\).*/\1/p' /proc/cmdline)"
echo "node=$(findmnt -no SOURCE /node | xargs -r readlink -f)"
echo "nodea=$(readlink -f /dev/disk/by-partuuid/`+guid["node-a"]+`)"
echo "nodeb=$(readlink -f /dev/disk/by-partuuid/`+guid["node-b"]+`)"
echo "entries=$(ls /efi/loader/entries | tr '\n' ' ')"
echo "verify=$(systemctl show -P ActiveState `+imagebuild.VerifyUnit+`)/$(systemctl show -P Result `+imagebuild.VerifyUnit+`)"
echo "bless=$(systemctl show -P ActiveState systemd-bless-boot.service)"
echo "boots=$(journalctl --list-boots --no-pager | grep -cE '^ *-?[0-9]+ ')"`)
		f := map[string]string{}
		for _, l := range strings.Split(out, "\n") {
			if k, v, ok := strings.Cut(l, "="); ok {
				f[k] = strings.TrimSpace(v)
			}
		}
		t.Logf("node facts: %v", f)
		return f
	}
	// waitBoot waits for the node to run slot on the given boot, with etcd answering
	// /readyz through the forward again and, on a trial boot (blessed), the boot blessed.
	waitBoot := func(slot string, boots int, blessed bool) map[string]string {
		t.Helper()
		wctx, cancel := context.WithTimeout(ctx, 8*time.Minute)
		defer cancel()
		for {
			// Each attempt is bounded: a command caught by the reboot never answers.
			actx, acancel := context.WithTimeout(wctx, 30*time.Second)
			res, err := cl.Exec(actx, node, "/bin/sh", "-c", "journalctl --list-boots --no-pager | grep -cE '^ *-?[0-9]+ '; grep -o 'etcdbake.slot=[ab]' /proc/cmdline; test -e /run/etcdbake/ready && echo ready; systemctl is-active --quiet systemd-bless-boot.service && echo blessed")
			acancel()
			want := fmt.Sprintf("%d\n%s=%s\nready\n", boots, imagebuild.CmdlineSlot, slot)
			if blessed {
				want += "blessed\n"
			}
			if err == nil && res.Stdout == want {
				if resp, err := hc.Get(ep + "/readyz"); err == nil {
					resp.Body.Close()
					if resp.StatusCode == http.StatusOK {
						return facts(wctx)
					}
				}
			}
			select {
			case <-wctx.Done():
				b, _ := os.ReadFile(cl.Console(node))
				t.Fatalf("node never came back on slot %s (boot %d): last %q %v; console:\n%s", slot, boots, res.Stdout, err, tail(b, 80))
			case <-time.After(2 * time.Second):
			}
		}
	}

	// reboot asks the guest to reboot; its agent goes away with the answer, so the call is
	// bounded and its result ignored (waitBoot checks what came back).
	reboot := func() {
		rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		_, _ = cl.Exec(rctx, node, "systemctl", "reboot")
	}

	// 1. The fresh image.
	f := facts(ctx)
	if f["slot"] != "a" || f["node"] == "" || f["node"] != f["nodea"] || f["nodea"] == f["nodeb"] {
		t.Errorf("fresh image: slot %q, /node on %q (node-a is %q): want slot a with node-a at /node", f["slot"], f["node"], f["nodea"])
	}
	if f["entries"] != m.Entry || f["verify"] != "inactive/success" || f["boots"] != "1" {
		t.Errorf("fresh image: entries %q, verify gate %q, boots %q: want only %s, the gate not run (no counter), 1 boot", f["entries"], f["verify"], f["boots"], m.Entry)
	}

	// 2. Slot B: a copy of slot A, its own command line, one try.
	step := time.Now()
	entryB := imagebuild.EntryName(1, "b")
	sh(ctx, `set -e
blocks=$(dumpe2fs -h /dev/disk/by-partlabel/root-a 2>/dev/null | sed -n 's/^Block count: *//p')
dd if=/dev/disk/by-partlabel/root-a of=/dev/disk/by-partlabel/root-b bs=4M count=$(( blocks * 4096 / 4194304 + 1 )) conv=fsync status=none
dd if=/dev/disk/by-partlabel/node-a of=/dev/disk/by-partlabel/node-b bs=4M conv=fsync status=none
mkdir -p /efi/etcdbake/b
cp /efi/etcdbake/a/linux /efi/etcdbake/a/initrd /efi/etcdbake/b/
sed -e 's/`+guid["root-a"]+`/`+guid["root-b"]+`/; s/`+guid["node-a"]+`/`+guid["node-b"]+`/; s/etcdbake.slot=a/etcdbake.slot=b/; s/slot a,/slot b,/' /efi/loader/entries/`+m.Entry+` > /efi/loader/entries/`+entryB+`+1.tmp
mv /efi/loader/entries/`+entryB+`+1.tmp /efi/loader/entries/`+entryB+`+1.conf
sync`)
	t.Logf("T-AB: slot B staged by hand (dd of root-a and node-a, kernel, entry) in %s", time.Since(step).Round(time.Second))
	step = time.Now()
	reboot()
	f = waitBoot("b", 2, true)
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

	if r := nodeRecord(ctx, t, ep, tlsCfg, node); r.Slot != "b" || r.Release != m.Release || !strings.HasPrefix(r.Verify, "good: ") || r.Fallback != "" {
		t.Errorf("slot B: the node's record in etcd: %+v, want slot b of release %s, verified", r, m.Release)
	}

	// 3. A bad release: slot A again (generation 2), with etcd masked. Nothing blesses it.
	step = time.Now()
	entryBad := imagebuild.EntryName(2, "a")
	sh(ctx, `set -e
sed -e 's/^options .*/& systemd.mask=etcd.service/' /efi/loader/entries/`+m.Entry+` > /efi/loader/entries/`+entryBad+`+1.tmp
mv /efi/loader/entries/`+entryBad+`+1.tmp /efi/loader/entries/`+entryBad+`+1.conf
sync`)
	reboot()
	f = waitBoot("b", 4, false)
	t.Logf("T-AB: bad entry tried, gate timed out, fell back to slot B, etcd ready in %s", time.Since(step).Round(time.Second))
	if want := m.Entry + " " + entryB + ".conf " + entryBad + "+0-1.conf"; f["entries"] != want {
		t.Errorf("after the fallback: entries %q, want %q (the bad entry's try used, not blessed)", f["entries"], want)
	}
	if f["node"] != f["nodeb"] {
		t.Errorf("after the fallback: /node on %q, want node-b %q", f["node"], f["nodeb"])
	}
	// The failed boot's gate: it ran on the previous boot and failed.
	prev := sh(ctx, "journalctl -b -1 --no-pager -o cat -u "+imagebuild.VerifyUnit+" | tail -n 5; grep -o 'etcdbake.slot=[ab]' /proc/cmdline")
	if !regexp.MustCompile(`(?i)fail`).MatchString(prev) {
		t.Errorf("the bad boot's verify gate did not fail in its journal:\n%s", prev)
	}
	st := sh(ctx, "/opt/etcdbake/bin/etcd-firstboot status")
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
	// The workstation sees the same through the node's record in etcd.
	if r := nodeRecord(ctx, t, ep, tlsCfg, node); r.Slot != "b" || !strings.Contains(r.Fallback, "slot a (generation 2") || !strings.Contains(r.Fallback, "not verified after") {
		t.Errorf("after the fallback: the node's record in etcd: %+v", r)
	}
}

// nodeRecord reads the record the node published in etcd (what `etcdbake status` shows).
func nodeRecord(ctx context.Context, t *testing.T, ep string, tlsCfg *tls.Config, node string) spec.NodeRecord {
	t.Helper()
	// A new client: one kept across the reboots would still be in gRPC's reconnect
	// backoff (up to 2 min) after the minutes etcd was down on the bad boot.
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, TLS: tlsCfg, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	gctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := cli.Get(gctx, spec.NodeRecordKey(node))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("the record of %s: %v", node, err)
	}
	var r spec.NodeRecord
	if err := json.Unmarshal(resp.Kvs[0].Value, &r); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s's record in etcd: %+v", node, r)
	return r
}
