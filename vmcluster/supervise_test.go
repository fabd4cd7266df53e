package vmcluster

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestStopSupervisedLeftovers: a record whose supervisor has died but whose "QEMU" still
// runs (a real process under QEMU's name) is cleaned up: the process is killed, the error
// names the node, and the record is removed; other processes are never signalled.
func TestStopSupervisedLeftovers(t *testing.T) {
	dir := t.TempDir()
	fake := filepath.Join(dir, "qemu-system-x86_64")
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(sleep)
	if err := os.WriteFile(fake, b, 0o755); err != nil {
		t.Fatal(err)
	}
	vm := exec.Command(fake, "300")
	if err := vm.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- vm.Wait() }()
	other := exec.Command(sleep, "300") // not QEMU: must survive
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	defer other.Process.Kill()
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	st := &RunState{Supervisor: dead.Process.Pid, Started: time.Now(), Nodes: map[string]RunNode{
		"n1": {QEMU: vm.Process.Pid},
		"n2": {QEMU: other.Process.Pid},
	}}
	if err := writeRunState(dir, st); err != nil {
		t.Fatal(err)
	}
	got, err := ReadRunState(dir)
	if err != nil || got.Running() {
		t.Fatalf("record: %v, running %v", err, got != nil && got.Running())
	}
	if _, err := StopSupervised(dir, time.Second); err == nil || !strings.Contains(err.Error(), "[n1]") {
		t.Errorf("StopSupervised: %v, want it to report killing n1's QEMU", err)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Error("the leftover QEMU still runs")
	}
	if !ProcessIs(other.Process.Pid, "") {
		t.Error("a process that is not QEMU was killed")
	}
	if _, err := ReadRunState(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("record still there: %v", err)
	}
	if st, err := StopSupervised(dir, time.Second); st != nil || err != nil {
		t.Errorf("nothing to stop: %v %v", st, err)
	}
	// ExecIn without a record says how to start one.
	if _, err := ExecIn(context.Background(), dir, "n1", "true"); err == nil || !strings.Contains(err.Error(), "etcdbake up") {
		t.Errorf("ExecIn: %v", err)
	}
}

// TestLaunchSupervisorFails: Launch writes the plan the supervisor reads back, and a
// supervisor that exits before the VMs run is an error carrying its log; a plan that is
// not JSON is an error naming the file.
func TestLaunchSupervisorFails(t *testing.T) {
	dir := t.TempDir()
	o := ClusterOptions{Images: map[string]string{"n1": "n1.raw"}, MACs: map[string]string{"n1": "52:54:00:88:00:11"}, Dir: dir, ClientPort: 12379, PeerPort: 12380}
	_, err := Launch(context.Background(), o, []string{"sh", "-c", "echo no VMs for you; exit 3"})
	if err == nil || !strings.Contains(err.Error(), "exited") || !strings.Contains(err.Error(), "no VMs for you") {
		t.Fatalf("Launch with a failing supervisor: %v", err)
	}
	b, err := os.ReadFile(filepath.Join(dir, PlanFile))
	if err != nil {
		t.Fatal(err)
	}
	var back ClusterOptions
	if err := json.Unmarshal(b, &back); err != nil || back.ClientPort != 12379 || back.PeerPort != 12380 || back.Images["n1"] != "n1.raw" {
		t.Errorf("plan read back: %+v, %v", back, err)
	}
	os.WriteFile(filepath.Join(dir, PlanFile), []byte("{"), 0o644)
	if err := SupervisePlan(context.Background(), dir, SuperviseHooks{}); err == nil || !strings.Contains(err.Error(), PlanFile) {
		t.Errorf("SupervisePlan with a broken plan: %v", err)
	}
}

// TestKeptAndDiscardedDisks: KeptDisks names the nodes with a disk in the run directory;
// DiscardDisks removes the disks and firmware variables and nothing else.
func TestKeptAndDiscardedDisks(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"etcd-2.overlay.qcow2", "etcd-1.overlay.qcow2", "etcd-1.vars.fd", "etcd-1.log", "plan.json"} {
		os.WriteFile(filepath.Join(dir, f), nil, 0o644)
	}
	if got := KeptDisks(dir); strings.Join(got, ",") != "etcd-1,etcd-2" {
		t.Errorf("KeptDisks = %v", got)
	}
	if n, err := DiscardDisks(dir); err != nil || n != 2 {
		t.Errorf("DiscardDisks = %d, %v", n, err)
	}
	left, _ := filepath.Glob(filepath.Join(dir, "*"))
	if len(left) != 2 || len(KeptDisks(dir)) != 0 {
		t.Errorf("left after DiscardDisks: %v", left)
	}
}
