package ignapply

import (
	"crypto/sha256"
	"fmt"
	"io/fs"
	"strings"
	"testing"

	"github.com/coreos/ignition/v2/config/v3_4/types"
	"github.com/etcdbake/etcdbake/imagebuild/fstree"
	"github.com/etcdbake/etcdbake/imagebuild/internal/imagetest"
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
