package ignition

import (
	"bytes"
	"compress/gzip"
	"crypto/sha512"
	"encoding/hex"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	ignconfig "github.com/coreos/ignition/v2/config"
	v34 "github.com/coreos/ignition/v2/config/v3_4"
	"github.com/coreos/ignition/v2/config/v3_4/types"
	"github.com/vincent-petithory/dataurl"

	"github.com/etcdbake/etcdbake/pki"
	"github.com/etcdbake/etcdbake/spec"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// fixedNow makes certificates (and so configs) depend only on the test's inputs.
var fixedNow = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

func exampleCluster(t testing.TB) *spec.Cluster {
	t.Helper()
	c, rep := spec.Parse(spec.Example)
	if rep.HasErrors() {
		t.Fatalf("example spec: %s", rep.String())
	}
	return c
}

// testInput builds a full Input: a real PKI in a temp dir and small local files standing
// in for the four programs (their bytes are only data to Ignition).
func testInput(t testing.TB, c *spec.Cluster) Input {
	in, _ := testInputDir(t, c)
	return in
}

func testInputDir(t testing.TB, c *spec.Cluster) (Input, string) {
	t.Helper()
	dir := t.TempDir()
	if _, err := pki.Ensure(c, filepath.Join(dir, "pki"), fixedNow); err != nil {
		t.Fatal(err)
	}
	set, err := pki.Load(c, filepath.Join(dir, "pki"))
	if err != nil {
		t.Fatal(err)
	}
	bins := map[string]Binary{}
	for _, name := range BinaryNames {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\necho "+name+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		b, err := LocalBinary(name, p)
		if err != nil {
			t.Fatal(err)
		}
		bins[name] = b
	}
	return Input{Cluster: c, PKI: set, Binaries: bins, Options: Options{BinariesURL: "http://10.88.0.1:8080/binaries"}}, filepath.Join(dir, "pki")
}

func TestGoldenFiles(t *testing.T) {
	c := exampleCluster(t)
	n := c.Nodes[0]
	files := map[string][]byte{
		"etcd.env":               EtcdEnv(c, n),
		"etcdctl.env":            EtcdctlEnv(c, n),
		"etcdctl":                EtcdctlWrapperScript(),
		"flanneld.env":           FlannelEnv(c, n),
		"chrony.conf":            ChronyConf(c),
		"10-etcdbake.network":    NetworkdUnit(n),
		"etcdbake.nmconnection":  NMKeyfile(n),
		"90-etcdbake.conf":       Sysctl(),
		"modules-load.conf":      Modules(c),
		"etcd.service":           EtcdService(c),
		"etcd-firstboot.service": FirstbootService(c),
		"etcd-ready.service":     ReadyService(c),
		"flanneld.service":       FlannelService(c),
		MaintainUnit:             MaintainService(c),
		MaintainTimer:            MaintainTimerUnit(c),
		SnapshotUnit:             SnapshotService(c),
		SnapshotTimer:            SnapshotTimerUnit(c),
		"firewall.nft":           Firewall(c),
		FirewallUnit:             FirewallService(),
		"sshd-etcdbake.conf":     SSHDConfig(c),
		"ssh-hostkeys":           SSHHostKeysScript(),
		SSHKeygenUnit:            SSHKeygenService(),
		"sudoers":                Sudoers(c),
		"hosts":                  Hosts(c),
	}
	for name, got := range files {
		path := filepath.Join("testdata", "golden", n.Name, name)
		if *update {
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, got, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (run go test ./ignition -update to create it)", err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs from %s:\n--- got\n%s\n--- want\n%s", name, path, got, want)
		}
	}
}

// envMap parses KEY=value lines as systemd's EnvironmentFile= does for these files.
func envMap(t *testing.T, b []byte) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("bad env line %q", line)
		}
		if _, dup := m[k]; dup {
			t.Fatalf("%s set twice", k)
		}
		m[k] = v
	}
	return m
}

// TestCISEtcd checks the rendered flags against CIS Kubernetes Benchmark section 2
// (etcd), recommendations 2.1-2.7.
func TestCISEtcd(t *testing.T) {
	c := exampleCluster(t)
	for _, n := range c.Nodes {
		env := envMap(t, EtcdEnv(c, n))
		nc := c.NodeConfigFor(n)
		checks := []struct {
			id   string
			ok   bool
			what string
		}{
			{"2.1", env["ETCD_CERT_FILE"] == nc.ServerCert && env["ETCD_KEY_FILE"] == spec.EtcdPKIDir+"/server.key", "--cert-file and --key-file set"},
			{"2.2", env["ETCD_CLIENT_CERT_AUTH"] == "true", "--client-cert-auth=true"},
			{"2.3", env["ETCD_AUTO_TLS"] != "true", "--auto-tls not true"},
			{"2.4", env["ETCD_PEER_CERT_FILE"] == nc.PeerCert && env["ETCD_PEER_KEY_FILE"] == spec.EtcdPKIDir+"/peer.key", "--peer-cert-file and --peer-key-file set"},
			{"2.5", env["ETCD_PEER_CLIENT_CERT_AUTH"] == "true", "--peer-client-cert-auth=true"},
			{"2.6", env["ETCD_PEER_AUTO_TLS"] != "true", "--peer-auto-tls not true"},
			{"2.7", env["ETCD_TRUSTED_CA_FILE"] != "" && env["ETCD_PEER_TRUSTED_CA_FILE"] != "" && env["ETCD_TRUSTED_CA_FILE"] != env["ETCD_PEER_TRUSTED_CA_FILE"], "a CA unique to etcd (and a separate peer CA)"},
		}
		for _, ch := range checks {
			if !ch.ok {
				t.Errorf("%s: CIS %s failed: %s", n.Name, ch.id, ch.what)
			}
		}
		for _, u := range strings.Split(env["ETCD_LISTEN_CLIENT_URLS"]+","+env["ETCD_LISTEN_PEER_URLS"], ",") {
			if !strings.HasPrefix(u, "https://") {
				t.Errorf("%s: listener %s is not TLS", n.Name, u)
			}
		}
		if env["ETCD_LISTEN_METRICS_URLS"] != "http://127.0.0.1:2381" {
			t.Errorf("metrics must stay on loopback, got %s", env["ETCD_LISTEN_METRICS_URLS"])
		}
		if env["ETCD_TLS_MIN_VERSION"] != "TLS1.3" {
			t.Errorf("tls min version %q", env["ETCD_TLS_MIN_VERSION"])
		}
		if env["ETCD_HEARTBEAT_INTERVAL"] != "250" || env["ETCD_ELECTION_TIMEOUT"] != "2500" {
			t.Errorf("tuning from spec not applied: %v/%v", env["ETCD_HEARTBEAT_INTERVAL"], env["ETCD_ELECTION_TIMEOUT"])
		}
		if _, set := env["ETCD_INITIAL_CLUSTER_STATE"]; set {
			t.Errorf("initial cluster state must come from etcd-firstboot only")
		}
	}
	// The ca.crt named by the node's etcd must be the client/server CA, not the peer CA.
	in := testInput(t, c)
	if bytes.Equal(in.PKI.CA, in.PKI.PeerCA) {
		t.Fatal("client and peer CA are the same certificate")
	}
}

func parseRendered(t *testing.T, b []byte) types.Config {
	t.Helper()
	cfg, rep, err := v34.Parse(b)
	if err != nil || rep.IsFatal() {
		t.Fatalf("Ignition 3.4 parser rejects the config: %v\n%s", err, rep.String())
	}
	if len(rep.Entries) != 0 {
		t.Errorf("Ignition reports warnings: %s", rep.String())
	}
	// The newest parser Ignition ships must accept it too (what current FCOS runs).
	if _, rep, err := ignconfig.Parse(b); err != nil || rep.IsFatal() {
		t.Fatalf("latest Ignition parser rejects the config: %v\n%s", err, rep.String())
	}
	return cfg
}

func fileContents(t *testing.T, f types.File) []byte {
	t.Helper()
	if f.Contents.Source == nil {
		return nil
	}
	src := *f.Contents.Source
	if !strings.HasPrefix(src, "data:") {
		return nil
	}
	du, err := dataurl.DecodeString(src)
	if err != nil {
		t.Fatalf("%s: bad data URL: %v", f.Path, err)
	}
	return du.Data
}

func TestRenderedConfigsPassIgnitionAndCarryTheNode(t *testing.T) {
	c := exampleCluster(t)
	in := testInput(t, c)
	configs, err := Render(in)
	if err != nil {
		t.Fatal(err)
	}
	if len(configs) != 3 {
		t.Fatalf("got %d configs", len(configs))
	}
	for _, n := range c.Nodes {
		cfg := parseRendered(t, configs[n.Name])
		if cfg.Ignition.Version != "3.4.0" {
			t.Errorf("version %s", cfg.Ignition.Version)
		}
		files := map[string]types.File{}
		for _, f := range cfg.Storage.Files {
			files[f.Path] = f
		}
		checkFile := func(path string, mode int, owner string, want []byte) {
			f, ok := files[path]
			if !ok {
				t.Errorf("%s: %s missing", n.Name, path)
				return
			}
			if *f.Mode != mode {
				t.Errorf("%s: %s mode %o, want %o", n.Name, path, *f.Mode, mode)
			}
			gotOwner := ""
			if f.User.Name != nil {
				gotOwner = *f.User.Name
			}
			if gotOwner != owner {
				t.Errorf("%s: %s owner %q, want %q", n.Name, path, gotOwner, owner)
			}
			if want != nil && !bytes.Equal(fileContents(t, f), want) {
				t.Errorf("%s: %s contents differ", n.Name, path)
			}
		}
		certs := in.PKI.Nodes[n.Name]
		checkFile(spec.EtcdPKIDir+"/server.key", 0o600, "etcd", certs.Server.Key)
		checkFile(spec.EtcdPKIDir+"/peer.key", 0o600, "etcd", certs.Peer.Key)
		checkFile(spec.EtcdPKIDir+"/ca.crt", 0o644, "", in.PKI.CA)
		checkFile(spec.EtcdPKIDir+"/peer-ca.crt", 0o644, "", in.PKI.PeerCA)
		checkFile(spec.FlannelPKIDir+"/flanneld.key", 0o600, "", certs.Flanneld.Key)
		checkFile(spec.FirstbootPKIDir+"/firstboot.key", 0o600, "", certs.Firstboot.Key)
		checkFile(EtcdEnvPath, 0o644, "", EtcdEnv(c, n))
		checkFile(HostnamePath, 0o644, "", []byte(n.Name+"\n"))
		for _, name := range BinaryNames {
			f := files[spec.BinDir+"/"+name]
			if f.Contents.Source == nil || *f.Contents.Source != "http://10.88.0.1:8080/binaries/"+name {
				t.Errorf("%s: binary %s source %v", n.Name, name, f.Contents.Source)
			}
			if f.Contents.Verification.Hash == nil || *f.Contents.Verification.Hash != "sha512-"+in.Binaries[name].SHA512 {
				t.Errorf("%s: binary %s not verified by sha512", n.Name, name)
			}
		}
		nc, err := spec.LoadNodeConfigBytes(fileContents(t, files[spec.NodeConfigPath]))
		if err != nil || nc.Name != n.Name || len(nc.Peers) != 3 {
			t.Errorf("%s: node.json: %v %+v", n.Name, err, nc)
		}
		var dataDir bool
		for _, d := range cfg.Storage.Directories {
			if d.Path == spec.EtcdDataDir && *d.Mode == 0o700 && *d.User.Name == "etcd" {
				dataDir = true
			}
		}
		if !dataDir {
			t.Errorf("%s: %s 0700 etcd missing", n.Name, spec.EtcdDataDir)
		}
		if len(cfg.Passwd.Users) == 0 || cfg.Passwd.Users[0].Name != "etcd" || !*cfg.Passwd.Users[0].System {
			t.Errorf("%s: etcd system user missing", n.Name)
		}
		enabled := map[string]bool{}
		for _, u := range cfg.Systemd.Units {
			enabled[u.Name] = u.Enabled != nil && *u.Enabled
		}
		for _, u := range []string{EtcdUnit, FirstbootUnit, ReadyUnit, FlannelUnit, MaintainTimer, SnapshotTimer} {
			if !enabled[u] {
				t.Errorf("%s: unit %s not enabled", n.Name, u)
			}
		}
	}
}

// TestNoForeignKeys scans every node's config, in every encoding a key could appear in,
// for the CA keys, the client keys, and the other nodes' keys.
func TestNoForeignKeys(t *testing.T) {
	c := exampleCluster(t)
	in, caDir := testInputDir(t, c)
	in.Options = Options{Inline: true}
	configs, err := Render(in)
	if err != nil {
		t.Fatal(err)
	}
	// Every private key the operator holds, by owner.
	type key struct {
		owner, name string
		pem         []byte
	}
	var keys []key
	for _, ca := range []string{"ca", "peer-ca"} {
		_, kp := pki.CAPath(caDir, ca)
		b, err := os.ReadFile(kp)
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, key{"", ca, b})
	}
	for name, p := range in.PKI.Clients {
		keys = append(keys, key{"", "clients/" + name, p.Key})
	}
	for node, nf := range in.PKI.Nodes {
		for kind, p := range map[string]pki.Pair{"server": nf.Server, "peer": nf.Peer, "firstboot": nf.Firstboot, "flanneld": nf.Flanneld} {
			keys = append(keys, key{node, node + "/" + kind, p.Key})
		}
	}
	if len(keys) != 2+2+4*len(c.Nodes) {
		t.Fatalf("expected %d keys, found %d", 2+2+4*len(c.Nodes), len(keys))
	}
	for node, raw := range configs {
		cfg := parseRendered(t, raw)
		var decoded [][]byte
		for _, f := range cfg.Storage.Files {
			decoded = append(decoded, fileContents(t, f))
		}
		own := 0
		for _, k := range keys {
			body := pemBody(k.pem)
			found := bytes.Contains(raw, []byte(body)) || bytes.Contains(raw, k.pem)
			for _, d := range decoded {
				found = found || bytes.Contains(d, []byte(body))
			}
			switch {
			case k.owner == node && !found:
				t.Errorf("%s: its own key %s is missing", node, k.name)
			case k.owner == node:
				own++
			case found:
				t.Errorf("%s: config contains a key that is not its own: %s", node, k.name)
			}
		}
		if own != 4 {
			t.Errorf("%s: %d own keys, want 4", node, own)
		}
	}
}

// pemBody is the base64 payload of a PEM block, joined, which is what would survive any
// re-wrapping of the key.
func pemBody(b []byte) string {
	var out strings.Builder
	for _, line := range strings.Split(string(b), "\n") {
		if line == "" || strings.HasPrefix(line, "-----") {
			continue
		}
		out.WriteString(line)
	}
	// The first 64 characters of the body are enough to be unique and survive wrapping
	// at 64 columns.
	s := out.String()
	if len(s) > 64 {
		s = s[:64]
	}
	return s
}

func TestRenderIsDeterministic(t *testing.T) {
	c := exampleCluster(t)
	in := testInput(t, c)
	a, err := Render(in)
	if err != nil {
		t.Fatal(err)
	}
	in.Options = Options{Inline: true}
	inlineA, err := Render(in)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		in.Options = Options{BinariesURL: "http://10.88.0.1:8080/binaries"}
		b, _ := Render(in)
		in.Options = Options{Inline: true}
		inlineB, _ := Render(in)
		for n := range a {
			if !bytes.Equal(a[n], b[n]) || !bytes.Equal(inlineA[n], inlineB[n]) {
				t.Fatalf("%s: two renders of the same inputs differ", n)
			}
		}
	}
	// And different nodes get different configs.
	if bytes.Equal(a["etcd-1"], a["etcd-2"]) {
		t.Fatal("nodes share one config")
	}
}

func TestInlineBinariesDecompressToTheFile(t *testing.T) {
	c := exampleCluster(t)
	in := testInput(t, c)
	in.Options = Options{Inline: true}
	configs, err := Render(in)
	if err != nil {
		t.Fatal(err)
	}
	cfg := parseRendered(t, configs["etcd-2"])
	seen := map[string]bool{}
	for _, f := range cfg.Storage.Files {
		name, ok := strings.CutPrefix(f.Path, spec.BinDir+"/")
		if !ok {
			continue
		}
		seen[name] = true
		if f.Contents.Compression == nil || *f.Contents.Compression != "gzip" || f.Contents.Source == nil {
			t.Fatalf("%s: not a gzip data URL: %+v", f.Path, f.Contents)
		}
		// What Ignition writes: the data URL decoded and gunzipped, checked against the
		// verification hash (of the uncompressed file), equal to the binary given.
		du, err := dataurl.DecodeString(*f.Contents.Source)
		if err != nil {
			t.Fatalf("%s: %v", f.Path, err)
		}
		zr, err := gzip.NewReader(bytes.NewReader(du.Data))
		if err != nil {
			t.Fatalf("%s: %v", f.Path, err)
		}
		got, err := io.ReadAll(zr)
		if err != nil {
			t.Fatalf("%s: %v", f.Path, err)
		}
		want, err := os.ReadFile(in.Binaries[name].Path)
		if err != nil {
			t.Fatalf("%s: no such binary given: %v", f.Path, err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s decompresses to %d bytes that are not the binary's %d", f.Path, len(got), len(want))
		}
		sum := sha512.Sum512(got)
		if f.Contents.Verification.Hash == nil || *f.Contents.Verification.Hash != "sha512-"+hex.EncodeToString(sum[:]) {
			t.Errorf("%s: verification %v does not match the decompressed file", f.Path, f.Contents.Verification.Hash)
		}
	}
	for _, name := range BinaryNames {
		if !seen[name] {
			t.Errorf("%s is not in the config", name)
		}
	}
}

func TestNoBinarySource(t *testing.T) {
	c := exampleCluster(t)
	in := testInput(t, c)
	in.Options = Options{}
	if _, err := Render(in); err != ErrNoBinarySource {
		t.Fatalf("got %v", err)
	}
	in.Options = Options{BinariesURL: "ftp://x/y"}
	if _, err := Render(in); err == nil || !strings.Contains(err.Error(), "--binaries-url") {
		t.Fatalf("got %v", err)
	}
}

func TestButaneFragmentsMerge(t *testing.T) {
	c := exampleCluster(t)
	in := testInput(t, c)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "motd"), []byte("managed by etcdbake\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	in.Fragments = []Fragment{{Source: "all.bu", Dir: dir, Data: []byte(`variant: fcos
version: 1.5.0
storage:
  files:
    - path: /etc/motd
      contents:
        local: motd
systemd:
  units:
    - name: node-exporter.service
      enabled: true
      contents: |
        [Service]
        ExecStart=/usr/bin/true
        [Install]
        WantedBy=multi-user.target
`)}}
	in.PerNode = map[string][]Fragment{"etcd-3": {{Source: "etcd-3.bu", Dir: dir, Data: []byte(`variant: flatcar
version: 1.1.0
storage:
  files:
    - path: /etc/only-on-3
      contents:
        inline: three
`)}}}
	configs, err := Render(in)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range c.Nodes {
		cfg := parseRendered(t, configs[n.Name])
		paths := map[string][]byte{}
		for _, f := range cfg.Storage.Files {
			paths[f.Path] = fileContents(t, f)
		}
		if string(paths["/etc/motd"]) != "managed by etcdbake\n" {
			t.Errorf("%s: /etc/motd = %q", n.Name, paths["/etc/motd"])
		}
		_, has3 := paths["/etc/only-on-3"]
		if has3 != (n.Name == "etcd-3") {
			t.Errorf("%s: per-node fragment applied wrongly", n.Name)
		}
		var unit bool
		for _, u := range cfg.Systemd.Units {
			unit = unit || u.Name == "node-exporter.service"
		}
		if !unit {
			t.Errorf("%s: fragment unit missing", n.Name)
		}
	}
	// A fragment that produces a newer Ignition than 3.4 is refused with the fix.
	in.PerNode = nil
	in.Fragments = []Fragment{{Source: "new.bu", Data: []byte("variant: fcos\nversion: 1.6.0\n")}}
	if _, err := Render(in); err == nil || !strings.Contains(err.Error(), "new.bu") || !strings.Contains(err.Error(), "1.5.0") {
		t.Fatalf("got %v", err)
	}
	// Invalid Butane names the file.
	in.Fragments = []Fragment{{Source: "bad.bu", Data: []byte("variant: fcos\nversion: 1.5.0\nstorage: {files: [{path: relative}]}\n")}}
	if _, err := Render(in); err == nil || !strings.Contains(err.Error(), "bad.bu") {
		t.Fatalf("got %v", err)
	}
}

func TestWriteReplacesAtomically(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out", "ignition")
	if err := Write(dir, map[string][]byte{"a": []byte("1"), "b": []byte("2")}); err != nil {
		t.Fatal(err)
	}
	if err := Write(dir, map[string][]byte{"a": []byte("3")}); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(filepath.Dir(dir))
	if len(entries) != 1 {
		t.Fatalf("leftovers next to the output: %v", entries)
	}
	got, _ := os.ReadDir(dir)
	if len(got) != 1 || got[0].Name() != "a.ign" {
		t.Fatalf("output not replaced: %v", got)
	}
	st, _ := os.Stat(filepath.Join(dir, "a.ign"))
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("config mode %v: configs hold keys", st.Mode())
	}
}

// TestBackupTargetFiles: a backup target's credentials go into every node's config, root's
// and 0600, read from the operator's file; a missing or keyless file is an error naming
// the field, before anything is written.
func TestBackupTargetFiles(t *testing.T) {
	c := exampleCluster(t)
	in, _ := testInputDir(t, c)
	dir := t.TempDir()
	creds := filepath.Join(dir, "s3.env")
	os.WriteFile(creds, []byte("AWS_ACCESS_KEY_ID=AKIA\nAWS_SECRET_ACCESS_KEY=secret\n"), 0o600)
	c.Backup.Target = &spec.BackupTarget{Endpoint: "https://s3.example.com", Bucket: "etcd-backups", CredentialsFile: creds}
	configs, err := Render(in)
	if err != nil {
		t.Fatal(err)
	}
	for node, raw := range configs {
		cfg := parseRendered(t, raw)
		files := map[string]types.File{}
		for _, f := range cfg.Storage.Files {
			files[f.Path] = f
		}
		if f, ok := files[spec.S3CredentialsPath]; !ok || *f.Mode != 0o600 || f.User.Name != nil || !strings.Contains(string(fileContents(t, f)), "AWS_SECRET_ACCESS_KEY=secret") {
			t.Errorf("%s: no %s, 0600 root, with the secret", node, spec.S3CredentialsPath)
		}
		nc, err := spec.LoadNodeConfigBytes(fileContents(t, files[spec.NodeConfigPath]))
		if err != nil || nc.Backup.Target == nil || nc.Backup.Target.CredentialsFile != spec.S3CredentialsPath || nc.Backup.Target.Bucket != "etcd-backups" {
			t.Errorf("%s: node.json's backup target: %+v", node, nc.Backup.Target)
		}
	}
	for name, content := range map[string]string{"missing": "", "keyless": "AWS_ACCESS_KEY_ID=AKIA\n"} {
		p := filepath.Join(dir, name)
		if content != "" {
			os.WriteFile(p, []byte(content), 0o600)
		}
		c.Backup.Target.CredentialsFile = p
		if _, err := Render(in); err == nil || !strings.Contains(err.Error(), "backup.target.credentialsFile") {
			t.Errorf("%s credentials file: %v", name, err)
		}
	}
}
