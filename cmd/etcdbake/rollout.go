package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdbake/etcdbake/bake"
	imgbase "github.com/etcdbake/etcdbake/imagebuild/base"
	"github.com/etcdbake/etcdbake/internal/fileutil"
	"github.com/etcdbake/etcdbake/pxe"
	"github.com/etcdbake/etcdbake/rollout"
	"github.com/etcdbake/etcdbake/spec"
	"github.com/etcdbake/etcdbake/status"
)

// releasesDir is where the releases of this cluster are: up's when it runs.
func (a *app) rolloutReleasesDir(t clusterTarget) string {
	if t.up {
		return a.qemuReleasesDir()
	}
	return a.releasesDir()
}

// readView reads the rollout keys with a bound.
func readView(ctx context.Context, cli *clientv3.Client) (*rollout.View, error) {
	vctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	v, err := rollout.ReadView(vctx, cli)
	if err != nil {
		return nil, fmt.Errorf("%w: is the cluster up with quorum? (etcdbake status)", err)
	}
	return v, nil
}

func (a *app) rolloutCmd() *cobra.Command {
	var f rolloutFlags
	cmd := &cobra.Command{
		Use:   "rollout",
		Short: "Publish a release to the running cluster: its nodes take it one at a time (status, resume: see the sub commands)",
		Long: `rollout publishes a release built by ` + "`etcdbake image`" + ` (OUT/releases, or OUT/qemu/releases for
the cluster of ` + "`etcdbake up`" + `) as the desired release in etcd. Each node stages it into its
inactive A/B slot, then reboots into it while holding the cluster's reboot lock, one node at a
time; a node whose new slot fails falls back by itself and halts the rollout.

Before anything is written, the release is checked: built for this cluster, with every node;
no change a running cluster cannot take (member list, addresses, token, ports, flannel's
network) against the releases the nodes run; etcd's upgrade rules against the members'
versions. Publishing ends a halt.`,
		RunE: func(cmd *cobra.Command, _ []string) error { return a.runRollout(cmd, &f) },
	}
	cmd.Flags().StringVar(&f.release, "release", "", "release ID to publish (default: the newest built; under `etcdbake up`, the spec as it is now, built first)")
	cmd.Flags().StringVar(&f.firstboot, "firstboot", "", firstbootFlagHelp)
	cmd.Flags().StringVar(&f.base, "url", "", "base URL of the release server the nodes fetch from, https://HOST:PORT of `etcdbake serve --release-listen` (not needed under `etcdbake up`)")
	cmd.Flags().BoolVar(&f.wait, "wait", false, "follow the rollout until every node runs the release, or it halts")
	cmd.Flags().DurationVar(&f.timeout, "timeout", 60*time.Minute, "with --wait, how long to wait")
	cmd.PersistentFlags().StringSliceVar(&f.endpoints, "endpoints", nil, "client URLs to use instead of the spec's (e.g. forwarded ports)")
	cmd.AddCommand(a.rolloutStatusCmd(&f.endpoints), a.rolloutResumeCmd(&f.endpoints))
	return cmd
}

// rolloutFlags are the flags of `etcdbake rollout`.
type rolloutFlags struct {
	release, base string
	firstboot     string
	wait          bool
	timeout       time.Duration
	endpoints     []string
}

// buildQEMURelease builds the spec's release for the cluster of up into OUT/qemu/releases
// and returns its ID (an unchanged spec gives the release built before).
func (a *app) buildQEMURelease(cmd *cobra.Command, c *spec.Cluster, firstboot string) (string, error) {
	ew := cmd.ErrOrStderr()
	if err := a.ensurePKI(cmd, c, false); err != nil {
		return "", err
	}
	src, err := a.sources(cmd, c, firstboot)
	if err != nil {
		return "", err
	}
	src.Progress = func(f string, args ...any) { fmt.Fprintf(ew, f+"\n", args...) }
	baseDir, err := imgbase.DefaultCacheDir()
	if err != nil {
		return "", err
	}
	start := time.Now()
	dir, err := bake.QEMURelease(cmd.Context(), src, bake.QEMUOptions{BaseCacheDir: baseDir, ReleasesDir: a.qemuReleasesDir(), Meter: newMeter(ew)})
	if err != nil {
		return "", fmt.Errorf("rollout: building the release for the QEMU cluster: %w", err)
	}
	fmt.Fprintf(ew, "rollout: release %s built for the QEMU cluster in %s (%s)\n", filepath.Base(dir), time.Since(start).Round(time.Second), dir)
	return filepath.Base(dir), nil
}

// runRollout checks the release against the running cluster and publishes it.
func (a *app) runRollout(cmd *cobra.Command, f *rolloutFlags) error {
	c, err := a.load(cmd)
	if err != nil {
		return err
	}
	t := a.clusterTarget(cmd, c, f.endpoints)
	dir := a.rolloutReleasesDir(t)
	if f.release == "" && t.up {
		// The cluster of up takes a release of the spec as it is now, built for QEMU.
		if f.release, err = a.buildQEMURelease(cmd, c, f.firstboot); err != nil {
			return err
		}
	}
	if f.release == "" {
		if f.release, err = rollout.NewestRelease(dir); err != nil {
			return err
		}
	}
	rel, err := rollout.LoadRelease(dir, f.release)
	if err != nil {
		return err
	}
	if sum, err := fileutil.SHA256(a.specPath); err == nil && rel.Manifest.SpecSHA256 != "" && sum != rel.Manifest.SpecSHA256 {
		fmt.Fprintf(cmd.ErrOrStderr(), "rollout: note: release %s was built from another revision of %s; `%s` builds the current one\n",
			f.release, a.specPath, a.cmdLine("image"))
	}
	u, err := releaseURL(f.base, f.release, t.up)
	if err != nil {
		return err
	}
	ctx := cmd.Context()
	// Every member's version is needed; a member slow to answer once (a busy machine) is
	// asked again before the release is refused for it.
	var versions map[string]string
	for attempt := 1; ; attempt++ {
		cctx, cancel := context.WithTimeout(ctx, 4*requestTimeout)
		st, err := status.Collect(cctx, c, t.opts)
		cancel()
		if err != nil { // *status.UnreachableError says why each endpoint did not answer
			return fmt.Errorf("rollout: nothing published: %w", err)
		}
		if !st.Quorum {
			return errors.New("rollout: nothing published: the cluster has no quorum or no leader (etcdbake status)")
		}
		versions = map[string]string{}
		for _, m := range st.Members {
			if m.Version != "" {
				versions[m.Name] = m.Version
			}
		}
		if len(versions) >= len(c.Nodes) || attempt == 3 {
			break
		}
		fmt.Fprintf(cmd.ErrOrStderr(), "rollout: %d of %d members reported their version; asking again\n", len(versions), len(c.Nodes))
		time.Sleep(2 * time.Second)
	}
	cli, err := t.client()
	if err != nil {
		return err
	}
	defer cli.Close()
	v, err := readView(ctx, cli)
	if err != nil {
		return err
	}
	plan, err := rollout.Check(rollout.CheckOptions{Cluster: c, ReleasesDir: dir, Release: rel, URL: u,
		Versions: versions, View: v, Now: a.now()})
	if err != nil {
		return fmt.Errorf("rollout: nothing published: %w", err)
	}
	w := cmd.OutOrStdout()
	if plan.Unchanged {
		fmt.Fprintf(w, "every node runs release %s already: nothing published\n", f.release)
		return nil
	}
	pctx, cancel := context.WithTimeout(ctx, requestTimeout)
	err = rollout.Publish(pctx, cli, plan)
	cancel()
	if err != nil {
		return fmt.Errorf("rollout: %w", err)
	}
	d := plan.Desired
	fmt.Fprintf(w, "published release %s (etcd %s), generation %d, from %s\n", d.Release, rel.EtcdVersion(), d.Generation, d.URL)
	if v.Halt != nil {
		fmt.Fprintf(w, "this ends the halt set by %s: %s\n", v.Halt.Node, v.Halt.Reason)
	}
	var moves []string
	for _, n := range plan.Change {
		moves = append(moves, fmt.Sprintf("%s (runs %s)", n, plan.Running[n]))
	}
	if len(moves) == 0 {
		fmt.Fprintf(w, "every node runs it already; it replaces release %s as the desired one\n", v.Desired.Release)
	} else {
		fmt.Fprintf(w, "nodes to take it, one at a time: %s\n", strings.Join(moves, ", "))
	}
	if !f.wait {
		fmt.Fprintf(w, "follow it with `%s`\n", a.cmdLine("rollout status"))
		return nil
	}
	return a.waitRollout(ctx, cmd, cli, c, d, f.timeout)
}

// releaseURL is where the nodes fetch release id: under base (the release server of
// `etcdbake serve`), or up's.
func releaseURL(base, id string, up bool) (string, error) {
	if base == "" {
		if up {
			return bake.QEMUReleaseURL(id), nil
		}
		return "", usageErrorf("rollout: --url is required: the base https://HOST:PORT at which the nodes reach the release server " +
			"(`etcdbake serve --release-listen ADDR`, with --release-san for that address)")
	}
	u, err := url.Parse(base)
	if err != nil || u.Scheme != "https" || u.Host == "" || (u.Path != "" && u.Path != "/") {
		return "", usageErrorf("rollout: --url %s: want https://HOST:PORT, the address of `etcdbake serve --release-listen` as the nodes reach it", base)
	}
	return "https://" + u.Host + pxe.ReleasePrefix + id, nil
}

// waitRollout follows the published release, printing each node's state change once.
func (a *app) waitRollout(ctx context.Context, cmd *cobra.Command, cli *clientv3.Client, c *spec.Cluster, d spec.RolloutDesired, timeout time.Duration) error {
	w := cmd.OutOrStdout()
	nodes := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		nodes[i] = n.Name
	}
	last := map[string]string{}
	seen := func(v *rollout.View) {
		for _, n := range nodes {
			line := "waiting"
			if s, ok := v.Nodes[n]; ok && s.Generation == d.Generation {
				line = s.State
				if s.Error != "" {
					line += ": " + s.Error
				}
			}
			if v.NodeDone(n, d) {
				line = spec.RolloutDone
			}
			if line != last[n] {
				last[n] = line
				fmt.Fprintf(w, "%s %s: %s\n", a.now().UTC().Format(time.TimeOnly), n, line)
			}
		}
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := rollout.Wait(wctx, cli, d, nodes, 2*time.Second, seen); err != nil {
		return fmt.Errorf("rollout: %w", err)
	}
	fmt.Fprintf(w, "every node runs release %s (generation %d)\n", d.Release, d.Generation)
	return nil
}

// rolloutClient connects to the spec's cluster as the rollout commands do.
func (a *app) rolloutClient(cmd *cobra.Command, endpoints []string) (*spec.Cluster, *clientv3.Client, error) {
	c, err := a.load(cmd)
	if err != nil {
		return nil, nil, err
	}
	cli, err := a.clusterTarget(cmd, c, endpoints).client()
	return c, cli, err
}

func (a *app) rolloutStatusCmd(endpoints *[]string) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the desired release, any halt, the reboot lock and each node's slot, release and rollout state",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, cli, err := a.rolloutClient(cmd, *endpoints)
			if err != nil {
				return err
			}
			defer cli.Close()
			v, err := readView(cmd.Context(), cli)
			if err != nil {
				return err
			}
			if output == "json" {
				return writeJSON(cmd.OutOrStdout(), v)
			}
			printRollout(cmd.OutOrStdout(), c, v, a.now())
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	return cmd
}

// printRollout writes the rollout status: desired, halt, lock, then a row per node.
func printRollout(out io.Writer, c *spec.Cluster, v *rollout.View, now time.Time) {
	ago := func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return now.Sub(t).Round(time.Second).String() + " ago"
	}
	if d := v.Desired; d != nil {
		fmt.Fprintf(out, "desired: release %s, generation %d, published %s (%s), from %s\n", d.Release, d.Generation,
			d.Published.UTC().Format(time.RFC3339), ago(d.Published), d.URL)
	} else {
		fmt.Fprintln(out, "desired: none (nothing was published: etcdbake rollout)")
	}
	if h := v.Halt; h != nil {
		fmt.Fprintf(out, "HALTED by %s (release %s, generation %d) %s: %s\n", h.Node, h.Release, h.Generation, ago(h.At), h.Reason)
		fmt.Fprintln(out, "  no node reboots until another release is published or `etcdbake rollout resume`")
	}
	if len(v.Locks) == 0 {
		fmt.Fprintln(out, "reboot lock: free")
	} else {
		fmt.Fprintf(out, "reboot lock: held by lease %x", v.Locks[0].Lease)
		if len(v.Locks) > 1 {
			var ws []string
			for _, l := range v.Locks[1:] {
				ws = append(ws, fmt.Sprintf("%x", l.Lease))
			}
			fmt.Fprintf(out, "; waiting: %s", strings.Join(ws, ", "))
		}
		fmt.Fprintln(out)
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NODE\tSLOT\tRELEASE\tSTAGED\tSTATE\tUPDATED\tERROR")
	for _, n := range c.Nodes {
		slot, rel, staged, state, updated, lastErr := "-", "-", "-", "-", "-", ""
		if r, ok := v.Records[n.Name]; ok {
			slot, rel = r.Slot, r.Release
			if r.Fallback != "" {
				lastErr = "fell back: " + r.Fallback
			}
		} else {
			state = "no boot record (not on A/B slots, or not healthy yet)"
		}
		if s, ok := v.Nodes[n.Name]; ok {
			state, updated = s.State, ago(s.Updated)
			if s.Generation != 0 && v.Desired != nil && s.Generation != v.Desired.Generation {
				state += fmt.Sprintf(" (generation %d)", s.Generation)
			}
			if s.Staged != "" {
				staged = s.Staged
			}
			if s.Progress != "" {
				state += ", " + s.Progress
			}
			if s.Error != "" {
				lastErr = s.Error
			}
		} else if v.Desired != nil && v.NodeDone(n.Name, *v.Desired) {
			state = spec.RolloutDone
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", n.Name, slot, rel, staged, state, updated, lastErr)
	}
	w.Flush()
	for _, p := range v.Problems {
		fmt.Fprintf(out, "unreadable: %s\n", p)
	}
}

func (a *app) rolloutResumeCmd(endpoints *[]string) *cobra.Command {
	return &cobra.Command{
		Use:   "resume",
		Short: "End a halted rollout (delete the halt a node set when its new slot failed): the other nodes go on",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, cli, err := a.rolloutClient(cmd, *endpoints)
			if err != nil {
				return err
			}
			defer cli.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), requestTimeout)
			defer cancel()
			h, err := rollout.Resume(ctx, cli)
			if err != nil {
				return fmt.Errorf("rollout resume: %w: is the cluster up with quorum? (etcdbake status)", err)
			}
			if h == nil {
				fmt.Fprintln(cmd.OutOrStdout(), "the rollout is not halted: nothing to resume")
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "resumed: removed the halt set by %s (release %s, generation %d) at %s: %s\n",
				h.Node, h.Release, h.Generation, h.At.UTC().Format(time.RFC3339), h.Reason)
			return nil
		},
	}
}
