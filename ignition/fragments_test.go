package ignition

import (
	"errors"
	"strings"
	"testing"
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
