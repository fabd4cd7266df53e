package ignition

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/etcdbake/etcdbake/spec"
)

func bu(body string) []byte { return []byte("variant: fcos\nversion: 1.5.0\n" + body) }

// TestFragmentBreakingTheMergeIsTheUsersError: a fragment that is valid on its own but makes
// the merged config invalid (a link over a directory etcdbake writes files into) is the
// user's error, naming the fragment and the Ignition path; not an etcdbake bug.
func TestFragmentBreakingTheMergeIsTheUsersError(t *testing.T) {
	c := exampleCluster(t)
	in := testInput(t, c)
	in.PerNode = map[string][]Fragment{"etcd-2": {{Field: "nodes[1].butane", Source: "links.bu", Data: bu(`storage:
  links:
    - path: /etc/flannel
      target: /srv/flannel
`)}}}
	_, err := Render(in)
	if err == nil {
		t.Fatal("a link over /etc/flannel was accepted")
	}
	msg := err.Error()
	for _, want := range []string{"nodes[1].butane: links.bu", "etcd-2", "$.storage.files.", "/etc/flannel/flanneld.env"} {
		if !strings.Contains(msg, want) {
			t.Errorf("want %q in: %v", want, err)
		}
	}
	if strings.Contains(msg, "etcdbake bug") {
		t.Errorf("reported as an internal error: %v", err)
	}
	var fe *FragmentError
	if !errors.As(err, &fe) || fe.Node != "etcd-2" {
		t.Errorf("not a *FragmentError for etcd-2: %#v", err)
	}
}

// TestGeneratedConfigErrorStaysInternal: when etcdbake's own part is invalid (here the
// login user is the etcd account too, which spec validation would refuse: two
// passwd.users named etcd), a harmless fragment is not blamed.
func TestGeneratedConfigErrorStaysInternal(t *testing.T) {
	c := exampleCluster(t)
	in := testInput(t, c)
	c.SSH.User, c.SSH.AuthorizedKeys = "etcd", []string{"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGnotarealkeybutshapedlikeone you@laptop"}
	in.Fragments = []Fragment{{Field: "butane", Source: "motd.bu", Data: bu("storage:\n  files:\n    - path: /etc/motd\n      contents:\n        inline: hi\n")}}
	_, err := Render(in)
	var fe *FragmentError
	if err == nil || !strings.Contains(err.Error(), "etcdbake bug") || errors.As(err, &fe) || strings.Contains(err.Error(), "motd.bu") {
		t.Fatalf("want an internal error that does not blame the fragment, got %v", err)
	}
}

// overrideCases replace or redefine what etcdbake owns; each names the Ignition path.
var overrideCases = []struct {
	name, body, path, what string
}{
	{"etcd.service contents", "systemd:\n  units:\n    - name: etcd.service\n      contents: \"[Service]\\nExecStart=/bin/true\\n\"\n", "$.systemd.units.0", "etcd.service"},
	{"etcd-firstboot.service contents", "systemd:\n  units:\n    - name: etcd-firstboot.service\n      contents: \"[Service]\\nExecStart=/bin/true\\n\"\n", "$.systemd.units.0", "etcd-firstboot.service"},
	{"etcd-ready.service contents", "systemd:\n  units:\n    - name: etcd-ready.service\n      contents: \"[Service]\\nExecStart=/bin/true\\n\"\n", "$.systemd.units.0", "etcd-ready.service"},
	{"flanneld.service masked", "systemd:\n  units:\n    - name: flanneld.service\n      mask: true\n", "$.systemd.units.0", "flanneld.service"},
	{"etcd.service disabled", "systemd:\n  units:\n    - name: x.service\n      contents: \"[Service]\\nExecStart=/bin/true\\n\"\n    - name: etcd.service\n      enabled: false\n", "$.systemd.units.1", "etcd.service"},
	{"unit file over etcd.service", "storage:\n  files:\n    - path: /etc/systemd/system/etcd.service\n      contents:\n        inline: \"[Service]\\n\"\n", "$.storage.files.0", "etcd.service"},
	{"etcd login shell", "passwd:\n  users:\n    - name: etcd\n      shell: /bin/bash\n", "$.passwd.users.0", "etcd"},
	{"etcd group", "passwd:\n  groups:\n    - name: etcd\n      gid: 0\n", "$.passwd.groups.0", "etcd"},
	{"server key replaced", "storage:\n  files:\n    - path: /etc/etcd/pki/server.key\n      overwrite: true\n      contents:\n        inline: nope\n", "$.storage.files.0", "/etc/etcd/pki/server.key"},
	{"etcd.env appended", "storage:\n  files:\n    - path: /etc/etcd/etcd.env\n      append:\n        - inline: ETCD_CLIENT_CERT_AUTH=false\n", "$.storage.files.0", "/etc/etcd/etcd.env"},
	{"data dir opened", "storage:\n  directories:\n    - path: /var/lib/etcd\n      mode: 0755\n", "$.storage.directories.0", "/var/lib/etcd"},
	{"binary linked away", "storage:\n  links:\n    - path: /opt/etcdbake/bin/etcd\n      target: /usr/bin/etcd\n", "$.storage.links.0", "/opt/etcdbake/bin/etcd"},
}

// TestFragmentOverridesRefused: a fragment may not replace etcdbake's units, files or
// system account without the spec's opt-in; the message names the fragment and the path.
func TestFragmentOverridesRefused(t *testing.T) {
	c := exampleCluster(t)
	in := testInput(t, c)
	for _, tc := range overrideCases {
		t.Run(tc.name, func(t *testing.T) {
			in.Fragments = []Fragment{{Field: "butane", Source: "over.bu", Data: bu(tc.body)}}
			_, err := Render(in)
			if err == nil {
				t.Fatal("accepted")
			}
			for _, want := range []string{"butane: over.bu", tc.path, tc.what, "butaneOverrides"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("want %q in: %v", want, err)
				}
			}
		})
	}
}

// TestFragmentDropInsAllowed: drop-ins, new units and new files next to etcdbake's stay
// allowed.
func TestFragmentDropInsAllowed(t *testing.T) {
	c := exampleCluster(t)
	in := testInput(t, c)
	in.Fragments = []Fragment{{Field: "butane", Source: "ok.bu", Data: bu(`storage:
  files:
    - path: /etc/systemd/system/flanneld.service.d/20-extra.conf
      contents:
        inline: "[Service]\nEnvironment=X=1\n"
    - path: /etc/etcd/extra.env
      contents:
        inline: "X=1\n"
systemd:
  units:
    - name: etcd.service
      enabled: true
      dropins:
        - name: 30-nice.conf
          contents: "[Service]\nNice=-5\n"
    - name: node-exporter.service
      enabled: true
      contents: "[Service]\nExecStart=/usr/bin/true\n[Install]\nWantedBy=multi-user.target\n"
`)}}
	configs, err := Render(in)
	if err != nil {
		t.Fatal(err)
	}
	cfg := parseRendered(t, configs["etcd-1"])
	var dropin bool
	for _, u := range cfg.Systemd.Units {
		if u.Name == EtcdUnit {
			dropin = len(u.Dropins) == 1 && u.Contents != nil && strings.Contains(*u.Contents, "User=etcd")
		}
	}
	if !dropin {
		t.Error("etcd.service lost its contents or the drop-in")
	}
}

// TestFragmentOverridesOptIn: with butaneOverrides the same fragments are merged, and
// CheckFragments reports each as a warning instead.
func TestFragmentOverridesOptIn(t *testing.T) {
	c := exampleCluster(t)
	c.ButaneOverrides = true
	in := testInput(t, c)
	in.Fragments = []Fragment{{Field: "butane", Source: "over.bu", Data: bu("passwd:\n  users:\n    - name: etcd\n      shell: /bin/bash\n")}}
	configs, err := Render(in)
	if err != nil {
		t.Fatal(err)
	}
	cfg := parseRendered(t, configs["etcd-3"])
	if u := cfg.Passwd.Users[0]; u.Name != "etcd" || u.Shell == nil || *u.Shell != "/bin/bash" {
		t.Fatalf("override not merged: %+v", u)
	}
	// A unit file over etcd.service stays refused: the merged config would be invalid.
	in.Fragments = []Fragment{{Field: "butane", Source: "over.bu", Data: bu(overrideCases[5].body)}}
	var fe *FragmentError
	if _, err := Render(in); !errors.As(err, &fe) || !strings.Contains(err.Error(), "path conflicts with systemd unit") {
		t.Fatalf("got %v", err)
	}
}

// writeSpecFragments puts fragments next to a spec: files maps name -> content, and the
// cluster's butane fields name them.
func writeSpecFragments(t *testing.T, c *spec.Cluster, all string, perNode map[int]string, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if all != "" {
		c.Butane = filepath.Join(dir, all)
	}
	for i, name := range perNode {
		c.Nodes[i].Butane = filepath.Join(dir, name)
	}
	return dir
}

// TestCheckFragments: every fragment is read, translated and merged; each finding is a
// problem at the spec field naming the fragment, warnings included; a fragment for every
// node that breaks the merge is reported once.
func TestCheckFragments(t *testing.T) {
	c := exampleCluster(t)
	dir := writeSpecFragments(t, c, "all.bu", map[int]string{1: "missing.bu", 2: "three.bu"}, map[string]string{
		"all.bu":   string(bu("storage:\n  links:\n    - path: /etc/flannel\n      target: /srv/flannel\n")),
		"three.bu": string(bu("storage:\n  files:\n    - path: /etc/motd\n      colour: blue\n    - path: /etc/etcd/pki/ca.crt\n")),
	})
	rep, err := CheckFragments(c)
	if err != nil {
		t.Fatal(err)
	}
	got := rep.String()
	for _, want := range []string{
		"warning: nodes[2].butane: " + filepath.Join(dir, "three.bu") + ": warning at $.storage.files.0.colour, line 6 col 7: unused key colour",
		"error: nodes[2].butane: " + filepath.Join(dir, "three.bu") + ": $.storage.files.1 replaces /etc/etcd/pki/ca.crt, which etcdbake writes: remove the entry, or set butaneOverrides: true",
		"error: nodes[1].butane: " + filepath.Join(dir, "missing.bu") + ": does not exist",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("want %q in:\n%s", want, got)
		}
	}
	// The merge is checked once the fragments themselves are usable.
	c.Nodes[1].Butane, c.Nodes[2].Butane = "", ""
	rep, err = CheckFragments(c)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Problems) != 1 || rep.Problems[0].Path != "butane" ||
		!strings.Contains(rep.Problems[0].Message, "all.bu makes the Ignition config of node etcd-1 invalid: error at $.storage.directories.4 (/etc/flannel/pki, written by etcdbake): directory path includes link") {
		t.Fatalf("want one problem at butane, got:\n%s", rep.String())
	}
	// No fragments, no problems.
	c.Butane = ""
	if rep, err := CheckFragments(c); err != nil || len(rep.Problems) != 0 {
		t.Fatalf("got %v %s", err, rep.String())
	}
}

// TestSpecFragments reads the spec's fragments with their fields; a missing file is a
// *FragmentError naming the field.
func TestSpecFragments(t *testing.T) {
	c := exampleCluster(t)
	writeSpecFragments(t, c, "all.bu", map[int]string{2: "three.bu"}, map[string]string{"all.bu": "a", "three.bu": "b"})
	all, per, err := SpecFragments(c)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 1 || all[0].Field != "butane" || string(all[0].Data) != "a" ||
		len(per["etcd-3"]) != 1 || per["etcd-3"][0].Field != "nodes[2].butane" || len(per["etcd-1"]) != 0 {
		t.Fatalf("got %+v %+v", all, per)
	}
	c.Nodes[0].Butane = "/nonexistent/x.bu"
	var fe *FragmentError
	if _, _, err := SpecFragments(c); !errors.As(err, &fe) || !strings.HasPrefix(err.Error(), "nodes[0].butane: /nonexistent/x.bu: does not exist") {
		t.Fatalf("got %v", err)
	}
}
