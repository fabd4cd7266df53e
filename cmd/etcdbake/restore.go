package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/etcdbake/etcdbake/backup"
	"github.com/etcdbake/etcdbake/bake"
	"github.com/etcdbake/etcdbake/imagebuild"
	"github.com/etcdbake/etcdbake/spec"
)

func (a *app) restoreImagesDir() string { return filepath.Join(a.outDir, "restore", "images") }

// restoreWorkDir is a new directory for the restored data directories of one build,
// under OUT (the data can be large; /tmp may be small).
func (a *app) restoreWorkDir() (string, error) {
	if err := os.MkdirAll(a.outDir, 0o755); err != nil {
		return "", err
	}
	return os.MkdirTemp(a.outDir, ".restore-")
}

func (a *app) restoreCmd() *cobra.Command {
	var o imageFlags
	var imagesOut string
	cmd := &cobra.Command{
		Use:   "restore SNAPSHOT",
		Short: "Build every node's disk image with its etcd data restored from a snapshot (after losing a majority)",
		Long: `restore verifies SNAPSHOT first (as ` + "`etcdbake snapshot verify`" + ` does: the file whole, the spec's
cluster name, the CA in OUT/pki) and writes nothing if it fails. Then it builds the data
directory of every member with etcd's own restore code (the spec's initial cluster and
token, so every member keeps its ID and the cluster its ID; the revision bumped by
1000000000 and marked compacted, so that flanneld and every watcher re-list instead of
seeing the revision go backwards), and writes one disk image per node whose data partition
holds it, to OUT/restore/images (--images-out).

Boot every node from its restored image at the same time (etcdbake serve --images
OUT/restore/images installs them over PXE): the members start from the snapshot's data.
A node booted from its old disk or a plain image would not join the restored cluster.
For the QEMU cluster of etcdbake up, use etcdbake up --restore SNAPSHOT.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := imagebuild.CheckFormats(o.formats); err != nil {
				return err
			}
			if imagesOut == "" {
				imagesOut = a.restoreImagesDir()
			}
			c, err := a.loadForBuild(cmd)
			if err != nil {
				return err
			}
			work, err := a.restoreWorkDir()
			if err != nil {
				return err
			}
			defer os.RemoveAll(work)
			start := time.Now()
			dirs, m, err := bake.RestoreData(cmd.Context(), args[0], c, a.pkiDir(), work)
			if err != nil {
				return &exitError{code: 1, msg: "restore: " + err.Error()}
			}
			ew := cmd.ErrOrStderr()
			fmt.Fprintf(ew, "restore: %s verified and restored for %d members in %s\n", args[0], len(dirs), time.Since(start).Round(time.Millisecond))
			printManifest(ew, m)
			if err := a.writeImages(cmd, c, o, imagesOut, dirs, "restore"); err != nil {
				return err
			}
			fmt.Fprintf(ew, "restore: boot every node from its image in %s at once (etcdbake serve --images %s); the cluster comes back at revision %d + %d\n",
				imagesOut, imagesOut, m.Revision, backup.RevisionBump)
			return nil
		},
	}
	o.register(cmd)
	cmd.Flags().StringVar(&imagesOut, "images-out", "", "where the restored images go (default OUT/restore/images)")
	return cmd
}

// upRestore builds the restored data of every node for `up --restore`.
func (a *app) upRestore(cmd *cobra.Command, c *spec.Cluster, snapshot string) (dirs map[string]string, cleanup func(), err error) {
	work, err := a.restoreWorkDir()
	if err != nil {
		return nil, nil, err
	}
	cleanup = func() { os.RemoveAll(work) }
	start := time.Now()
	dirs, m, err := bake.RestoreData(cmd.Context(), snapshot, c, a.pkiDir(), work)
	if err != nil {
		cleanup()
		return nil, nil, &exitError{code: 1, msg: "up --restore: " + err.Error()}
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "up: %s verified and restored for %d members in %s\n", snapshot, len(dirs), time.Since(start).Round(time.Millisecond))
	printManifest(cmd.ErrOrStderr(), m)
	return dirs, cleanup, nil
}
