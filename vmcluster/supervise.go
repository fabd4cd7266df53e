package vmcluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/etcdbake/etcdbake/internal/fileutil"
)

// A supervised cluster outlives the command that started it (`etcdbake up`): Launch
// writes the plan (Dir/plan.json) and starts a supervisor process, which runs the hub and
// the VMs (SupervisePlan, Supervise) and records them in Dir/cluster.json; other processes
// read that record (ReadRunState), run commands in the nodes through their agents'
// sockets (ExecIn) and stop it (StopSupervised).

// Files in the run directory of a supervised cluster.
const (
	// PlanFile is the supervisor's input: the ClusterOptions as JSON.
	PlanFile = "plan.json"
	// RunStateFile is the record of the running cluster (RunState as JSON).
	RunStateFile = "cluster.json"
	// SupervisorLog receives the supervisor's output.
	SupervisorLog = "supervisor.log"
)

// Launch writes o as o.Dir/plan.json and starts argv as the supervisor in its own session,
// so that it outlives the caller; argv must run SupervisePlan(o.Dir) (`etcdbake up` uses
// `etcdbake qemu-supervise --run-dir DIR`). Its output goes to o.Dir/supervisor.log.
// Launch returns the supervisor's record once the VMs run, or an error with the log when
// the supervisor exits first; it gives up after two minutes or when ctx ends (the
// supervisor, once started, is left to run: StopSupervised stops it).
func Launch(ctx context.Context, o ClusterOptions, argv []string) (*RunState, error) {
	if len(argv) == 0 {
		return nil, errors.New("no supervisor command")
	}
	dir := o.Dir
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(o, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := fileutil.WriteAtomic(filepath.Join(dir, PlanFile), b, 0o644); err != nil {
		return nil, err
	}
	logPath := filepath.Join(dir, SupervisorLog)
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	_ = os.Remove(filepath.Join(dir, RunStateFile))
	sup := exec.Command(argv[0], argv[1:]...)
	sup.Stdout, sup.Stderr = logf, logf
	sup.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := sup.Start(); err != nil {
		return nil, fmt.Errorf("starting the supervisor: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- sup.Wait() }()
	deadline := time.After(2 * time.Minute)
	for {
		if st, err := ReadRunState(dir); err == nil {
			return st, nil
		}
		select {
		case err := <-exited:
			log, _ := os.ReadFile(logPath)
			return nil, fmt.Errorf("the supervisor exited (%v) before the VMs ran:\n%s", err, strings.TrimSpace(string(log)))
		case <-deadline:
			return nil, fmt.Errorf("the supervisor (pid %d) did not report running VMs within 2 minutes; see %s", sup.Process.Pid, logPath)
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// SuperviseHooks connect a supervisor to its process; every field may be nil.
type SuperviseHooks struct {
	// Ready is called once the record is written.
	Ready func(*RunState)
	// Logf receives what the supervisor sees: a VM's exit, a node started again.
	Logf func(format string, args ...any)
	// StartStopped, when it receives, boots again every node whose VM is not running,
	// from its kept disk (`etcdbake up` asks by SIGUSR1; see StartStopped).
	StartStopped <-chan struct{}
}

// SupervisePlan reads dir/plan.json (written by Launch) and runs Supervise with it.
func SupervisePlan(ctx context.Context, dir string, h SuperviseHooks) error {
	path := filepath.Join(dir, PlanFile)
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var o ClusterOptions
	if err := json.Unmarshal(b, &o); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return Supervise(ctx, o, h)
}

// RunState is the record of a supervised cluster.
type RunState struct {
	Supervisor int                `json:"supervisorPID"`
	Started    time.Time          `json:"started"`
	TimeServer string             `json:"timeServer,omitempty"`
	Nodes      map[string]RunNode `json:"nodes"`
}

// RunNode is one VM of a supervised cluster.
type RunNode struct {
	QEMU         int    `json:"qemuPID"`
	Endpoint     string `json:"endpoint"`
	PeerEndpoint string `json:"peerEndpoint"`
	Console      string `json:"console"`
	Agent        string `json:"agentSocket"`
	// Exited says how the node's VM ended, once the supervisor has seen it exit (empty
	// while it runs).
	Exited string `json:"exited,omitempty"`
	// StartError is why the last attempt to start the node again failed.
	StartError string `json:"startError,omitempty"`
}

// VMExit is a VM's QEMU process having exited.
type VMExit struct {
	Node string
	PID  int
	At   time.Time
	// Err is how it exited (nil: status 0, e.g. the guest powered off).
	Err error
}

func (e VMExit) String() string {
	how := "exited with status 0 (the guest powered off or QEMU quit)"
	if e.Err != nil {
		how = "exited: " + e.Err.Error()
	}
	return fmt.Sprintf("QEMU pid %d %s at %s", e.PID, how, e.At.Format(time.RFC3339))
}

// exitWatch reports each VM's exit once.
type exitWatch struct{ seen map[*VM]bool }

// check returns the VMs of vms that exited since the last check, sorted by node, and
// how many still run.
func (w *exitWatch) check(vms map[string]*VM, now time.Time) (exits []VMExit, alive int) {
	if w.seen == nil {
		w.seen = map[*VM]bool{}
	}
	for name, vm := range vms {
		if vm == nil {
			continue
		}
		err, done := vm.exitErr()
		if !done {
			alive++
			continue
		}
		if !w.seen[vm] {
			w.seen[vm] = true
			exits = append(exits, VMExit{Node: name, PID: vm.PID(), At: now, Err: err})
		}
	}
	sort.Slice(exits, func(i, j int) bool { return exits[i].Node < exits[j].Node })
	return exits, alive
}

// gone says whether QEMU's process has exited, waiting until Wait has seen it: `up` may
// ask for a restart right after a kill, before Wait returned (it also waits, at most
// cmd.WaitDelay, for QEMU's output pipe).
func (vm *VM) gone() bool {
	if ProcessIs(vm.PID(), "qemu-system") {
		return false
	}
	select {
	case err := <-vm.done:
		vm.done <- err
	case <-time.After(10 * time.Second):
	}
	return true
}

// exitErr returns how QEMU exited, if it has.
func (vm *VM) exitErr() (error, bool) {
	select {
	case err := <-vm.done:
		vm.done <- err
		return err, true
	default:
		return nil, false
	}
}

func (c *Cluster) vms() map[string]*VM {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]*VM{}
	for name, n := range c.nodes {
		out[name] = n.vm
	}
	return out
}

// Supervise starts the cluster and keeps it (and its hub) running until ctx ends or
// every VM has exited, then stops it and removes the record. A VM that exits is logged
// and marked in the record (RunNode.Exited); h.StartStopped boots such nodes again.
func Supervise(ctx context.Context, o ClusterOptions, h SuperviseHooks) error {
	logf := h.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	c, err := StartCluster(ctx, o)
	if err != nil {
		return err
	}
	defer c.Stop()
	exited, startErr := map[string]string{}, map[string]string{}
	record := func() (*RunState, error) {
		st := c.runState()
		for n, why := range exited {
			rn := st.Nodes[n]
			rn.Exited, rn.StartError = why, startErr[n]
			st.Nodes[n] = rn
		}
		return st, writeRunState(o.Dir, st)
	}
	st, err := record()
	if err != nil {
		return err
	}
	defer os.Remove(filepath.Join(o.Dir, RunStateFile))
	if h.Ready != nil {
		h.Ready(st)
	}
	var watch exitWatch
	stall := stallWatch{}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		exits, alive := watch.check(c.vms(), time.Now())
		for _, e := range exits {
			exited[e.Node] = e.String()
			logf("%s: %s; %d of %d VMs running", e.Node, e, alive, len(c.Nodes()))
		}
		for _, n := range stall.check(c, time.Now()) {
			logf("%s: no console output for %s since the guest reset itself: its firmware stalled; power-cycling the VM (a new QEMU process on the same disks)", n, ResetStallAfter)
			if err := c.Restart(ctx, n); err != nil {
				logf("%s: power-cycling its VM failed: %v", n, err)
				continue
			}
			logf("%s: VM running again (QEMU pid %d, etcd %s)", n, c.VM(n).PID(), c.Endpoint(n))
			if _, err := record(); err != nil {
				logf("writing the record: %v", err)
			}
		}
		if len(exits) > 0 {
			if _, err := record(); err != nil {
				logf("writing the record: %v", err)
			}
		}
		if alive == 0 {
			return errors.New("every VM has exited")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-h.StartStopped:
			for _, n := range c.Nodes() {
				if vm := c.VM(n); vm != nil && vm.Running() && !vm.gone() {
					continue
				}
				logf("%s: starting its VM again from its kept disk", n)
				if err := c.Restart(ctx, n); err != nil {
					startErr[n] = err.Error()
					logf("%s: starting its VM again failed: %v", n, err)
					continue
				}
				delete(exited, n)
				delete(startErr, n)
				logf("%s: VM running again (QEMU pid %d, etcd %s)", n, c.VM(n).PID(), c.Endpoint(n))
			}
			if _, err := record(); err != nil {
				logf("writing the record: %v", err)
			}
		case <-tick.C:
		}
	}
}

// ResetStallAfter is how long a VM may print nothing on its console after its guest
// reset itself (a reboot) before the supervisor power-cycles it. A reboot's firmware
// prints within seconds; once, after a guest reboot, OVMF spun in its DXE phase for
// 20 minutes without a line (a QMP system_reset did not help; a new QEMU process on the
// same disks and variable store booted at once).
const ResetStallAfter = 3 * time.Minute

// resetMarks end a console whose guest reset itself (the Linux kernel's last lines).
var resetMarks = [][]byte{[]byte("reboot: Restarting system"), []byte("reboot: machine restart")}

// stallWatch finds VMs whose console has been silent for ResetStallAfter right after a
// guest reset.
type stallWatch struct {
	size  map[string]int64
	since map[string]time.Time
}

// check returns the nodes whose console ends with a reset and has not grown for
// ResetStallAfter; each is reported once per silence.
func (w *stallWatch) check(c *Cluster, now time.Time) []string {
	if w.size == nil {
		w.size, w.since = map[string]int64{}, map[string]time.Time{}
	}
	var out []string
	for _, n := range c.Nodes() {
		if vm := c.VM(n); vm == nil || vm.gone() {
			continue
		}
		fi, err := os.Stat(c.Console(n))
		if err != nil {
			continue
		}
		if fi.Size() != w.size[n] || w.since[n].IsZero() {
			w.size[n], w.since[n] = fi.Size(), now
			continue
		}
		if now.Sub(w.since[n]) < ResetStallAfter {
			continue
		}
		w.since[n] = now // once per silence
		if endsWithReset(c.Console(n), fi.Size()) {
			out = append(out, n)
		}
	}
	return out
}

// endsWithReset says whether the last lines of the console file at path (size bytes)
// are a guest reset's.
func endsWithReset(path string, size int64) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	buf := make([]byte, 512)
	off := max(size-int64(len(buf)), 0)
	n, _ := f.ReadAt(buf, off)
	tail := bytes.TrimRight(buf[:n], "\r\n ")
	for _, m := range resetMarks {
		if bytes.HasSuffix(tail, m) {
			return true
		}
	}
	return false
}

// StartStopped asks the supervisor recorded in dir to boot again, from their kept disks,
// the nodes whose VM is not running (SIGUSR1; see SuperviseHooks.StartStopped), and
// waits until the record shows each one running, or an error, or timeout. It returns
// the nodes it started (none when every VM runs) and the record.
func StartStopped(ctx context.Context, dir string, timeout time.Duration) ([]string, *RunState, error) {
	st, err := ReadRunState(dir)
	if err != nil {
		return nil, nil, err
	}
	if !st.Running() {
		return nil, st, fmt.Errorf("the supervisor (pid %d) is not running; see %s", st.Supervisor, filepath.Join(dir, SupervisorLog))
	}
	down := sortedKeys(st.NotRunning())
	if len(down) == 0 {
		return nil, st, nil
	}
	old := map[string]RunNode{}
	for _, n := range down {
		old[n] = st.Nodes[n]
	}
	if err := syscall.Kill(st.Supervisor, syscall.SIGUSR1); err != nil {
		return nil, st, fmt.Errorf("asking supervisor %d to start %v: %w", st.Supervisor, down, err)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		st, err = ReadRunState(dir)
		if err == nil {
			started, failed := 0, []string{}
			for _, n := range down {
				rn := st.Nodes[n]
				switch {
				case rn.QEMU != old[n].QEMU && rn.Exited == "" && ProcessIs(rn.QEMU, "qemu-system"):
					started++
				case rn.StartError != "" && rn.StartError != old[n].StartError:
					failed = append(failed, n+": "+rn.StartError)
				}
			}
			if len(failed) > 0 {
				return down, st, fmt.Errorf("starting the VM again failed for %s", strings.Join(failed, "; "))
			}
			if started == len(down) {
				return down, st, nil
			}
		}
		if !ProcessIs(st.Supervisor, "") {
			return down, st, fmt.Errorf("the supervisor (pid %d) stopped while starting %v; see %s", st.Supervisor, down, filepath.Join(dir, SupervisorLog))
		}
		select {
		case <-ctx.Done():
			return down, st, fmt.Errorf("the supervisor did not start %v within %s; see %s", down, timeout, filepath.Join(dir, SupervisorLog))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (c *Cluster) runState() *RunState {
	st := &RunState{Supervisor: os.Getpid(), Started: c.Started, Nodes: map[string]RunNode{}}
	if a := c.hub.TimeServer(); a.IsValid() {
		st.TimeServer = a.String()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for name, n := range c.nodes {
		rn := RunNode{Endpoint: n.endpoint, PeerEndpoint: n.peer, Console: filepath.Join(c.dir, name+".log")}
		if n.vm != nil {
			rn.QEMU, rn.Agent = n.vm.PID(), n.vm.qgaPath
		}
		st.Nodes[name] = rn
	}
	return st
}

func writeRunState(dir string, st *RunState) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return fileutil.WriteAtomic(filepath.Join(dir, RunStateFile), append(b, '\n'), 0o644)
}

// ReadRunState reads the record in dir. It returns an error wrapping os.ErrNotExist
// when there is none.
func ReadRunState(dir string) (*RunState, error) {
	b, err := os.ReadFile(filepath.Join(dir, RunStateFile))
	if err != nil {
		return nil, err
	}
	var st RunState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, RunStateFile), err)
	}
	return &st, nil
}

// Running says whether the supervisor recorded in st is still alive.
func (st *RunState) Running() bool { return ProcessIs(st.Supervisor, "") }

// NotRunning names the nodes whose VM is not running (QEMU gone), each with how it
// ended as far as the record knows.
func (st *RunState) NotRunning() map[string]string {
	out := map[string]string{}
	for n, rn := range st.Nodes {
		if ProcessIs(rn.QEMU, "qemu-system") {
			continue
		}
		why := rn.Exited
		if why == "" {
			why = fmt.Sprintf("QEMU pid %d is gone", rn.QEMU)
		}
		if rn.StartError != "" {
			why += "; starting it again failed: " + rn.StartError
		}
		out[n] = why
	}
	return out
}

// Endpoints maps node names to their forwarded client URLs.
func (st *RunState) Endpoints() map[string]string {
	out := map[string]string{}
	for n, rn := range st.Nodes {
		out[n] = rn.Endpoint
	}
	return out
}

// ProcessIs says whether pid is alive and (if name is set) its command line mentions name.
func ProcessIs(pid int, name string) bool {
	if pid <= 0 || syscall.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// A zombie (state Z) has exited.
	if i := strings.LastIndexByte(string(b), ')'); i > 0 && i+2 < len(b) && b[i+2] == 'Z' {
		return false
	}
	if name == "" {
		return true
	}
	cmd, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	return strings.Contains(string(cmd), name)
}

// StopSupervised asks the supervisor recorded in dir to stop its cluster (SIGTERM) and
// waits up to timeout; QEMU processes still alive after that are killed. It returns the
// record it stopped (nil if nothing was running).
func StopSupervised(dir string, timeout time.Duration) (*RunState, error) {
	st, err := ReadRunState(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if st.Running() {
		if err := syscall.Kill(st.Supervisor, syscall.SIGTERM); err != nil {
			return st, fmt.Errorf("signalling supervisor %d: %w", st.Supervisor, err)
		}
	}
	deadline := time.Now().Add(timeout)
	for st.Running() && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
	}
	var left []string
	for name, n := range st.Nodes {
		if ProcessIs(n.QEMU, "qemu-system") {
			_ = syscall.Kill(n.QEMU, syscall.SIGKILL)
			left = append(left, name)
		}
	}
	_ = os.Remove(filepath.Join(dir, RunStateFile))
	if st.Running() {
		return st, fmt.Errorf("supervisor %d did not stop within %s", st.Supervisor, timeout)
	}
	if len(left) > 0 {
		return st, fmt.Errorf("killed QEMU of %v, left behind by the supervisor", left)
	}
	return st, nil
}

// ExecIn runs a command in a node of the supervised cluster in dir (see VM.Exec).
func ExecIn(ctx context.Context, dir, node string, argv ...string) (ExecResult, error) {
	n, err := runningNode(dir, node)
	if err != nil {
		return ExecResult{}, err
	}
	vm := &VM{Name: node, qgaPath: n.Agent}
	return vm.Exec(ctx, argv...)
}

// runningNode is a node of the cluster running from dir whose VM is up.
func runningNode(dir, node string) (RunNode, error) {
	st, err := ReadRunState(dir)
	if err != nil {
		return RunNode{}, fmt.Errorf("no cluster running from %s (etcdbake up): %w", dir, err)
	}
	n, ok := st.Nodes[node]
	if !ok || !ProcessIs(n.QEMU, "qemu-system") {
		return RunNode{}, fmt.Errorf("node %q is not running (nodes: %v)", node, sortedKeys(st.Nodes))
	}
	return n, nil
}

// SSHAddrIn is the host address (127.0.0.1:port) forwarded to the SSH port of a node of
// the cluster running from dir (ssh.json, written by the cluster).
func SSHAddrIn(dir, node string) (string, error) {
	if _, err := runningNode(dir, node); err != nil {
		return "", err
	}
	b, err := os.ReadFile(filepath.Join(dir, SSHFile))
	if err != nil {
		return "", fmt.Errorf("the cluster running from %s has no SSH forwards (started by an older etcdbake? run `etcdbake down` and `etcdbake up`): %w", dir, err)
	}
	var m map[string]string
	if err := json.Unmarshal(b, &m); err != nil {
		return "", fmt.Errorf("%s: %w", filepath.Join(dir, SSHFile), err)
	}
	if m[node] == "" {
		return "", fmt.Errorf("%s lists no SSH forward for node %q", filepath.Join(dir, SSHFile), node)
	}
	return m[node], nil
}

// DiscardDisks removes the VMs' disks (overlays) and firmware variables kept in dir, so
// that the next StartCluster with KeepDisks begins from the images again. It returns how
// many disks it removed; call it only while no cluster runs from dir.
func DiscardDisks(dir string) (int, error) {
	disks, err := filepath.Glob(filepath.Join(dir, "*"+overlaySuffix))
	if err != nil {
		return 0, err
	}
	vars, err := filepath.Glob(filepath.Join(dir, "*.vars.fd"))
	if err != nil {
		return 0, err
	}
	for _, p := range append(disks, vars...) {
		if err := os.Remove(p); err != nil {
			return 0, err
		}
	}
	return len(disks), nil
}

// KeptDisks names the nodes whose disks (overlays) are kept in dir, sorted.
func KeptDisks(dir string) []string {
	disks, _ := filepath.Glob(filepath.Join(dir, "*"+overlaySuffix))
	var nodes []string
	for _, d := range disks {
		nodes = append(nodes, strings.TrimSuffix(filepath.Base(d), overlaySuffix))
	}
	sort.Strings(nodes)
	return nodes
}

func sortedKeys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
