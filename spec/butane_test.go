package spec

import (
	"strings"
	"testing"
)

// TestButaneOverridesField: butaneOverrides decodes; without any fragment it warns that it
// has no effect; with one it is silent.
func TestButaneOverridesField(t *testing.T) {
	c, rep := Parse(append(append([]byte(nil), Example...), "butaneOverrides: true\n"...))
	if c == nil || rep.HasErrors() || !c.ButaneOverrides {
		t.Fatalf("not decoded: %s", rep.String())
	}
	if len(rep.Problems) != 1 || rep.Problems[0].Path != "butaneOverrides" || !strings.Contains(rep.Problems[0].Message, "no effect") {
		t.Fatalf("want one warning at butaneOverrides, got:\n%s", rep.String())
	}
	c, rep = Parse(append(append([]byte(nil), Example...), "butaneOverrides: true\nbutane: extra.bu\n"...))
	if c == nil || len(rep.Problems) != 0 {
		t.Fatalf("with a fragment: %s", rep.String())
	}
}

// TestSSHUserIsNotTheEtcdAccount: the login user cannot be etcd's system account (its keys
// would be merged into an account that must have no login).
func TestSSHUserIsNotTheEtcdAccount(t *testing.T) {
	src := string(Example) + "ssh:\n  user: etcd\n"
	if src == string(Example) {
		t.Fatal("test case does not apply: no ssh block in the example")
	}
	_, rep := Parse([]byte(src))
	errs := rep.Errors()
	if len(errs) != 1 || errs[0].Path != "ssh.user" || !strings.Contains(errs[0].Message, "system account") {
		t.Fatalf("got:\n%s", rep.String())
	}
}
