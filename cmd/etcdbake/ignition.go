package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/etcdbake/etcdbake/bake"
	"github.com/etcdbake/etcdbake/binaries"
	"github.com/etcdbake/etcdbake/ignition"
	"github.com/etcdbake/etcdbake/pki"
	"github.com/etcdbake/etcdbake/spec"
)

// firstboot finds the etcd-firstboot to bake and the version to record for it: the
// --firstboot file, else the one next to etcdbake (as `make build` lays them out in
// bin/), else the matching one from the binary cache, built with the go command when it
// is not there (see binaries.Cache.Firstboot). A file given or found is checked
// (binaries.CheckFirstboot): a static linux/amd64 etcd-firstboot of etcdbake's version.
func (a *app) firstboot(cmd *cobra.Command, flag string) (firstbootChoice, error) {
	want := selfBuild()
	use := func(p, source string, got binaries.Build, warn string) (firstbootChoice, error) {
		if warn != "" {
			fmt.Fprintf(cmd.ErrOrStderr(), "etcdbake: warning: %s\n", warn)
		}
		v := etcdbakeVersion()
		if got.Released() {
			v = got.Version
		}
		return firstbootChoice{Path: p, Version: v, Source: source}, nil
	}
	if flag != "" {
		got, warn, err := binaries.CheckFirstboot(flag, want)
		var fe *binaries.FirstbootError
		if errors.As(err, &fe) {
			fe.Label = "--firstboot"
		}
		if err != nil {
			return firstbootChoice{}, err
		}
		return use(flag, "--firstboot", got, warn)
	}
	if next := firstbootNextToSelf(); next != "" {
		got, warn, err := binaries.CheckFirstboot(next, want)
		var fe *binaries.FirstbootError
		if errors.As(err, &fe) {
			fe.Label = "the etcd-firstboot next to etcdbake,"
			fe.Fix = binaries.FirstbootFix(want, selfDir()) + "; or remove it and etcdbake builds the matching one"
		}
		if err != nil {
			return firstbootChoice{}, err
		}
		return use(next, "next to etcdbake", got, warn)
	}
	cache, err := a.cache(cmd)
	if err != nil {
		return firstbootChoice{}, err
	}
	cwd, _ := os.Getwd()
	e, err := cache.Firstboot(cmd.Context(), want, binaries.FindCheckout(cwd, selfDir()))
	if err != nil {
		return firstbootChoice{}, err
	}
	got, warn, err := binaries.CheckFirstboot(e.Path, want)
	if err != nil {
		return firstbootChoice{}, err
	}
	return use(e.Path, e.Source, got, warn)
}

// firstbootChoice is the etcd-firstboot to bake, the version recorded for it, and where
// it came from (--firstboot, next to etcdbake, or the cache record's source).
type firstbootChoice struct{ Path, Version, Source string }

func (a *app) ignitionCmd() *cobra.Command {
	var opts ignition.Options
	var firstboot string
	cmd := &cobra.Command{
		Use:   "ignition",
		Short: "Write one Ignition config per node to OUT/ignition/<node>.ign",
		Long: `Renders each node's Ignition config (spec 3.4.0, for Fedora CoreOS and Flatcar) from the
spec and the PKI, merges Butane fragments, validates it with Ignition's own parser and
writes OUT/ignition/<node>.ign. The PKI is created or reused first; the binaries come
from the verified cache (fetched if missing).

With --binaries-url URL the nodes download URL/etcd, URL/etcdctl, URL/flanneld and
URL/etcd-firstboot and check each against the sha512 in their config: the four files are
laid out under OUT/binaries/, ready to publish at URL as they are (the command lists them).

etcd-firstboot must come from the same etcdbake: --firstboot PATH, else the one next to
etcdbake (make build puts both in bin/), else the matching one is built with the go
command into the binary cache (a release's from the module proxy, a development build's
from the checkout around the current directory). Any of them is checked: a static
linux/amd64 etcd-firstboot of etcdbake's version (a development build: of the same VCS
revision, or without one, built with the same Go and dependency versions).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.runIgnition(cmd, opts, firstboot)
		},
	}
	cmd.Flags().StringVar(&opts.BinariesURL, "binaries-url", "", "base URL the nodes download <URL>/<binary> from (verified by sha512)")
	cmd.Flags().BoolVar(&opts.Inline, "inline-binaries", false, "embed the binaries in the configs (gzip data URLs) instead of a URL")
	cmd.Flags().StringVar(&firstboot, "firstboot", "", firstbootFlagHelp)
	cmd.MarkFlagsMutuallyExclusive("binaries-url", "inline-binaries")
	return cmd
}

func (a *app) kubeadmCmd() *cobra.Command {
	var target string
	cmd := &cobra.Command{
		Use:   "kubeadm",
		Short: "Print the kubeadm ClusterConfiguration etcd.external block for this cluster",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.load(cmd)
			if err != nil {
				return err
			}
			crt, key := pki.ClientCertPath(a.pkiDir(), "kube-apiserver-etcd-client")
			ca, _ := pki.CAPath(a.pkiDir(), "ca")
			for _, p := range []string{crt, key, ca} {
				if _, err := os.Stat(p); err != nil {
					return fmt.Errorf("%s is missing: run `etcdbake pki -f %s --out %s` first", p, a.specPath, a.outDir)
				}
			}
			printf(cmd.OutOrStdout(), "%s", KubeadmConfig(c, target, ca, crt, key))
			return nil
		},
	}
	cmd.Flags().StringVar(&target, "pki-target", "/etc/kubernetes/pki", "directory on the control-plane hosts the files are copied to")
	return cmd
}

// KubeadmConfig renders the etcd.external block with copy instructions.
func KubeadmConfig(c *spec.Cluster, target, ca, crt, key string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Copy these files to every control-plane host first:\n")
	fmt.Fprintf(&b, "#   %s -> %s/etcd/ca.crt\n", ca, target)
	fmt.Fprintf(&b, "#   %s -> %s/apiserver-etcd-client.crt\n", crt, target)
	fmt.Fprintf(&b, "#   %s -> %s/apiserver-etcd-client.key   (mode 0600)\n", key, target)
	b.WriteString("apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\netcd:\n  external:\n    endpoints:\n")
	for _, ep := range c.ClientEndpoints() {
		fmt.Fprintf(&b, "      - %s\n", ep)
	}
	fmt.Fprintf(&b, "    caFile: %s/etcd/ca.crt\n    certFile: %s/apiserver-etcd-client.crt\n    keyFile: %s/apiserver-etcd-client.key\n", target, target, target)
	return b.String()
}

// runIgnition renders and writes OUT/ignition/<node>.ign and, with --binaries-url, lays
// out the binaries the configs download under OUT/binaries/.
func (a *app) runIgnition(cmd *cobra.Command, opts ignition.Options, firstboot string) error {
	c, cfg, err := a.renderIgnition(cmd, opts, firstboot)
	if err != nil {
		return err
	}
	var pub []bake.Published
	if opts.BinariesURL != "" {
		if pub, err = bake.PublishBinaries(filepath.Join(a.outDir, "binaries"), opts.BinariesURL, cfg.Binaries); err != nil {
			return err
		}
	}
	dir := filepath.Join(a.outDir, "ignition")
	if err := ignition.Write(dir, cfg.Configs); err != nil {
		return err
	}
	w := cmd.OutOrStdout()
	for _, n := range c.Nodes {
		fmt.Fprintf(w, "wrote %s (%d bytes)\n", filepath.Join(dir, n.Name+".ign"), len(cfg.Configs[n.Name]))
	}
	if len(pub) > 0 {
		printPublished(w, filepath.Join(a.outDir, "binaries"), opts.BinariesURL, pub)
	}
	return nil
}

// printPublished says what must be served at --binaries-url and how.
func printPublished(w io.Writer, dir, url string, pub []bake.Published) {
	fmt.Fprintf(w, "the nodes download these from --binaries-url and check each against its sha512:\n")
	for _, p := range pub {
		fmt.Fprintf(w, "  %s -> %s (%.1f MiB)\n    sha512 %s\n", p.URL, p.Path, float64(p.Size)/(1<<20), p.SHA512)
	}
	fmt.Fprintf(w, "publish %s/ as it is at %s/ (any static web server; the configs fail on a missing or different file).\n", dir, strings.TrimRight(url, "/"))
	fmt.Fprintf(w, "`etcdbake serve` is the other way: it serves these binaries under its own address (/binaries/NAME) with configs it renders for that address, by MAC over PXE.\n")
}

// renderIgnition loads the spec and renders every node's config through the composition
// root (creating or reusing the PKI, fetching missing binaries), reporting PKI changes.
func (a *app) renderIgnition(cmd *cobra.Command, opts ignition.Options, firstboot string) (*spec.Cluster, *bake.Configs, error) {
	c, err := a.loadForBuild(cmd)
	if err != nil {
		return nil, nil, err
	}
	src, err := a.sources(cmd, c, firstboot)
	if err != nil {
		return nil, nil, err
	}
	src.Progress = func(f string, args ...any) { fmt.Fprintf(cmd.ErrOrStderr(), "ignition: "+f+"\n", args...) }
	cfg, err := bake.RenderConfigs(cmd.Context(), src, opts)
	if err != nil {
		return nil, nil, err
	}
	a.reportPKI(cmd, cfg.PKI, false)
	return c, cfg, nil
}

// sources gathers what the composition root needs from the flags: the spec file, the PKI
// directory, the binary cache and etcd-firstboot.
func (a *app) sources(cmd *cobra.Command, c *spec.Cluster, firstbootFlag string) (bake.Sources, error) {
	fb, err := a.firstboot(cmd, firstbootFlag)
	if err != nil {
		return bake.Sources{}, err
	}
	specBytes, err := os.ReadFile(a.specPath)
	if err != nil {
		return bake.Sources{}, err
	}
	cache, err := a.cache(cmd)
	if err != nil {
		return bake.Sources{}, err
	}
	return bake.Sources{
		Cluster: c, SpecBytes: specBytes, PKIDir: a.pkiDir(), Now: a.now, Cache: cache,
		Firstboot: fb.Path, FirstbootVersion: fb.Version,
	}, nil
}

// firstbootFlagHelp is the help of every command's --firstboot flag.
const firstbootFlagHelp = "etcd-firstboot binary (default: next to etcdbake, else built to match etcdbake into the binary cache)"
