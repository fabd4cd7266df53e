package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/etcdbake/etcdbake/bake"
	"github.com/etcdbake/etcdbake/ignition"
	"github.com/etcdbake/etcdbake/pki"
	"github.com/etcdbake/etcdbake/spec"
)

// firstbootBinary finds etcd-firstboot: the flag, else next to this executable.
func firstbootBinary(flag string) (string, error) {
	if flag != "" {
		return flag, nil
	}
	self, err := os.Executable()
	if err == nil {
		p := filepath.Join(filepath.Dir(self), "etcd-firstboot")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("etcd-firstboot not found next to etcdbake: run `make build` (it puts both in bin/) or pass --firstboot PATH")
}

func (a *app) ignitionCmd() *cobra.Command {
	var opts ignition.Options
	var firstboot string
	cmd := &cobra.Command{
		Use:   "ignition",
		Short: "Write one Ignition config per node to OUT/ignition/<node>.ign",
		Long: `Renders each node's Ignition config (spec 3.4.0, for Fedora CoreOS and Flatcar) from the
spec and the PKI, merges Butane fragments, validates it with Ignition's own parser and
writes OUT/ignition/<node>.ign. The PKI is created or reused first; the binaries come
from the verified cache (fetched if missing).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.runIgnition(cmd, opts, firstboot)
		},
	}
	cmd.Flags().StringVar(&opts.BinariesURL, "binaries-url", "", "base URL the nodes download <URL>/<binary> from (verified by sha512)")
	cmd.Flags().BoolVar(&opts.Inline, "inline-binaries", false, "embed the binaries in the configs (gzip data URLs) instead of a URL")
	cmd.Flags().StringVar(&firstboot, "firstboot", "", "etcd-firstboot binary (default: next to etcdbake)")
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

// runIgnition renders and writes OUT/ignition/<node>.ign.
func (a *app) runIgnition(cmd *cobra.Command, opts ignition.Options, firstboot string) error {
	c, cfg, err := a.renderIgnition(cmd, opts, firstboot)
	if err != nil {
		return err
	}
	dir := filepath.Join(a.outDir, "ignition")
	if err := ignition.Write(dir, cfg.Configs); err != nil {
		return err
	}
	for _, n := range c.Nodes {
		fmt.Fprintf(cmd.OutOrStdout(), "wrote %s (%d bytes)\n", filepath.Join(dir, n.Name+".ign"), len(cfg.Configs[n.Name]))
	}
	return nil
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
	fb, err := firstbootBinary(firstbootFlag)
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
		Firstboot: fb, FirstbootVersion: version,
	}, nil
}
