package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
