package main

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/etcdbake/etcdbake/spec"
)

// TestSSHArgv: without a running `up` cluster, ssh goes to the node's spec address on
// port 22 as ssh.user, with the host key recorded under a stable alias; a spec without
// keys and an unknown node are refused before any connection. (TestUpDown runs the real
// client through up's forward.)
func TestSSHArgv(t *testing.T) {
	c, rep := spec.Parse(append(append([]byte(nil), spec.Example...), "ssh:\n  authorizedKeys: [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForEtcdbakeTestsOnly0000000000000 t@x\"]\n"...))
	if rep.HasErrors() {
		t.Fatal(rep.String())
	}
	a := &app{specPath: "cluster.yaml", outDir: filepath.Join(t.TempDir(), "out")}
	argv, _, err := a.sshArgv(c, "etcd-2", "/k/id", []string{"sudo", "true"})
	if err != nil {
		t.Fatal(err)
	}
	want := "ssh -p 22 -l core -o HostKeyAlias=etcdbake-demo-etcd-2 -i /k/id -o IdentitiesOnly=yes 10.88.0.12 -- sudo true"
	if got := strings.Join(argv, " "); got != want {
		t.Errorf("argv %q, want %q", got, want)
	}
	_, _, err = a.sshArgv(c, "etcd-9", "", nil)
	var ue *exitError
	if !errors.As(err, &ue) || ue.code != 2 || !strings.Contains(err.Error(), "etcd-1 etcd-2 etcd-3") {
		t.Errorf("unknown node: %v, want a usage error listing the nodes", err)
	}
	c.SSH.AuthorizedKeys = nil
	if _, _, err := a.sshArgv(c, "etcd-1", "", nil); err == nil || !strings.Contains(err.Error(), "ssh.authorizedKeys") {
		t.Errorf("no keys: %v, want an error naming ssh.authorizedKeys", err)
	}
}
