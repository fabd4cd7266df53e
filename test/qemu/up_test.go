package qemu

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/etcdbake/etcdbake/binaries"
	"github.com/etcdbake/etcdbake/imagebuild"
	"github.com/etcdbake/etcdbake/internal/testtools"
	"github.com/etcdbake/etcdbake/vmcluster"
)

// TestUpDown drives the CLI as a user would: `etcdbake up` on the built-in example builds
// the images, boots three VMs under a supervisor that outlives it and waits for the
// healthy status table; `status` and `exec` reach the running nodes; `up` again says the
// cluster runs; `snapshot save` (R1); `down` stops every QEMU process and keeps the
// disks, which `up --restore` refuses to discard; `down --purge` discards them; `up
// --restore` refuses a corrupted snapshot (R2) and brings the same cluster back from the
// good one (R1). On that cluster, the rolling upgrade (U1), with a VM killed while it
// stages (U3: reported at once, brought back by `up` from its kept disk with its data,
// killAndBringBack), then a bad release (U2); `down --purge` discards the disks.
func TestUpDown(t *testing.T) {
	requireQEMU(t)
	dir := t.TempDir()
	self := testtools.BuildCLI(t, filepath.Join(dir, "bin"))
	cache := os.Getenv("ETCDBAKE_TEST_CACHE")
	if cache == "" {
		cache, _ = binaries.DefaultCacheDir()
	}
	specPath, out := filepath.Join(dir, "cluster.yaml"), filepath.Join(dir, "out")
	keepOnFailure(t, filepath.Join(out, "run", "*.log"))
	run := func(timeout time.Duration, args ...string) (string, string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, self, append([]string{"-f", specPath, "--out", out, "--cache", cache}, args...)...)
		var so, se bytes.Buffer
		cmd.Stdout, cmd.Stderr = &so, &se
		start := time.Now()
		err := cmd.Run()
		t.Logf("%s etcdbake %s (%s, %v):\n%s%s", start.Format("15:04:05"), strings.Join(args, " "), time.Since(start).Round(100*time.Millisecond), err, se.String(), so.String())
		return so.String(), se.String(), err
	}
	t.Cleanup(func() { run(time.Minute, "down", "--purge") })

	if _, _, err := run(time.Minute, "init"); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(specPath)
	// The release downloads need github.com; the cached Go builds do not.
	b = bytes.Replace(b, []byte("sources: [release, go]"), []byte("sources: [go]"), 1)
	// R1's scheduled snapshots: every 2 minutes (shortened for the test), uploaded to a
	// real S3 server on this machine's loopback, which up forwards to the VMs.
	s3 := testtools.StartS3(t)
	s3.MakeBucket(t, "etcd-backups")
	if err := os.WriteFile(filepath.Join(dir, "s3.env"), []byte("AWS_ACCESS_KEY_ID="+s3.AccessKey+"\nAWS_SECRET_ACCESS_KEY="+s3.SecretKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A login key for `etcdbake ssh` (the real ssh client, through up's forward).
	login := newSSHKey(t)
	keyFile := filepath.Join(dir, "id_ed25519")
	writeSSHPrivateKey(t, login, keyFile)
	b = fmt.Appendf(b, "\nssh:\n  authorizedKeys: [%q]\n", login.public)
	b = fmt.Appendf(b, "\nbackup:\n  schedule: \"%s\"\n  keep: 3\n  target:\n    endpoint: %s\n    bucket: etcd-backups\n    prefix: demo/\n    credentialsFile: s3.env\n", r1Schedule, s3.Endpoint)
	os.WriteFile(specPath, b, 0o644)

	stdout, stderr, err := run(20*time.Minute, "up")
	if err != nil {
		t.Fatalf("up: %v", err)
	}
	healthyTable := func(s string) {
		t.Helper()
		if n := regexp.MustCompile(`(?m)^etcd-\d\s+https://127\.0\.0\.1:\d+\s+healthy\s`).FindAllString(s, -1); len(n) != 3 {
			t.Errorf("want 3 healthy members in the table, got %d", len(n))
		}
		if !strings.Contains(s, "flannel leases (3)") || !strings.Contains(s, "quorum true") {
			t.Errorf("no quorum line or not 3 flannel leases")
		}
	}
	healthyTable(stdout)
	if m := regexp.MustCompile(`up: healthy after (\S+)s`).FindStringSubmatch(stderr); m != nil {
		t.Logf("up: VMs launched -> healthy in %ss (images were built before)", m[1])
	}
	st, err := vmcluster.ReadRunState(filepath.Join(out, "run"))
	if err != nil || !st.Running() || len(st.Nodes) != 3 {
		t.Fatalf("run state: %v %+v", err, st)
	}
	clusterID := regexp.MustCompile(`cluster (\S+), leader`).FindStringSubmatch(stdout)

	// up on a running cluster says so and changes nothing.
	if stdout, _, err := run(2*time.Minute, "up"); err != nil || !strings.Contains(stdout, "already running") {
		t.Errorf("second up: %v", err)
	}
	st2, _ := vmcluster.ReadRunState(filepath.Join(out, "run"))
	if st2 == nil || st2.Supervisor != st.Supervisor {
		t.Errorf("second up replaced the supervisor")
	}
	// status finds the forwarded endpoints by itself.
	if stdout, _, err := run(time.Minute, "status"); err != nil {
		t.Errorf("status: %v", err)
	} else {
		healthyTable(stdout)
	}
	// exec: output, exit codes, and a look inside.
	if stdout, _, err := run(2*time.Minute, "exec", "etcd-2", "--", "cat", "/etc/hostname"); err != nil || strings.TrimSpace(stdout) != "etcd-2" {
		t.Errorf("exec hostname: %q %v", stdout, err)
	}
	if _, _, err := run(time.Minute, "exec", "etcd-1", "--", "sh", "-c", "exit 3"); err == nil || err.(*exec.ExitError).ExitCode() != 3 {
		t.Errorf("exec exit 3: %v", err)
	}
	if stdout, _, err := run(time.Minute, "exec", "etcd-1", "--", "findmnt", "-no", "OPTIONS", "/"); err != nil || !strings.HasPrefix(stdout, "ro") {
		t.Errorf("root mount options %q (%v)", stdout, err)
	}
	// ssh: the system's client, the spec's user, sudo to root; a command's exit status
	// comes back; the host key is trusted on first use into OUT/run/known_hosts only.
	if stdout, _, err := run(time.Minute, "ssh", "-i", keyFile, "etcd-2", "--", "sh", "-c", "'id -un; sudo -n id -un; hostname'"); err != nil || stdout != "core\nroot\netcd-2\n" {
		t.Errorf("etcdbake ssh: %q %v, want core, root, etcd-2", stdout, err)
	}
	if _, _, err := run(time.Minute, "ssh", "-i", keyFile, "etcd-1", "--", "exit", "4"); err == nil || err.(*exec.ExitError).ExitCode() != 4 {
		t.Errorf("etcdbake ssh ... exit 4: %v", err)
	}
	if kh, err := os.ReadFile(filepath.Join(out, "run", "known_hosts")); err != nil || !bytes.Contains(kh, []byte("etcdbake-demo-etcd-2 ")) {
		t.Errorf("OUT/run/known_hosts: %v %q", err, kh)
	}
	// The units the image masks (imagebuild.MaskedUnits) never ran.
	if stdout, _, err := run(time.Minute, "exec", "etcd-2", "--", "sh", "-c", "systemctl is-enabled "+strings.Join(imagebuild.MaskedUnits, " ")+"; true"); err != nil || strings.Count(stdout, "masked") != len(imagebuild.MaskedUnits) {
		t.Errorf("masked units: %q %v, want %d times masked", stdout, err, len(imagebuild.MaskedUnits))
	}
	// The generators the image masks (imagebuild.MaskedGenerators) write nothing when run
	// by hand on the booted node: the masks lose nothing. At least the gpt-auto and
	// veritysetup generators are masked on the default base.
	genCheck := `n=0; for m in /` + imagebuild.GeneratorMaskDir + `/*; do g=$(basename $m); [ "$(readlink $m)" = /dev/null ] || echo "NOT A MASK $g"; ` +
		`d=$(mktemp -d); /lib/systemd/system-generators/$g $d/n $d/e $d/l || echo "FAILED $g"; ` +
		`[ -z "$(find $d -mindepth 1)" ] || echo "WROTE $g: $(find $d -mindepth 1)"; rm -rf $d; n=$((n+1)); done; echo "masked=$n"`
	if stdout, _, err := run(time.Minute, "exec", "etcd-2", "--", "sh", "-c", genCheck); err != nil || strings.Contains(stdout, "WROTE") || strings.Contains(stdout, "FAILED") ||
		strings.Contains(stdout, "NOT A MASK") || strings.Contains(stdout, "masked=0") || strings.Contains(stdout, "masked=1\n") {
		t.Errorf("masked generators: %q %v, want at least two masks, none writing anything", stdout, err)
	} else {
		t.Logf("masked generators: %s", strings.TrimSpace(stdout))
	}
	// etcdctl's default 5 s command timeout is too short inside a TCG guest: starting the
	// binary alone takes 0.1-2 s there while the VM is ~50% busy with an idle cluster.
	if stdout, _, err := run(time.Minute, "exec", "etcd-3", "--", "/usr/local/bin/etcdctl", "--command-timeout=30s", "put", "/etcdbake-test/kept", "across down and up"); err != nil || !strings.Contains(stdout, "OK") {
		t.Fatalf("etcdctl put in etcd-3: %q %v", stdout, err)
	}

	// A VM that dies (kill -9 of its QEMU, as an OOM kill would) is noticed by the
	// supervisor, reported by status at once, and brought back by up from its kept disk:
	// U3 below (killAndBringBack while the VM stages a release).

	// R1, first half: keys, a snapshot, more keys.
	u := upCluster{run: run, specPath: specPath, out: out, st: st}
	r1 := snapshotForRestore(t, u)
	// The restored cluster, and the rollouts on it, snapshot on the default schedule
	// (every 6 h): every 2 minutes was for R1.
	b, _ = os.ReadFile(specPath)
	line := []byte(fmt.Sprintf("  schedule: %q\n", r1Schedule))
	if !bytes.Contains(b, line) {
		t.Fatalf("no %q in the spec", line)
	}
	os.WriteFile(specPath, bytes.Replace(b, line, nil, 1), 0o644)

	// down stops every QEMU process and keeps the disks.
	if stdout, _, err := run(2*time.Minute, "down"); err != nil || !strings.Contains(stdout, "stopped 3 VMs") || !strings.Contains(stdout, "kept 3 VM disks") {
		t.Fatalf("down: %v", err)
	}
	for n, rn := range st.Nodes {
		if vmcluster.ProcessIs(rn.QEMU, "qemu-system") {
			t.Errorf("%s: QEMU pid %d still runs after down", n, rn.QEMU)
		}
	}
	if vmcluster.ProcessIs(st.Supervisor, "") {
		t.Errorf("supervisor %d still runs after down", st.Supervisor)
	}
	// A restore never discards kept disks (their etcd data) by itself.
	if _, stderr, err := run(2*time.Minute, "up", "--restore", r1.file); err == nil || !strings.Contains(stderr, "down --purge") {
		t.Errorf("up --restore with kept disks: %v, want a refusal naming down --purge", err)
	}
	if stdout, _, err := run(2*time.Minute, "down", "--purge"); err != nil || !strings.Contains(stdout, "discarded 3 VM disks") {
		t.Fatalf("down --purge: %v", err)
	}
	// R2 and R1: every disk is gone; up --restore brings the cluster back from the
	// snapshot (its kept key too). A VM brought back from its kept disk with its data is
	// U3's killAndBringBack.
	st, stdout = checkRestore(t, u, r1, healthyTable)
	if again := regexp.MustCompile(`cluster (\S+), leader`).FindStringSubmatch(stdout); clusterID == nil || again == nil || again[1] != clusterID[1] {
		t.Errorf("cluster ID before the loss %v, after the restore %v", clusterID, again)
	}
	if stdout, _, err := run(time.Minute, "exec", "etcd-1", "--", "/usr/local/bin/etcdctl", "--command-timeout=30s", "get", "--print-value-only", "/etcdbake-test/kept"); err != nil || strings.TrimSpace(stdout) != "across down and up" {
		t.Errorf("key after the restore: %q %v", stdout, err)
	}
	u.st = st
	// U1 and U3: a rolling upgrade of this cluster (its disks now have data); then U2: a
	// release on which etcd cannot start.
	if t.Run("Rollout", func(t *testing.T) { checkRollout(t, u) }) {
		if st, err := vmcluster.ReadRunState(filepath.Join(out, "run")); err == nil {
			u.st = st
		}
		t.Run("BadRollout", func(t *testing.T) { checkBadRollout(t, u) })
	}
	if stdout, _, err := run(2*time.Minute, "down", "--purge"); err != nil || !strings.Contains(stdout, "discarded 3 VM disks") {
		t.Errorf("down --purge: %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(out, "run", "*.overlay.qcow2")); len(left) != 0 {
		t.Errorf("disks left after --purge: %v", left)
	}
	if stdout, _, _ := run(time.Minute, "down"); !strings.Contains(stdout, "no cluster running") {
		t.Errorf("down with nothing running: %q", stdout)
	}
}

// killAndBringBack kills node's QEMU (kill -9) in the running cluster of TestUpDown and
// checks: the supervisor logs the exit, `status` says at once that the node's VM is not
// running, `up` boots it again from its kept disk until the cluster is healthy, and the
// node reads the key written before the kill from its own data (a serializable read). It
// returns the new record.
func killAndBringBack(t *testing.T, run func(time.Duration, ...string) (string, string, error), runDir string, st *vmcluster.RunState, node string) *vmcluster.RunState {
	t.Helper()
	pid := st.Nodes[node].QEMU
	if !vmcluster.ProcessIs(pid, "qemu-system") {
		t.Fatalf("%s: QEMU pid %d does not run", node, pid)
	}
	killed := time.Now()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// status, right after the kill: the node's VM is not running, said at once.
	start := time.Now()
	stdout, stderr, err := run(time.Minute, "status")
	detect := time.Since(start)
	if !strings.Contains(stderr, "status: "+node+": its VM is not running") {
		t.Errorf("status after kill -9 of %s does not say its VM is not running: %v", node, err)
	}
	if !regexp.MustCompile(`(?m)^`+node+`\s+https://127\.0\.0\.1:\d+\s+unhealthy: not running`).MatchString(stdout) || !strings.Contains(stdout, "quorum true") {
		t.Errorf("status table after kill -9 of %s: no row under its forwarded endpoint saying not running, or no quorum", node)
	}
	if detect > 20*time.Second {
		t.Errorf("status took %s with a dead VM", detect)
	}
	t.Logf("status reported %s's VM not running %s after the kill (status itself: %s)", node, time.Since(killed).Round(100*time.Millisecond), detect.Round(100*time.Millisecond))
	// The supervisor has logged the exit (it looks every second).
	logPath := filepath.Join(runDir, vmcluster.SupervisorLog)
	want := fmt.Sprintf("%s: QEMU pid %d exited: signal: killed", node, pid)
	var log []byte
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if log, _ = os.ReadFile(logPath); bytes.Contains(log, []byte(want)) {
			break
		}
	}
	if !bytes.Contains(log, []byte(want)) {
		t.Errorf("supervisor log lacks %q:\n%s", want, log)
	}
	if !bytes.Contains(log, []byte("2 of 3 VMs running")) {
		t.Errorf("supervisor log does not count the VMs left:\n%s", log)
	}
	// up boots it again from its disk and waits for health.
	start = time.Now()
	stdout, stderr, err = run(20*time.Minute, "up")
	if err != nil {
		t.Fatalf("up after kill -9 of %s: %v", node, err)
	}
	if !strings.Contains(stdout, node+": QEMU pid ") || !strings.Contains(stdout, "starting it again from its kept disk") || !strings.Contains(stderr, node+": VM running again") {
		t.Errorf("up after kill -9 does not say it starts %s again", node)
	}
	if strings.Contains(stdout+stderr, "<nil>") {
		t.Errorf("up prints <nil>")
	}
	if n := regexp.MustCompile(`(?m)^etcd-\d\s+https://127\.0\.0\.1:\d+\s+healthy\s`).FindAllString(stdout, -1); len(n) != 3 {
		t.Errorf("after up: want 3 healthy members, got %d", len(n))
	}
	t.Logf("up brought %s back healthy in %s", node, time.Since(start).Round(100*time.Millisecond))
	again, err := vmcluster.ReadRunState(runDir)
	if err != nil || again.Supervisor != st.Supervisor || again.Nodes[node].QEMU == pid || !vmcluster.ProcessIs(again.Nodes[node].QEMU, "qemu-system") {
		t.Fatalf("record after up: %v %+v", err, again)
	}
	// Its own data (serializable: from its disk, not through the leader).
	if stdout, _, err := run(time.Minute, "exec", node, "--", "/usr/local/bin/etcdctl", "--command-timeout=30s", "get", "--consistency=s", "--print-value-only", "/etcdbake-test/kept"); err != nil || strings.TrimSpace(stdout) != "across down and up" {
		t.Errorf("%s's key after kill -9 and up: %q %v", node, stdout, err)
	}
	return again
}
