package firstboot

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/etcdbake/etcdbake/spec"
)

// logWatch collects an agent's log lines and lets a test wait for one.
type logWatch struct {
	t     *testing.T
	mu    sync.Mutex
	lines []string
}

func (w *logWatch) logf(format string, args ...any) {
	line := fmt.Sprintf(format, args...)
	w.t.Log(line)
	w.mu.Lock()
	w.lines = append(w.lines, line)
	w.mu.Unlock()
}

// waitLine waits for a line, after the first `from` lines, containing every want and none
// of the unwanted ("!text"); it returns the number of lines seen so far.
func (w *logWatch) waitLine(from int, wants ...string) int {
	w.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		w.mu.Lock()
		lines := append([]string(nil), w.lines...)
		w.mu.Unlock()
		for i := from; i < len(lines); i++ {
			ok := true
			for _, want := range wants {
				if neg, isNeg := strings.CutPrefix(want, "!"); isNeg {
					ok = ok && !strings.Contains(lines[i], neg)
				} else {
					ok = ok && strings.Contains(lines[i], want)
				}
			}
			if ok {
				return i + 1
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	w.t.Fatalf("no log line with %q", wants)
	return 0
}

// TestVerifyBoot runs verify-boot on a boot of slot b (generation 1, on trial) against a
// real etcd member with the node's certificates: it waits while etcd is down, the health
// gate has not passed or flanneld has no subnet, and names what is missing when systemd
// stops it; it succeeds once all hold. Each result is in the status and in the state dir,
// and after the fallback to slot a, status shows the failure's reason.
func TestVerifyBoot(t *testing.T) {
	fc := newFBClusterN(t, "vb", 1, 51)
	a := fc.agents["m1"]
	logs := &logWatch{t: t}
	a.Logf = logs.logf
	subnet := filepath.Join(fc.dir, "run", "flannel", "subnet.env")
	a.FlannelSubnetFile = subnet
	a.BootPaths = fakeBoot{cmdline: cmdline("b"),
		vars:    map[string]string{"LoaderEntrySelected": "etcdbake-000001-b+1.conf", "LoaderBootCountPath": countPath("etcdbake-000001-b+0-1.conf")},
		entries: []string{"etcdbake-000000-a.conf", "etcdbake-000001-b+0-1.conf"}}.write(t)

	// 1. Nothing runs: systemd's SIGTERM at the bound (a cancelled context) gets an
	// error naming all three conditions.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.VerifyBoot(ctx) }()
	seen := logs.waitLine(0, "verify-boot: waiting", "ready flag", "/readyz", "flanneld has not written "+subnet)
	cancel()
	err := <-done
	for _, want := range []string{"boot of slot b (release " + testRelease + ", entry etcdbake-000001-b+0-1.conf) not verified after",
		"the health gate has not written its ready flag " + a.ReadyFlagPath(), "the local member is not ready (" + a.Cfg.LocalClientURL + "/readyz)",
		"flanneld has not written " + subnet} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("want an error containing %q, got %v", want, err)
		}
	}
	rec := readVerifyRecord(t, a)
	if rec.Result != VerifyFailed || rec.Slot != "b" || rec.Generation != 1 || rec.Release != testRelease || rec.Entry != "etcdbake-000001-b+0-1.conf" || len(rec.Waiting) != 3 || rec.Message != err.Error() {
		t.Fatalf("recorded %+v", rec)
	}
	if st := fc.status("m1"); st.Verify == nil || st.Verify.Message != err.Error() || st.Boot == nil || st.Boot.State != BootIndeterminate {
		t.Fatalf("status %+v %+v", st.Verify, st.Boot)
	}

	// 2. etcd starts, the health gate passes, then flanneld writes its subnet: verify-boot
	// waits for each in turn and succeeds only at the end.
	ctx, cancel = context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	go func() { done <- a.VerifyBoot(ctx) }()
	if err := fc.tc.Start("m1", "new"); err != nil {
		t.Fatal(err)
	}
	seen = logs.waitLine(seen, "verify-boot: waiting", "ready flag", "flanneld", "!/readyz")
	if err := a.RunReady(ctx); err != nil { // the health gate writes the ready flag
		t.Fatal(err)
	}
	seen = logs.waitLine(seen, "verify-boot: waiting", "flanneld has not written "+subnet, "!ready flag", "!/readyz")
	os.MkdirAll(filepath.Dir(subnet), 0o755)
	if err := os.WriteFile(subnet, []byte("FLANNEL_NETWORK=10.244.0.0/16\n"), 0o644); err != nil { // half written
		t.Fatal(err)
	}
	seen = logs.waitLine(seen, "verify-boot: waiting", "has no FLANNEL_SUBNET= line yet")
	select {
	case err := <-done:
		t.Fatalf("verify-boot returned %v before flanneld wrote its subnet", err)
	case <-time.After(5 * a.retryEvery()):
	}
	if err := os.WriteFile(subnet, []byte("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("verify-boot: %v", err)
	}
	rec = readVerifyRecord(t, a)
	if rec.Result != VerifyGood || rec.Slot != "b" || rec.Generation != 1 || len(rec.Waiting) != 0 || !strings.Contains(rec.Message, "verified after") {
		t.Fatalf("recorded %+v", rec)
	}
	if st := fc.status("m1"); st.Verify == nil || st.Verify.Result != VerifyGood {
		t.Fatalf("status %+v", st.Verify)
	}
	seen = logs.waitLine(seen, "verify-boot: boot of slot b", "verified after")
	// The node's record in etcd (for `etcdbake status`) carries the slot and the result.
	if r := nodeRecord(t, fc, "m1"); r.Slot != "b" || r.Release != "0123456789ab" || r.Entry != "etcdbake-000001-b+0-1.conf" || !strings.HasPrefix(r.Verify, "good: ") || r.Fallback != "" {
		t.Fatalf("record after verify-boot: %+v", r)
	}

	// 3. Only flanneld's subnet is missing (flanneld broken in the new release): the
	// error names only that.
	os.Remove(subnet)
	ctx3, cancel3 := context.WithCancel(context.Background())
	go func() { done <- a.VerifyBoot(ctx3) }()
	logs.waitLine(seen, "verify-boot: waiting", "flanneld has not written "+subnet, "!ready flag", "!/readyz")
	cancel3()
	err = <-done
	if err == nil || !strings.HasSuffix(err.Error(), ": flanneld has not written "+subnet) {
		t.Fatalf("want an error naming only flanneld's subnet, got %v", err)
	}

	// 4. The reboot falls back to slot a (the data partition keeps the state dir, /run is
	// new): status names the failed slot and the recorded reason.
	fc.tc.Stop("m1")
	os.RemoveAll(a.Cfg.RunDir)
	a.BootPaths = fakeBoot{cmdline: cmdline("a"), vars: map[string]string{"LoaderEntrySelected": "etcdbake-000000-a.conf"},
		entries: []string{"etcdbake-000000-a.conf", "etcdbake-000001-b+0-1.conf"}}.write(t)
	st := fc.status("m1")
	if st.Verify != nil || st.Boot == nil || st.Boot.State != BootClean || st.Boot.Fallback == nil || st.Boot.Fallback.Slot != "b" ||
		st.Boot.Fallback.Verify == nil || st.Boot.Fallback.Verify.Message != err.Error() {
		t.Fatalf("after the fallback: verify %+v boot %+v", st.Verify, st.Boot)
	}
	// 5. etcd back on slot a: the health gate republishes the record, with the fallback
	// and its reason.
	if err := fc.tc.Start("m1", "existing"); err != nil {
		t.Fatal(err)
	}
	ctx5, cancel5 := context.WithTimeout(context.Background(), time.Minute)
	defer cancel5()
	if err := a.RunReady(ctx5); err != nil {
		t.Fatal(err)
	}
	if r := nodeRecord(t, fc, "m1"); r.Slot != "a" || r.State != BootClean || r.Verify != "" || !strings.Contains(r.Fallback, "slot b (generation 1, etcdbake-000001-b+0-1.conf) failed its trial") || !strings.Contains(r.Fallback, err.Error()) {
		t.Fatalf("record after the fallback: %+v", r)
	}
}

// nodeRecord reads a node's published record from etcd.
func nodeRecord(t *testing.T, fc *fbCluster, node string) spec.NodeRecord {
	t.Helper()
	cli := fc.admin()
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, spec.NodeRecordKey(node))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("record of %s: %v (%d keys)", node, err, len(resp.Kvs))
	}
	var r spec.NodeRecord
	if err := json.Unmarshal(resp.Kvs[0].Value, &r); err != nil {
		t.Fatal(err)
	}
	return r
}

func readVerifyRecord(t *testing.T, a *Agent) VerifyResult {
	t.Helper()
	var r VerifyResult
	if ok, err := readJSON(a.VerifyRecordPath(), &r); !ok || err != nil {
		t.Fatalf("%s: %v (exists %v)", a.VerifyRecordPath(), err, ok)
	}
	return r
}
