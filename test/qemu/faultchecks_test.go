package qemu

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/etcdbake/etcdbake/internal/testtools"
)

// TestEtcdProcessScan: the scan B8 and B10 run on a node finds a process named etcd (a
// copy of sleep under that name, on this machine), and an unfinished scan is not "none".
func TestEtcdProcessScan(t *testing.T) {
	fake := testtools.SleepNamed(t, "etcd")
	p := exec.Command(fake, "60")
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { p.Process.Kill(); p.Wait() }()
	out, err := exec.Command("sh", "-c", etcdProcessScan).CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if noEtcdProcess(string(out)) {
		t.Errorf("the scan missed a running etcd (pid %d):\n%s", p.Process.Pid, out)
	}
	if noEtcdProcess("") {
		t.Error("an empty output (the scan did not run) counts as no etcd process")
	}
}

// TestSecondClusterSigns: the B10 checks on hand-built observations, each sign alone.
func TestSecondClusterSigns(t *testing.T) {
	t0 := time.Now()
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	healthy := []observation{
		{at: at(0), node: "a", clusterID: 1, memberID: 10, term: 2, revision: 100},
		{at: at(0), node: "b", clusterID: 1, memberID: 11, term: 2, revision: 100},
		{at: at(30), node: "a", clusterID: 1, memberID: 10, term: 3, revision: 140},
		// b replaced after its wipe: a new member ID, starting low, is a new series.
		{at: at(60), node: "b", clusterID: 1, memberID: 12, term: 3, revision: 5},
		{at: at(62), node: "b", clusterID: 1, memberID: 12, term: 3, revision: 150},
	}
	if signs := secondClusterSigns(healthy, []string{"b"}, at(10), at(50)); len(signs) != 0 {
		t.Fatalf("a sound history gives %v", signs)
	}
	for name, tc := range map[string]struct {
		extra observation
		want  string
	}{
		"wiped member answers":  {observation{at: at(20), node: "b", clusterID: 1, memberID: 11, term: 2, revision: 100}, "while it should not serve"},
		"same member restarted": {observation{at: at(70), node: "a", clusterID: 1, memberID: 10, term: 2, revision: 1}, "went backwards"},
		"revision backwards":    {observation{at: at(70), node: "a", clusterID: 1, memberID: 10, term: 3, revision: 139}, "went backwards"},
		"another cluster ID":    {observation{at: at(70), node: "a", clusterID: 2, memberID: 10, term: 3, revision: 200}, "cluster IDs seen"},
	} {
		obs := append(slices.Clone(healthy), tc.extra)
		signs := secondClusterSigns(obs, []string{"b"}, at(10), at(50))
		if len(signs) != 1 || !strings.Contains(signs[0], tc.want) {
			t.Errorf("%s: signs %q, want one with %q", name, signs, tc.want)
		}
	}
}
