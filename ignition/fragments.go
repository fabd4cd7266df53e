package ignition

import (
	"errors"
	"fmt"
	"strings"

	"github.com/coreos/ignition/v2/config/util"
	v34 "github.com/coreos/ignition/v2/config/v3_4"
	"github.com/coreos/ignition/v2/config/v3_4/types"
	"github.com/coreos/ignition/v2/config/validate"
	"github.com/coreos/vcontext/path"

	"github.com/etcdbake/etcdbake/pki"
	"github.com/etcdbake/etcdbake/spec"
)

// This file checks user fragments against what etcdbake owns and against the merged
// config, so that a fragment's problem is reported as the user's, naming the fragment and
// the Ignition path, and a problem in etcdbake's own part stays an internal error.

// unitDir is where Ignition writes units and their drop-ins.
const unitDir = "/etc/systemd/system/"

// owned is what etcdbake writes on every node: a fragment may not replace it unless the
// spec sets butaneOverrides.
type owned struct {
	paths  map[string]bool // files, directories and links
	units  map[string]bool
	users  map[string]bool // system accounts
	groups map[string]bool
}

// stubInput is an Input with every certificate empty and the binaries by URL: its base
// config has the same entries (paths, units, accounts) as the real one, without the PKI
// or the binaries.
func stubInput(c *spec.Cluster) Input {
	bins := map[string]Binary{}
	for _, name := range BinaryNames {
		bins[name] = Binary{Name: name, SHA512: strings.Repeat("0", 128)}
	}
	return Input{Cluster: c, PKI: &pki.Set{}, Binaries: bins, Options: Options{BinariesURL: "https://binaries.etcdbake.invalid"}}
}

// ownedBy lists what etcdbake's own config for a node of c holds. The list is read from
// baseConfig itself, so it cannot drift from what is rendered.
func ownedBy(c *spec.Cluster) (owned, error) {
	o := owned{paths: map[string]bool{}, units: map[string]bool{}, users: map[string]bool{}, groups: map[string]bool{}}
	if len(c.Nodes) == 0 {
		return o, nil
	}
	cfg, err := baseConfig(stubInput(c), c.Nodes[0])
	if err != nil {
		return o, err
	}
	for _, f := range cfg.Storage.Files {
		o.paths[f.Path] = true
	}
	for _, d := range cfg.Storage.Directories {
		o.paths[d.Path] = true
	}
	for _, l := range cfg.Storage.Links {
		o.paths[l.Path] = true
	}
	for _, u := range cfg.Systemd.Units {
		if u.Contents == nil { // a drop-in to the distribution's unit: only the drop-in is etcdbake's
			for _, d := range u.Dropins {
				o.paths[unitDir+u.Name+".d/"+d.Name] = true
			}
			continue
		}
		o.units[u.Name] = true
	}
	for _, u := range cfg.Passwd.Users {
		if util.IsTrue(u.System) {
			o.users[u.Name] = true
		}
	}
	for _, g := range cfg.Passwd.Groups {
		if util.IsTrue(g.System) {
			o.groups[g.Name] = true
		}
	}
	return o, nil
}

// pathHints say where in the spec a file etcdbake writes comes from.
var pathHints = map[string]string{
	HostnamePath:     "the hostname is nodes[].name",
	HostsPath:        "the names are nodes[].name and address",
	ChronyConfDebian: "the NTP servers are time.servers",
	ChronyConfFCOS:   "the NTP servers are time.servers",
	NetworkdPath:     "the network is nodes[].address, gateway, dns and mac",
	NMKeyfilePath:    "the network is nodes[].address, gateway, dns and mac",
	EtcdEnvPath:      "etcd's settings are etcd.* in the spec; a unit drop-in with its own EnvironmentFile= can add more",
}

// overrides lists each entry of a fragment that replaces, disables or redefines what
// etcdbake owns. Drop-ins (a unit's dropins, or files under /etc/systemd/system/X.d/) and
// new files next to etcdbake's are fine. With allow, the findings are warnings.
func (o owned) overrides(fc types.Config, allow bool) []finding {
	var fs []finding
	// add records what the entry does and, unless allowed, the fix.
	add := func(what, fix string) {
		if allow {
			fs = append(fs, finding{spec.Warning, what + " (allowed by butaneOverrides)"})
			return
		}
		fs = append(fs, finding{spec.Error, what + ": " + fix + ", or set butaneOverrides: true in the spec to allow it"})
	}
	for i, u := range fc.Systemd.Units {
		if !o.units[u.Name] {
			continue
		}
		var verb string
		switch {
		case !util.NilOrEmpty(u.Contents):
			verb = "replaces"
		case util.IsTrue(u.Mask):
			verb = "masks"
		case u.Enabled != nil && !*u.Enabled:
			verb = "disables"
		default:
			continue // drop-ins, or enabled: true
		}
		add(fmt.Sprintf("$.systemd.units.%d %s etcdbake's unit %s", i, verb, u.Name), "change it with a drop-in (dropins: under the unit) instead")
	}
	node := func(kind string, i int, p string) {
		if name, ok := strings.CutPrefix(p, unitDir); ok && o.units[name] {
			add(fmt.Sprintf("$.storage.%s.%d writes %s over etcdbake's unit %s", kind, i, p, name), fmt.Sprintf("change it with a drop-in (%s%s.d/NAME.conf) instead", unitDir, name))
			return
		}
		if !o.paths[p] {
			return
		}
		hint := ""
		if h := pathHints[p]; h != "" {
			hint = " (" + h + ")"
		}
		add(fmt.Sprintf("$.storage.%s.%d replaces %s, which etcdbake writes%s", kind, i, p, hint), "remove the entry")
	}
	for i, f := range fc.Storage.Files {
		node("files", i, f.Path)
	}
	for i, d := range fc.Storage.Directories {
		node("directories", i, d.Path)
	}
	for i, l := range fc.Storage.Links {
		node("links", i, l.Path)
	}
	for i, u := range fc.Passwd.Users {
		if o.users[u.Name] {
			add(fmt.Sprintf("$.passwd.users.%d redefines etcdbake's system account %s (no login shell, no password, home %s)", i, u.Name, spec.EtcdDataDir), "remove the entry")
		}
	}
	for i, g := range fc.Passwd.Groups {
		if o.groups[g.Name] {
			add(fmt.Sprintf("$.passwd.groups.%d redefines etcdbake's system group %s", i, g.Name), "remove the entry")
		}
	}
	return fs
}

// translated is a fragment with its Ignition config.
type translated struct {
	frag Fragment
	cfg  types.Config
}

// translateChecked translates f and checks it against what etcdbake owns. The config is
// usable only when no finding is an error.
func translateChecked(f Fragment, o owned, allow bool) (translated, []finding) {
	cfg, fs := translateFragment(f)
	if errorOf(f, "", fs) == nil {
		fs = append(fs, o.overrides(cfg, allow)...)
	}
	return translated{f, cfg}, fs
}

// translateAll translates fragments for Render; the first unusable one is the error.
func translateAll(frags []Fragment, o owned, allow bool) ([]translated, error) {
	out := make([]translated, 0, len(frags))
	for _, f := range frags {
		t, fs := translateChecked(f, o, allow)
		if err := errorOf(f, "", fs); err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, nil
}

// errBug wraps an invalid config of etcdbake's own making.
func errBug(err error) error {
	return fmt.Errorf("etcdbake bug: the generated config fails Ignition's validation (please report it): %w", err)
}

// merge merges the fragments into base in order.
func merge(base types.Config, frags []translated) types.Config {
	cfg := base
	for _, f := range frags {
		cfg = v34.Merge(cfg, f.cfg)
	}
	return cfg
}

// blame is called when merge(base, frags) fails Ignition's validation (invalid) and says
// whose fault it is: base itself (an etcdbake bug), or the first fragment after whose
// merge the config is invalid (a *FragmentError naming the node and the Ignition paths).
func blame(base types.Config, frags []translated, node string, o owned, invalid error) error {
	if rep := validate.ValidateWithContext(base, nil); rep.IsFatal() {
		return errBug(errors.New(rep.String()))
	}
	cfg := base
	for _, f := range frags {
		cfg = v34.Merge(cfg, f.cfg)
		rep := validate.ValidateWithContext(cfg, nil)
		if !rep.IsFatal() {
			continue
		}
		fe := &FragmentError{Field: f.frag.Field, Source: f.frag.Source, Node: node}
		for _, e := range rep.Entries {
			if e.Kind.IsFatal() {
				fe.Problems = append(fe.Problems, fmt.Sprintf("error at %s%s: %s", e.Context, describe(cfg, e.Context, o), e.Message))
			}
		}
		return fe
	}
	return errBug(invalid)
}

// describe names the entry at an Ignition path of cfg, e.g. " (/etc/flannel/flanneld.env,
// written by etcdbake)", so that a message about the merged config can be understood
// without its JSON.
func describe(cfg types.Config, p path.ContextPath, o owned) string {
	if len(p.Path) < 3 {
		return ""
	}
	i, ok := p.Path[2].(int)
	if !ok || i < 0 {
		return ""
	}
	var name string
	var mine bool
	switch sect, list := p.Path[0], p.Path[1]; {
	case sect == "storage" && list == "files" && i < len(cfg.Storage.Files):
		name = cfg.Storage.Files[i].Path
		mine = o.paths[name]
	case sect == "storage" && list == "directories" && i < len(cfg.Storage.Directories):
		name = cfg.Storage.Directories[i].Path
		mine = o.paths[name]
	case sect == "storage" && list == "links" && i < len(cfg.Storage.Links):
		name = cfg.Storage.Links[i].Path
		mine = o.paths[name]
	case sect == "systemd" && list == "units" && i < len(cfg.Systemd.Units):
		name = "unit " + cfg.Systemd.Units[i].Name
		mine = o.units[cfg.Systemd.Units[i].Name]
	default:
		return ""
	}
	if mine {
		return " (" + name + ", written by etcdbake)"
	}
	return " (" + name + ")"
}

// CheckFragments reads and translates every Butane fragment the spec names (`butane`,
// `nodes[i].butane`), checks that none replaces what etcdbake owns on a node (its units
// etcd.service, etcd-firstboot.service, etcd-ready.service and flanneld.service, the files
// and directories it writes, the etcd system account) unless the spec sets
// butaneOverrides, and merges them into each node's config to check that the result is
// still valid. It writes nothing and needs neither the PKI nor the binaries, so every
// command can run it before any output.
//
// The report holds one problem per finding, at the spec field that names the fragment
// (e.g. path "nodes[1].butane", message "/srv/etcd-2.bu: error at $.storage.files.0.path,
// line 5 col 13: path not absolute"): Butane's warnings (and overrides allowed by
// butaneOverrides) as warnings, everything that makes a fragment unusable as errors. The
// error is for an invalid config of etcdbake's own making (a bug), never for a fragment.
func CheckFragments(c *spec.Cluster) (spec.Report, error) {
	var rep spec.Report
	o, err := ownedBy(c)
	if err != nil {
		return rep, err
	}
	var all []translated
	per := map[string][]translated{}
	for _, r := range specFragmentRefs(c) {
		f, err := readFragment(r.field, r.path)
		if err != nil {
			var fe *FragmentError
			if !errors.As(err, &fe) {
				return rep, err
			}
			for _, p := range fe.Problems {
				rep.Errorf(r.field, "%s: %s", r.path, p)
			}
			continue
		}
		t, fs := translateChecked(f, o, c.ButaneOverrides)
		for _, x := range fs {
			if x.sev == spec.Error {
				rep.Errorf(r.field, "%s: %s", r.path, x.msg)
			} else {
				rep.Warnf(r.field, "%s: %s", r.path, x.msg)
			}
		}
		if errorOf(f, "", fs) != nil {
			continue
		}
		if r.node == "" {
			all = append(all, t)
		} else {
			per[r.node] = append(per[r.node], t)
		}
	}
	if rep.HasErrors() {
		return rep, nil // the merge would only repeat what is wrong
	}
	blamed := map[string]bool{}
	stub := stubInput(c)
	for _, n := range c.Nodes {
		base, err := baseConfig(stub, n)
		if err != nil {
			return rep, err
		}
		frags := append(append([]translated(nil), all...), per[n.Name]...)
		if len(frags) == 0 {
			continue
		}
		if vr := validate.ValidateWithContext(merge(base, frags), nil); vr.IsFatal() {
			err = blame(base, frags, n.Name, o, errors.New(vr.String()))
		}
		var fe *FragmentError
		switch {
		case errors.As(err, &fe):
			// A fragment for every node usually breaks every node alike: report it once.
			if !blamed[fe.Field] {
				blamed[fe.Field] = true
				ps := fe.Problems
				if len(ps) > 3 {
					ps = append(ps[:3:3], fmt.Sprintf("and %d more", len(fe.Problems)-3))
				}
				rep.Errorf(fe.Field, "%s makes the Ignition config of node %s invalid: %s", fe.Source, fe.Node, strings.Join(ps, "; "))
			}
		case err != nil:
			return rep, fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	return rep, nil
}
