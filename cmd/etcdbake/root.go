package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
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
		a.rolloutCmd(),
		a.snapshotCmd(),
		a.restoreCmd(),
		a.fetchCmd(),
		a.baseCmd(),
		a.imageCmd(),
		a.buildCmd(),
		a.upCmd(),
		a.downCmd(),
		a.execCmd(),
		a.sshCmd(),
		a.serveCmd(),
		a.superviseCmd(),
		a.relayCmd(),
	)
	a.addVersion(root) // --version and the version command
	// Applied to the whole tree, so that every command behaves the same: flag errors
	// and wrong arguments are usage errors (exit 2), the spec may be the one argument,
	// -o values are checked, and the help has examples.
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return usageErrorf("%s (see %s --help)", err, cmd.CommandPath())
	})
	a.specArgs(root)
	checkOutputFlags(root)
	addExamples(root)
	return root
}

// checkSpecFile answers a spec path that is missing or a directory the way a spec error
// is answered (exit 2), naming the fix.
func (a *app) checkSpecFile() error {
	fi, err := os.Stat(a.specPath)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return usageErrorf("spec file %s does not exist: run `etcdbake init -f %s` to write an example, or give the spec with -f FILE", a.specPath, a.specPath)
	case err == nil && fi.IsDir():
		return usageErrorf("%s is a directory, not a spec file: give the file, e.g. -f %s", a.specPath, filepath.Join(a.specPath, "cluster.yaml"))
	}
	return nil
}

// load reads and validates the spec; warnings go to stderr.
func (a *app) load(cmd *cobra.Command) (*spec.Cluster, error) {
	if err := a.checkSpecFile(); err != nil {
		return nil, err
	}
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
	if err := a.checkSpecFile(); err != nil {
		return nil, err
	}
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

// cmdLine is the command line that runs etcdbake's sub command on the same spec and
// output directory, for the commands a message suggests: "etcdbake SUB -f SPEC [--out OUT]".
func (a *app) cmdLine(sub string) string {
	s := "etcdbake " + sub + " -f " + a.specPath
	if a.outDir != "out" {
		s += " --out " + a.outDir
	}
	return s
}

func (a *app) initCmd() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Write the commented 3-node example spec",
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := a.checkInitTarget(force); err != nil {
				return err
			}
			if err := fileutil.WriteAtomic(a.specPath, spec.Example, 0o644); err != nil {
				return fmt.Errorf("cannot write %s: %w", a.specPath, plainPathError(err))
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
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := a.checkSpecFile(); err != nil {
				return err
			}
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

// checkInitTarget refuses, before anything is written, a spec path init cannot or
// should not write: a directory, a file in a missing directory, an existing spec
// (without --force).
func (a *app) checkInitTarget(force bool) error {
	p := a.specPath
	fi, err := os.Stat(p)
	switch {
	case err == nil && fi.IsDir():
		return usageErrorf("%s is a directory: give the spec file to write, e.g. -f %s", p, filepath.Join(p, "cluster.yaml"))
	case err == nil && !force:
		return fmt.Errorf("%s already exists: keep it, choose another file with -f, or pass --force to overwrite", p)
	case err == nil:
		return nil
	}
	dir := filepath.Dir(p)
	di, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return usageErrorf("cannot write %s: the directory %s does not exist: create it first (mkdir -p %s) or choose another path", p, dir, dir)
	case err == nil && !di.IsDir():
		return usageErrorf("cannot write %s: %s is not a directory", p, dir)
	}
	return nil
}

// plainPathError reduces a file system error to its cause ("permission denied"), without
// the temporary file names an atomic write goes through.
func plainPathError(err error) error {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno
	}
	return err
}

func printf(w io.Writer, format string, args ...any) { fmt.Fprintf(w, format, args...) }
