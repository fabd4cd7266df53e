package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/etcdbake/etcdbake/spec"
	"github.com/etcdbake/etcdbake/vmcluster"
)

// What a new user hits (issue 13, items 5, 8, 9, 10, 11), through the CLI.

// eachCommand calls f for c and every command below it.
func eachCommand(c *cobra.Command, f func(*cobra.Command)) {
	f(c)
	for _, sub := range c.Commands() {
		eachCommand(sub, f)
	}
}

// exitCode is the exit status main gives err.
func exitCode(err error) int {
	var ee *exitError
	var inv *spec.InvalidError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.code
	case errors.As(err, &inv):
		return 2
	}
	return 1
}

// wantExit fails unless err exits with code and its message has every phrase.
func wantExit(t *testing.T, what string, err error, code int, phrases ...string) {
	t.Helper()
	if got := exitCode(err); got != code {
		t.Errorf("%s: exit %d (%v), want %d", what, got, err, code)
		return
	}
	for _, p := range phrases {
		if err == nil || !strings.Contains(err.Error(), p) {
			t.Errorf("%s: %v, want it to say %q", what, err, p)
		}
	}
}

// exampleSpec writes the example spec to dir/cluster.yaml.
func exampleSpec(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "cluster.yaml")
	if err := os.WriteFile(p, spec.Example, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestPositionalSpec: the spec is the one argument of the commands that read it, the same
// as -f; -f and another argument is an error naming both; a command that reads no spec
// answers a spec file with where it goes.
func TestPositionalSpec(t *testing.T) {
	dir := t.TempDir()
	specPath := exampleSpec(t, dir)
	out := filepath.Join(dir, "out")
	now := time.Now()

	stdout, _, err := run(t, now, "validate", specPath)
	if err != nil || !strings.Contains(stdout, specPath+": valid") {
		t.Fatalf("validate SPEC: %v\n%s", err, stdout)
	}
	if stdout, _, err := run(t, now, "pki", specPath, "--out", out); err != nil || !strings.Contains(stdout, "nodes/etcd-3/server: created") {
		t.Fatalf("pki SPEC: %v\n%s", err, stdout)
	}
	if stdout, _, err := run(t, now, "pki", "check", specPath, "--out", out); err != nil || !strings.Contains(stdout, "all 16 certificates ok") {
		t.Fatalf("pki check SPEC: %v\n%s", err, stdout)
	}
	// The same file both ways is fine.
	if _, _, err := run(t, now, "validate", "-f", specPath, filepath.Join(dir, ".", "cluster.yaml")); err != nil {
		t.Errorf("validate -f SPEC SPEC: %v", err)
	}
	other := filepath.Join(dir, "other.yaml")
	os.WriteFile(other, spec.Example, 0o644)
	_, _, err = run(t, now, "validate", "-f", other, specPath)
	wantExit(t, "validate -f OTHER SPEC", err, 2, "-f "+other, specPath)
	_, _, err = run(t, now, "validate", specPath, other)
	wantExit(t, "validate SPEC OTHER", err, 2, "one argument, the spec file")

	// init writes the file it is given.
	newSpec := filepath.Join(dir, "new.yaml")
	if _, _, err := run(t, now, "init", newSpec); err != nil {
		t.Fatalf("init FILE: %v", err)
	}
	if _, err := os.Stat(newSpec); err != nil {
		t.Errorf("init FILE did not write it: %v", err)
	}

	for _, args := range [][]string{{"down"}, {"base"}, {"serve", "status"}} {
		_, _, err := run(t, now, append(args, specPath, "--out", out)...)
		wantExit(t, strings.Join(args, " ")+" SPEC", err, 2, "-f "+specPath, "does not read the spec")
	}
	_, _, err = run(t, now, "pki", "chek")
	wantExit(t, "pki chek", err, 2, "no such command", "has check")
	if stdout, _, _ := run(t, now, "validate", "--help"); !strings.Contains(stdout, "etcdbake validate [SPEC] [flags]") {
		t.Errorf("validate --help does not show the spec argument:\n%s", stdout)
	}

	_, _, err = run(t, now, "base", "nonsense")
	wantExit(t, "base nonsense", err, 2, `"nonsense"`)
}

// TestOutputFlags: every command with -o refuses a value it does not print (exit 2, the
// allowed values named) before doing anything; pki check's JSON has camelCase keys.
func TestOutputFlags(t *testing.T) {
	dir := t.TempDir()
	specPath := exampleSpec(t, dir)
	out := filepath.Join(dir, "out")
	now := time.Now()
	n := 0
	eachCommand(newRootCmd(), func(c *cobra.Command) {
		if c.Flags().Lookup("output") == nil {
			return
		}
		n++
		args := append(strings.Fields(c.CommandPath())[1:], "-f", specPath, "--out", out, "-o", "yaml")
		stdout, _, err := run(t, now, args...)
		wantExit(t, c.CommandPath()+" -o yaml", err, 2, "-o yaml", "text or json")
		if stdout != "" {
			t.Errorf("%s -o yaml printed:\n%s", c.CommandPath(), stdout)
		}
	})
	if n < 3 {
		t.Errorf("found %d commands with -o, want status, pki check and serve status at least", n)
	}

	if _, _, err := run(t, now, "pki", "-f", specPath, "--out", out); err != nil {
		t.Fatal(err)
	}
	stdout, _, err := run(t, now, "pki", "check", "-f", specPath, "--out", out, "-o", "json")
	if err != nil {
		t.Fatalf("pki check -o json: %v", err)
	}
	var certs []map[string]any
	if err := json.Unmarshal([]byte(stdout), &certs); err != nil || len(certs) != 16 {
		t.Fatalf("pki check -o json: %v\n%s", err, stdout)
	}
	for _, k := range []string{"name", "path", "subject", "issuer", "dnsNames", "ips", "notBefore", "notAfter", "daysLeft", "problems"} {
		if _, ok := certs[0][k]; !ok {
			t.Errorf("pki check -o json: no key %q in %v", k, certs[0])
		}
	}
	if p, ok := certs[0]["problems"].([]any); !ok || len(p) != 0 {
		t.Errorf("problems of a good certificate: %#v, want []", certs[0]["problems"])
	}
}

// TestPKICheckWithoutPKI: no PKI is one line saying how to make one, not 16 blocks of
// zero dates.
func TestPKICheckWithoutPKI(t *testing.T) {
	dir := t.TempDir()
	specPath := exampleSpec(t, dir)
	out := filepath.Join(dir, "out")
	for _, o := range []string{"text", "json"} {
		stdout, _, err := run(t, time.Now(), "pki", "check", "-f", specPath, "--out", out, "-o", o)
		wantExit(t, "pki check -o "+o+" without a PKI", err, 1, "no PKI in "+filepath.Join(out, "pki"), "run `etcdbake pki -f "+specPath+" --out "+out+"`")
		if stdout != "" {
			t.Errorf("pki check -o %s without a PKI printed:\n%s", o, stdout)
		}
	}
}

// TestSpecFileErrors: a missing spec exits 2 as every spec error does; init into a missing
// directory or onto a directory says so plainly, without temporary names or --force.
func TestSpecFileErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.yaml")
	for _, args := range [][]string{{"validate"}, {"pki"}, {"pki", "check"}, {"ignition", "--inline-binaries"}, {"fetch"}, {"kubeadm"}, {"status"}, {"image"}} {
		_, _, err := run(t, time.Now(), append(args, "-f", missing, "--out", filepath.Join(dir, "out"))...)
		wantExit(t, args[0]+" with a missing spec", err, 2, missing+" does not exist", "etcdbake init -f "+missing)
	}
	_, _, err := run(t, time.Now(), "validate", "-f", dir)
	wantExit(t, "validate -f DIR", err, 2, dir+" is a directory")

	noDir := filepath.Join(dir, "no", "such", "dir", "cluster.yaml")
	_, _, err = run(t, time.Now(), "init", "-f", noDir)
	wantExit(t, "init into a missing directory", err, 2, "the directory "+filepath.Dir(noDir)+" does not exist", "mkdir -p")
	if err != nil && (strings.Contains(err.Error(), ".tmp") || strings.Contains(err.Error(), "cluster.yaml.")) {
		t.Errorf("init names a temporary file: %v", err)
	}
	_, _, err = run(t, time.Now(), "init", "-f", dir)
	wantExit(t, "init onto a directory", err, 2, dir+" is a directory", filepath.Join(dir, "cluster.yaml"))
	if err != nil && strings.Contains(err.Error(), "--force") {
		t.Errorf("init onto a directory advises --force, which cannot work: %v", err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 0 {
		t.Errorf("refused inits left %d files in %s", len(entries), dir)
	}
}

// TestReissueNamesStaleOutputs: a re-issued certificate names the outputs made from the
// old one that exist (that node's Ignition config and images, the cluster running under
// up) and the command that refreshes each; other nodes' outputs are not named.
func TestReissueNamesStaleOutputs(t *testing.T) {
	dir := t.TempDir()
	specPath := filepath.Join(dir, "cluster.yaml")
	base := fakeBinaries(t, dir)
	os.WriteFile(specPath, []byte(base), 0o644)
	out := filepath.Join(dir, "out")
	now := time.Now()
	if _, stderr, err := run(t, now, "pki", "-f", specPath, "--out", out); err != nil || strings.Contains(stderr, "stale") {
		t.Fatalf("pki: %v\n%s", err, stderr)
	}
	// Outputs as ignition, image and up leave them.
	ign := fmt.Sprintf(`{"ignition":{"version":"3.4.0"},"storage":{"files":[{"path":%q,"contents":{"source":"http://10.88.0.1:8080/bin/etcd"}}]}}`, spec.BinDir+"/etcd")
	for _, f := range []string{"ignition/etcd-1.ign", "ignition/etcd-3.ign", "images/etcd-1.raw", "images/etcd-3.raw"} {
		p := filepath.Join(out, f)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(ign), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	run1 := filepath.Join(out, "run")
	os.MkdirAll(run1, 0o755)
	st, _ := json.Marshal(vmcluster.RunState{Supervisor: os.Getpid(), Started: now, Nodes: map[string]vmcluster.RunNode{"etcd-1": {}, "etcd-2": {}, "etcd-3": {}}})
	if err := os.WriteFile(filepath.Join(run1, vmcluster.RunStateFile), st, 0o644); err != nil {
		t.Fatal(err)
	}

	src := strings.Replace(base, "    # extraSANs: [etcd-3.example.internal]", "    extraSANs: [etcd-3.example.internal]", 1)
	os.WriteFile(specPath, []byte(src), 0o644)
	stdout, stderr, err := run(t, now, "pki", "-f", specPath, "--out", out)
	if err != nil || !strings.Contains(stdout, "nodes/etcd-3/server: re-issued") {
		t.Fatalf("pki after SAN drift: %v\n%s", err, stdout)
	}
	self := "-f " + specPath + " --out " + out
	for _, want := range []string{
		"pki: these outputs still hold the old certificates of etcd-3; refresh each with the command after it:",
		filepath.Join(out, "ignition/etcd-3.ign") + ": `etcdbake ignition " + self + " --binaries-url http://10.88.0.1:8080/bin`",
		filepath.Join(out, "images/etcd-3.raw") + ": `etcdbake image " + self + " --format raw`",
		"the cluster running under `etcdbake up` (etcd-3): `etcdbake rollout " + self + " --wait` (a rolling upgrade; the data stays)",
	} {
		if !strings.Contains(stderr, want) {
			t.Errorf("pki's report lacks %q:\n%s", want, stderr)
		}
	}
	if strings.Contains(stderr, "etcd-1.ign") || strings.Contains(stderr, "etcd-1.raw") {
		t.Errorf("pki names etcd-1's outputs, whose certificates did not change:\n%s", stderr)
	}
	// Nothing changed: nothing is stale.
	if _, stderr, err := run(t, now, "pki", "-f", specPath, "--out", out); err != nil || strings.Contains(stderr, "stale") {
		t.Errorf("pki with nothing re-issued: %v\n%s", err, stderr)
	}
	// ignition re-issuing (the SAN dropped again) does not call the configs it writes
	// stale, only the images.
	os.WriteFile(specPath, []byte(base), 0o644)
	fb := staticFirstboot(t)
	stdout, stderr, err = run(t, now, "ignition", "-f", specPath, "--out", out, "--cache", filepath.Join(dir, "cache"), "--firstboot", fb, "--inline-binaries")
	if err != nil || !strings.Contains(stdout, "wrote "+filepath.Join(out, "ignition/etcd-3.ign")) {
		t.Fatalf("ignition: %v\n%s\n%s", err, stdout, stderr)
	}
	if !strings.Contains(stderr, filepath.Join(out, "images/etcd-3.raw")+": `etcdbake image") || strings.Contains(stderr, "etcd-3.ign:") {
		t.Errorf("ignition's stale report should name the images and not the configs it wrote:\n%s", stderr)
	}
}

// TestEveryCommandHasExamples: every runnable command's help has an Examples section, and
// each example line is a command line of that command whose flags and arguments parse.
func TestEveryCommandHasExamples(t *testing.T) {
	n := 0
	eachCommand(newRootCmd(), func(c *cobra.Command) {
		if !c.Runnable() || c.Hidden {
			return
		}
		path := c.CommandPath()
		if strings.TrimSpace(c.Example) == "" {
			t.Errorf("%s has no examples", path)
			return
		}
		for _, line := range strings.Split(c.Example, "\n") {
			line = strings.TrimSpace(line)
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			n++
			f := strings.Fields(line)
			if f[0] != "etcdbake" || strings.ContainsAny(line, `"'&|;$`) {
				t.Errorf("%s: example %q is not one plain etcdbake command line", path, line)
				continue
			}
			fresh := newRootCmdFor(&app{now: time.Now}) // parsing sets flags: a tree per line
			cmd, rest, err := fresh.Find(f[1:])
			if err != nil || cmd.CommandPath() != path {
				t.Errorf("%s: example %q runs %s (%v)", path, line, cmd.CommandPath(), err)
				continue
			}
			if err := cmd.ParseFlags(rest); err != nil {
				t.Errorf("%s: example %q: %v", path, line, err)
				continue
			}
			if err := cmd.ValidateArgs(cmd.Flags().Args()); err != nil {
				t.Errorf("%s: example %q: %v", path, line, err)
			}
		}
	})
	if n < 20 {
		t.Errorf("only %d example lines", n)
	}
	// The help shows them.
	stdout, _, err := run(t, time.Now(), "image", "--help")
	if err != nil || !strings.Contains(stdout, "Examples:\n  # ") || !strings.Contains(stdout, "--data-size 8GiB") {
		t.Errorf("image --help: %v\n%s", err, stdout)
	}
}

// TestDataSizeUnits: --data-size takes units; a bad size is a usage error naming the flag
// and how to write one, before any work.
func TestDataSizeUnits(t *testing.T) {
	dir := t.TempDir()
	specPath := exampleSpec(t, dir)
	out := filepath.Join(dir, "out")
	for _, sub := range []string{"image", "build"} {
		// A good size gets as far as the format check, which refuses before any work.
		for _, size := range []string{"8GiB", "8G", "512MiB", "1536m", "1073741824"} {
			_, _, err := run(t, time.Now(), sub, "-f", specPath, "--out", out, "--format", "vmdk", "--data-size", size)
			if err == nil || !strings.Contains(err.Error(), "raw and/or qcow2") {
				t.Errorf("%s --data-size %s: %v, want it accepted (and the format refused)", sub, size, err)
			}
		}
		for size, want := range map[string]string{
			"8parsecs": `"8parsecs" is not a size`,
			"-1GiB":    `"-1GiB" is not a size`,
			"8GB":      "not a whole number of MiB",
			"100MiB":   "minimum of 512MiB",
		} {
			_, _, err := run(t, time.Now(), sub, "-f", specPath, "--out", out, "--data-size", size)
			wantExit(t, sub+" --data-size "+size, err, 2, "--data-size", want)
		}
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("a refused size left %s behind", out)
	}
}
