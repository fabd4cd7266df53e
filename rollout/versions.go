// Package rollout is the workstation side of etcdbake's rolling A/B upgrades (issue 14).
// It holds the checks that run before `etcdbake rollout` publishes a release:
// CheckUpgrade applies etcd's upgrade rules to the versions the members run now, and
// CheckChange refuses a spec change that a running cluster cannot take node by node.
// Both are pure functions: they read no files and reach no network, so the caller gathers
// the member versions and the two specs first. Check runs them (and more) against the
// releases on disk (LoadRelease) and the rollout as etcd holds it (ReadView); Publish
// writes the desired release, Resume ends a halt and Wait follows a rollout. The node
// agent that takes a release is firstboot's.
package rollout

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/coreos/go-semver/semver"
)

// minPatchBefore is, per minor version of etcd 3, the oldest patch release every member must
// run before any member may move to the next minor.
var minPatchBefore = map[int64]struct {
	patch  int64
	reason string
}{
	// 3.5 -> 3.6: learner promotions made on 3.5.1-3.5.19 live only in the v2 store and
	// come back as learners on 3.6 (etcd#19557); etcd-firstboot promotes learners. Before
	// 3.5.26 the v3 store's member list is not synced from the v2 store, so removed members
	// reappear on 3.6 (etcd#20967).
	5: {26, "etcd#19557: learner promotions made on 3.5.1-3.5.19 are lost on 3.6, and etcd-firstboot promotes learners; " +
		"etcd#20967: before 3.5.26, removed members come back on 3.6"},
	// 3.6 -> 3.7: etcd's v3.7 upgrade guide.
	6: {11, "etcd's v3.7 upgrade guide requires it"},
}

type member struct {
	name string
	v    *semver.Version
}

// CheckUpgrade applies etcd's upgrade rules to a rollout to etcd target (e.g. "v3.7.3" or
// "3.7.3"), given the server version each member runs now (member name -> version as
// etcd's Status reports it, e.g. "3.6.16"). Members may run different versions (a rollout
// under way); the rules hold for every one of them:
//   - no downgrade: the target is not below any member's version (equal is fine);
//   - the same major version;
//   - at most one minor version up from each member's (so from the lowest);
//   - to the next minor only from a patch that etcd requires: 3.5 -> 3.6 from 3.5.26,
//     3.6 -> 3.7 from 3.6.11.
//
// The error names the members, their versions, the rule and what to roll out instead;
// it lists every rule broken, one per line.
func CheckUpgrade(target string, running map[string]string) error {
	t, err := parse(target)
	if err != nil {
		return fmt.Errorf("target etcd version %q is not a version: write it as MAJOR.MINOR.PATCH, e.g. v3.7.3", target)
	}
	if len(running) == 0 {
		return fmt.Errorf("no member versions to check etcd %s against: read every member's version (etcdbake status) first", t)
	}
	var members []member
	var bad []string
	for name, s := range running {
		v, err := parse(s)
		if err != nil {
			bad = append(bad, fmt.Sprintf("member %s reports version %q", name, s))
			continue
		}
		members = append(members, member{name, v})
	}
	if len(bad) > 0 {
		slices.Sort(bad)
		who := "that member"
		if len(bad) > 1 {
			who = "those members"
		}
		return fmt.Errorf("cannot check the upgrade to etcd %s: %s, not MAJOR.MINOR.PATCH: check %s (etcdbake status) before rolling out",
			t, strings.Join(bad, ", "), who)
	}
	slices.SortFunc(members, func(a, b member) int { return strings.Compare(a.name, b.name) })
	lowest := members[0].v
	for _, m := range members[1:] {
		if m.v.LessThan(*lowest) {
			lowest = m.v
		}
	}

	var errs []error
	if other := filter(members, func(v *semver.Version) bool { return v.Major != t.Major }); len(other) > 0 {
		// Nothing else can be judged across majors.
		return fmt.Errorf("etcd %s is another major version: %s; a major version change is not a rolling upgrade, and etcdbake rollout upgrades within one major version only",
			t, runs(other))
	}
	if newer := filter(members, func(v *semver.Version) bool { return t.LessThan(*v) }); len(newer) > 0 {
		highest := newer[0].v
		for _, m := range newer[1:] {
			if highest.LessThan(*m.v) {
				highest = m.v
			}
		}
		fix := fmt.Sprintf("publish etcd %s or newer", highest)
		if highest.Minor > t.Minor {
			fix += fmt.Sprintf(" (going back to %d.%d needs etcd's own downgrade procedure, etcdctl downgrade, by hand)", t.Major, t.Minor)
		}
		errs = append(errs, fmt.Errorf("downgrade refused: %s, newer than the target %s; a rollout never lowers etcd's version: %s",
			runs(newer), t, fix))
	}
	if behind := filter(members, func(v *semver.Version) bool { return v.Minor+1 < t.Minor }); len(behind) > 0 {
		errs = append(errs, fmt.Errorf("%s, more than one minor version below the target %s; etcd upgrades one minor version at a time: %s",
			runs(behind), t, path(lowest, t)))
	}
	if req, ok := minPatchBefore[t.Minor-1]; ok {
		floor := semver.Version{Major: t.Major, Minor: t.Minor - 1, Patch: req.patch}
		old := filter(members, func(v *semver.Version) bool { return v.Minor+1 == t.Minor && v.LessThan(floor) })
		if len(old) > 0 {
			errs = append(errs, fmt.Errorf("%s: upgrading %d.%d to %d.%d needs every member on %s or newer (%s): %s",
				runs(old), t.Major, t.Minor-1, t.Major, t.Minor, &floor, req.reason, path(lowest, t)))
		}
	}
	return errors.Join(errs...)
}

// ClusterVersionAfter is the cluster version etcd reports once every member runs target:
// major.minor.0 (e.g. "3.7.0" for "v3.7.3"). It is "" when target is not a version.
func ClusterVersionAfter(target string) string {
	t, err := parse(target)
	if err != nil {
		return ""
	}
	return fmt.Sprintf("%d.%d.0", t.Major, t.Minor)
}

// parse reads an etcd version with or without its leading "v".
func parse(s string) (*semver.Version, error) {
	s = strings.TrimSpace(s)
	return semver.NewVersion(strings.TrimPrefix(s, "v"))
}

func filter(ms []member, keep func(*semver.Version) bool) []member {
	var out []member
	for _, m := range ms {
		if keep(m.v) {
			out = append(out, m)
		}
	}
	return out
}

// runs says who runs what: "etcd-1 runs 3.5.19 and etcd-2 runs 3.5.20".
func runs(ms []member) string {
	parts := make([]string, len(ms))
	for i, m := range ms {
		parts[i] = fmt.Sprintf("%s runs %s", m.name, m.v)
	}
	if len(parts) == 1 {
		return parts[0]
	}
	return strings.Join(parts[:len(parts)-1], ", ") + " and " + parts[len(parts)-1]
}

// path is the fix for a cluster whose lowest member runs from: the releases to roll out,
// one at a time, to reach target, e.g. "first roll out the newest 3.6 patch (3.6.11 or
// newer), then 3.7.3".
func path(from, target *semver.Version) string {
	var steps []string
	if req, ok := minPatchBefore[from.Minor]; ok && from.Minor < target.Minor &&
		from.LessThan(semver.Version{Major: from.Major, Minor: from.Minor, Patch: req.patch}) {
		steps = append(steps, fmt.Sprintf("the newest %d.%d patch (%d.%d.%d or newer)", from.Major, from.Minor, from.Major, from.Minor, req.patch))
	}
	for m := from.Minor + 1; m < target.Minor; m++ {
		step := fmt.Sprintf("the newest %d.%d patch", from.Major, m)
		if req, ok := minPatchBefore[m]; ok {
			step += fmt.Sprintf(" (%d.%d.%d or newer)", from.Major, m, req.patch)
		}
		steps = append(steps, step)
	}
	if len(steps) == 0 {
		return "roll out " + target.String()
	}
	return "first roll out " + strings.Join(steps, ", then ") + ", then " + target.String()
}
