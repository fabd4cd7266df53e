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
	"github.com/etcdbake/etcdbake/imagebuild/base"
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

func (a *app) defaultBase(cmd *cobra.Command) (string, error) {
	dir, err := base.DefaultCacheDir()
	if err != nil {
		return "", err
	}
	return base.Build(cmd.Context(), base.DefaultRecipe(), dir, func(f string, args ...any) {
		fmt.Fprintf(cmd.ErrOrStderr(), f+"\n", args...) // the lines name their step ("base: ...", "mmdebstrap: ...")
	})
}

func (a *app) imageCmd() *cobra.Command {
	var o imageFlags
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Write one bootable UEFI disk image per node to OUT/images",
		Args:  cobra.NoArgs,
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
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := imagebuild.CheckFormats(o.formats); err != nil {
				return err
			}
			c, err := a.load(cmd)
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
	cmd.Flags().StringSliceVar(&o.formats, "format", []string{"raw", "qcow2"}, "image formats: raw, qcow2")
	cmd.Flags().StringVar(&o.firstboot, "firstboot", "", "etcd-firstboot binary (default: next to etcdbake)")
	cmd.Flags().Int64Var(&o.dataSize, "data-size", 1<<30, "bytes for the /var data partition in the image (grown on a larger disk)")
}

func (a *app) runImage(cmd *cobra.Command, o imageFlags) error {
	if err := imagebuild.CheckFormats(o.formats); err != nil {
		return err
	}
	c, err := a.load(cmd)
	if err != nil {
		return err
	}
	fb, err := firstbootBinary(o.firstboot)
	if err != nil {
		return err
	}
	specBytes, err := os.ReadFile(a.specPath)
	if err != nil {
		return err
	}
	cache, err := a.cache(cmd)
	if err != nil {
		return err
	}
	baseDir, err := base.DefaultCacheDir()
	if err != nil {
		return err
	}
	if err := a.ensurePKI(cmd, c, false); err != nil {
		return err
	}
	imgs, err := bake.Images(cmd.Context(), bake.Options{
		Cluster: c, SpecBytes: specBytes, PKIDir: a.pkiDir(), Cache: cache,
		Firstboot: fb, FirstbootVersion: version, Base: o.base, BaseCacheDir: baseDir,
		OutDir: filepath.Join(a.outDir, "images"), Formats: o.formats, DataSize: o.dataSize,
		Progress: func(f string, args ...any) { fmt.Fprintf(cmd.ErrOrStderr(), "image: "+f+"\n", args...) },
		Meter:    newMeter(cmd.ErrOrStderr()),
	})
	if err != nil {
		return err
	}
	for _, im := range imgs {
		fmt.Fprintf(cmd.OutOrStdout(), "%s: %s\n", im.Node, strings.Join(im.Files, " "))
	}
	return nil
}
