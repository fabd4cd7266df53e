package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/etcdbake/etcdbake/bake"
	imgbase "github.com/etcdbake/etcdbake/imagebuild/base"
	"github.com/etcdbake/etcdbake/pki"
	"github.com/etcdbake/etcdbake/pxe"
	"github.com/etcdbake/etcdbake/status"
	"github.com/etcdbake/etcdbake/vmcluster"
)

// `etcdbake up` boots the spec's nodes as QEMU VMs on this machine: OUT/qemu/images holds
// their images (the same pipeline as `etcdbake image`, plus the harness's second NIC and
// the hub as time source), OUT/run their disks (copy-on-write overlays), consoles and the
// record of the running cluster. A supervisor process (`etcdbake qemu-supervise`, started
// by up and detached from it) runs the VMs and the private L2 segment until `down`.

func (a *app) runDir() string       { return filepath.Join(a.outDir, "run") }
func (a *app) qemuImageDir() string { return filepath.Join(a.outDir, "qemu", "images") }

// qemuRestoredDir holds the images of `up --restore` (the VMs' disks are made over them).
func (a *app) qemuRestoredDir() string { return filepath.Join(a.outDir, "qemu", "restored") }

// qemuReleasesDir keeps the releases of `up`'s images (their configs have the QEMU
// fragment, so they are releases of their own).
func (a *app) qemuReleasesDir() string { return filepath.Join(a.outDir, "qemu", "releases") }

func (a *app) upCmd() *cobra.Command {
	var (
		memory    int
		timeout   time.Duration
		noWait    bool
		firstboot string
		accel     string
		restore   string
	)
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Boot every node as a QEMU VM on this machine (TCG) and wait until the cluster is healthy",
		Long: `up builds what is missing (PKI, the nodes' QEMU images under OUT/qemu/images) and boots
every node of the spec as a QEMU VM: UEFI (OVMF), a copy-on-write disk per node in OUT/run,
the nodes' spec addresses on a private Ethernet segment that exists only inside this
machine, and each node's etcd client port forwarded to 127.0.0.1 (OUT/run/endpoints.json).
No packet leaves 127.0.0.0/8. The VMs' time source is the segment's own NTP responder (the
spec's time servers are not reachable from it).

It waits until every member answers as a healthy voting member and flanneld holds a lease
on every node, then prints the status table. ` + "`etcdbake down`" + ` stops the VMs; their disks are
kept (and reused by the next up) unless --purge is given.

up on a running cluster is safe: a node whose VM has stopped (a crash, an OOM kill) is
booted again from its kept disk, with its data, and up waits until the cluster is healthy.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ew := cmd.ErrOrStderr()
			if st, err := vmcluster.ReadRunState(a.runDir()); err == nil {
				if st.Running() && restore != "" {
					return usageErrorf("up --restore: the cluster runs; a restore boots every node from new disks: `etcdbake down --purge` first (it discards the disks and their etcd data)")
				}
				if st.Running() {
					return a.upRunning(cmd, st, timeout)
				}
				// A supervisor that died (e.g. killed) may have left VMs on these disks:
				// stop them before anything boots the disks again.
				if _, err := vmcluster.StopSupervised(a.runDir(), 5*time.Second); err != nil {
					fmt.Fprintf(ew, "up: cleaned up after a supervisor that had stopped: %v\n", err)
				}
			}
			switch accel {
			case "tcg", "kvm", "auto":
			default:
				return fmt.Errorf("--accel %q: use tcg, kvm or auto", accel)
			}
			if err := vmcluster.Check(); err != nil {
				return fmt.Errorf("%w (or run `make setup`)", err)
			}
			c, err := a.load(cmd)
			if err != nil {
				return err
			}
			// Checked before anything is written.
			if _, err := bake.QEMUTimeServer(c); err != nil {
				return err
			}
			if err := a.ensurePKI(cmd, c, false); err != nil {
				return err
			}
			src, err := a.sources(cmd, c, firstboot)
			if err != nil {
				return err
			}
			src.Progress = func(f string, args ...any) { fmt.Fprintf(ew, f+"\n", args...) }
			baseDir, err := imgbase.DefaultCacheDir()
			if err != nil {
				return err
			}
			qo := bake.QEMUOptions{BaseCacheDir: baseDir, OutDir: a.qemuImageDir(), ReleasesDir: a.qemuReleasesDir(), RunDir: a.runDir(), Meter: newMeter(ew)}
			if restore != "" {
				if kept := vmcluster.KeptDisks(a.runDir()); len(kept) > 0 {
					return usageErrorf("up --restore: %s keeps the disks of %v with their etcd data; a restore boots new disks: `etcdbake down --purge` first (it discards them)", a.runDir(), kept)
				}
				dirs, cleanup, err := a.upRestore(cmd, c, restore)
				if err != nil {
					return err
				}
				defer cleanup()
				qo.EtcdData, qo.OutDir = dirs, a.qemuRestoredDir()
			}
			built, err := bake.QEMUImages(cmd.Context(), src, qo)
			if err != nil {
				return err
			}
			if built.Reused {
				fmt.Fprintf(ew, "up: images in %s are up to date\n", a.qemuImageDir())
			}
			upLog := func(f string, args ...any) { fmt.Fprintf(ew, "up: "+f+"\n", args...) }
			if accel, err = bake.QEMUAccel(cmd.Context(), accel, built.Base, baseDir, upLog); err != nil {
				return err
			}
			plan := bake.QEMUCluster(c, built.Images, a.runDir())
			plan.TimeServer, plan.MemoryMiB, plan.KeepDisks, plan.Accel = built.TimeServer, memory, true, accel
			self, err := os.Executable()
			if err != nil {
				return err
			}
			// The supervisor serves the releases (etcdbake rollout) on a unix socket that
			// each VM reaches at bake.QEMUReleaseAddr through its guest forward.
			if _, err := bake.QEMUReleaseServer(c, a.pkiDir(), a.qemuReleasesDir(), a.now(), nil); err != nil {
				return err
			}
			sock, err := filepath.Abs(filepath.Join(a.runDir(), releaseSocket))
			if err != nil {
				return err
			}
			plan.GuestForwards = []vmcluster.GuestForward{{Guest: bake.QEMUReleaseAddr, Relay: []string{self, "qemu-relay", sock}}}
			// A backup target on this machine's loopback (a local MinIO or SeaweedFS) is
			// reached by the VMs through a forward of their own (bake.QEMUTargetForward).
			if f, ok := bake.QEMUTargetForward(c); ok {
				plan.GuestForwards = append(plan.GuestForwards, vmcluster.GuestForward{Guest: f.Guest, Relay: []string{self, "qemu-relay", "tcp:" + f.Host}})
				fmt.Fprintf(ew, "up: the nodes reach the backup target %s at %s\n", c.Backup.Target.Endpoint, f.GuestURL)
			}
			specAbs, _ := filepath.Abs(a.specPath)
			outAbs, _ := filepath.Abs(a.outDir)
			st, err := vmcluster.Launch(cmd.Context(), plan, []string{self, "qemu-supervise", "--run-dir", plan.Dir,
				"-f", specAbs, "--out", outAbs, "--release-socket", sock})
			if err != nil {
				return err
			}
			fmt.Fprintf(ew, "up: %d VMs launched (supervisor pid %d); consoles in %s/<node>.log\n", len(st.Nodes), st.Supervisor, a.runDir())
			for _, n := range sortedNodes(st) {
				fmt.Fprintf(ew, "up: %s  etcd %s\n", n, st.Nodes[n].Endpoint)
			}
			if noWait {
				return nil
			}
			return a.waitHealthy(cmd, st, timeout)
		},
	}
	cmd.Flags().IntVar(&memory, "memory", 768, "MiB of memory per VM")
	cmd.Flags().DurationVar(&timeout, "timeout", 15*time.Minute, "how long to wait for a healthy cluster")
	cmd.Flags().BoolVar(&noWait, "no-wait", false, "return once the VMs are launched")
	cmd.Flags().StringVar(&firstboot, "firstboot", "", firstbootFlagHelp)
	cmd.Flags().StringVar(&restore, "restore", "", "boot every node with its etcd data restored from this snapshot file (etcdbake snapshot save; after `etcdbake down --purge`)")
	cmd.Flags().StringVar(&accel, "accel", "auto", "tcg, kvm, or auto (KVM only if a test boot under it works; the result is kept until the host reboots)")
	return cmd
}

// upRunning is up on a cluster whose supervisor runs: up is idempotent, so the nodes
// whose VM stopped are booted again from their kept disks by that supervisor, and up
// waits until the cluster is healthy.
func (a *app) upRunning(cmd *cobra.Command, st *vmcluster.RunState, timeout time.Duration) error {
	w, ew := cmd.OutOrStdout(), cmd.ErrOrStderr()
	down := st.NotRunning()
	if len(down) == 0 {
		fmt.Fprintf(w, "the cluster is already running (supervisor pid %d, started %s); `etcdbake down` stops it\n", st.Supervisor, st.Started.Format(time.RFC3339))
		return a.waitHealthy(cmd, st, 30*time.Second)
	}
	fmt.Fprintf(w, "the cluster is running (supervisor pid %d), but not every VM:\n", st.Supervisor)
	for _, n := range sortedKeys(down) {
		fmt.Fprintf(w, "  %s: %s; starting it again from its kept disk\n", n, down[n])
	}
	start := time.Now()
	started, st, err := vmcluster.StartStopped(cmd.Context(), a.runDir(), 2*time.Minute)
	if err != nil {
		return err
	}
	for _, n := range started {
		fmt.Fprintf(ew, "up: %s: VM running again after %.1fs (QEMU pid %d, etcd %s)\n", n, time.Since(start).Seconds(), st.Nodes[n].QEMU, st.Nodes[n].Endpoint)
	}
	return a.waitHealthy(cmd, st, timeout)
}

// waitHealthy polls the cluster until every node is a healthy voting member with a
// flannel lease, printing each node's progress, then prints the status table. A node
// whose VM stops meanwhile ends the wait at once.
func (a *app) waitHealthy(cmd *cobra.Command, st *vmcluster.RunState, timeout time.Duration) error {
	w, ew := cmd.OutOrStdout(), cmd.ErrOrStderr()
	c, err := a.load(cmd)
	if err != nil {
		return err
	}
	ca, _ := pki.CAPath(a.pkiDir(), "ca")
	crt, key := pki.ClientCertPath(a.pkiDir(), "admin")
	nodes := sortedNodes(st)
	ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
	defer cancel()
	start, last := time.Now(), map[string]string{}
	var report *status.Cluster
	for {
		if now, err := vmcluster.ReadRunState(a.runDir()); err == nil {
			st = now
		}
		opts := status.Options{CAFile: ca, CertFile: crt, KeyFile: key, PKIDir: a.pkiDir(), Timeout: 5 * time.Second, Now: a.now()}
		a.upOptions(st, &opts)
		report, err = status.Collect(ctx, c, opts)
		done := err == nil && healthyWithLeases(report, len(nodes))
		for _, n := range nodes {
			s := nodeProgress(report, err, n, st.Nodes[n].Endpoint)
			if s != last[n] {
				fmt.Fprintf(ew, "up: %6.1fs  %s: %s\n", time.Since(start).Seconds(), n, s)
				last[n] = s
			}
		}
		if done {
			break
		}
		if !st.Running() {
			return fmt.Errorf("the supervisor has stopped; see %s", filepath.Join(a.runDir(), vmcluster.SupervisorLog))
		}
		if down := sortedKeys(opts.NotRunning); len(down) > 0 {
			var why []string
			for _, n := range down {
				why = append(why, n+": "+opts.NotRunning[n])
			}
			return fmt.Errorf("%s (console in %s/<node>.log)", strings.Join(why, "; "), a.runDir())
		}
		select {
		case <-ctx.Done():
			var why []string
			for _, n := range nodes {
				why = append(why, n+": "+last[n])
			}
			return fmt.Errorf("the cluster was not healthy within %s (%s); consoles in %s/<node>.log, `etcdbake exec NODE -- journalctl -b` for more", timeout, strings.Join(why, "; "), a.runDir())
		case <-time.After(3 * time.Second):
		}
	}
	fmt.Fprintf(ew, "up: healthy after %.1fs\n", time.Since(start).Seconds())
	printStatus(w, report)
	var eps []string
	for _, n := range nodes {
		eps = append(eps, st.Nodes[n].Endpoint)
	}
	etcdctl := "etcdctl"
	if cache, err := a.cache(cmd); err == nil {
		if e, err := cache.Lookup("etcdctl", c.Etcd.Version); err == nil {
			etcdctl = e.Path
		}
	}
	fmt.Fprintf(w, "\nUse it:\n  %s --endpoints=%s \\\n    --cacert=%s --cert=%s --key=%s member list -w table\n", etcdctl, strings.Join(eps, ","), ca, crt, key)
	self := "etcdbake"
	if a.specPath != "cluster.yaml" {
		self += " -f " + a.specPath
	}
	if a.outDir != "out" {
		self += " --out " + a.outDir
	}
	fmt.Fprintf(w, "  %s exec %s -- journalctl -u etcd-firstboot -b\n  %s status\n  %s down [--purge]\n", self, nodes[0], self, self)
	return nil
}

func healthyWithLeases(r *status.Cluster, n int) bool {
	if r == nil || !r.Quorum || len(r.Members) != n || len(r.Flannel) < n {
		return false
	}
	for _, m := range r.Members {
		if !m.Healthy || m.Learner {
			return false
		}
	}
	return true
}

// nodeProgress is one node's state in words, for up's progress lines: from the report,
// or, when no endpoint answered (err), from the diagnosis of the node's endpoint.
func nodeProgress(r *status.Cluster, err error, node, endpoint string) string {
	if r == nil {
		var ue *status.UnreachableError
		if errors.As(err, &ue) {
			if why, ok := ue.NotRunning[node]; ok {
				return why
			}
			for _, d := range ue.Diagnoses {
				if d.Endpoint == endpoint {
					return notAnswering(d.Cause, d.Message)
				}
			}
		}
		if err != nil {
			return "booting (etcd not answering yet: " + err.Error() + ")"
		}
		return "booting (etcd not answering yet)"
	}
	for _, m := range r.Members {
		if m.Name != node {
			continue
		}
		switch {
		case m.Cause == status.CauseNotRunning:
			return m.Error
		case m.Learner:
			return "learner, catching up"
		case !m.Healthy && m.Cause != "":
			return "member, " + notAnswering(m.Cause, m.Error)
		case !m.Healthy:
			return "member, not answering yet"
		}
		for _, l := range r.Flannel {
			if l.Node == node {
				return "healthy voting member, flannel lease " + l.Subnet
			}
		}
		return "healthy voting member, waiting for flanneld's lease"
	}
	return "not a member yet"
}

// notAnswering words a diagnosis for a node that may still be booting: the causes a
// boot goes through are brief, the others (certificates, protocols) are shown whole.
func notAnswering(c status.Cause, msg string) string {
	switch c {
	case status.CauseRefused, status.CauseClosed, status.CauseTimeout:
		return "booting (etcd not answering yet: " + status.Brief(c, msg) + ")"
	}
	return "etcd does not answer as expected: " + msg
}

func sortedNodes(st *vmcluster.RunState) []string {
	var out []string
	for n := range st.Nodes {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func (a *app) downCmd() *cobra.Command {
	var purge bool
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Stop the VMs started by up (disks kept for the next up unless --purge)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			w := cmd.OutOrStdout()
			st, err := vmcluster.StopSupervised(a.runDir(), 30*time.Second)
			if err != nil {
				return err
			}
			if st == nil {
				fmt.Fprintf(w, "no cluster running from %s\n", a.runDir())
			} else {
				fmt.Fprintf(w, "stopped %d VMs (supervisor pid %d)\n", len(st.Nodes), st.Supervisor)
			}
			if !purge {
				if kept := vmcluster.KeptDisks(a.runDir()); len(kept) > 0 {
					fmt.Fprintf(w, "kept %d VM disks in %s (etcd data included); the next up boots them again, `down --purge` discards them\n", len(kept), a.runDir())
				}
				return nil
			}
			n, err := vmcluster.DiscardDisks(a.runDir())
			if err != nil {
				return err
			}
			fmt.Fprintf(w, "discarded %d VM disks in %s\n", n, a.runDir())
			return nil
		},
	}
	cmd.Flags().BoolVar(&purge, "purge", false, "also discard the VMs' disks (their etcd data)")
	return cmd
}

func (a *app) execCmd() *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "exec NODE -- COMMAND [ARG...]",
		Short: "Run a command as root in a node started by up (through its QEMU guest agent)",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			res, err := vmcluster.ExecIn(ctx, a.runDir(), args[0], args[1:]...)
			if err != nil {
				return err
			}
			fmt.Fprint(cmd.OutOrStdout(), res.Stdout)
			fmt.Fprint(cmd.ErrOrStderr(), res.Stderr)
			if res.ExitCode != 0 {
				return &exitError{code: res.ExitCode}
			}
			return nil
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 2*time.Minute, "how long to wait for the command")
	return cmd
}

// releaseSocket, in the run directory, is where up's supervisor serves the releases.
const releaseSocket = "release.sock"

func (a *app) superviseCmd() *cobra.Command {
	var dir, sock string
	cmd := &cobra.Command{
		Use:    "qemu-supervise",
		Short:  "Run the VMs of OUT/run/plan.json until SIGTERM (started by up)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
			defer stop()
			log := cmd.OutOrStdout()
			// `etcdbake up` sends SIGUSR1 to have the nodes whose VM stopped booted again.
			usr1 := make(chan os.Signal, 1)
			signal.Notify(usr1, syscall.SIGUSR1)
			defer signal.Stop(usr1)
			startStopped := make(chan struct{}, 1)
			go func() {
				for range usr1 {
					select {
					case startStopped <- struct{}{}:
					default:
					}
				}
			}()
			if sock != "" {
				stopServing, err := a.serveQEMUReleases(cmd, sock, func(f string, args ...any) {
					fmt.Fprintf(log, "%s release server: "+f+"\n", append([]any{time.Now().Format(time.RFC3339)}, args...)...)
				})
				if err != nil {
					return err
				}
				defer stopServing()
			}
			err := vmcluster.SupervisePlan(ctx, dir, vmcluster.SuperviseHooks{
				Ready: func(st *vmcluster.RunState) {
					fmt.Fprintf(log, "%s supervisor %d: %d VMs running\n", time.Now().Format(time.RFC3339), st.Supervisor, len(st.Nodes))
				},
				Logf: func(f string, args ...any) {
					fmt.Fprintf(log, "%s supervisor: "+f+"\n", append([]any{time.Now().Format(time.RFC3339)}, args...)...)
				},
				StartStopped: startStopped,
			})
			if err != nil {
				fmt.Fprintf(log, "%s supervisor: stopped: %v\n", time.Now().Format(time.RFC3339), err)
			} else {
				fmt.Fprintf(log, "%s supervisor: stopped\n", time.Now().Format(time.RFC3339))
			}
			if errors.Is(err, context.Canceled) {
				return nil
			}
			return err
		},
	}
	cmd.Flags().StringVar(&dir, "run-dir", "out/run", "run directory holding plan.json")
	cmd.Flags().StringVar(&sock, "release-socket", "", "serve OUT/qemu/releases (the spec's cluster) over mutual TLS on this unix socket")
	return cmd
}

// serveQEMUReleases serves OUT/qemu/releases on the unix socket sock until the returned
// stop is called.
func (a *app) serveQEMUReleases(cmd *cobra.Command, sock string, logf func(string, ...any)) (stop func(), err error) {
	c, err := a.load(cmd)
	if err != nil {
		return nil, err
	}
	srv, err := bake.QEMUReleaseServer(c, a.pkiDir(), a.qemuReleasesDir(), a.now(), func(acc pxe.Access) { logf("%s", acc) })
	if err != nil {
		return nil, err
	}
	srv.ErrorLog = log.New(cmd.OutOrStdout(), "release server: ", 0)
	_ = os.Remove(sock) // a socket left by a supervisor that was killed
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return nil, fmt.Errorf("release server: %w", err)
	}
	go srv.ServeTLS(ln, "", "")
	logf("serving %s on %s (the VMs: https://%s)", a.qemuReleasesDir(), sock, bake.QEMUReleaseAddr)
	return func() { srv.Close(); os.Remove(sock) }, nil
}

// relayCmd is what QEMU runs for each guest connection to a guest forward
// (vmcluster.GuestForward): it joins the connection, on its standard input and output,
// to a unix socket or a TCP port on loopback.
func (a *app) relayCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "qemu-relay SOCKET|tcp:LOOPBACK-ADDRESS:PORT",
		Short:  "Join standard input and output to a unix socket or a port on loopback (run by QEMU for a guest forward)",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			// QEMU (libslirp through GLib) starts the relay as an orphan; it ends when
			// QEMU's side of the connection closes, QEMU's death included.
			return vmcluster.Relay(cmd.Context(), args[0], cmd.InOrStdin(), cmd.OutOrStdout())
		},
	}
}
