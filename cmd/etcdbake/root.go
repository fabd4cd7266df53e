package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/etcdbake/etcdbake/bake"
	"github.com/etcdbake/etcdbake/internal/fileutil"
	"github.com/etcdbake/etcdbake/spec"
)

// app holds the global flags and the injected clock; commands close over it.
type app struct {
	specPath string
	outDir   string
	cacheDir string
	now      func() time.Time
}

func newRootCmd() *cobra.Command { return newRootCmdFor(&app{now: time.Now}) }

func newRootCmdFor(a *app) *cobra.Command {
	root := &cobra.Command{
		Use:   "etcdbake",
		Short: "Bake a production etcd + flannel cluster from one spec",
		Long: `etcdbake turns one cluster spec (YAML) into everything a 3+ node etcd cluster with
flannel needs: a per-node PKI (the CA key never leaves this machine), checksum-verified
etcd/etcdctl/flanneld binaries, and one Ignition config per node with hardened units,
time sync and etcd-firstboot.

Start with:  etcdbake init && etcdbake validate && etcdbake ignition --binaries-url URL`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVarP(&a.specPath, "spec", "f", "cluster.yaml", "cluster spec file")
	root.PersistentFlags().StringVar(&a.outDir, "out", "out", "output directory")
	root.PersistentFlags().StringVar(&a.cacheDir, "cache", "", "binary cache directory (default $XDG_CACHE_HOME/etcdbake)")
	root.AddCommand(
		a.initCmd(),
		a.validateCmd(),
		a.pkiCmd(),
		a.ignitionCmd(),
		a.kubeadmCmd(),
		a.statusCmd(),
		a.fetchCmd(),
		a.baseCmd(),
		a.imageCmd(),
		a.buildCmd(),
		a.upCmd(),
		a.downCmd(),
		a.execCmd(),
		a.serveCmd(),
		a.superviseCmd(),
	)
	a.addVersion(root) // --version and the version command
	return root
}

// load reads and validates the spec; warnings go to stderr.
func (a *app) load(cmd *cobra.Command) (*spec.Cluster, error) {
	c, rep, err := spec.Load(a.specPath)
	if err != nil {
		return nil, err
	}
	for _, p := range rep.Problems {
		fmt.Fprintf(cmd.ErrOrStderr(), "%s: %s\n", a.specPath, p)
	}
	return c, nil
}

// loadForBuild is load for the commands that build from the spec (ignition, image, build,
// up, serve): the Butane fragments are read and checked as well, before anything is
// written.
func (a *app) loadForBuild(cmd *cobra.Command) (*spec.Cluster, error) {
	c, rep, err := bake.Load(a.specPath)
	if err != nil {
		return nil, err
	}
	for _, p := range rep.Problems {
		fmt.Fprintf(cmd.ErrOrStderr(), "%s: %s\n", a.specPath, p)
	}
	return c, nil
}

func (a *app) pkiDir() string { return filepath.Join(a.outDir, "pki") }

func (a *app) initCmd() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Write the commented 3-node example spec",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := os.Stat(a.specPath); err == nil && !force {
				return fmt.Errorf("%s already exists: keep it, choose another file with -f, or pass --force to overwrite", a.specPath)
			}
			if err := fileutil.WriteAtomic(a.specPath, spec.Example, 0o644); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s: a 3-node example; edit the addresses, then run `etcdbake validate -f %s`\n", a.specPath, a.specPath)
			return nil
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "overwrite an existing spec file")
	return cmd
}

func (a *app) validateCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "validate",
		Short: "Check the spec and its Butane fragments and print every problem",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, rep, err := bake.Load(a.specPath) // the fragments are read once the spec itself is valid
			var inv *spec.InvalidError
			if err != nil && !errors.As(err, &inv) {
				return err
			}
			w := cmd.OutOrStdout()
			for _, p := range rep.Problems {
				fmt.Fprintf(w, "%s: %s\n", a.specPath, p)
			}
			if n := len(rep.Errors()); n > 0 {
				return &exitError{code: 2, msg: fmt.Sprintf("%s: %d error(s), %d warning(s)", a.specPath, n, len(rep.Problems)-n)}
			}
			fmt.Fprintf(w, "%s: valid (%d warning(s))\n", a.specPath, len(rep.Problems))
			return nil
		},
	}
}

func printf(w io.Writer, format string, args ...any) { fmt.Fprintf(w, format, args...) }
