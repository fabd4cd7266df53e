package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// A supervised cluster outlives the command that started it (`etcdbake up`): a
// supervisor process runs the hub and the VMs (Supervise) and records them in
// Dir/cluster.json; other processes read that record (ReadRunState), run commands in the
// nodes through their agents' sockets (ExecIn) and stop it (StopSupervised).

// RunStateFile is the record's name in the run directory.
const RunStateFile = "cluster.json"

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
}

// Supervise starts the cluster and keeps it (and its hub) running until ctx ends or
// every VM has exited, then stops it and removes the record. ready, if set, is called
// once the record is written.
func Supervise(ctx context.Context, o ClusterOptions, ready func(*RunState)) error {
	c, err := StartCluster(ctx, o)
	if err != nil {
		return err
	}
	defer c.Stop()
	st := c.runState()
	if err := writeRunState(o.Dir, st); err != nil {
		return err
	}
	defer os.Remove(filepath.Join(o.Dir, RunStateFile))
	if ready != nil {
		ready(st)
	}
	for {
		alive := 0
		for _, n := range c.Nodes() {
			if vm := c.VM(n); vm != nil && vm.running() {
				alive++
			}
		}
		if alive == 0 {
			return errors.New("every VM has exited")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
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
	tmp := filepath.Join(dir, "."+RunStateFile+".tmp")
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, RunStateFile))
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
func (st *RunState) Running() bool { return processIs(st.Supervisor, "") }

// Endpoints maps node names to their forwarded client URLs.
func (st *RunState) Endpoints() map[string]string {
	out := map[string]string{}
	for n, rn := range st.Nodes {
		out[n] = rn.Endpoint
	}
	return out
}

// processIs says whether pid is alive and (if name is set) its command line mentions name.
func processIs(pid int, name string) bool {
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
		if processIs(n.QEMU, "qemu-system") {
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
	st, err := ReadRunState(dir)
	if err != nil {
		return ExecResult{}, fmt.Errorf("no cluster running from %s (etcdbake up): %w", dir, err)
	}
	n, ok := st.Nodes[node]
	if !ok || !processIs(n.QEMU, "qemu-system") {
		return ExecResult{}, fmt.Errorf("node %q is not running (nodes: %v)", node, sortedKeys(st.Nodes))
	}
	vm := &VM{Name: node, qgaPath: n.Agent}
	return vm.Exec(ctx, argv...)
}

func sortedKeys(m map[string]RunNode) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
