package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/etcdbake/etcdbake/bake"
	"github.com/etcdbake/etcdbake/ignition"
	"github.com/etcdbake/etcdbake/spec"
)

// run executes the CLI in-process and returns stdout, stderr and the error main would see.
func run(t *testing.T, now time.Time, args ...string) (string, string, error) {
	t.Helper()
	a := &app{now: func() time.Time { return now }}
	cmd := newRootCmdFor(a)
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), errOut.String(), err
}

func example() string { return string(spec.Example) }

// node3 is the third node's block in the example, for cases that drop or reshape it.
const node3 = `  - name: etcd-3
    address: 10.88.0.13/24
    mac: "52:54:00:88:00:13"
`

func extraNodes(from, to int) string {
	var b strings.Builder
	for i := from; i <= to; i++ {
		fmt.Fprintf(&b, "  - name: etcd-%d\n    address: 10.88.0.%d/24\n", i, 10+i)
	}
	return b.String()
}

// TestValidationRules runs every rule through `validate` (field path and fix in the
// output, non-zero exit) and through `pki` (nothing written under --out).
func TestValidationRules(t *testing.T) {
	cases := []struct {
		name   string
		from   string
		to     string
		path   string
		phrase string
	}{
		{"duplicate name", "name: etcd-2", "name: etcd-1", "nodes[1].name", "must be unique"},
		{"duplicate address", "address: 10.88.0.12/24", "address: 10.88.0.11/24", "nodes[1].address", "must be unique"},
		{"not an RFC 1123 label", "name: etcd-3", "name: Etcd_3", "nodes[2].name", "RFC 1123"},
		{"name with =", "name: etcd-3", `name: "etcd=3"`, "nodes[2].name", "initial-cluster"},
		{"name with ,", "name: etcd-3", `name: "etcd,3"`, "nodes[2].name", "initial-cluster"},
		{"even member count", node3, "", "nodes", "even count"},
		{"four members", node3, node3 + extraNodes(4, 4), "nodes", "tolerate no more failures"},
		{"loopback address", "address: 10.88.0.11/24", "address: 127.0.0.11/8", "nodes[0].address", "loopback"},
		{"unspecified address", "address: 10.88.0.11/24", "address: 0.0.0.0/24", "nodes[0].address", "unspecified"},
		{"multicast address", "address: 10.88.0.11/24", "address: 224.0.0.11/24", "nodes[0].address", "multicast"},
		{"address without prefix", "address: 10.88.0.11/24", "address: 10.88.0.11", "nodes[0].address", "no prefix length"},
		{"two subnets without gateway", "address: 10.88.0.13/24", "address: 10.99.0.13/24", "nodes[2].gateway", "not all in one subnet"},
		{"gateway outside subnet", `mac: "52:54:00:88:00:11"`, `mac: "52:54:00:88:00:11"` + "\n    gateway: 10.1.1.1", "nodes[0].gateway", "outside the node's subnet"},
		{"flannel overlaps nodes", "network: 10.244.0.0/16", "network: 10.88.0.0/16", "flannel.network", "overlaps the node network"},
		{"subnetLen too small", "network: 10.244.0.0/16       # overlay range; must not overlap the nodes' network\n  subnetLen: 24", "network: 10.244.0.0/24\n  subnetLen: 25", "flannel.subnetLen", "gives 1 node subnet(s) but there are 3 nodes"},
		{"leaf outlives CA", "leafLifetime: 1y", "leafLifetime: 20y", "pki.leafLifetime", "longer than the CA's lifetime"},
		{"unknown backend", "backend: vxlan ", "backend: vxlam ", "flannel.backend", "unknown backend"},
		{"unparsable duration", "maxSkew: 500ms", "maxSkew: 5 parsecs", "time.maxSkew", "not a duration"},
		{"duration without unit", "syncTimeout: 2m", "syncTimeout: 120", "time.syncTimeout", "has no unit"},
		{"rollout timeout too short", "# rollout:\n#   timeout: 10m", "rollout:\n  timeout: 10s", "rollout.timeout", "too short to boot and verify a node"},
		{"maintenance interval too short", "#   interval: 10m ", "maintenance:\n  interval: 10s\n# ", "maintenance.interval", "shorter than a pass may take"},
		{"defrag ratio not a ratio", "#   interval: 10m ", "maintenance:\n  defragRatio: 2\n# ", "maintenance.defragRatio", "not a ratio"},
		{"backup schedule on two lines", "#   keep: 5 ", "backup:\n  schedule: \"daily\\nOnBootSec=1\"\n# ", "backup.schedule", "not a systemd calendar expression on one line"},
		{"backup keep negative", "#   keep: 5 ", "backup:\n  keep: -1\n# ", "backup.keep", "keep at least 1 snapshot"},
		{"backup target without scheme", "#   keep: 5 ", "backup:\n  target:\n    endpoint: s3.example.com\n    bucket: etcd-backups\n    credentialsFile: s3.env\n# ", "backup.target.endpoint", "is not https://HOST[:PORT]"},
		{"backup target bad bucket", "#   keep: 5 ", "backup:\n  target:\n    endpoint: https://s3.example.com\n    bucket: Etcd_Backups\n    credentialsFile: s3.env\n# ", "backup.target.bucket", "not an S3 bucket name"},
		{"backup target without credentials", "#   keep: 5 ", "backup:\n  target:\n    endpoint: https://s3.example.com\n    bucket: etcd-backups\n# ", "backup.target.credentialsFile", "required"},
		{"unknown key", "etcd:\n", "etcd:\n  colour: blue\n", "etcd.colour", "unknown field"},
		{"misspelt key", "subnetLen: 24", "subnetlen: 24", "flannel.subnetlen", `did you mean "subnetLen"`},
		{"wrong type", "subnetLen: 24", "subnetLen: big", "flannel.subnetLen", "not a whole number"},
		{"election below 5x heartbeat", "electionTimeout: 2500ms", "electionTimeout: 500ms", "etcd.electionTimeout", "5 x heartbeatInterval"},
		{"unknown algorithm", "algorithm: ecdsa-p256", "algorithm: dsa", "pki.algorithm", "unknown algorithm"},
		{"bad version", "version: v3.6.16", "version: latest", "etcd.version", "vMAJOR.MINOR.PATCH"},
		{"v2-only flannel", "version: v0.28.7", "version: v0.10.0", "flannel.version", "not supported"},
		{"bad MAC", `mac: "52:54:00:88:00:12"`, `mac: "52:54:00:88"`, "nodes[1].mac", "not a MAC address"},
		{"wrong apiVersion", "apiVersion: etcdbake.dev/v1alpha1", "apiVersion: etcdbake.dev/v9", "apiVersion", "not supported"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			src := example()
			if !strings.Contains(src, tc.from) {
				t.Fatalf("test case does not apply: %q not in the example", tc.from)
			}
			dir := t.TempDir()
			specPath := filepath.Join(dir, "cluster.yaml")
			if err := os.WriteFile(specPath, []byte(strings.Replace(src, tc.from, tc.to, 1)), 0o644); err != nil {
				t.Fatal(err)
			}
			out := filepath.Join(dir, "out")
			stdout, _, err := run(t, time.Now(), "validate", "-f", specPath, "--out", out)
			var ee *exitError
			if !errors.As(err, &ee) || ee.code == 0 {
				t.Fatalf("validate accepted it (err %v):\n%s", err, stdout)
			}
			want := "error: " + tc.path
			if !strings.Contains(stdout, want) || !strings.Contains(stdout, tc.phrase) {
				t.Fatalf("want %q and %q in:\n%s", want, tc.phrase, stdout)
			}
			for _, args := range [][]string{{"pki"}, {"ignition", "--inline-binaries"}, {"fetch"}} {
				_, _, err = run(t, time.Now(), append(args, "-f", specPath, "--out", out, "--cache", filepath.Join(dir, "cache"))...)
				var inv *spec.InvalidError
				if !errors.As(err, &inv) || !strings.Contains(err.Error(), tc.path) {
					t.Fatalf("%s: want the invalid-spec error naming %s, got %v", args[0], tc.path, err)
				}
				if _, err := os.Stat(filepath.Join(dir, "cache")); !os.IsNotExist(err) {
					t.Fatalf("%s touched the cache for an invalid spec", args[0])
				}
				if _, err := os.Stat(out); !os.IsNotExist(err) {
					t.Fatalf("%s wrote %s for an invalid spec", args[0], out)
				}
			}
		})
	}
}

func TestValidationReportsEveryProblem(t *testing.T) {
	src := strings.NewReplacer(
		"name: etcd-2", "name: etcd-1",
		"address: 10.88.0.13/24", "address: 127.0.0.1/8",
		"backend: vxlan ", "backend: vxlam ",
		"maxSkew: 500ms", "maxSkew: soon",
	).Replace(example())
	path := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(path, []byte(src), 0o644)
	stdout, _, err := run(t, time.Now(), "validate", "-f", path)
	if err == nil {
		t.Fatal("accepted")
	}
	for _, p := range []string{"nodes[1].name", "nodes[2].address", "flannel.backend", "time.maxSkew"} {
		if !strings.Contains(stdout, "error: "+p) {
			t.Errorf("missing %s in:\n%s", p, stdout)
		}
	}
	if !strings.Contains(err.Error(), "4 error(s)") {
		t.Errorf("summary: %v", err)
	}
	// Source lines point at the offending key.
	if !strings.Contains(stdout, "nodes[1].name (line ") {
		t.Errorf("no line numbers:\n%s", stdout)
	}
}

func TestNineMembersWarns(t *testing.T) {
	src := strings.Replace(example(), node3, node3+extraNodes(4, 9), 1)
	path := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(path, []byte(src), 0o644)
	stdout, _, err := run(t, time.Now(), "validate", "-f", path)
	if err != nil {
		t.Fatalf("9 members should only warn: %v\n%s", err, stdout)
	}
	if !strings.Contains(stdout, "warning: nodes") || !strings.Contains(stdout, "recommended maximum of 7") {
		t.Fatalf("no warning:\n%s", stdout)
	}
}

// fakeBinaries writes tiny programs that answer the version checks as the pinned
// releases do, and a spec that takes them from source "file".
func fakeBinaries(t *testing.T, dir string) string {
	t.Helper()
	versions := map[string]string{
		"etcd":     "etcd Version: 3.6.16",
		"etcdctl":  "etcdctl version: 3.6.16\nAPI version: 3.6",
		"flanneld": "v0.28.7",
	}
	var files strings.Builder
	files.WriteString("binaries:\n  sources: [file]\n  files:\n")
	for name, v := range versions {
		p := filepath.Join(dir, name)
		body := fmt.Sprintf("#!/bin/sh\necho '%s'\n", v)
		if err := os.WriteFile(p, []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&files, "    %s: {path: %s, sha256: %s}\n", name, p, sha256File(t, p))
	}
	return strings.Replace(example(), "binaries:\n  # Tried in order: the official release (needs github.com), then a build of the pinned\n  # version from the Go module proxy. Add \"file\" with `files:` for air-gapped machines.\n  sources: [release, go]\n", files.String(), 1)
}

func TestCommandsEndToEnd(t *testing.T) {
	dir := t.TempDir()
	specPath := filepath.Join(dir, "cluster.yaml")
	out := filepath.Join(dir, "out")
	cache := filepath.Join(dir, "cache")
	now := time.Now()

	stdout, _, err := run(t, now, "init", "-f", specPath)
	if err != nil || !strings.Contains(stdout, "wrote") {
		t.Fatalf("init: %v %s", err, stdout)
	}
	if _, _, err := run(t, now, "init", "-f", specPath); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("init over an existing spec: %v", err)
	}
	if stdout, _, err := run(t, now, "validate", "-f", specPath); err != nil || !strings.Contains(stdout, "valid") {
		t.Fatalf("validate: %v %s", err, stdout)
	}
	src := fakeBinaries(t, dir)
	if !strings.Contains(src, "sources: [file]") {
		t.Fatal("could not switch the example to file sources")
	}
	os.WriteFile(specPath, []byte(src), 0o644)

	stdout, _, err = run(t, now, "pki", "-f", specPath, "--out", out)
	if err != nil || strings.Count(stdout, ": created") != 2+4*3+2 {
		t.Fatalf("pki: %v\n%s", err, stdout)
	}
	stdout, _, err = run(t, now, "pki", "-f", specPath, "--out", out)
	if err != nil || strings.Count(stdout, ": reused") != 16 {
		t.Fatalf("pki again: %v\n%s", err, stdout)
	}
	stdout, _, err = run(t, now, "pki", "check", "-f", specPath, "--out", out)
	if err != nil || !strings.Contains(stdout, "all 16 certificates ok") || !strings.Contains(stdout, "nodes/etcd-2/server [ok]") {
		t.Fatalf("pki check: %v\n%s", err, stdout)
	}
	// A year and a day later every leaf has expired: check fails and names them.
	stdout, _, err = run(t, now.Add(366*24*time.Hour), "pki", "check", "-f", specPath, "--out", out)
	if err == nil || !strings.Contains(stdout, "nodes/etcd-1/peer [PROBLEM]") {
		t.Fatalf("pki check of expired certificates: %v\n%s", err, stdout)
	}
	// SAN drift: a new extra SAN in the spec makes check fail for that server certificate.
	drift := strings.Replace(src, "    # extraSANs: [etcd-3.example.internal]", "    extraSANs: [etcd-3.example.internal]", 1)
	os.WriteFile(specPath, []byte(drift), 0o644)
	stdout, _, err = run(t, now, "pki", "check", "-f", specPath, "--out", out)
	if err == nil || !strings.Contains(stdout, "nodes/etcd-3/server [PROBLEM]") || strings.Contains(stdout, "nodes/etcd-2/server [PROBLEM]") {
		t.Fatalf("pki check after SAN drift: %v\n%s", err, stdout)
	}
	stdout, _, err = run(t, now, "pki", "-f", specPath, "--out", out)
	if err != nil || !strings.Contains(stdout, "nodes/etcd-3/server: re-issued") || strings.Count(stdout, "re-issued") != 1 {
		t.Fatalf("pki re-issue: %v\n%s", err, stdout)
	}

	stdout, _, err = run(t, now, "kubeadm", "-f", specPath, "--out", out)
	if err != nil || !strings.Contains(stdout, "external:") || !strings.Contains(stdout, "- https://10.88.0.13:2379") ||
		!strings.Contains(stdout, "certFile: /etc/kubernetes/pki/apiserver-etcd-client.crt") ||
		!strings.Contains(stdout, filepath.Join(out, "pki/clients/kube-apiserver-etcd-client.crt")) {
		t.Fatalf("kubeadm: %v\n%s", err, stdout)
	}

	fb := staticFirstboot(t) // a real one: --firstboot is checked
	if _, _, err := run(t, now, "ignition", "-f", specPath, "--out", out, "--firstboot", fb, "--cache", cache); err == nil || !strings.Contains(err.Error(), "--binaries-url") {
		t.Fatalf("ignition without a binary source: %v", err)
	}
	stdout, stderr, err := run(t, now, "ignition", "-f", specPath, "--out", out, "--firstboot", fb, "--cache", cache, "--binaries-url", "http://10.88.0.1:8080/bin")
	if err != nil {
		t.Fatalf("ignition: %v\n%s\n%s", err, stdout, stderr)
	}
	for _, n := range []string{"etcd-1", "etcd-2", "etcd-3"} {
		b, err := os.ReadFile(filepath.Join(out, "ignition", n+".ign"))
		if err != nil {
			t.Fatal(err)
		}
		if err := ignition.Check(b); err != nil {
			t.Fatalf("%s: %v", n, err)
		}
	}
	// Same inputs, same bytes.
	first, _ := os.ReadFile(filepath.Join(out, "ignition", "etcd-1.ign"))
	if _, _, err := run(t, now, "ignition", "-f", specPath, "--out", out, "--firstboot", fb, "--cache", cache, "--binaries-url", "http://10.88.0.1:8080/bin"); err != nil {
		t.Fatal(err)
	}
	second, _ := os.ReadFile(filepath.Join(out, "ignition", "etcd-1.ign"))
	if !bytes.Equal(first, second) {
		t.Fatal("ignition output differs between two runs with the same inputs")
	}
}

func sha256File(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// TestImageFormatCheckedFirst: an unknown output format is refused before any work.
func TestImageFormatCheckedFirst(t *testing.T) {
	dir := t.TempDir()
	specPath := filepath.Join(dir, "cluster.yaml")
	os.WriteFile(specPath, spec.Example, 0o644)
	out := filepath.Join(dir, "out")
	for _, sub := range []string{"image", "build"} {
		_, _, err := run(t, time.Now(), sub, "-f", specPath, "--out", out, "--format", "vmdk")
		if err == nil || !strings.Contains(err.Error(), "raw and/or qcow2") {
			t.Fatalf("%s --format vmdk: %v", sub, err)
		}
		if _, err := os.Stat(out); !os.IsNotExist(err) {
			t.Fatalf("%s wrote %s before checking the format", sub, out)
		}
	}
}

// TestHubTimeServer: up's time server (bake.QEMUTimeServer) is the highest free host
// address of the nodes' prefix, never a node's address; a prefix without room is refused
// with the field named.
func TestHubTimeServer(t *testing.T) {
	c, rep := spec.Parse(spec.Example)
	if c == nil || len(rep.Errors()) > 0 {
		t.Fatalf("example: %v", rep.Problems)
	}
	a, err := bake.QEMUTimeServer(c)
	if err != nil || a.String() != "10.88.0.254" {
		t.Fatalf("got %v %v, want 10.88.0.254", a, err)
	}
	c.Nodes[2].Address = "10.88.0.254/24"
	if a, err := bake.QEMUTimeServer(c); err != nil || a.String() != "10.88.0.253" {
		t.Errorf("with a node on .254: got %v %v, want 10.88.0.253", a, err)
	}
	c.Nodes[0].Address = "10.88.0.11/31"
	if _, err := bake.QEMUTimeServer(c); err == nil || !strings.Contains(err.Error(), "nodes[0].address") {
		t.Errorf("/31: %v", err)
	}
	// exec and down with nothing running say so.
	dir := t.TempDir()
	if _, _, err := run(t, time.Now(), "exec", "--out", dir, "etcd-1", "--", "true"); err == nil || !strings.Contains(err.Error(), "no cluster running") {
		t.Errorf("exec without a cluster: %v", err)
	}
	if out, _, err := run(t, time.Now(), "down", "--out", dir); err != nil || !strings.Contains(out, "no cluster running") {
		t.Errorf("down without a cluster: %q %v", out, err)
	}
}

// TestMeterPlain: off a terminal, progress is a line per quarter and step.
func TestMeterPlain(t *testing.T) {
	var b bytes.Buffer
	m := newMeter(&b)
	for i := int64(0); i <= 1000; i += 10 {
		m("shared root", i, 1000)
	}
	m("etcd-1 qcow2", 5000, 10000)
	want := "  shared root: 0%\n  shared root: 25%\n  shared root: 50%\n  shared root: 75%\n  shared root: 100%\n  etcd-1 qcow2: 50%\n"
	if b.String() != want {
		t.Errorf("got:\n%swant:\n%s", b.String(), want)
	}
}
