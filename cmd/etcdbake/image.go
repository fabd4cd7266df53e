package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/etcdbake/etcdbake/bake"
	"github.com/etcdbake/etcdbake/ignition"
	"github.com/etcdbake/etcdbake/imagebuild"
	"github.com/etcdbake/etcdbake/spec"
)

func (a *app) baseCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "base",
		Short: "Build (or reuse) the default base root filesystem: Debian bookworm with mmdebstrap",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := a.defaultBase(cmd)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), p)
			return nil
		},
	}
}

// defaultBase builds (or reuses) the default base, with the spec's image.packages when
// there is a spec.
func (a *app) defaultBase(cmd *cobra.Command) (string, error) {
	var c *spec.Cluster
	if _, err := os.Stat(a.specPath); err == nil {
		if c, err = a.load(cmd); err != nil {
			return "", err
		}
	}
	return bake.Base(cmd.Context(), "", c, func(f string, args ...any) {
		fmt.Fprintf(cmd.ErrOrStderr(), f+"\n", args...) // the lines name their step ("base: ...", "mmdebstrap: ...")
	})
}

func (a *app) imageCmd() *cobra.Command {
	var o imageFlags
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Write one bootable UEFI disk image per node to OUT/images",
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.runImage(cmd, o)
		},
	}
	o.register(cmd)
	return cmd
}

func (a *app) buildCmd() *cobra.Command {
	var o imageFlags
	var ign ignition.Options
	cmd := &cobra.Command{
		Use:   "build",
		Short: "Everything for every node: pki, Ignition configs (with --binaries-url or --inline-binaries) and disk images",
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := imagebuild.CheckFormats(o.formats); err != nil {
				return err
			}
			c, err := a.loadForBuild(cmd)
			if err != nil {
				return err
			}
			if err := a.ensurePKI(cmd, c, true); err != nil {
				return err
			}
			if ign.BinariesURL != "" || ign.Inline {
				if err := a.runIgnition(cmd, ign, o.firstboot); err != nil {
					return err
				}
			}
			return a.runImage(cmd, o)
		},
	}
	o.register(cmd)
	cmd.Flags().StringVar(&ign.BinariesURL, "binaries-url", "", "also write OUT/ignition with this base URL for the binaries")
	cmd.Flags().BoolVar(&ign.Inline, "inline-binaries", false, "also write OUT/ignition with the binaries inlined")
	cmd.MarkFlagsMutuallyExclusive("binaries-url", "inline-binaries")
	return cmd
}

type imageFlags struct {
	base      string
	formats   []string
	firstboot string
	dataSize  int64
}

func (o *imageFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&o.base, "base", "", "base root filesystem tarball (default: build Debian bookworm with mmdebstrap, cached)")
	cmd.Flags().StringSliceVar(&o.formats, "format", []string{"raw", "qcow2"}, "image formats: raw, qcow2 (zstd-compressed: QEMU 5.1 or later), qcow2-zlib (for older QEMU)")
	cmd.Flags().StringVar(&o.firstboot, "firstboot", "", firstbootFlagHelp)
	// imagebuild makes the data partition at least 512MiB: less is refused here rather than
	// silently raised.
	cmd.Flags().Var(newPartitionSize(&o.dataSize, 1<<30, 512*mib), "data-size", "size of the /var data partition in the image (its file system is made at this size; on a larger disk, grow the partition and then the file system with resize2fs): "+sizeHelp)
}

func (a *app) runImage(cmd *cobra.Command, o imageFlags) error {
	if err := imagebuild.CheckFormats(o.formats); err != nil {
		return err
	}
	c, err := a.loadForBuild(cmd)
	if err != nil {
		return err
	}
	return a.writeImages(cmd, c, o, filepath.Join(a.outDir, "images"), nil, "image")
}

// writeImages builds every node's image into outDir (etcdData: restored data for the
// nodes' data partitions, see bake.ImageOptions) and prints where each went.
func (a *app) writeImages(cmd *cobra.Command, c *spec.Cluster, o imageFlags, outDir string, etcdData map[string]string, who string) error {
	src, err := a.sources(cmd, c, o.firstboot)
	if err != nil {
		return err
	}
	src.Progress = func(f string, args ...any) { fmt.Fprintf(cmd.ErrOrStderr(), who+": "+f+"\n", args...) }
	cfg, imgs, err := bake.Images(cmd.Context(), src, bake.ImageOptions{
		Base: o.base, OutDir: outDir, ReleasesDir: a.releasesDir(), Formats: o.formats, DataSize: o.dataSize,
		EtcdData: etcdData, Meter: newMeter(cmd.ErrOrStderr()),
	})
	if cfg != nil {
		a.reportPKI(cmd, cfg.PKI, false)
	}
	if err != nil {
		return err
	}
	for _, im := range imgs {
		fmt.Fprintf(cmd.OutOrStdout(), "%s: %s\n", im.Node, strings.Join(im.Files, " "))
	}
	return nil
}
