package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/etcdbake/etcdbake/bake"
	"github.com/etcdbake/etcdbake/binaries"
	"github.com/etcdbake/etcdbake/ignition"
	"github.com/etcdbake/etcdbake/pki"
	"github.com/etcdbake/etcdbake/spec"
	"github.com/etcdbake/etcdbake/status"
	"github.com/etcdbake/etcdbake/vmcluster"
)

func (a *app) pkiCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "pki",
		Short: "Create or reuse the CAs and issue every certificate under OUT/pki",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.load(cmd)
			if err != nil {
				return err
			}
			return a.ensurePKI(cmd, c, true)
		},
	}
	cmd.AddCommand(a.pkiCheckCmd())
	return cmd
}

// ensurePKI runs pki.Ensure and reports what changed (everything when verbose).
func (a *app) ensurePKI(cmd *cobra.Command, c *spec.Cluster, verbose bool) error {
	res, err := pki.Ensure(c, a.pkiDir(), a.now())
	if err != nil {
		return err
	}
	a.reportPKI(cmd, res, verbose)
	return nil
}

// reportPKI prints what pki.Ensure did: the changes (everything when verbose) and the
// certificates of nodes no longer in the spec.
func (a *app) reportPKI(cmd *cobra.Command, res *pki.Result, verbose bool) {
	if res == nil {
		return
	}
	w := cmd.OutOrStdout()
	for _, act := range res.Actions {
		if verbose || act.Verb != "reused" {
			fmt.Fprintf(w, "pki: %s\n", act)
		}
	}
	for _, s := range res.Stale() {
		fmt.Fprintf(cmd.ErrOrStderr(), "pki: %s is not in the spec any more (left in place; delete it when the node is gone)\n", s)
	}
}

func (a *app) pkiCheckCmd() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Show every certificate and fail if one is expired, not yet valid, or drifted from the spec",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.load(cmd)
			if err != nil {
				return err
			}
			infos, err := pki.Check(c, a.pkiDir(), a.now())
			if err != nil {
				return err
			}
			bad := 0
			for _, ci := range infos {
				if !ci.OK() {
					bad++
				}
			}
			w := cmd.OutOrStdout()
			if output == "json" {
				if err := writeJSON(w, infos); err != nil {
					return err
				}
			} else {
				for _, ci := range infos {
					state := "ok"
					if !ci.OK() {
						state = "PROBLEM"
					}
					fmt.Fprintf(w, "%s [%s]\n  subject:  %s\n  issuer:   %s\n  SANs:     %s\n  valid:    %s .. %s (%d days left)\n",
						ci.Name, state, ci.Subject, ci.Issuer, strings.Join(append(append([]string(nil), ci.DNSNames...), ci.IPs...), ", "),
						ci.NotBefore.UTC().Format(time.RFC3339), ci.NotAfter.UTC().Format(time.RFC3339), ci.DaysLeft)
					for _, p := range ci.Problems {
						fmt.Fprintf(w, "  problem:  %s\n", p)
					}
				}
			}
			if bad > 0 {
				return &exitError{code: 1, msg: fmt.Sprintf("%d of %d certificates have problems: run `etcdbake pki` to re-issue drifted or expiring leaves", bad, len(infos))}
			}
			if output != "json" {
				fmt.Fprintf(w, "all %d certificates ok\n", len(infos))
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	return cmd
}

func (a *app) cache(cmd *cobra.Command) (*binaries.Cache, error) {
	dir := a.cacheDir
	if dir == "" {
		d, err := binaries.DefaultCacheDir()
		if err != nil {
			return nil, err
		}
		dir = d
	}
	return &binaries.Cache{Dir: dir, Progress: func(format string, args ...any) {
		fmt.Fprintf(cmd.ErrOrStderr(), "fetch: "+format+"\n", args...)
	}}, nil
}

func (a *app) fetchCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "fetch",
		Short: "Fill the verified binary cache with the pinned etcd, etcdctl and flanneld",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.load(cmd)
			if err != nil {
				return err
			}
			cache, err := a.cache(cmd)
			if err != nil {
				return err
			}
			entries, err := cache.Fetch(cmd.Context(), c)
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "BINARY\tVERSION\tSOURCE\tSHA256\tPATH")
			for _, e := range entries {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", e.Name, e.Version, e.Source, e.SHA256, e.Path)
			}
			return w.Flush()
		},
	}
}

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

func (a *app) statusCmd() *cobra.Command {
	var output string
	var endpoints []string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show each member's health, leader, raft term/index, version, DB size, learner flag and certificate days left",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.load(cmd)
			if err != nil {
				return err
			}
			ca, _ := pki.CAPath(a.pkiDir(), "ca")
			crt, key := pki.ClientCertPath(a.pkiDir(), "admin")
			if len(endpoints) == 0 {
				// A cluster started by `etcdbake up` is reached through its forwards.
				if st, err := vmcluster.ReadRunState(a.runDir()); err == nil && st.Running() {
					for _, n := range sortedNodes(st) {
						endpoints = append(endpoints, st.Nodes[n].Endpoint)
					}
					fmt.Fprintf(cmd.ErrOrStderr(), "status: the QEMU cluster started by up (%s)\n", filepath.Join(a.runDir(), vmcluster.RunStateFile))
				}
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 4*timeout)
			defer cancel()
			st, err := status.Collect(ctx, c, status.Options{
				Endpoints: endpoints, CAFile: ca, CertFile: crt, KeyFile: key,
				PKIDir: a.pkiDir(), Timeout: timeout, Now: a.now(),
			})
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if output == "json" {
				if err := writeJSON(w, st); err != nil {
					return err
				}
			} else {
				printStatus(w, st)
			}
			if !st.Quorum {
				return &exitError{code: 1, msg: "the cluster has no quorum or no leader"}
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	cmd.Flags().StringSliceVar(&endpoints, "endpoints", nil, "client URLs to use instead of the spec's (e.g. forwarded ports)")
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Second, "per-request timeout")
	return cmd
}

func printStatus(out interface{ Write([]byte) (int, error) }, st *status.Cluster) {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "MEMBER\tENDPOINT\tHEALTH\tLEADER\tLEARNER\tTERM\tINDEX\tVERSION\tDB SIZE\tCERT DAYS")
	for _, m := range st.Members {
		health := "healthy"
		if !m.Healthy {
			health = "unhealthy: " + m.Error
		}
		days := "-"
		if m.CertDaysLeft != nil {
			days = fmt.Sprint(*m.CertDaysLeft)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%v\t%v\t%d\t%d\t%s\t%s\t%s\n", m.Name, m.Endpoint, health, m.Leader, m.Learner,
			m.RaftTerm, m.RaftIndex, m.Version, humanBytes(m.DBSize), days)
	}
	w.Flush()
	fmt.Fprintf(out, "cluster %s, leader %s, quorum %v\n", st.ClusterID, st.Leader, st.Quorum)
	if len(st.Flannel) > 0 {
		var ls []string
		for _, l := range st.Flannel {
			who := l.Node
			if who == "" {
				who = l.PublicIP
			}
			ls = append(ls, who+"="+l.Subnet)
		}
		fmt.Fprintf(out, "flannel leases (%d): %s\n", len(st.Flannel), strings.Join(ls, " "))
	}
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func writeJSON(w interface{ Write([]byte) (int, error) }, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
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
