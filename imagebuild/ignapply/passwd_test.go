package ignapply

import (
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/coreos/ignition/v2/config/v3_4/types"
	"github.com/etcdbake/etcdbake/imagebuild/fstree"
	"github.com/etcdbake/etcdbake/imagebuild/internal/imagetest"
	"github.com/etcdbake/etcdbake/internal/testtools"
)

// TestApplyIgnitionExistingUsers: keys for a user of the base go to the legacy file when
// asked, owned by the user; groups gain members; changing an existing account's uid is
// refused rather than ignored; a password hash is set in etc/shadow.
func TestApplyIgnitionExistingUsers(t *testing.T) {
	var c types.Config
	c.Passwd.Users = []types.PasswdUser{{Name: "daemon", Groups: []types.Group{"users"}, PasswordHash: imagetest.Ptr("$6$x$y"), SSHAuthorizedKeys: []types.SSHAuthorizedKey{imagetest.SSHKey}}}
	tr := imagetest.BaseTree(t)
	imagetest.Dir(t, tr, "home/daemon", 0o750, 1, 1)
	c.Passwd.Users[0].HomeDir = imagetest.Ptr("/usr/sbin")
	if err := Apply(tr, imagetest.JSON(t, c), Options{LegacyAuthorizedKeys: true}); err == nil || !strings.Contains(err.Error(), "home directory") {
		t.Fatalf("changing daemon's home: error %v, want a refusal", err)
	}
	c.Passwd.Users[0].HomeDir = nil
	tr = imagetest.BaseTree(t)
	imagetest.Put(t, tr, fstree.Entry{Path: "usr/sbin", Mode: fs.ModeDir | 0o755, UID: 1, GID: 1})
	if err := Apply(tr, imagetest.JSON(t, c), Options{LegacyAuthorizedKeys: true}); err != nil {
		t.Fatal(err)
	}
	s := imagetest.Summary(t, tr)
	for p, want := range map[string]string{
		"usr/sbin/.ssh":                 "dir drwx------ 1:1",
		"usr/sbin/.ssh/authorized_keys": fmt.Sprintf("file -rw------- 1:1 links=1 sha256=%x", sha256.Sum256([]byte(imagetest.SSHKey+"\n"))),
	} {
		if s[p] != want {
			t.Errorf("/%s: %q, want %q", p, s[p], want)
		}
	}
	for file, want := range map[string]string{"etc/group": "\nusers:x:100:daemon\n", "etc/gshadow": "\nusers:*::daemon\n", "etc/shadow": "\ndaemon:$6$x$y:19000:0:99999:7:::\n"} {
		if e, _ := tr.Get(file); e == nil || !strings.Contains(string(e.Data), want) {
			t.Errorf("/%s does not contain %q", file, want)
		}
	}
	c.Passwd.Users = []types.PasswdUser{{Name: "daemon", UID: imagetest.Ptr(7)}}
	if err := Apply(imagetest.BaseTree(t), imagetest.JSON(t, c), Options{}); err == nil || !strings.Contains(err.Error(), "uid 1") {
		t.Errorf("changing daemon's uid: error %v, want a refusal", err)
	}
}

// TestApplyIgnitionIDAllocation checks the shadow-utils allocation rules on their own.
func TestApplyIgnitionIDAllocation(t *testing.T) {
	cases := []struct {
		ids       []int
		sys       bool
		preferred *int
		want      int
	}{
		{[]int{0, 1, 998}, true, nil, 997},                // below the lowest used system ID
		{[]int{0, 998, 990}, true, nil, 989},              // file order: the lowest seen
		{[]int{0, 101, 998, 999}, true, nil, 997},         // 101 used: highest free from the top
		{[]int{0, 1, 998}, true, imagetest.Ptr(5), 5},     // a free preferred ID wins
		{[]int{0, 1, 998}, true, imagetest.Ptr(998), 997}, // a used one does not
		{[]int{0, 65534}, false, nil, 1000},               // the first normal ID
		{[]int{0, 1000, 1005}, false, nil, 1006},          // above the highest used
	}
	for _, c := range cases {
		lo, hi, plo := 1000, 60000, 1000
		if c.sys {
			lo, hi, plo = 101, 999, 1
		}
		if got, ok := ignFindNewID(c.ids, lo, hi, c.sys, c.preferred, plo); !ok || got != c.want {
			t.Errorf("ids %v sys %v: %d, want %d", c.ids, c.sys, got, c.want)
		}
	}
}

// TestApplyIgnitionSubIDsAndAgingMatchUseradd: accounts added by Apply get what Debian's
// useradd (shadow 4.13, run with --root on the same base, its clock at the build's
// time) writes: the shadow "last change" day of the build for every account, the aging
// fields of login.defs for normal ones, and for normal accounts whose uid is in
// UID_MIN..UID_MAX a 65536-id range in etc/subuid and etc/subgid (the first free hole
// from SUB_UID_MIN, the file kept sorted), since the base has those files. Deleting the
// account removes its ranges, as userdel does.
func TestApplyIgnitionSubIDsAndAgingMatchUseradd(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("useradd --root needs root")
	}
	if _, err := exec.LookPath("useradd"); err != nil {
		testtools.Missing(t, "useradd (Debian package passwd)")
	}
	base := func() *fstree.Tree {
		tr := imagetest.BaseTree(t)
		defs, _ := tr.ReadFile("etc/login.defs")
		imagetest.File(t, tr, "etc/login.defs", 0o644, 0, 0, string(defs)+"SUB_UID_MIN\t\t   100000\nSUB_UID_MAX\t\t600100000\nSUB_UID_COUNT\t\t    65536\nSUB_GID_MIN\t\t   100000\nSUB_GID_MAX\t\t600100000\nSUB_GID_COUNT\t\t    65536\n")
		imagetest.File(t, tr, "etc/subuid", 0o644, 0, 0, "far:300000:65536\nold:100000:65536\n")
		imagetest.File(t, tr, "etc/subgid", 0o644, 0, 0, "")
		return tr
	}
	var c types.Config
	c.Passwd.Users = []types.PasswdUser{
		{Name: "alice"},
		{Name: "sysu", System: imagetest.Ptr(true)},
		{Name: "lowu", UID: imagetest.Ptr(500)},
		{Name: "highu", UID: imagetest.Ptr(2000), NoCreateHome: imagetest.Ptr(true)},
	}
	mine := base()
	if err := Apply(mine, imagetest.JSON(t, c), Options{Time: imagetest.Now}); err != nil {
		t.Fatal(err)
	}
	root := imagetest.RootDir(t)
	imagetest.WriteTree(t, base(), root)
	imagetest.IgnitionPasswdAt(t, root, c.Passwd, imagetest.Now)
	imagetest.Compare(t, mine, imagetest.ReadDir(t, root), nil, nil)

	day := imagetest.Now.Unix() / 86400
	for file, want := range map[string]string{
		"etc/shadow": fmt.Sprintf("alice:*:%d:0:99999:7:::\nsysu:*:%[1]d::::::\nlowu:*:%[1]d:0:99999:7:::\nhighu:*:%[1]d:0:99999:7:::\n", day),
		"etc/subuid": "old:100000:65536\nalice:165536:65536\nfar:300000:65536\nhighu:231072:65536\n",
		"etc/subgid": "alice:100000:65536\nhighu:165536:65536\n",
	} {
		if got, _ := mine.ReadFile(file); !strings.HasSuffix(string(got), want) {
			t.Errorf("/%s:\n%s\nshould end with\n%s", file, got, want)
		}
	}

	c.Passwd.Users = []types.PasswdUser{{Name: "alice", ShouldExist: imagetest.Ptr(false)}}
	if err := Apply(mine, imagetest.JSON(t, c), Options{Time: imagetest.Now}); err != nil {
		t.Fatal(err)
	}
	for file, want := range map[string]string{
		"etc/subuid": "old:100000:65536\nfar:300000:65536\nhighu:231072:65536\n",
		"etc/subgid": "highu:165536:65536\n",
	} {
		if got, _ := mine.ReadFile(file); string(got) != want {
			t.Errorf("after deleting alice, /%s:\n%s\nwant\n%s", file, got, want)
		}
	}

	// Without subordinate id files in the base, useradd adds none, and neither does Apply.
	tr := imagetest.BaseTree(t)
	c.Passwd.Users = []types.PasswdUser{{Name: "alice"}}
	if err := Apply(tr, imagetest.JSON(t, c), Options{Time: imagetest.Now}); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"etc/subuid", "etc/subgid"} {
		if _, ok := tr.Get(f); ok {
			t.Errorf("/%s created though the base has none", f)
		}
	}
}

// TestApplyIgnitionSubIDLimits: login.defs' SUB_UID_COUNT 0 means no ranges; a full
// SUB_UID_MIN..SUB_UID_MAX or an impossible setting is an error naming login.defs, as
// useradd fails then.
func TestApplyIgnitionSubIDLimits(t *testing.T) {
	var c types.Config
	c.Passwd.Users = []types.PasswdUser{{Name: "alice", NoCreateHome: imagetest.Ptr(true)}}
	for _, tc := range []struct {
		defs, subuid, err string
		want              string
	}{
		{defs: "SUB_UID_COUNT 0\n", want: ""},
		{defs: "SUB_UID_MIN 100000\nSUB_UID_MAX 165535\n", subuid: "bob:100000:65536\n", err: "no free range"},
		{defs: "SUB_UID_MIN 200000\nSUB_UID_MAX 100000\n", err: "invalid configuration in /etc/login.defs: SUB_UID_MIN (200000)"},
		{defs: "", subuid: "# comment\nbob:100000:10\n", want: "bob:100000:10\n# comment\nalice:100010:65536\n"},
	} {
		tr := imagetest.BaseTree(t)
		defs, _ := tr.ReadFile("etc/login.defs")
		imagetest.File(t, tr, "etc/login.defs", 0o644, 0, 0, string(defs)+tc.defs)
		imagetest.File(t, tr, "etc/subuid", 0o644, 0, 0, tc.subuid)
		err := Apply(tr, imagetest.JSON(t, c), Options{})
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), "alice") {
				t.Errorf("login.defs +%q: error %v, want one naming alice and %q", tc.defs, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := tr.ReadFile("etc/subuid"); string(got) != tc.want {
			t.Errorf("login.defs +%q: etc/subuid %q, want %q", tc.defs, got, tc.want)
		}
	}
}
