package bake

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/etcdbake/etcdbake/backup"
	"github.com/etcdbake/etcdbake/pki"
	"github.com/etcdbake/etcdbake/spec"
)

// RestoreData verifies a snapshot file against the spec's cluster (its name) and its
// PKI (the CA in pkiDir), then builds every node's restored etcd data directory under
// workDir/<node> with etcd's own restore code (backup.Restore), for images whose data
// partitions hold them (ImageOptions.EtcdData, QEMUOptions.EtcdData). The caller removes
// workDir once the images are built.
func RestoreData(ctx context.Context, snapshot string, c *spec.Cluster, pkiDir, workDir string) (map[string]string, *spec.SnapshotManifest, error) {
	ca, _ := pki.CAPath(pkiDir, pki.CAName)
	fp, err := backup.CAFingerprint(ca)
	if err != nil {
		return nil, nil, fmt.Errorf("a restore needs the cluster's PKI, the one the snapshot was taken with: %w", err)
	}
	dirs := map[string]string{}
	for _, n := range c.Nodes {
		dirs[n.Name] = filepath.Join(workDir, n.Name)
	}
	m, err := backup.Restore(ctx, snapshot, c, backup.Expect{Cluster: c.Name, CAFingerprint: fp}, dirs)
	if err != nil {
		return nil, nil, err
	}
	return dirs, m, nil
}
