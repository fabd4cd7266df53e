package ignition

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	butane "github.com/coreos/butane/config"
	"github.com/coreos/butane/config/common"
	v34 "github.com/coreos/ignition/v2/config/v3_4"
	"github.com/coreos/ignition/v2/config/v3_4/types"

	"github.com/etcdbake/etcdbake/spec"
)

// Fragment is a Butane document and where it came from (for messages and local files).
type Fragment struct {
	// Field is the spec field that names the fragment ("butane", "nodes[1].butane"); empty
	// for a fragment etcdbake adds itself (e.g. the QEMU harness's).
	Field  string
	Source string // file path, for messages
	Dir    string // directory for `local:` references
	Data   []byte
}

// Origin names the fragment in messages: the spec field and the file, e.g.
// "nodes[1].butane: /srv/etcd-2.bu".
func (f Fragment) Origin() string { return origin(f.Field, f.Source) }

func origin(field, source string) string {
	if field == "" {
		return source
	}
	return field + ": " + source
}

// FragmentError says a Butane fragment cannot be used as written: it does not translate,
// it replaces what etcdbake owns (see CheckFragments), or it makes a node's merged config
// invalid. It is the user's to fix; a problem in etcdbake's own part of a config is
// reported as a bug instead.
type FragmentError struct {
	Field, Source string // as in Fragment
	// Node is the node whose merged config the fragment makes invalid; empty when the
	// fragment is wrong on its own.
	Node string
	// Problems are the findings, one line each, naming the Ignition path where there is
	// one (e.g. "error at $.storage.files.0.path, line 5 col 13: path not absolute").
	Problems []string
}

func (e *FragmentError) Error() string {
	what := origin(e.Field, e.Source)
	if e.Node != "" {
		what += " makes the Ignition config of node " + e.Node + " invalid"
	}
	if len(e.Problems) == 1 {
		return what + ": " + e.Problems[0]
	}
	return what + ":\n  " + strings.Join(e.Problems, "\n  ")
}

// finding is one message about a fragment, with its severity.
type finding struct {
	sev spec.Severity
	msg string
}

// errorOf turns the error findings of f into a *FragmentError, or nil when there are none.
func errorOf(f Fragment, node string, fs []finding) error {
	var msgs []string
	for _, x := range fs {
		if x.sev == spec.Error {
			msgs = append(msgs, x.msg)
		}
	}
	if len(msgs) == 0 {
		return nil
	}
	return &FragmentError{Field: f.Field, Source: f.Source, Node: node, Problems: msgs}
}

// ReadFragment reads a Butane fragment from a file. A missing or unreadable file is a
// *FragmentError.
func ReadFragment(path string) (Fragment, error) {
	return readFragment("", path)
}

func readFragment(field, path string) (Fragment, error) {
	f := Fragment{Field: field, Source: path, Dir: filepath.Dir(path)}
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return f, &FragmentError{Field: field, Source: path, Problems: []string{"does not exist: fix the path (a relative path is relative to the spec file) or remove the field"}}
	case err != nil:
		return f, &FragmentError{Field: field, Source: path, Problems: []string{err.Error()}}
	}
	f.Data = data
	return f, nil
}

// specFragment is a fragment the spec names: the field, the file and the node (empty for
// the one every node gets).
type specFragment struct{ field, path, node string }

func specFragmentRefs(c *spec.Cluster) []specFragment {
	var refs []specFragment
	if c.Butane != "" {
		refs = append(refs, specFragment{field: "butane", path: c.Butane})
	}
	for i, n := range c.Nodes {
		if n.Butane != "" {
			refs = append(refs, specFragment{field: fmt.Sprintf("nodes[%d].butane", i), path: n.Butane, node: n.Name})
		}
	}
	return refs
}

// SpecFragments reads the Butane fragments the spec names: the one for every node
// (`butane`) and the per-node ones (`nodes[i].butane`, keyed by node name), each with its
// spec field for messages. It only reads; CheckFragments also translates and checks them.
func SpecFragments(c *spec.Cluster) (all []Fragment, perNode map[string][]Fragment, err error) {
	perNode = map[string][]Fragment{}
	for _, r := range specFragmentRefs(c) {
		f, err := readFragment(r.field, r.path)
		if err != nil {
			return nil, nil, err
		}
		if r.node == "" {
			all = append(all, f)
		} else {
			perNode[r.node] = append(perNode[r.node], f)
		}
	}
	return all, perNode, nil
}

// translateFragment turns a Butane document into an Ignition 3.4 config with Butane's own
// translator. Fragments must use a variant/version that produces Ignition 3.4 or older
// (fcos 1.0.0-1.5.0, flatcar 1.0.0-1.1.0). The findings are Butane's report entries (its
// warnings too, e.g. an unused key), each naming the path in the fragment; the config is
// usable only when no finding is an error.
func translateFragment(f Fragment) (types.Config, []finding) {
	ign, rep, err := butane.TranslateBytes(f.Data, common.TranslateBytesOptions{
		TranslateOptions: common.TranslateOptions{FilesDir: f.Dir},
	})
	var fs []finding
	for _, e := range rep.Entries {
		switch {
		case e.Kind.IsFatal():
			fs = append(fs, finding{spec.Error, e.String()})
		case e.Kind.String() == "warning":
			fs = append(fs, finding{spec.Warning, e.String()})
		}
	}
	if err != nil && len(rep.Entries) == 0 {
		msg := err.Error()
		if strings.Contains(msg, "variant") || strings.Contains(msg, "version") {
			msg += " (it needs `variant: fcos` with `version: 1.5.0` or `variant: flatcar` with `version: 1.1.0`)"
		}
		fs = append(fs, finding{spec.Error, msg})
	}
	if err != nil || rep.IsFatal() {
		if errorOf(f, "", fs) == nil {
			fs = append(fs, finding{spec.Error, fmt.Sprint(err)})
		}
		return types.Config{}, fs
	}
	cfg, _, err := v34.ParseCompatibleVersion(ign)
	if err != nil {
		fs = append(fs, finding{spec.Error, fmt.Sprintf("translates to an Ignition version newer than %s: use `variant: fcos` `version: 1.5.0` (or older) or `variant: flatcar` `version: 1.1.0`: %v", Version, err)})
	}
	return cfg, fs
}
