// Package imports checks the module's import rules with `go list`: the programs that run
// on the nodes carry none of the builder, and no package outside the tests imports test/.
package imports

import (
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

const module = "github.com/etcdbake/etcdbake"

// builders are the packages (and their subpackages) that make configs and images: none
// of them may end up in a program that runs on a node.
var builders = []string{
	module + "/pki",
	module + "/ignition",
	module + "/imagebuild",
	module + "/bake",
	module + "/binaries",
	module + "/vmcluster",
	"github.com/diskfs/go-diskfs",
	"github.com/coreos/butane",
	"github.com/coreos/ignition",
}

// rules: each package, with everything it depends on, must stay clear of the listed
// packages (a listed path also forbids its subpackages).
var rules = []struct {
	pkg    string
	forbid []string
	why    string
}{
	{"firstboot", append([]string{module + "/pxe"}, builders...), "runs on every node at boot"},
	{"cmd/etcd-firstboot", append([]string{module + "/pxe"}, builders...), "runs on every node at boot"},
	{"cmd/etcdbake-installer", builders, "runs in the PXE installer's initramfs"},
	{"vmcluster", []string{module + "/pki", module + "/ignition", module + "/imagebuild", module + "/bake",
		"github.com/diskfs/go-diskfs", "github.com/coreos/butane", "github.com/coreos/ignition"}, "the VM runtime: users' tests import it without the builder"},
}

func goList(t *testing.T, args ...string) []string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to list the packages: %v", err)
	}
	cmd := exec.Command(goBin, append([]string{"list"}, args...)...)
	cmd.Dir = filepath.Join("..", "..") // the module root
	out, err := cmd.Output()
	if err != nil {
		msg := ""
		if ee, ok := err.(*exec.ExitError); ok {
			msg = string(ee.Stderr)
		}
		t.Fatalf("go list %s: %v\n%s", strings.Join(args, " "), err, msg)
	}
	return strings.Fields(string(out))
}

// under says whether pkg is prefix or one of its subpackages.
func under(pkg, prefix string) bool {
	return pkg == prefix || strings.HasPrefix(pkg, prefix+"/")
}

// deps is every package pkg depends on (itself included), as `go list -deps` gives them
// for the build (test files excluded).
func deps(t *testing.T, pkg string) []string {
	return goList(t, "-deps", "-f", "{{.ImportPath}}", "./"+pkg)
}

// TestNodeProgramsCarryNoBuilder: firstboot, etcd-firstboot and the installer depend on
// no builder package (PKI, Ignition rendering, image building, the composition root, the
// VM runtime, go-diskfs, Butane, Ignition), and vmcluster on no image builder.
func TestNodeProgramsCarryNoBuilder(t *testing.T) {
	for _, r := range rules {
		all := deps(t, r.pkg)
		var own, third, bad []string
		for _, d := range all {
			for _, f := range r.forbid {
				if under(d, f) {
					bad = append(bad, d)
				}
			}
			switch {
			case under(d, module):
				own = append(own, strings.TrimPrefix(d, module+"/"))
			case strings.Contains(strings.SplitN(d, "/", 2)[0], "."):
				third = append(third, d)
			}
		}
		t.Logf("%s (%s): %d packages in its build, %d of them third-party; from this module: %s", r.pkg, r.why, len(all), len(third), strings.Join(own, " "))
		if len(bad) > 0 {
			t.Errorf("%s depends on %s, which it must not (%s)", r.pkg, strings.Join(bad, ", "), r.why)
		} else {
			t.Logf("%s: none of %s", r.pkg, strings.Join(r.forbid, ", "))
		}
	}
	// The check sees dependencies at all: the CLI, which builds images, has them.
	cli := deps(t, "cmd/etcdbake")
	for _, want := range []string{module + "/pki", module + "/bake", module + "/vmcluster", "github.com/diskfs/go-diskfs", "github.com/coreos/butane"} {
		found := false
		for _, d := range cli {
			found = found || under(d, want)
		}
		if !found {
			t.Errorf("cmd/etcdbake does not depend on %s: the dependency listing is broken", want)
		}
	}
}

// TestNothingImportsTests: no package outside test/ imports a package under test/ in its
// non-test files (.Imports leaves out the imports of _test.go files).
func TestNothingImportsTests(t *testing.T) {
	lines := goList(t, "-f", "{{.ImportPath}}:{{join .Imports \",\"}}", "./...")
	testPrefix := module + "/test"
	var checked, bad []string
	for _, l := range lines {
		pkg, imports, _ := strings.Cut(l, ":")
		if under(pkg, testPrefix) {
			continue // the tests' own helpers
		}
		checked = append(checked, strings.TrimPrefix(pkg, module+"/"))
		for _, imp := range strings.Split(imports, ",") {
			if under(imp, testPrefix) {
				bad = append(bad, pkg+" imports "+imp)
			}
		}
	}
	sort.Strings(checked)
	t.Logf("%d packages outside test/ checked: %s", len(checked), strings.Join(checked, " "))
	if len(checked) < 10 {
		t.Errorf("only %d packages listed: the listing is broken", len(checked))
	}
	for _, b := range bad {
		t.Errorf("%s: only tests may import packages under test/", b)
	}
	if len(bad) == 0 {
		t.Logf("none of them imports a package under %s/", testPrefix)
	}
}
