package ignition

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/etcdbake/etcdbake/internal/testtools"
)

const (
	etcdUID = 990
	etcdGID = 989
)

// TestIgnitionApply applies each rendered config with the real ignition-apply to an empty
// root and checks that every file, directory and unit landed with the contents, mode and
// owner the config names. ignition-apply refuses passwd sections ("cannot apply passwd
// live"), so the etcd account is put into the root's passwd/group files beforehand, as the
// passwd stage would have done.
func TestIgnitionApply(t *testing.T) {
	apply := testtools.IgnitionApply(t)
	c := exampleCluster(t)
	in := testInput(t, c)
	in.Options = Options{Inline: true} // --offline: everything is in the config
	configs, err := Render(in)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range c.Nodes {
		t.Run(n.Name, func(t *testing.T) {
			root := t.TempDir()
			mustWrite(t, filepath.Join(root, "etc/passwd"), "root:x:0:0:root:/root:/bin/sh\netcd:x:990:989:etcd member:/var/lib/etcd:/usr/sbin/nologin\n")
			mustWrite(t, filepath.Join(root, "etc/group"), "root:x:0:\netcd:x:989:\n")
			var raw map[string]json.RawMessage
			if err := json.Unmarshal(configs[n.Name], &raw); err != nil {
				t.Fatal(err)
			}
			delete(raw, "passwd")
			noPasswd, _ := json.Marshal(raw)
			cfgPath := filepath.Join(t.TempDir(), n.Name+".ign")
			mustWrite(t, cfgPath, string(noPasswd))
			cmd := exec.Command(apply, "--root="+root, "--offline", cfgPath)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("ignition-apply failed: %v\n%s", err, out)
			}
			cfg := parseRendered(t, configs[n.Name])
			owner := func(name *string) (int, int) {
				if name != nil && *name == "etcd" {
					return etcdUID, etcdGID
				}
				return 0, 0
			}
			for _, f := range cfg.Storage.Files {
				p := filepath.Join(root, f.Path)
				st, err := os.Lstat(p)
				if err != nil {
					t.Errorf("%s not written: %v", f.Path, err)
					continue
				}
				if got := int(st.Mode().Perm()); got != *f.Mode {
					t.Errorf("%s: mode %o, config says %o", f.Path, got, *f.Mode)
				}
				uid, gid := owner(f.User.Name)
				sys := st.Sys().(*syscall.Stat_t)
				if int(sys.Uid) != uid || int(sys.Gid) != gid {
					t.Errorf("%s: owner %d:%d, want %d:%d", f.Path, sys.Uid, sys.Gid, uid, gid)
				}
				got, _ := os.ReadFile(p)
				want := fileContents(t, f)
				if strings.HasPrefix(f.Path, "/opt/etcdbake/bin/") {
					want, _ = os.ReadFile(in.Binaries[filepath.Base(f.Path)].Path)
				}
				if !bytes.Equal(got, want) {
					t.Errorf("%s: contents differ from the config", f.Path)
				}
			}
			for _, d := range cfg.Storage.Directories {
				st, err := os.Stat(filepath.Join(root, d.Path))
				if err != nil || !st.IsDir() {
					t.Errorf("directory %s not created: %v", d.Path, err)
					continue
				}
				if got := int(st.Mode().Perm()); got != *d.Mode {
					t.Errorf("%s: mode %o, config says %o", d.Path, got, *d.Mode)
				}
				uid, gid := owner(d.User.Name)
				sys := st.Sys().(*syscall.Stat_t)
				if int(sys.Uid) != uid || int(sys.Gid) != gid {
					t.Errorf("%s: owner %d:%d, want %d:%d", d.Path, sys.Uid, sys.Gid, uid, gid)
				}
			}
			preset, err := os.ReadFile(filepath.Join(root, "etc/systemd/system-preset/20-ignition.preset"))
			if err != nil {
				t.Fatalf("no preset file recording unit enablement: %v", err)
			}
			for _, u := range cfg.Systemd.Units {
				for _, d := range u.Dropins {
					got, err := os.ReadFile(filepath.Join(root, "etc/systemd/system", u.Name+".d", d.Name))
					if err != nil || string(got) != *d.Contents {
						t.Errorf("drop-in %s of %s not written as in the config: %v", d.Name, u.Name, err)
					}
				}
				if u.Contents == nil {
					continue
				}
				got, err := os.ReadFile(filepath.Join(root, "etc/systemd/system", u.Name))
				if err != nil || string(got) != *u.Contents {
					t.Errorf("unit %s not written as in the config: %v", u.Name, err)
				}
				if u.Enabled != nil && *u.Enabled && !strings.Contains(string(preset), "enable "+u.Name) {
					t.Errorf("unit %s enabled in the config but not in the preset:\n%s", u.Name, preset)
				}
			}
		})
	}
}

func mustWrite(t *testing.T, path, s string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}
