package rollout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdbake/etcdbake/spec"
)

// Release is a release on the operator's machine: its manifest and the spec it was built
// from.
type Release struct {
	Dir      string
	Manifest spec.ReleaseManifest
	// Spec is nil when the release has no spec.json (built before releases kept it).
	Spec *spec.Cluster
}

// EtcdVersion is the version of the etcd binary the release holds ("" if none).
func (r *Release) EtcdVersion() string {
	for _, b := range r.Manifest.Binaries {
		if b.Name == "etcd" {
			return b.Version
		}
	}
	return ""
}

// LoadRelease reads release id from dir (dir/<id>/manifest.json and spec.json). The error
// names the directory and how releases are made.
func LoadRelease(dir, id string) (*Release, error) {
	rdir := filepath.Join(dir, id)
	mpath := filepath.Join(rdir, spec.ReleaseManifestName)
	b, err := os.ReadFile(mpath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("release %s is not in %s (no %s): `etcdbake image` builds releases there; the releases it has: %s",
			id, dir, mpath, listIDs(dir))
	}
	if err != nil {
		return nil, err
	}
	r := &Release{Dir: rdir}
	if err := json.Unmarshal(b, &r.Manifest); err != nil {
		return nil, fmt.Errorf("%s: %v: rebuild the release with `etcdbake image`", mpath, err)
	}
	if r.Manifest.ID != id {
		return nil, fmt.Errorf("%s describes release %q, not %s: the directory was renamed or copied; rebuild it with `etcdbake image`", mpath, r.Manifest.ID, id)
	}
	sp := r.Manifest.Spec.Path
	if sp == "" {
		return r, nil
	}
	sb, err := os.ReadFile(filepath.Join(rdir, sp))
	if err != nil {
		return nil, fmt.Errorf("release %s: its spec: %w: rebuild the release with `etcdbake image`", id, err)
	}
	var c spec.Cluster
	if err := json.Unmarshal(sb, &c); err != nil {
		return nil, fmt.Errorf("release %s: %s: %v: rebuild the release with `etcdbake image`", id, filepath.Join(rdir, sp), err)
	}
	r.Spec = &c
	return r, nil
}

// Releases lists the manifests of the releases in dir, newest (by creation) first;
// directories without a readable manifest are left out.
func Releases(dir string) ([]spec.ReleaseManifest, error) {
	ents, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	var out []spec.ReleaseManifest
	for _, e := range ents {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), spec.ReleaseManifestName))
		if err != nil {
			continue
		}
		var m spec.ReleaseManifest
		if json.Unmarshal(b, &m) == nil && m.ID == e.Name() {
			out = append(out, m)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Created.After(out[j].Created) })
	return out, nil
}

// NewestRelease is the id of the most recently built release in dir.
func NewestRelease(dir string) (string, error) {
	rs, err := Releases(dir)
	if err != nil {
		return "", err
	}
	if len(rs) == 0 {
		return "", fmt.Errorf("no release in %s: build one with `etcdbake image` (each build of a spec revision is a release)", dir)
	}
	return rs[0].ID, nil
}

func listIDs(dir string) string {
	rs, _ := Releases(dir)
	if len(rs) == 0 {
		return "none"
	}
	ids := make([]string, len(rs))
	for i, m := range rs {
		ids[i] = m.ID
	}
	return strings.Join(ids, ", ")
}

// Plan is a checked publication: what Publish writes.
type Plan struct {
	Desired spec.RolloutDesired
	// Change are the nodes that run another release and will take this one; Unchanged
	// says every node runs it already and no other release is desired (nothing to
	// publish).
	Change    []string
	Unchanged bool
	// Running maps each node to the release it runs now.
	Running map[string]string
	// expect is the desired key's ModRevision read with the view.
	expect int64
}

// CheckOptions is what Check decides on.
type CheckOptions struct {
	// Cluster is the operator's spec: the cluster the release must be for.
	Cluster *spec.Cluster
	// ReleasesDir holds the release and the releases the nodes run now.
	ReleasesDir string
	Release     *Release
	// URL is where the nodes fetch the release (https://HOST:PORT/v1/releases/<id>).
	URL string
	// Versions is the etcd server version each member runs now (member name -> version).
	Versions map[string]string
	View     *View
	Now      time.Time
}

// Check decides whether the release may be published to the cluster seen in o.View and
// returns the plan; each refusal says why and what to do. It writes nothing. Checked:
// the release is for this cluster and holds every node; every node runs a release from
// o.ReleasesDir (on A/B slots) whose spec the new one may replace (CheckChange); etcd's
// upgrade rules against the running versions (CheckUpgrade).
func Check(o CheckOptions) (*Plan, error) {
	c, r, v := o.Cluster, o.Release, o.View
	m := r.Manifest
	if m.Cluster != c.Name {
		return nil, fmt.Errorf("release %s was built for cluster %q, not %q (the spec's name): build a release of this spec with `etcdbake image`", m.ID, m.Cluster, c.Name)
	}
	var missing []string
	for _, n := range c.Nodes {
		if _, ok := m.Nodes[n.Name]; !ok {
			missing = append(missing, n.Name)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("release %s has nothing for node %s: it was built from another spec; build a release of this spec with `etcdbake image`", m.ID, strings.Join(missing, ", "))
	}
	if r.Spec == nil {
		return nil, fmt.Errorf("release %s has no %s (built before releases kept their spec): rebuild it with `etcdbake image`", m.ID, spec.ReleaseSpecName)
	}
	var noRecord []string
	running := map[string]string{}
	byRelease := map[string][]string{}
	for _, n := range c.Nodes {
		rec, ok := v.Records[n.Name]
		if !ok || rec.Release == "" {
			noRecord = append(noRecord, n.Name)
			continue
		}
		running[n.Name] = rec.Release
		byRelease[rec.Release] = append(byRelease[rec.Release], n.Name)
	}
	if len(noRecord) > 0 {
		return nil, fmt.Errorf("node %s published no boot record (%s<node>): only nodes on A/B slots (disk images or PXE installs of etcdbake) take a rollout, "+
			"and they publish their record once healthy; check `etcdbake status`, or re-image the node", strings.Join(noRecord, ", "), spec.NodeRecordPrefix)
	}
	ids := make([]string, 0, len(byRelease))
	for id := range byRelease {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		if id == m.ID {
			continue
		}
		old, err := LoadRelease(o.ReleasesDir, id)
		if err != nil {
			return nil, fmt.Errorf("node %s runs release %s, which the new release must be checked against: %w", strings.Join(byRelease[id], ", "), id, err)
		}
		if old.Spec == nil {
			return nil, fmt.Errorf("node %s runs release %s, which has no %s to check the new release against: rebuild that release with `etcdbake image` from its spec",
				strings.Join(byRelease[id], ", "), id, spec.ReleaseSpecName)
		}
		if err := CheckChange(old.Spec, r.Spec); err != nil {
			return nil, fmt.Errorf("release %s cannot replace release %s (run by %s): %w", m.ID, id, strings.Join(byRelease[id], ", "), err)
		}
	}
	target := r.EtcdVersion()
	if target == "" {
		return nil, fmt.Errorf("release %s: its manifest lists no etcd binary: rebuild it with `etcdbake image`", m.ID)
	}
	var silent []string
	for _, n := range c.Nodes {
		if o.Versions[n.Name] == "" {
			silent = append(silent, n.Name)
		}
	}
	if len(silent) > 0 {
		return nil, fmt.Errorf("member %s did not report its etcd version: etcd's upgrade rules are checked against every member; bring it back (etcdbake status) first",
			strings.Join(silent, ", "))
	}
	if err := CheckUpgrade(target, o.Versions); err != nil {
		return nil, fmt.Errorf("release %s (etcd %s): %w", m.ID, target, err)
	}
	p := &Plan{Running: running, expect: v.DesiredRevision,
		Desired: spec.RolloutDesired{Generation: v.NextGeneration(), Release: m.ID, URL: o.URL, Published: o.Now.UTC()}}
	for _, n := range c.Nodes {
		if running[n.Name] != m.ID {
			p.Change = append(p.Change, n.Name)
		}
	}
	// Every node runs it and nothing else is desired: nothing to do. (When another
	// release is desired, publishing this one stops the nodes from taking that one.)
	p.Unchanged = len(p.Change) == 0 && (v.Desired == nil || v.Desired.Release == m.ID)
	return p, nil
}

// ErrConcurrent is returned by Publish when the desired release changed after the view
// was read.
var ErrConcurrent = errors.New("the desired release changed while this publication was checked")

// Publish writes the plan's desired release in one transaction that also ends any halt,
// if the desired key is still as the view read it (ErrConcurrent otherwise: nothing is
// written).
func Publish(ctx context.Context, cli *clientv3.Client, p *Plan) error {
	if p.Unchanged {
		return errors.New("rollout: every node runs the release already; nothing to publish")
	}
	b, err := json.Marshal(p.Desired)
	if err != nil {
		return err
	}
	resp, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(spec.RolloutDesiredKey), "=", p.expect)).
		Then(clientv3.OpPut(spec.RolloutDesiredKey, string(b)), clientv3.OpDelete(spec.RolloutHaltKey)).
		Commit()
	if err != nil {
		return fmt.Errorf("publishing %s: %w", spec.RolloutDesiredKey, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("%w (%s was at revision %d when read): another `etcdbake rollout` published meanwhile; check `etcdbake rollout status` and run again",
			ErrConcurrent, spec.RolloutDesiredKey, p.expect)
	}
	return nil
}

// Resume ends a halt: it deletes the halt key and returns what it held (nil when there
// was no halt).
func Resume(ctx context.Context, cli *clientv3.Client) (*spec.RolloutHalt, error) {
	resp, err := cli.Delete(ctx, spec.RolloutHaltKey, clientv3.WithPrevKV())
	if err != nil {
		return nil, fmt.Errorf("deleting %s: %w", spec.RolloutHaltKey, err)
	}
	if len(resp.PrevKvs) == 0 {
		return nil, nil
	}
	var h spec.RolloutHalt
	if err := json.Unmarshal(resp.PrevKvs[0].Value, &h); err != nil {
		h.Reason = "unreadable halt value: " + string(resp.PrevKvs[0].Value)
	}
	return &h, nil
}

// Wait follows a published release until every node runs it, done (nil), the rollout
// halts (an error with the node and the reason), another release is published, or ctx
// ends. Every poll's view goes to seen (the caller reports what changed).
func Wait(ctx context.Context, cli *clientv3.Client, d spec.RolloutDesired, nodes []string, every time.Duration, seen func(*View)) error {
	for {
		v, err := ReadView(ctx, cli)
		if err == nil {
			seen(v)
			if v.Halt != nil {
				return fmt.Errorf("the rollout of release %s halted: node %s (release %s, generation %d): %s; publish another release or run `etcdbake rollout resume`",
					d.Release, v.Halt.Node, v.Halt.Release, v.Halt.Generation, v.Halt.Reason)
			}
			if v.Desired == nil || v.Desired.Generation != d.Generation {
				now := "nothing"
				if v.Desired != nil {
					now = fmt.Sprintf("release %s, generation %d", v.Desired.Release, v.Desired.Generation)
				}
				return fmt.Errorf("generation %d (release %s) was replaced: %s is desired now", d.Generation, d.Release, now)
			}
			if !slices.ContainsFunc(nodes, func(n string) bool { return !v.NodeDone(n, d) }) {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			if err != nil {
				return fmt.Errorf("waiting for release %s: %w (last read: %v)", d.Release, ctx.Err(), err)
			}
			return fmt.Errorf("waiting for release %s: %w; `etcdbake rollout status` shows where each node is", d.Release, ctx.Err())
		case <-time.After(every):
		}
	}
}
