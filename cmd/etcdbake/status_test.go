package main

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/etcdbake/etcdbake/pki"
	"github.com/etcdbake/etcdbake/spec"
	"github.com/etcdbake/etcdbake/status"
	"github.com/etcdbake/etcdbake/vmcluster"
)

// TestStatusSaysWhy runs `etcdbake status` against endpoints that fail in known ways and
// asserts the exit code and the cause it prints, instead of "context deadline exceeded"
// after the full timeout.
func TestStatusSaysWhy(t *testing.T) {
	now := time.Now()
	dir := t.TempDir()
	specPath, out, other := filepath.Join(dir, "cluster.yaml"), filepath.Join(dir, "out"), filepath.Join(dir, "other")
	for _, args := range [][]string{{"init", "-f", specPath}, {"pki", "-f", specPath, "--out", out}, {"pki", "-f", specPath, "--out", other}} {
		if _, _, err := run(t, now, args...); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
	}
	exitCode := func(err error) int {
		var ee *exitError
		if errors.As(err, &ee) {
			return ee.code
		}
		if err != nil {
			return 1
		}
		return 0
	}

	// A closed port: refused, at once.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "https://" + l.Addr().String()
	l.Close()
	start := time.Now()
	_, _, err = run(t, now, "status", "-f", specPath, "--out", out, "--endpoints", closed)
	if exitCode(err) != 1 || err == nil || !strings.Contains(err.Error(), closed+": connection refused") {
		t.Errorf("status at a closed port: exit %d, %v", exitCode(err), err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("refused took %s", took)
	}
	// -o json: the same causes, as JSON on stdout.
	stdout, _, err := run(t, now, "status", "-f", specPath, "--out", out, "--endpoints", closed, "-o", "json")
	var js struct {
		Unreachable []struct{ Endpoint, Cause, Message string }
	}
	if exitCode(err) != 1 || json.Unmarshal([]byte(stdout), &js) != nil || len(js.Unreachable) != 1 || js.Unreachable[0].Cause != "connectionRefused" || js.Unreachable[0].Endpoint != closed {
		t.Errorf("status -o json at a closed port: exit %d, %q", exitCode(err), stdout)
	}

	// A server certificate from another CA: the CA file used and the server's issuer.
	srvCrt, srvKey := pki.NodeCertPath(filepath.Join(other, "pki"), "etcd-1", "server")
	pair, err := tls.LoadX509KeyPair(srvCrt, srvKey)
	if err != nil {
		t.Fatal(err)
	}
	tl, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pair}})
	if err != nil {
		t.Fatal(err)
	}
	defer tl.Close()
	go func() {
		for {
			c, err := tl.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _ = c.(*tls.Conn).Handshake() }()
		}
	}()
	foreign := "https://" + tl.Addr().String()
	ca, _ := pki.CAPath(filepath.Join(out, "pki"), "ca")
	_, _, err = run(t, now, "status", "-f", specPath, "--out", out, "--endpoints", foreign+","+closed)
	if exitCode(err) != 1 || err == nil || !strings.Contains(err.Error(), foreign+": TLS: the server's certificate is issued by \"CN=demo etcd CA") ||
		!strings.Contains(err.Error(), "not the CA in "+ca) || !strings.Contains(err.Error(), closed+": connection refused") {
		t.Errorf("status at a server from another CA: exit %d, %v", exitCode(err), err)
	}

	// A cluster of `etcdbake up` whose VMs are gone: each node is said not to run, at
	// once, without dialling.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	st := vmcluster.RunState{Supervisor: os.Getpid(), Started: now, Nodes: map[string]vmcluster.RunNode{}}
	for _, n := range []string{"etcd-1", "etcd-2", "etcd-3"} {
		st.Nodes[n] = vmcluster.RunNode{QEMU: dead.Process.Pid, Endpoint: closed, Exited: "QEMU pid 1 exited: signal: killed"}
	}
	b, _ := json.Marshal(st)
	os.MkdirAll(filepath.Join(out, "run"), 0o755)
	if err := os.WriteFile(filepath.Join(out, "run", vmcluster.RunStateFile), b, 0o644); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	_, stderr, err := run(t, now, "status", "-f", specPath, "--out", out)
	if exitCode(err) != 1 || !strings.Contains(stderr, "status: etcd-2: its VM is not running (QEMU pid 1 exited: signal: killed); `etcdbake up` starts it again") {
		t.Errorf("status with the VMs gone: exit %d, %v\n%s", exitCode(err), err, stderr)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("status with the VMs gone took %s", took)
	}
}

// TestNodeProgress: up's waiting lines say why a node does not answer, from the
// per-endpoint diagnosis when no endpoint answered and from the member row otherwise.
func TestNodeProgress(t *testing.T) {
	ue := &status.UnreachableError{
		Diagnoses:  []status.Diagnosis{{Endpoint: "https://127.0.0.1:1", Cause: status.CauseRefused, Message: "connection refused: ..."}, {Endpoint: "https://127.0.0.1:2", Cause: status.CauseUnknownAuthority, Message: "TLS: the server's certificate is issued by X"}},
		NotRunning: map[string]string{"n3": "its VM is not running (QEMU pid 9 exited: signal: killed)"},
	}
	for _, tt := range []struct{ node, ep, want string }{
		{"n1", "https://127.0.0.1:1", "booting (etcd not answering yet: connection refused)"},
		{"n2", "https://127.0.0.1:2", "etcd does not answer as expected: TLS: the server's certificate is issued by X"},
		{"n3", "https://127.0.0.1:3", "its VM is not running (QEMU pid 9 exited: signal: killed)"},
	} {
		if got := nodeProgress(nil, fmt.Errorf("collect: %w", ue), tt.node, tt.ep); got != tt.want {
			t.Errorf("%s: %q, want %q", tt.node, got, tt.want)
		}
	}
	r := &status.Cluster{Members: []status.Member{
		{Name: "n1", Cause: status.CauseTimeout, Error: "no answer within 5s: ..."},
		{Name: "n2", Cause: status.CauseNotRunning, Error: "its VM is not running (QEMU pid 9 is gone)"},
		{Name: "n3", Healthy: true},
	}, Flannel: []status.Lease{{Subnet: "10.244.3.0/24", Node: "n3"}}}
	for node, want := range map[string]string{
		"n1": "member, booting (etcd not answering yet: no answer in time)",
		"n2": "its VM is not running (QEMU pid 9 is gone)",
		"n3": "healthy voting member, flannel lease 10.244.3.0/24",
		"n4": "not a member yet",
	} {
		if got := nodeProgress(r, nil, node, ""); got != want {
			t.Errorf("%s: %q, want %q", node, got, want)
		}
	}
}

// TestStatusPrintsBootRecords: the text output has a line per node that published its
// boot (slot, release, state, entry), and a FELL BACK line with the reason when it fell
// back; a node without a record has no such line.
func TestStatusPrintsBootRecords(t *testing.T) {
	st := &status.Cluster{ClusterID: "1", Leader: "m1", Quorum: true, Members: []status.Member{
		{Name: "m1", Healthy: true, Boot: &spec.NodeRecord{Node: "m1", Slot: "b", Release: "0123456789ab", Entry: "etcdbake-000001-b+0-1.conf", State: "indeterminate", Verify: "good: verified after 17s"}},
		{Name: "m2", Healthy: true, Boot: &spec.NodeRecord{Node: "m2", Slot: "a", Release: "00000000aaaa", Entry: "etcdbake-000000-a.conf", State: "clean",
			Fallback: "slot b (generation 1, etcdbake-000001-b+0-1.conf) failed its trial; this boot fell back to slot a; verify-boot failed: etcd not ready"}},
		{Name: "m3", Healthy: true},
	}}
	var b strings.Builder
	printStatus(&b, st)
	out := b.String()
	for _, want := range []string{
		"m1: slot b, release 0123456789ab, boot indeterminate, verify-boot good (etcdbake-000001-b+0-1.conf)\n",
		"m2: slot a, release 00000000aaaa, boot clean (etcdbake-000000-a.conf)\n",
		"m2: FELL BACK: slot b (generation 1, etcdbake-000001-b+0-1.conf) failed its trial; this boot fell back to slot a; verify-boot failed: etcd not ready\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "m3: slot") || strings.Count(out, "FELL BACK") != 1 {
		t.Errorf("status output:\n%s", out)
	}
}
