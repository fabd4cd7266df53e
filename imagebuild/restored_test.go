package imagebuild

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/etcdbake/etcdbake/imagebuild/internal/imagetest"
)

// TestBuildWithRestoredData: a node given a restored etcd data directory gets a data
// partition holding it at /var/lib/etcd (owned by the image's etcd user, 0700/0600) with
// the rest of the image's /var; the other nodes' data partitions hold the image's /var
// with an empty /var/lib/etcd (their first boot neither formats nor copies). A directory
// without a member is refused and nothing is written.
func TestBuildWithRestoredData(t *testing.T) {
	for _, tool := range [][2]string{{"fsck.ext4", "e2fsprogs"}, {"debugfs", "e2fsprogs"}} {
		imagetest.Tool(t, tool[0], tool[1])
	}
	// What backup.Restore lays out: member/snap/db, member/wal/*.wal, member/snap/*.snap.
	data := t.TempDir()
	files := map[string]string{
		"member/snap/db": "the database",
		"member/snap/0000000000000001-0000000000000003.snap": "a raft snapshot",
		"member/wal/0000000000000000-0000000000000000.wal":   "the log",
	}
	for p, body := range files {
		os.MkdirAll(filepath.Join(data, filepath.Dir(p)), 0o755)
		if err := os.WriteFile(filepath.Join(data, p), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(t.TempDir(), "images")
	o := exampleBuild(t, out)
	o.Nodes[0].EtcdData = data
	imgs, err := Build(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	dbg := func(img, req string) string {
		out, _ := exec.Command("debugfs", "-R", req, img).CombinedOutput()
		return string(out)
	}
	owner := regexp.MustCompile(`User:\s+(\d+)\s+Group:\s+(\d+)`)
	for i, im := range imgs {
		var m Manifest
		mb, _ := os.ReadFile(filepath.Join(out, im.Node+".manifest.json"))
		if err := json.Unmarshal(mb, &m); err != nil {
			t.Fatal(err)
		}
		part := partition(t, filepath.Join(out, im.Node+".raw"), m, LabelData)
		if out, err := exec.Command("fsck.ext4", "-fn", part).CombinedOutput(); err != nil {
			t.Fatalf("%s: fsck.ext4 -fn of the data partition: %v\n%s", im.Node, err, out)
		}
		root := partition(t, filepath.Join(out, im.Node+".raw"), m, RootLabel(SlotA))
		want := owner.FindStringSubmatch(dbg(root, "stat /"+factoryVar+"/lib/etcd"))
		if want == nil {
			t.Fatalf("the image has no etcd data directory in its factory /var")
		}
		if i > 0 {
			if l := dbg(part, "ls /lib/etcd"); strings.Contains(l, "member") || !strings.Contains(l, "..") {
				t.Errorf("%s: /var/lib/etcd on a node given no restored data: want empty, got %q", im.Node, l)
			}
		}
		for p, body := range files {
			if i > 0 {
				break
			}
			st := dbg(part, "stat /lib/etcd/"+p)
			got := owner.FindStringSubmatch(st)
			if got == nil || got[1] != want[1] || got[2] != want[2] || !strings.Contains(st, "Mode:  0600") {
				t.Errorf("%s: /var/lib/etcd/%s: want the etcd user's (%s:%s), mode 0600: %s", im.Node, p, want[1], want[2], st)
			}
			if c := dbg(part, "cat /lib/etcd/"+p); !strings.Contains(c, body) {
				t.Errorf("%s: /var/lib/etcd/%s holds %q, want %q", im.Node, p, c, body)
			}
		}
		if st := dbg(part, "stat /lib/etcd/member/wal"); i == 0 && !strings.Contains(st, "Mode:  0700") {
			t.Errorf("member/wal: want mode 0700: %s", st)
		}
		// The rest of /var, as the first boot would copy it.
		names := func(img, dir string) []string { // `ls -p` lines: /inode/mode/uid/gid/name/size/
			var ns []string
			for _, l := range strings.Split(dbg(img, "ls -p "+dir), "\n") {
				if f := strings.Split(l, "/"); len(f) >= 6 && f[5] != "." && f[5] != ".." && f[5] != "lost+found" {
					ns = append(ns, f[5])
				}
			}
			sort.Strings(ns)
			return ns
		}
		for _, dir := range []string{"", "/lib"} {
			w, g := names(root, "/"+factoryVar+dir), names(part, dir+"/")
			if len(w) < 2 || strings.Join(w, " ") != strings.Join(g, " ") {
				t.Errorf("/var%s on the data partition holds %v, the image's /var%s %v", dir, g, dir, w)
			}
		}
	}

	// Not a restored member: refused, nothing written.
	out2 := filepath.Join(t.TempDir(), "images")
	o2 := exampleBuild(t, out2)
	o2.Nodes[1].EtcdData = t.TempDir()
	if _, err := Build(context.Background(), o2); err == nil || !strings.Contains(err.Error(), "holds no etcd member") || !strings.Contains(err.Error(), o2.Nodes[1].Name) {
		t.Errorf("a data directory without a member: %v", err)
	}
	if _, err := os.Stat(out2); !os.IsNotExist(err) {
		t.Errorf("a refused build left %s", out2)
	}
}
