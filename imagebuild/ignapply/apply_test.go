package ignapply

import (
	"crypto/sha256"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/coreos/ignition/v2/config/v3_4/types"
	"github.com/etcdbake/etcdbake/imagebuild/fstree"
	"github.com/etcdbake/etcdbake/imagebuild/internal/imagetest"
)

// TestApplyIgnitionMatchesIgnitionApply applies a real rendered node config to a
// synthetic base with Apply, and the same config to the same base on disk with
// what Ignition itself runs: groupadd/useradd for the passwd section (as Ignition's
// passwd stage would, since ignition-apply refuses it) and ignition-apply for the rest.
// Every entry of the two trees must match in type, mode, owner, link target and
// contents, except the enablement symlinks only Apply makes; after `systemctl
// enable` of the enabled units on disk the trees must be identical.
func TestApplyIgnitionMatchesIgnitionApply(t *testing.T) {
	apply := imagetest.IgnitionApply(t)
	raw := imagetest.Render(t)
	cfg := imagetest.Config(t, raw)

	mine := imagetest.BaseTree(t)
	if err := Apply(mine, raw, Options{}); err != nil {
		t.Fatal(err)
	}

	root := imagetest.RootDir(t)
	imagetest.WriteTree(t, imagetest.BaseTree(t), root)
	imagetest.IgnitionPasswd(t, root, cfg.Passwd)
	imagetest.RunIgnitionApply(t, apply, root, raw)

	// Everything the config names is there.
	for _, f := range cfg.Storage.Files {
		if e, ok := mine.Get(f.Path); !ok || !e.IsRegular() {
			t.Errorf("file %s not created", f.Path)
		}
	}
	for _, d := range cfg.Storage.Directories {
		if e, ok := mine.Get(d.Path); !ok || !e.IsDir() {
			t.Errorf("directory %s not created", d.Path)
		}
	}
	var enabled []string
	extras := map[string]string{}
	for _, u := range cfg.Systemd.Units {
		for _, d := range u.Dropins {
			if e, ok := mine.Get("etc/systemd/system/" + u.Name + ".d/" + d.Name); !ok || string(e.Data) != *d.Contents {
				t.Errorf("drop-in %s of %s not written", d.Name, u.Name)
			}
		}
		if u.Contents == nil {
			if len(u.Dropins) == 0 {
				t.Errorf("unit %s has neither contents nor drop-ins", u.Name)
			}
			continue
		}
		if e, ok := mine.Get("etc/systemd/system/" + u.Name); !ok || string(e.Data) != *u.Contents {
			t.Errorf("unit %s not written", u.Name)
		}
		if u.Enabled != nil && *u.Enabled {
			enabled = append(enabled, u.Name)
			target := "multi-user.target" // timers: timers.target
			if m := regexp.MustCompile(`(?m)^WantedBy=(\S+)`).FindStringSubmatch(*u.Contents); m != nil {
				target = m[1]
			}
			extras["etc/systemd/system/"+target+".wants"] = "dir drwxr-xr-x 0:0"
			extras["etc/systemd/system/"+target+".wants/"+u.Name] = "symlink -> /etc/systemd/system/" + u.Name + " 0:0"
		}
	}
	sort.Strings(enabled)
	if want := []string{"etcd-firstboot.service", "etcd-ready.service", "etcd.service", "etcdbake-firewall.service", "etcdbake-maintain.timer", "etcdbake-prefetch.service", "etcdbake-snapshot.timer", "etcdbake-ssh-hostkeys.service", "flanneld.service"}; strings.Join(enabled, " ") != strings.Join(want, " ") {
		t.Fatalf("enabled units %v, want %v", enabled, want)
	}
	preset, _ := mine.Get(ignPresetPath)
	if want := "enable etcd-firstboot.service\nenable etcd-ready.service\nenable etcd.service\nenable etcdbake-firewall.service\nenable etcdbake-maintain.timer\nenable etcdbake-prefetch.service\nenable etcdbake-snapshot.timer\nenable etcdbake-ssh-hostkeys.service\nenable flanneld.service\n"; preset == nil || string(preset.Data) != want {
		t.Errorf("preset file:\n%v\nwant:\n%s", preset, want)
	}

	theirs := imagetest.ReadDir(t, root)
	imagetest.Compare(t, mine, theirs, nil, extras)

	// The accounts, spelled out (the comparison above already holds them to
	// useradd/groupadd's result).
	for file, want := range map[string]string{
		"etc/passwd":  "etcd:x:997:997:etcd member:/var/lib/etcd:/usr/sbin/nologin\ncore:x:1000:1000::/home/core:/bin/sh\n",
		"etc/group":   "etcd:x:997:\ncore:x:1000:\n",
		"etc/shadow":  "etcd:*:::::::\ncore:*::0:99999:7:::\n",
		"etc/gshadow": "etcd:!::\ncore:!::\n",
	} {
		e, _ := mine.Get(file)
		if e == nil || !strings.HasSuffix(string(e.Data), want) {
			t.Errorf("/%s should end with\n%s", file, want)
		}
	}
	for p, want := range map[string]string{
		"home/core":                                 "dir drwxr-xr-x 1000:1000",
		"home/core/.ssh":                            "dir drwx------ 1000:1000",
		"home/core/.ssh/authorized_keys.d":          "dir drwx------ 1000:1000",
		"home/core/.ssh/authorized_keys.d/ignition": fmt.Sprintf("file -rw------- 1000:1000 links=1 sha256=%x", sha256.Sum256([]byte(imagetest.SSHKey+"\n"))),
		"var/lib/etcd":                              "dir drwx------ 997:997",
	} {
		if got := imagetest.Summary(t, mine)[p]; got != want {
			t.Errorf("/%s: %s, want %s", p, got, want)
		}
	}

	// systemctl enable on Ignition's result makes exactly Apply's symlinks.
	imagetest.Systemctl(t, root, append([]string{"enable"}, enabled...)...)
	imagetest.Compare(t, mine, imagetest.ReadDir(t, root), nil, nil)
}

// ---- units against ignition-apply and systemctl ------------------------------------

// TestApplyIgnitionRefusesMachineSections: sections that need the machine or the
// network are refused with a message naming them.
func TestApplyIgnitionRefusesMachineSections(t *testing.T) {
	cases := map[string]func(*types.Config){
		"storage.disks": func(c *types.Config) {
			c.Storage.Disks = []types.Disk{{Device: "/dev/vda", WipeTable: imagetest.Ptr(true)}}
		},
		"storage.filesystems": func(c *types.Config) {
			c.Storage.Filesystems = []types.Filesystem{{Device: "/dev/vdb", Format: imagetest.Ptr("ext4"), Path: imagetest.Ptr("/var")}}
		},
		"kernelArguments": func(c *types.Config) {
			c.KernelArguments.ShouldExist = []types.KernelArgument{"quiet"}
		},
		"ignition.config merge/replace": func(c *types.Config) {
			c.Ignition.Config.Merge = []types.Resource{{Source: imagetest.Ptr("https://example.invalid/more.ign")}}
		},
	}
	for name, mod := range cases {
		var c types.Config
		mod(&c)
		tr := imagetest.BaseTree(t)
		before := imagetest.Summary(t, tr)
		err := Apply(tr, imagetest.JSON(t, c), Options{})
		if err == nil || !strings.Contains(err.Error(), name) || !strings.Contains(err.Error(), "offline") {
			t.Errorf("%s: error %v, want a refusal naming it", name, err)
		}
		if fmt.Sprint(imagetest.Summary(t, tr)) != fmt.Sprint(before) {
			t.Errorf("%s: the tree was changed by a refused config", name)
		}
	}
	if err := Apply(fstree.NewTree(), []byte(`{"ignition":{"version":"3.4.0"},"storage":{"files":[{"path":"relative"}]}}`), Options{}); err == nil {
		t.Error("an invalid config was accepted")
	}
}

// TestApplyIgnitionDeterministic: the same config on the same base gives the same tree
// (same IDs, same entries).
func TestApplyIgnitionDeterministic(t *testing.T) {
	raw := imagetest.Render(t)
	var sums []map[string]string
	for range 2 {
		tr := imagetest.BaseTree(t)
		if err := Apply(tr, raw, Options{}); err != nil {
			t.Fatal(err)
		}
		sums = append(sums, imagetest.Summary(t, tr))
	}
	if len(sums[0]) != len(sums[1]) {
		t.Fatalf("%d entries, then %d", len(sums[0]), len(sums[1]))
	}
	for p, s := range sums[0] {
		if sums[1][p] != s {
			t.Errorf("/%s: %s, then %s", p, s, sums[1][p])
		}
	}
}
