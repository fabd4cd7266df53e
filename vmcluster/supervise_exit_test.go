package vmcluster

import (
	"context"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/etcdbake/etcdbake/internal/testtools"
)

// fakeQEMU is sleep under QEMU's name (ProcessIs looks for "qemu-system").
func fakeQEMU(t *testing.T) string { return testtools.SleepNamed(t, "qemu-system-x86_64") }

// fakeVM runs bin as a VM's process, waited for as boot does.
func fakeVM(t *testing.T, name, bin string) *VM {
	t.Helper()
	cmd := exec.Command(bin, "300")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	vm := &VM{Name: name, cmd: cmd, done: make(chan error, 1)}
	go func() { vm.done <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	waitExec(t, cmd.Process.Pid)
	return vm
}

// waitExec waits until the process has exec'd the fake QEMU: between fork and exec its
// name is still the test binary's, and a VM whose process is not named qemu-system is
// taken for gone (on a loaded machine the test could look in that gap).
func waitExec(t *testing.T, pid int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !ProcessIs(pid, "qemu-system"); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("process %d did not exec the fake QEMU within 10 s", pid)
		}
	}
}

// TestExitWatch: the supervisor's watch reports a VM that was killed (kill -9) once, with
// its node, pid and how it ended, and counts the VMs still running.
func TestExitWatch(t *testing.T) {
	bin := fakeQEMU(t)
	vms := map[string]*VM{"n1": fakeVM(t, "n1", bin), "n2": fakeVM(t, "n2", bin), "n3": nil}
	var w exitWatch
	if exits, alive := w.check(vms, time.Now()); len(exits) != 0 || alive != 2 {
		t.Fatalf("before the kill: %v, %d alive", exits, alive)
	}
	pid := vms["n2"].PID()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var exits []VMExit
	alive := 0
	for deadline := time.Now().Add(5 * time.Second); len(exits) == 0 && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		exits, alive = w.check(vms, time.Now())
	}
	if len(exits) != 1 || alive != 1 {
		t.Fatalf("after kill -9 of n2: %v, %d alive", exits, alive)
	}
	e := exits[0]
	if e.Node != "n2" || e.PID != pid || !strings.Contains(e.String(), "signal: killed") || !strings.Contains(e.String(), "QEMU pid ") {
		t.Errorf("exit: %+v (%s)", e, e)
	}
	if exits, alive := w.check(vms, time.Now()); len(exits) != 0 || alive != 1 {
		t.Errorf("the exit was reported again: %v, %d alive", exits, alive)
	}
}

// TestStartStopped: StartStopped signals the supervisor (here this test process, which
// acts as one) only when a node's VM is not running, and waits until the record shows
// the node running again; a failed start is an error naming the node and the cause.
func TestStartStopped(t *testing.T) {
	bin := fakeQEMU(t)
	dir := t.TempDir()
	running := fakeVM(t, "n1", bin)
	dead := fakeVM(t, "n2", bin)
	_ = dead.cmd.Process.Kill()
	<-dead.done
	st := &RunState{Supervisor: os.Getpid(), Started: time.Now(), Nodes: map[string]RunNode{
		"n1": {QEMU: running.PID()},
		"n2": {QEMU: dead.PID(), Exited: "QEMU pid 1 exited: signal: killed"},
	}}
	if err := writeRunState(dir, st); err != nil {
		t.Fatal(err)
	}
	if got := st.NotRunning(); len(got) != 1 || got["n2"] != "QEMU pid 1 exited: signal: killed" {
		t.Fatalf("NotRunning = %v", got)
	}
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	defer signal.Stop(usr1)
	var fail atomic.Bool
	go func() { // the supervisor's part
		for range usr1 {
			st, err := ReadRunState(dir)
			if err != nil {
				continue
			}
			rn := st.Nodes["n2"]
			if fail.Load() {
				rn.StartError = "no disk"
			} else {
				rn = RunNode{QEMU: fakeVM(t, "n2", bin).PID()}
			}
			st.Nodes["n2"] = rn
			_ = writeRunState(dir, st)
		}
	}()
	started, got, err := StartStopped(context.Background(), dir, 10*time.Second)
	if err != nil || strings.Join(started, ",") != "n2" || len(got.NotRunning()) != 0 {
		t.Fatalf("StartStopped: %v %v, not running %v", started, err, got.NotRunning())
	}
	// Every VM runs: nothing to do.
	if started, _, err := StartStopped(context.Background(), dir, time.Second); err != nil || len(started) != 0 {
		t.Errorf("StartStopped with every VM running: %v %v", started, err)
	}
	// A start that fails is reported.
	syscall.Kill(got.Nodes["n2"].QEMU, syscall.SIGKILL)
	for i := 0; i < 50 && ProcessIs(got.Nodes["n2"].QEMU, ""); i++ {
		time.Sleep(20 * time.Millisecond)
	}
	fail.Store(true)
	if _, _, err := StartStopped(context.Background(), dir, 10*time.Second); err == nil || !strings.Contains(err.Error(), "n2: no disk") {
		t.Errorf("StartStopped with a failing start: %v", err)
	}
}

// TestGoneRightAfterAKill: a VM killed a moment ago, whose Wait has not returned yet
// (QEMU's output pipe still held open), is gone for a restart asked for at once (`up`
// right after a kill -9), not taken for running; a live VM is not gone.
func TestGoneRightAfterAKill(t *testing.T) {
	bin := fakeQEMU(t)
	live := fakeVM(t, "n1", bin)
	cmd := exec.Command(bin, "300")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitExec(t, cmd.Process.Pid)
	slow := &VM{Name: "n2", cmd: cmd, done: make(chan error, 1)}
	go func() {
		err := cmd.Wait()
		time.Sleep(time.Second) // the pipe a child of QEMU kept open
		slow.done <- err
	}()
	if live.gone() || slow.gone() {
		t.Fatal("a running VM is gone")
	}
	if err := syscall.Kill(slow.PID(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for ProcessIs(slow.PID(), "qemu-system") {
		time.Sleep(10 * time.Millisecond)
	}
	if !slow.Running() {
		t.Fatal("the test's premise: Wait has not returned yet")
	}
	if !slow.gone() || slow.Running() {
		t.Errorf("a VM killed a moment ago: gone %v, running %v", slow.gone(), slow.Running())
	}
	if live.gone() {
		t.Error("the live VM is gone")
	}
}
