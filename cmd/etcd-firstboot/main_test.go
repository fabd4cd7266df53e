package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unicode/utf16"

	"github.com/etcdbake/etcdbake/firstboot"
	"github.com/etcdbake/etcdbake/internal/testcluster"
	"github.com/etcdbake/etcdbake/pki"
	"github.com/etcdbake/etcdbake/spec"
)

// TestPrepareThenStatus runs the command as systemd would on a node of a fresh cluster:
// no time source answers; alone, it refuses (a new cluster needs every member fresh at the
// bootstrap rendezvous) and says which members it waits for; with the other two members'
// etcd-firstboot running, it decides a static bootstrap. `status` shows the decisions, as
// text and as JSON.
func TestPrepareThenStatus(t *testing.T) {
	c := testcluster.Spec(t, "cli", 3, 71)
	tc := testcluster.New(t, c) // PKI only; no member runs
	dir := t.TempDir()
	nodeConfig := func(i int) spec.NodeConfig {
		n := c.Nodes[i]
		nc := c.NodeConfigFor(n)
		d := filepath.Join(dir, n.Name)
		nc.DataDir, nc.StateDir, nc.RunDir = filepath.Join(d, "data"), filepath.Join(d, "state"), filepath.Join(d, "run")
		nc.BootstrapEnv = filepath.Join(nc.RunDir, "etcd-bootstrap.env")
		nc.CA, _ = pki.CAPath(tc.PKIDir, "ca")
		nc.PeerCA, _ = pki.CAPath(tc.PKIDir, "peer-ca")
		nc.ServerCert, _ = pki.NodeCertPath(tc.PKIDir, n.Name, "server")
		nc.PeerCert, nc.PeerKey = pki.NodeCertPath(tc.PKIDir, n.Name, "peer")
		nc.ClientCert, nc.ClientKey = pki.NodeCertPath(tc.PKIDir, n.Name, "firstboot")
		nc.Time.Servers = []string{"127.0.0.1:9"} // discard port: no NTP answer
		nc.Time.SyncTimeout = spec.Dur(time.Second)
		nc.Timeouts = spec.NodeTimeouts{Dial: spec.Dur(500 * time.Millisecond), Retry: spec.Dur(200 * time.Millisecond), Rendezvous: spec.Dur(3 * time.Second)}
		return nc
	}
	nc := nodeConfig(0)
	b, _ := json.Marshal(nc)
	cfg := filepath.Join(dir, "node.json")
	os.WriteFile(cfg, b, 0o644)

	var alone, aloneErr bytes.Buffer
	if code := run([]string{"prepare", "--config", cfg}, &alone, &aloneErr); code == 0 || !strings.Contains(aloneErr.String(), "m2, m3 did not answer the bootstrap rendezvous") {
		t.Fatalf("prepare alone exited %d (want a refusal naming m2, m3):\n%s", code, aloneErr.String())
	}
	if _, err := os.Stat(nc.BootstrapEnv); !os.IsNotExist(err) {
		t.Fatalf("a refused prepare left %s", nc.BootstrapEnv)
	}
	// The other two members' etcd-firstboot at the same time.
	others := make(chan error, 2)
	for i := 1; i <= 2; i++ {
		oc := nodeConfig(i)
		go func() { others <- (&firstboot.Agent{Cfg: &oc}).Prepare(context.Background()) }()
	}
	defer func() {
		for i := 0; i < 2; i++ {
			if err := <-others; err != nil {
				t.Errorf("another member's prepare: %v", err)
			}
		}
	}()

	var out, errOut bytes.Buffer
	if code := run([]string{"prepare", "--config", cfg}, &out, &errOut); code != 0 {
		t.Fatalf("prepare exited %d:\n%s", code, errOut.String())
	}
	env, err := os.ReadFile(nc.BootstrapEnv)
	if err != nil || !strings.Contains(string(env), "ETCD_INITIAL_CLUSTER_STATE=new") {
		t.Fatalf("bootstrap env: %v\n%s", err, env)
	}
	if !strings.Contains(errOut.String(), "bootstrap: new") || !strings.Contains(errOut.String(), "time gate: pass") {
		t.Fatalf("decisions not logged:\n%s", errOut.String())
	}

	out.Reset()
	if code := run([]string{"status", "--config", cfg}, &out, &errOut); code != 0 {
		t.Fatalf("status exited %d", code)
	}
	for _, want := range []string{"node m1 of cluster cli", "time gate:  pass via none", "bootstrap:  new (state new)", "cert:       server.crt: 36"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	if code := run([]string{"status", "--json", "--config", cfg}, &out, &errOut); code != 0 {
		t.Fatalf("status --json exited %d", code)
	}
	var st firstboot.Status
	if err := json.Unmarshal(out.Bytes(), &st); err != nil || st.Bootstrap == nil || st.Bootstrap.Decision != "new" || st.Time.Source != "none" {
		t.Fatalf("status --json: %v %+v", err, st)
	}

	// A missing node file is a clear failure, not a panic.
	errOut.Reset()
	if code := run([]string{"prepare", "--config", filepath.Join(dir, "nope.json")}, &out, &errOut); code != 1 || !strings.Contains(errOut.String(), "nope.json") {
		t.Fatalf("missing config: exit %d, %s", code, errOut.String())
	}
	if code := run([]string{"bogus"}, &out, &errOut); code != 2 {
		t.Fatalf("unknown subcommand: exit %d", code)
	}
}

// efiString is an efivarfs file of a string variable: 4 bytes of attributes, UTF-16LE,
// a NUL (written here independently of the decoder under test).
func efiString(s string) []byte {
	b := binary.LittleEndian.AppendUint32(nil, 0x6)
	for _, c := range utf16.Encode([]rune(s)) {
		b = binary.LittleEndian.AppendUint16(b, c)
	}
	return append(b, 0, 0)
}

// fakeBootDir writes a kernel command line, systemd-boot's variables and an ESP with
// the given entries under dir.
func fakeBootDir(t *testing.T, dir, cmdline string, vars map[string]string, entries ...string) firstboot.BootPaths {
	t.Helper()
	p := firstboot.BootPaths{Cmdline: filepath.Join(dir, "cmdline"), EFIVars: filepath.Join(dir, "efivars"), ESP: filepath.Join(dir, "efi")}
	for _, d := range []string{p.EFIVars, filepath.Join(p.ESP, "loader", "entries")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(p.Cmdline, []byte(cmdline+"\n"), 0o644)
	for k, v := range vars {
		os.WriteFile(filepath.Join(p.EFIVars, k+"-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"), efiString(v), 0o644)
	}
	for _, e := range entries {
		os.WriteFile(filepath.Join(p.ESP, "loader", "entries", e), []byte("linux /etcdbake/a/linux\n"), 0o644)
	}
	return p
}

// TestStatusShowsBootSlot: a verify-boot of slot b that times out (flanneld never wrote
// its subnet) exits 1 naming it; after the fallback to slot a, `status` shows the slot,
// the failed generation and that reason, as text and JSON. A machine without slots shows
// no boot line.
func TestStatusShowsBootSlot(t *testing.T) {
	c := testcluster.Spec(t, "boot", 1, 81)
	dir := t.TempDir()
	nc := c.NodeConfigFor(c.Nodes[0])
	nc.DataDir, nc.StateDir, nc.RunDir = filepath.Join(dir, "data"), filepath.Join(dir, "state"), filepath.Join(dir, "run")
	nc.Timeouts = spec.NodeTimeouts{Dial: spec.Dur(200 * time.Millisecond), Retry: spec.Dur(100 * time.Millisecond)}
	b, _ := json.Marshal(nc)
	cfg := filepath.Join(dir, "node.json")
	os.WriteFile(cfg, b, 0o644)

	const rel = "0123456789ab"
	slot := func(s string) string {
		return "root=PARTUUID=11111111-2222-3333-4444-555555555555 etcdbake.slot=" + s + " etcdbake.release=" + rel + " etcdbake.node=6f1c2a4e-9b7d-4c3e-8a21-5d0e7f9b3c11"
	}
	trial := fakeBootDir(t, filepath.Join(dir, "boot1"), slot("b"),
		map[string]string{"LoaderEntrySelected": "etcdbake-000001-b+1.conf", "LoaderBootCountPath": `\loader\entries\etcdbake-000001-b+0-1.conf`},
		"etcdbake-000000-a.conf", "etcdbake-000001-b+0-1.conf")

	// verify-boot stops at SIGTERM (systemd at TimeoutStartSec); the library call with a
	// deadline is the same path without signalling the test process.
	a := &firstboot.Agent{Cfg: &nc, BootPaths: trial, FlannelSubnetFile: filepath.Join(dir, "run", "flannel", "subnet.env")}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	verr := a.VerifyBoot(ctx)
	if verr == nil || !strings.Contains(verr.Error(), "flanneld has not written "+a.FlannelSubnetFile) {
		t.Fatalf("verify-boot: %v", verr)
	}

	var out, errOut bytes.Buffer
	if code := runWith([]string{"status", "--config", cfg}, &out, &errOut, trial); code != 0 {
		t.Fatalf("status exited %d: %s", code, errOut.String())
	}
	for _, want := range []string{
		"boot:       slot b, release " + rel + ", entry etcdbake-000001-b+0-1.conf, state indeterminate (on trial: not blessed yet, verify-boot decides)\n",
		"verify:     failed: " + verr.Error() + "\n",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status during the trial lacks %q:\n%s", want, out.String())
		}
	}

	t.Logf("status during the trial:\n%s", out.String())
	// The reboot: /run is new, slot a boots because b's entry has no tries left.
	os.RemoveAll(nc.RunDir)
	fellBack := fakeBootDir(t, filepath.Join(dir, "boot2"), slot("a"), map[string]string{"LoaderEntrySelected": "etcdbake-000000-a.conf"},
		"etcdbake-000000-a.conf", "etcdbake-000001-b+0-1.conf", "etcdbake-000002-a.tmp")
	out.Reset()
	if code := runWith([]string{"status", "--config", cfg}, &out, &errOut, fellBack); code != 0 {
		t.Fatalf("status exited %d: %s", code, errOut.String())
	}
	t.Logf("status after the fallback:\n%s", out.String())
	var rec firstboot.VerifyResult
	rb, _ := os.ReadFile(filepath.Join(nc.StateDir, firstboot.VerifyRecordName))
	json.Unmarshal(rb, &rec)
	for _, want := range []string{
		"boot:       slot a, release " + rel + ", entry etcdbake-000000-a.conf, state clean (booted an entry without a boot counter)\n",
		"fallback:   slot b (generation 1, etcdbake-000001-b+0-1.conf) failed its trial; this boot fell back to slot a\n" +
			"            verify-boot failed at " + rec.Started.Format(time.RFC3339) + ": " + verr.Error() + "\n",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status after the fallback lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "verify:") || strings.Contains(out.String(), "WARNING") {
		t.Errorf("status after the fallback:\n%s", out.String())
	}
	out.Reset()
	if code := runWith([]string{"status", "--json", "--config", cfg}, &out, &errOut, fellBack); code != 0 {
		t.Fatalf("status --json exited %d", code)
	}
	var st firstboot.Status
	if err := json.Unmarshal(out.Bytes(), &st); err != nil || st.Boot == nil || st.Boot.Slot != "a" || st.Boot.Fallback == nil ||
		st.Boot.Fallback.Generation != 1 || st.Boot.Fallback.Verify == nil || st.Boot.Fallback.Verify.Message != verr.Error() || len(st.Boot.Entries) != 2 {
		t.Fatalf("status --json: %v\n%s", err, out.String())
	}

	// Without a record (the slot never reached verify-boot) status says so.
	os.Remove(filepath.Join(nc.StateDir, firstboot.VerifyRecordName))
	out.Reset()
	if code := runWith([]string{"status", "--config", cfg}, &out, &errOut, fellBack); code != 0 ||
		!strings.Contains(out.String(), "failed its trial; this boot fell back to slot a\n            no verify-boot result was recorded for it") {
		t.Fatalf("status without a record exited %d:\n%s", code, out.String())
	}

	// No slots (no etcdbake.slot, no ESP): no boot line.
	noSlots := firstboot.BootPaths{Cmdline: filepath.Join(dir, "boot2", "cmdline-fcos"), EFIVars: filepath.Join(dir, "boot2", "efivars"), ESP: filepath.Join(dir, "nothing")}
	os.WriteFile(noSlots.Cmdline, []byte("root=/dev/vda4 ignition.platform.id=qemu\n"), 0o644)
	out.Reset()
	if code := runWith([]string{"status", "--config", cfg}, &out, &errOut, noSlots); code != 0 || strings.Contains(out.String(), "boot:") || strings.Contains(out.String(), "fallback:") {
		t.Fatalf("status without slots exited %d:\n%s", code, out.String())
	}

	// The usage names the new subcommand.
	errOut.Reset()
	if code := run([]string{"bogus"}, &out, &errOut); code != 2 || !strings.Contains(errOut.String(), "prepare|ready|status|verify-boot") {
		t.Fatalf("usage: exit %d, %s", code, errOut.String())
	}
	// stage and arm take one operand each; a generation is a whole number above 0.
	for _, args := range [][]string{{"stage", "--config", cfg}, {"arm", "--config", cfg}, {"arm", "--config", cfg, "x"}, {"arm", "--config", cfg, "0"}} {
		errOut.Reset()
		if code := runWith(args, &out, &errOut, fellBack); code != 2 {
			t.Errorf("%v: exit %d, want 2 (usage): %s", args, code, errOut.String())
		}
	}
	errOut.Reset()
	if code := runWith([]string{"arm", "--config", cfg, "7"}, &out, &errOut, fellBack); code != 1 || !strings.Contains(errOut.String(), "nothing is staged") {
		t.Errorf("arm with nothing staged: exit %d: %s", code, errOut.String())
	}
}

// TestMain lets a test run the command in a child process (to send it signals): with
// ETCD_FIRSTBOOT_TEST_MAIN set, the test binary is etcd-firstboot, reading the boot slot
// from the paths in ETCD_FIRSTBOOT_TEST_BOOT (cmdline:efivars:esp).
func TestMain(m *testing.M) {
	if os.Getenv("ETCD_FIRSTBOOT_TEST_MAIN") != "" {
		var p firstboot.BootPaths
		if b := strings.Split(os.Getenv("ETCD_FIRSTBOOT_TEST_BOOT"), ":"); len(b) == 3 {
			p = firstboot.BootPaths{Cmdline: b[0], EFIVars: b[1], ESP: b[2]}
		}
		os.Exit(runWith(os.Args[1:], os.Stdout, os.Stderr, p))
	}
	os.Exit(m.Run())
}

// TestVerifyBootSIGTERM runs `etcd-firstboot verify-boot` as systemd does and sends it
// SIGTERM, as systemd does at TimeoutStartSec: it exits 1 (the boot is not blessed),
// says on stderr what it still waited for, and leaves the record on the state dir.
func TestVerifyBootSIGTERM(t *testing.T) {
	c := testcluster.Spec(t, "term", 1, 83)
	dir := t.TempDir()
	nc := c.NodeConfigFor(c.Nodes[0])
	nc.DataDir, nc.StateDir, nc.RunDir = filepath.Join(dir, "data"), filepath.Join(dir, "state"), filepath.Join(dir, "run")
	nc.Timeouts = spec.NodeTimeouts{Dial: spec.Dur(200 * time.Millisecond), Retry: spec.Dur(100 * time.Millisecond)}
	b, _ := json.Marshal(nc)
	cfg := filepath.Join(dir, "node.json")
	os.WriteFile(cfg, b, 0o644)
	boot := fakeBootDir(t, filepath.Join(dir, "boot"), "etcdbake.slot=b etcdbake.release=0123456789ab",
		map[string]string{"LoaderEntrySelected": "etcdbake-000003-b+1.conf", "LoaderBootCountPath": `\loader\entries\etcdbake-000003-b+0-1.conf`},
		"etcdbake-000002-a.conf", "etcdbake-000003-b+0-1.conf")

	cmd := exec.Command(os.Args[0], "verify-boot", "--config", cfg)
	cmd.Env = append(os.Environ(), "ETCD_FIRSTBOOT_TEST_MAIN=1", "ETCD_FIRSTBOOT_TEST_BOOT="+boot.Cmdline+":"+boot.EFIVars+":"+boot.ESP)
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(stderr.String(), "verify-boot: waiting") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("want exit 1 after SIGTERM, got %v\n%s", err, stderr.String())
	}
	for _, want := range []string{"etcd-firstboot: boot of slot b (release 0123456789ab, entry etcdbake-000003-b+0-1.conf) not verified after",
		"the health gate has not written its ready flag " + filepath.Join(nc.RunDir, "ready"), "/readyz"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
		}
	}
	t.Logf("stderr:\n%s", stderr.String())
	var rec firstboot.VerifyResult
	rb, err := os.ReadFile(filepath.Join(nc.StateDir, firstboot.VerifyRecordName))
	if err != nil || json.Unmarshal(rb, &rec) != nil || rec.Result != firstboot.VerifyFailed || rec.Generation != 3 || rec.Slot != "b" {
		t.Fatalf("record: %v %+v", err, rec)
	}
}

// syncBuffer is a bytes.Buffer safe for a child's output and a polling reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestNextCalendarElapse: the next elapse of a schedule as systemd computes it (the host's
// systemd-analyze, as on the node), and the parser on its output in UTC and another zone.
func TestNextCalendarElapse(t *testing.T) {
	utc := []byte("  Original form: *:0/2\nNormalized form: *-*-* *:00/2:00\n    Next elapse: Fri 2026-12-04 11:34:00 UTC\n       From now: 1min 10s left\n")
	if got, want := parseNextElapse(utc), time.Date(2026, 12, 4, 11, 34, 0, 0, time.UTC); !got.Equal(want) {
		t.Errorf("parseNextElapse(UTC output) = %v, want %v", got, want)
	}
	if got := parseNextElapse([]byte("    Next elapse: Fri 2026-12-04 12:34:00 CET\n")); !got.IsZero() {
		t.Errorf("parseNextElapse(CET output) = %v, want zero (offset unknown)", got)
	}
	if got := nextCalendarElapse(context.Background(), ""); !got.IsZero() {
		t.Errorf("no schedule: %v, want zero", got)
	}
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Fatalf("systemd-analyze (package systemd, as on the nodes): %v", err)
	}
	before := time.Now()
	got := nextCalendarElapse(context.Background(), "*:0/2")
	// The next even minute after now.
	want := before.UTC().Truncate(2 * time.Minute).Add(2 * time.Minute)
	if !got.Equal(want) && !got.Equal(want.Add(2*time.Minute)) {
		t.Errorf("nextCalendarElapse(*:0/2) at %s = %v, want %v", before.UTC().Format(time.TimeOnly), got, want)
	}
	if got := nextCalendarElapse(context.Background(), "not a calendar"); !got.IsZero() {
		t.Errorf("an invalid schedule: %v, want zero", got)
	}
}
