package vmcluster

import (
	"context"
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
	if !processIs(other.Process.Pid, "") {
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
