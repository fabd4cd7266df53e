package main

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/etcdbake/etcdbake/bake"
	"github.com/etcdbake/etcdbake/ignition"
	imgbase "github.com/etcdbake/etcdbake/imagebuild/base"
	"github.com/etcdbake/etcdbake/internal/fileutil"
	"github.com/etcdbake/etcdbake/pki"
	"github.com/etcdbake/etcdbake/spec"
	"github.com/etcdbake/etcdbake/status"
	"github.com/etcdbake/etcdbake/test/qemu"
)

// `etcdbake up` boots the spec's nodes as QEMU VMs on this machine: OUT/qemu/images holds
// their images (the same pipeline as `etcdbake image`, plus the harness's second NIC and
// the hub as time source), OUT/run their disks (copy-on-write overlays), consoles and the
// record of the running cluster. A supervisor process (`etcdbake qemu-supervise`, started
// by up and detached from it) runs the VMs and the private L2 segment until `down`.

func (a *app) runDir() string       { return filepath.Join(a.outDir, "run") }
func (a *app) qemuImageDir() string { return filepath.Join(a.outDir, "qemu", "images") }

// planFile is the supervisor's input: the ClusterOptions as JSON.
const planFile = "plan.json"

func (a *app) upCmd() *cobra.Command {
	var (
		memory    int
		timeout   time.Duration
		noWait    bool
		firstboot string
		accel     string
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

It waits until every member answers /readyz as a voting member and flanneld holds a lease
on every node, then prints the status table. ` + "`etcdbake down`" + ` stops the VMs; their disks are
kept (and reused by the next up) unless --purge is given.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			w, ew := cmd.OutOrStdout(), cmd.ErrOrStderr()
			if st, err := qemu.ReadRunState(a.runDir()); err == nil {
				if st.Running() {
					fmt.Fprintf(w, "the cluster is already running (supervisor pid %d, started %s); `etcdbake down` stops it\n", st.Supervisor, st.Started.Format(time.RFC3339))
					return a.waitHealthy(cmd, st, 30*time.Second)
				}
				// A supervisor that died (e.g. killed) may have left VMs on these disks:
				// stop them before anything boots the disks again.
				if _, err := qemu.StopSupervised(a.runDir(), 5*time.Second); err != nil {
					fmt.Fprintf(ew, "up: cleaned up after a supervisor that had stopped: %v\n", err)
				}
			}
			if err := qemu.Check(); err != nil {
				return fmt.Errorf("%w (or run `make setup`)", err)
			}
			c, err := a.loadForBuild(cmd)
			if err != nil {
				return err
			}
			timeServer, err := hubTimeServer(c)
			if err != nil {
				return err
			}
			if err := a.ensurePKI(cmd, c, false); err != nil {
				return err
			}
			images, base, err := a.qemuImages(cmd, c, timeServer, firstboot)
			if err != nil {
				return err
			}
			if accel, err = a.chooseAccel(cmd, accel, base); err != nil {
				return err
			}
			macs := map[string]string{}
			for _, n := range c.Nodes {
				macs[n.Name] = n.MAC
			}
			plan := qemu.ClusterOptions{Images: images, MACs: macs, Dir: a.runDir(), MemoryMiB: memory, TimeServer: timeServer, KeepDisks: true, Accel: accel}
			st, err := a.startSupervisor(cmd, plan)
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
	cmd.Flags().StringVar(&firstboot, "firstboot", "", "etcd-firstboot binary (default: next to etcdbake)")
	cmd.Flags().StringVar(&accel, "accel", "auto", "tcg, kvm, or auto (KVM only if a test boot under it works; the result is kept until the host reboots)")
	return cmd
}

// chooseAccel resolves --accel: auto probes KVM once per host boot (a kernel from the
// base booted without a root file system) and falls back to TCG.
func (a *app) chooseAccel(cmd *cobra.Command, flag, base string) (string, error) {
	ew := cmd.ErrOrStderr()
	switch flag {
	case "tcg", "kvm":
		return flag, nil
	case "auto":
	default:
		return "", fmt.Errorf("--accel %q: use tcg, kvm or auto", flag)
	}
	if _, err := os.Stat("/dev/kvm"); err != nil {
		fmt.Fprintln(ew, "up: no /dev/kvm: using TCG")
		return "tcg", nil
	}
	bootID, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	cacheDir, err := imgbase.DefaultCacheDir()
	if err != nil {
		return "", err
	}
	record := filepath.Join(filepath.Dir(cacheDir), "kvm-probe.json")
	var probe struct {
		BootID string `json:"bootID"`
		OK     bool   `json:"ok"`
		Reason string `json:"reason"`
	}
	if b, err := os.ReadFile(record); err == nil && json.Unmarshal(b, &probe) == nil && probe.BootID == strings.TrimSpace(string(bootID)) {
		fmt.Fprintf(ew, "up: KVM probe (earlier this host boot): %s\n", probe.Reason)
	} else {
		tree, err := imgbase.Read(base)
		if err != nil {
			return "", err
		}
		kernel, _, err := imgbase.KernelAndInitrd(tree)
		if err != nil {
			return "", err
		}
		data, err := tree.ReadFile(kernel)
		if err != nil {
			return "", err
		}
		tmp, err := os.CreateTemp("", "etcdbake-kvm-probe-*")
		if err != nil {
			return "", err
		}
		defer os.Remove(tmp.Name())
		if _, err := tmp.Write(data); err != nil {
			tmp.Close()
			return "", err
		}
		tmp.Close()
		fmt.Fprintln(ew, "up: probing KVM with a test boot (up to 20 s)...")
		probe.OK, probe.Reason = qemu.ProbeKVM(cmd.Context(), tmp.Name(), 20*time.Second)
		probe.BootID = strings.TrimSpace(string(bootID))
		if b, err := json.Marshal(probe); err == nil {
			_ = fileutil.WriteAtomic(record, b, 0o644)
		}
		fmt.Fprintf(ew, "up: KVM probe: %s\n", probe.Reason)
	}
	if probe.OK {
		return "kvm", nil
	}
	fmt.Fprintln(ew, "up: using TCG")
	return "tcg", nil
}

// hubTimeServer is the address on the nodes' segment where the hub answers NTP: the last
// host address of the first node's prefix that no node uses.
func hubTimeServer(c *spec.Cluster) (netip.Addr, error) {
	p := c.Nodes[0].Prefix().Masked()
	used := map[netip.Addr]bool{}
	for _, n := range c.Nodes {
		used[n.IP()] = true
	}
	bits := p.Addr().BitLen() - p.Bits()
	if !p.Addr().Is4() || bits < 2 {
		return netip.Addr{}, fmt.Errorf("nodes[0].address %s: up needs an IPv4 prefix with room for a time server next to the nodes", c.Nodes[0].Address)
	}
	a := p.Addr().As4()
	last := (uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])) | (1<<bits - 1)
	for cand := last - 1; cand > last-(1<<bits-1); cand-- {
		ip := netip.AddrFrom4([4]byte{byte(cand >> 24), byte(cand >> 16), byte(cand >> 8), byte(cand)})
		if !used[ip] {
			return ip, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("no free address in %s for the VMs' time server", p)
}

// qemuImages builds the nodes' raw images for QEMU into OUT/qemu/images unless the ones
// there were built from the same inputs. Disks kept by `down` over older images are not
// touched: up refuses and says how to discard them.
func (a *app) qemuImages(cmd *cobra.Command, c *spec.Cluster, timeServer netip.Addr, firstbootFlag string) (images map[string]string, base string, err error) {
	ew := cmd.ErrOrStderr()
	fb, err := firstbootBinary(firstbootFlag)
	if err != nil {
		return nil, "", err
	}
	specBytes, err := os.ReadFile(a.specPath)
	if err != nil {
		return nil, "", err
	}
	baseDir, err := imgbase.DefaultCacheDir()
	if err != nil {
		return nil, "", err
	}
	base, err = imgbase.Build(cmd.Context(), imgbase.DefaultRecipe(), baseDir, func(f string, args ...any) {
		fmt.Fprintf(ew, "base: "+f+"\n", args...)
	})
	if err != nil {
		return nil, "", err
	}
	stamp, err := qemuInputsStamp(specBytes, timeServer, fb, base, a.pkiDir())
	if err != nil {
		return nil, "", err
	}
	dir := a.qemuImageDir()
	images = map[string]string{}
	for _, n := range c.Nodes {
		images[n.Name] = filepath.Join(dir, n.Name+".raw")
	}
	stampPath := filepath.Join(dir, "inputs.sha256")
	if old, err := os.ReadFile(stampPath); err == nil && string(old) == stamp && allExist(images) {
		fmt.Fprintf(ew, "up: images in %s are up to date\n", dir)
		return images, base, nil
	}
	// New images: disks made over the old ones would no longer match them.
	var stale []string
	for _, n := range c.Nodes {
		if _, err := os.Stat(filepath.Join(a.runDir(), n.Name+".overlay.qcow2")); err == nil {
			stale = append(stale, n.Name)
		}
	}
	if len(stale) > 0 {
		return nil, "", fmt.Errorf("the inputs of the VMs' images changed (spec, PKI, etcd-firstboot or base) but %s keeps disks of %v made from the old ones, with their etcd data: `etcdbake down --purge` discards those disks, then run up again", a.runDir(), stale)
	}
	cache, err := a.cache(cmd)
	if err != nil {
		return nil, "", err
	}
	// The VMs reach no public time server: the hub answers NTP on the segment.
	vc := *c
	vc.Time.Servers = []string{timeServer.String()}
	var userMACs []string
	for _, n := range c.Nodes {
		userMACs = append(userMACs, qemu.UserMAC(n.MAC))
	}
	_ = os.Remove(stampPath)
	if _, _, err := bake.Images(cmd.Context(), bake.Sources{
		Cluster: &vc, SpecBytes: specBytes, PKIDir: a.pkiDir(), Now: a.now, Cache: cache,
		Firstboot: fb, FirstbootVersion: version,
		Fragments: []ignition.Fragment{qemu.GuestFragment(userMACs...)},
		Progress:  func(f string, args ...any) { fmt.Fprintf(ew, "image: "+f+"\n", args...) },
	}, bake.ImageOptions{
		Base: base, BaseCacheDir: baseDir, OutDir: dir, Formats: []string{"raw"}, DataSize: 1 << 30,
		Meter: newMeter(ew),
	}); err != nil {
		return nil, "", err
	}
	if err := fileutil.WriteAtomic(stampPath, []byte(stamp), 0o644); err != nil {
		return nil, "", err
	}
	return images, base, nil
}

// qemuInputsStamp hashes everything the QEMU images are made from.
func qemuInputsStamp(specBytes []byte, timeServer netip.Addr, firstboot, base, pkiDir string) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "etcdbake %s\ntime %s\nbase %s\n", version, timeServer, base)
	h.Write(specBytes)
	fb, err := fileutil.SHA256(firstboot)
	if err != nil {
		return "", err
	}
	fmt.Fprintf(h, "etcd-firstboot %s\n", fb)
	// The certificates (not the keys): re-issued certificates mean new images.
	err = filepath.WalkDir(pkiDir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".crt") {
			return err
		}
		s, err := fileutil.SHA256(p)
		fmt.Fprintf(h, "%s %s\n", strings.TrimPrefix(p, pkiDir), s)
		return err
	})
	return fmt.Sprintf("%x\n", h.Sum(nil)), err
}

func allExist(m map[string]string) bool {
	for _, p := range m {
		if _, err := os.Stat(p); err != nil {
			return false
		}
	}
	return true
}

// startSupervisor writes the plan and starts `etcdbake qemu-supervise` in its own session
// (it outlives this command), then waits for its record of the running VMs.
func (a *app) startSupervisor(cmd *cobra.Command, plan qemu.ClusterOptions) (*qemu.RunState, error) {
	dir := plan.Dir
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(plan, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := fileutil.WriteAtomic(filepath.Join(dir, planFile), b, 0o644); err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	logPath := filepath.Join(dir, "supervisor.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	_ = os.Remove(filepath.Join(dir, qemu.RunStateFile))
	sup := exec.Command(self, "qemu-supervise", "--run-dir", dir)
	sup.Stdout, sup.Stderr = logf, logf
	sup.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := sup.Start(); err != nil {
		return nil, fmt.Errorf("starting the supervisor: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- sup.Wait() }()
	deadline := time.After(2 * time.Minute)
	for {
		if st, err := qemu.ReadRunState(dir); err == nil {
			return st, nil
		}
		select {
		case err := <-exited:
			log, _ := os.ReadFile(logPath)
			return nil, fmt.Errorf("the supervisor exited (%v) before the VMs ran:\n%s", err, strings.TrimSpace(string(log)))
		case <-deadline:
			return nil, fmt.Errorf("the supervisor (pid %d) did not report running VMs within 2 minutes; see %s", sup.Process.Pid, logPath)
		case <-cmd.Context().Done():
			return nil, cmd.Context().Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// waitHealthy polls the cluster until every node is a healthy voting member with a
// flannel lease, printing each node's progress, then prints the status table.
func (a *app) waitHealthy(cmd *cobra.Command, st *qemu.RunState, timeout time.Duration) error {
	w, ew := cmd.OutOrStdout(), cmd.ErrOrStderr()
	c, err := a.load(cmd)
	if err != nil {
		return err
	}
	ca, _ := pki.CAPath(a.pkiDir(), "ca")
	crt, key := pki.ClientCertPath(a.pkiDir(), "admin")
	nodes := sortedNodes(st)
	var eps []string
	for _, n := range nodes {
		eps = append(eps, st.Nodes[n].Endpoint)
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
	defer cancel()
	start, last := time.Now(), map[string]string{}
	var report *status.Cluster
	for {
		report, err = status.Collect(ctx, c, status.Options{Endpoints: eps, CAFile: ca, CertFile: crt, KeyFile: key, PKIDir: a.pkiDir(), Timeout: 5 * time.Second, Now: a.now()})
		done := err == nil && healthyWithLeases(report, len(nodes))
		for _, n := range nodes {
			s := nodeProgress(report, n)
			if s != last[n] {
				fmt.Fprintf(ew, "up: %6.1fs  %s: %s\n", time.Since(start).Seconds(), n, s)
				last[n] = s
			}
		}
		if done {
			break
		}
		if !st.Running() {
			return fmt.Errorf("the supervisor has stopped; see %s", filepath.Join(a.runDir(), "supervisor.log"))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the cluster was not healthy within %s (last: %v); consoles in %s/<node>.log, `etcdbake exec NODE -- journalctl -b` for more", timeout, err, a.runDir())
		case <-time.After(3 * time.Second):
		}
	}
	fmt.Fprintf(ew, "up: healthy after %.1fs\n", time.Since(start).Seconds())
	printStatus(w, report)
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

// nodeProgress is one node's state in words, for up's progress lines.
func nodeProgress(r *status.Cluster, node string) string {
	if r == nil {
		return "booting (etcd not answering yet)"
	}
	for _, m := range r.Members {
		if m.Name != node {
			continue
		}
		switch {
		case m.Learner:
			return "learner, catching up"
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

func sortedNodes(st *qemu.RunState) []string {
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
			st, err := qemu.StopSupervised(a.runDir(), 30*time.Second)
			if err != nil {
				return err
			}
			if st == nil {
				fmt.Fprintf(w, "no cluster running from %s\n", a.runDir())
			} else {
				fmt.Fprintf(w, "stopped %d VMs (supervisor pid %d)\n", len(st.Nodes), st.Supervisor)
			}
			disks, _ := filepath.Glob(filepath.Join(a.runDir(), "*.overlay.qcow2"))
			if !purge {
				if len(disks) > 0 {
					fmt.Fprintf(w, "kept %d VM disks in %s (etcd data included); the next up boots them again, `down --purge` discards them\n", len(disks), a.runDir())
				}
				return nil
			}
			vars, _ := filepath.Glob(filepath.Join(a.runDir(), "*.vars.fd"))
			for _, p := range append(disks, vars...) {
				if err := os.Remove(p); err != nil {
					return err
				}
			}
			fmt.Fprintf(w, "discarded %d VM disks in %s\n", len(disks), a.runDir())
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
			res, err := qemu.ExecIn(ctx, a.runDir(), args[0], args[1:]...)
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

func (a *app) superviseCmd() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:    "qemu-supervise",
		Short:  "Run the VMs of OUT/run/plan.json until SIGTERM (started by up)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			b, err := os.ReadFile(filepath.Join(dir, planFile))
			if err != nil {
				return err
			}
			var plan qemu.ClusterOptions
			if err := json.Unmarshal(b, &plan); err != nil {
				return fmt.Errorf("%s: %w", filepath.Join(dir, planFile), err)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
			defer stop()
			log := cmd.OutOrStdout()
			err = qemu.Supervise(ctx, plan, func(st *qemu.RunState) {
				fmt.Fprintf(log, "%s supervisor %d: %d VMs running\n", time.Now().Format(time.RFC3339), st.Supervisor, len(st.Nodes))
			})
			fmt.Fprintf(log, "%s supervisor: stopped (%v)\n", time.Now().Format(time.RFC3339), err)
			if errors.Is(err, context.Canceled) {
				return nil
			}
			return err
		},
	}
	cmd.Flags().StringVar(&dir, "run-dir", "out/run", "run directory holding plan.json")
	return cmd
}
