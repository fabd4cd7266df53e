package backup

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"go.etcd.io/etcd/etcdutl/v3/snapshot"
	"go.uber.org/zap"

	"github.com/etcdbake/etcdbake/spec"
)

// RevisionBump is how far a restore moves the revision past the snapshot's, marking
// everything before compacted: a watcher or flanneld that saw revisions written after the
// snapshot gets "compacted" and re-lists instead of seeing the revision go backwards.
// (Kubernetes' restore guide uses the same figure.)
const RevisionBump = 1_000_000_000

// Restore verifies the snapshot file path (Verify, against want), then builds the etcd
// data directory of every member of c with etcdutl's restore: the spec's initial cluster
// and token, so each member keeps the ID it was given at the static bootstrap and the
// cluster its expected ID; the revision bumped by RevisionBump and marked compacted; no
// key of the cluster's reboot lock (withoutLocks).
// dataDirs maps each node to its data directory, which must not exist or be empty. Each
// is built beside its place and renamed into it only when all are built: on error no
// data directory is left (and none existing is touched).
func Restore(ctx context.Context, path string, c *spec.Cluster, want Expect, dataDirs map[string]string) (*spec.SnapshotManifest, error) {
	for _, n := range c.Nodes {
		d, ok := dataDirs[n.Name]
		if !ok {
			return nil, fmt.Errorf("no data directory given for node %s", n.Name)
		}
		if err := mustBeEmpty(d); err != nil {
			return nil, err
		}
	}
	// The working copies (the database, a copy for hashing) go near the first data
	// directory, on the file system that will hold the restored data, in its nearest
	// existing parent: nothing is created for a restore that is refused.
	parent := filepath.Dir(dataDirs[c.Nodes[0].Name])
	for {
		if fi, err := os.Stat(parent); err == nil && fi.IsDir() {
			break
		}
		up := filepath.Dir(parent)
		if up == parent {
			break
		}
		parent = up
	}
	scratch, err := os.MkdirTemp(parent, ".restore-work-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(scratch)
	m, err := verifyInto(path, want, scratch)
	if err != nil {
		return nil, err
	}
	// The snapshot's reboot lock is left behind: nobody in the restored cluster holds it.
	db := filepath.Join(scratch, "unlocked.db")
	if err := withoutLocks(filepath.Join(scratch, spec.SnapshotDBName), db); err != nil {
		return nil, fmt.Errorf("%s: releasing the reboot lock the snapshot holds: %w", path, err)
	}

	built := map[string]string{} // node -> its data dir built beside its place
	defer func() {
		for _, tmp := range built {
			os.RemoveAll(tmp)
		}
	}()
	names := make([]string, 0, len(c.Nodes))
	for _, n := range c.Nodes {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		final := dataDirs[n.Name]
		if err := os.MkdirAll(filepath.Dir(final), 0o755); err != nil {
			return nil, err
		}
		tmp, err := os.MkdirTemp(filepath.Dir(final), "."+filepath.Base(final)+".restoring-")
		if err != nil {
			return nil, err
		}
		built[n.Name] = tmp
		names = append(names, n.Name)
		err = snapshot.NewV3(zap.NewNop()).Restore(snapshot.RestoreConfig{
			SnapshotPath:        db,
			Name:                n.Name,
			OutputDataDir:       tmp,
			PeerURLs:            []string{c.PeerURL(n)},
			InitialCluster:      c.InitialCluster(),
			InitialClusterToken: c.Etcd.Token,
			RevisionBump:        RevisionBump,
			MarkCompacted:       true,
			// verified above, then rewritten without the lock (no trailing checksum)
			SkipHashCheck: true,
		})
		if err != nil {
			return nil, fmt.Errorf("restoring member %s: %w", n.Name, err)
		}
		if err := os.Chmod(tmp, 0o700); err != nil {
			return nil, err
		}
	}
	// Every member is built: move them into place; undo on a failure.
	sort.Strings(names)
	var placed []string
	for _, name := range names {
		final := dataDirs[name]
		_ = os.Remove(final) // empty (checked above) or absent
		if err := os.Rename(built[name], final); err != nil {
			for _, p := range placed {
				_ = os.RemoveAll(dataDirs[p])
			}
			return nil, fmt.Errorf("moving member %s's data into %s: %w", name, final, err)
		}
		delete(built, name)
		placed = append(placed, name)
	}
	return m, nil
}

func mustBeEmpty(dir string) error {
	ents, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if len(ents) > 0 {
		return fmt.Errorf("%s is not empty: a restore never writes over data; move it away first", dir)
	}
	return nil
}
