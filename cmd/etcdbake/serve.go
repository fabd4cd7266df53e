package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/etcdbake/etcdbake/bake"
	"github.com/etcdbake/etcdbake/ignition"
	"github.com/etcdbake/etcdbake/internal/fileutil"
	"github.com/etcdbake/etcdbake/pki"
	"github.com/etcdbake/etcdbake/pxe"
	"github.com/etcdbake/etcdbake/spec"
)

func (a *app) pxeStatusFile() string { return filepath.Join(a.outDir, "pxe", "status.json") }

type serveFlags struct {
	listen, url, firstboot string
	allInterfaces          bool
	fcos                   pxe.FCOS
	images, base           string
	installer, kernelArgs  string
	releaseListen          string
	releaseSANs            []string
}

func (a *app) serveCmd() *cobra.Command {
	var f serveFlags
	cmd := &cobra.Command{
		Use:   "serve --listen ADDR:PORT [--release-listen ADDR:PORT]",
		Short: "Provision machines over PXE/iPXE: boot scripts, Ignition configs and binaries by MAC",
		Long: `Serves every node of the spec, found by nodes[].mac, on Matchbox's paths:
/boot.ipxe, /ipxe?mac=MAC, /ignition?mac=MAC, and the binaries the configs name under
/binaries/NAME (the configs are rendered with --binaries-url URL/binaries, so each node
fetches and verifies them here). An unknown MAC gets a 404, never another node's config.

Two ways to become a node:
  - etcdbake's own images (the default): /ipxe boots an installer (the base's kernel and
    initrd with etcdbake-installer added) that streams the node's disk image from
    OUT/images/<node>.raw (/image?mac=MAC) onto its first fixed disk, checks its sha256
    and reboots into it. Build the images first: etcdbake image.
  - Fedora CoreOS / Flatcar live PXE (--fcos-kernel, --fcos-initramfs, --fcos-rootfs):
    /ipxe boots your live images with ignition.config.url pointing at /ignition?mac=MAC.

MAC matching is not authentication: anyone on the network who knows a node's MAC can
fetch its config and private key. Serve only on a provisioning network you trust.

Releases (rolling upgrades): --release-listen ADDR:PORT also serves OUT/releases over
HTTPS with mutual TLS at https://ADDR:PORT/v1/releases/<id>/<node>/<file> (file: one of
manifest.json, root, node, linux, initrd). A node authenticates with its own
etcd-firstboot client certificate and gets only its own files; every other certificate
gets a 403, and a connection without a certificate of the cluster CA fails. The server's
certificate (OUT/pki/serve/server.crt) is issued here by the cluster CA for the listen
address and every --release-san, and kept while it matches. With --release-listen and no
--listen, only releases are served (no PXE).

Nothing listens on all interfaces unless --all-interfaces is given. The access log goes
to stderr; "etcdbake serve status" shows which node has fetched what.`,
		RunE: func(cmd *cobra.Command, _ []string) error { return a.runServe(cmd, f) },
	}
	cmd.Flags().StringVar(&f.listen, "listen", "", "address to listen on, e.g. 10.88.0.1:8080 (required)")
	cmd.Flags().StringVar(&f.url, "url", "", "how the machines reach this server (default http://LISTEN)")
	cmd.Flags().BoolVar(&f.allInterfaces, "all-interfaces", false, "allow --listen on a wildcard address (0.0.0.0, ::)")
	cmd.Flags().StringVar(&f.fcos.Kernel, "fcos-kernel", "", "URL of the Fedora CoreOS / Flatcar live kernel the iPXE scripts boot")
	cmd.Flags().StringVar(&f.fcos.Initramfs, "fcos-initramfs", "", "URL of the live initramfs")
	cmd.Flags().StringVar(&f.fcos.Rootfs, "fcos-rootfs", "", "URL of the live rootfs (Fedora CoreOS; not for Flatcar)")
	cmd.Flags().StringVar(&f.kernelArgs, "kernel-args", "", "extra kernel arguments for the installer or the live boot, e.g. console=ttyS0")
	cmd.Flags().StringVar(&f.images, "images", "", "directory of the node images <node>.raw (default OUT/images)")
	cmd.Flags().StringVar(&f.base, "base", "", "base root filesystem tarball whose kernel and initrd boot the installer (default: the default base)")
	cmd.Flags().StringVar(&f.installer, "installer", "", "etcdbake-installer binary (default: next to etcdbake)")
	cmd.Flags().StringVar(&f.firstboot, "firstboot", "", firstbootFlagHelp)
	cmd.Flags().StringVar(&f.releaseListen, "release-listen", "", "also serve OUT/releases over HTTPS with mutual TLS on this address, e.g. 10.88.0.1:8443 (off when empty)")
	cmd.Flags().StringArrayVar(&f.releaseSANs, "release-san", nil, "another IP address or DNS name nodes use to reach --release-listen, for its certificate (repeatable)")
	cmd.AddCommand(a.serveStatusCmd())
	return cmd
}

// checkListen refuses a missing or wildcard listen address (unless allowed). flag names
// the flag in messages; eg is an example address.
func checkListen(flag, listen, eg string, all bool) error {
	if listen == "" {
		return fmt.Errorf("%s is required: the address of this machine on the provisioning network, e.g. %s %s", flag, flag, eg)
	}
	host, port, err := net.SplitHostPort(listen)
	if err != nil || port == "" {
		return fmt.Errorf("%s %q: want HOST:PORT, e.g. %s", flag, listen, eg)
	}
	ip := net.ParseIP(host)
	if (host == "" || (ip != nil && ip.IsUnspecified())) && !all {
		return fmt.Errorf("%s %q listens on every interface, which would offer node secrets on all networks: give this machine's provisioning address, or add --all-interfaces if that is really wanted", flag, listen)
	}
	return nil
}

func (a *app) runServe(cmd *cobra.Command, f serveFlags) error {
	if f.releaseListen != "" {
		if err := checkListen("--release-listen", f.releaseListen, "10.88.0.1:8443", f.allInterfaces); err != nil {
			return err
		}
		if f.listen == "" {
			return a.serveReleasesOnly(cmd, f)
		}
	} else if len(f.releaseSANs) > 0 {
		return errors.New("--release-san goes with --release-listen: it names the release server's certificate")
	}
	if err := checkListen("--listen", f.listen, "10.88.0.1:8080", f.allInterfaces); err != nil {
		if f.listen == "" {
			return fmt.Errorf("%w (or --release-listen alone to serve only releases)", err)
		}
		return err
	}
	if f.url != "" && !strings.HasPrefix(f.url, "http://") && !strings.HasPrefix(f.url, "https://") {
		return fmt.Errorf("--url %q: want http://HOST:PORT", f.url)
	}
	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", f.listen, err)
	}
	defer ln.Close()
	base := strings.TrimRight(f.url, "/")
	if base == "" {
		base = "http://" + ln.Addr().String() // the real port when --listen asked for port 0
	}
	c, cfg, err := a.renderIgnition(cmd, ignition.Options{BinariesURL: base + "/binaries"}, f.firstboot)
	if err != nil {
		return err
	}
	configs, bins := cfg.Configs, cfg.Binaries
	o := pxe.Options{Cluster: c.Name, URL: base, FCOS: f.fcos, KernelArgs: f.kernelArgs, StatusFile: a.pxeStatusFile(),
		Log: func(acc pxe.Access) { fmt.Fprintln(cmd.ErrOrStderr(), acc) }}
	o.FCOS.Args = f.kernelArgs
	imageMode := f.fcos.Kernel == "" && f.fcos.Initramfs == ""
	if !imageMode && (f.fcos.Kernel == "" || f.fcos.Initramfs == "") {
		return errors.New("--fcos-kernel and --fcos-initramfs go together (and --fcos-rootfs for Fedora CoreOS)")
	}
	images := f.images
	if images == "" {
		images = filepath.Join(a.outDir, "images")
	}
	for _, n := range c.Nodes {
		node := pxe.Node{Name: n.Name, MAC: n.MAC, Config: configs[n.Name]}
		if imageMode {
			node.Image = filepath.Join(images, n.Name+".raw")
			if _, err := os.Stat(node.Image); err != nil {
				return fmt.Errorf("node %s: %w: build the raw images first (etcdbake image --format raw --out %s), or serve Fedora CoreOS with --fcos-kernel/--fcos-initramfs", n.Name, err, a.outDir)
			}
		}
		o.Nodes = append(o.Nodes, node)
	}
	if imageMode {
		baseTar := f.base
		if baseTar == "" {
			if baseTar, err = a.defaultBase(cmd); err != nil {
				return err
			}
		}
		inst := f.installer
		if inst == "" {
			if self, err := os.Executable(); err == nil {
				inst = filepath.Join(filepath.Dir(self), "etcdbake-installer")
			}
		}
		if o.Installer, err = pxe.BuildInstaller(baseTar, inst); err != nil {
			return err
		}
	}
	for _, b := range bins {
		o.Binaries = append(o.Binaries, pxe.Binary{Name: b.Name, Path: b.Path})
	}
	sort.Slice(o.Binaries, func(i, j int) bool { return o.Binaries[i].Name < o.Binaries[j].Name })
	srv, err := pxe.New(o)
	if err != nil {
		return err
	}
	// A fresh status for this run (the file says what was fetched since it started): every
	// node, nothing fetched yet.
	if err := writeServeStatus(a.pxeStatusFile(), srv.Status()); err != nil {
		return err
	}
	mode := "Fedora CoreOS / Flatcar live boot with Ignition"
	if imageMode {
		mode = fmt.Sprintf("installs the disk images of %s (installer: kernel %s)", images, o.Installer.KernelVersion)
	}
	var rel *releaseServer
	if f.releaseListen != "" {
		if rel, err = a.startReleaseServer(cmd, c, f); err != nil {
			return err
		}
		defer rel.ln.Close()
	}
	fmt.Fprintf(cmd.OutOrStdout(), "serving %d nodes of cluster %s on %s (machines use %s); %s; iPXE: chain %s/boot.ipxe\n",
		len(o.Nodes), c.Name, ln.Addr(), base, mode, base)
	servers := []*serving{{&http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second}, func(hs *http.Server) error { return hs.Serve(ln) }}}
	if rel != nil {
		rel.announce(cmd, a.releasesDir(), a.pkiDir())
		servers = append(servers, rel.serving())
	}
	return serveUntilDone(cmd.Context(), servers)
}

// serving is one HTTP server and how it serves its listener.
type serving struct {
	hs    *http.Server
	serve func(*http.Server) error
}

// serveUntilDone runs the servers until ctx ends (main's: Ctrl-C or SIGTERM), then
// shuts them all down; when one fails, the others are shut down and its error returned.
func serveUntilDone(ctx context.Context, servers []*serving) error {
	errc := make(chan error, len(servers))
	for _, s := range servers {
		go func() { errc <- s.serve(s.hs) }()
	}
	var err error
	select {
	case err = <-errc:
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, s := range servers {
		if serr := s.hs.Shutdown(sctx); err == nil {
			err = serr
		}
	}
	return err
}

// writeServeStatus writes the status file as pxe.Server does after every fetch.
func writeServeStatus(path string, st []pxe.NodeStatus) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return fileutil.WriteAtomic(path, append(b, '\n'), 0o644)
}

func (a *app) serveStatusCmd() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Which node has fetched what from the running (or last) `etcdbake serve`",
		Long: `Shows, per node of the running (or last) ` + "`etcdbake serve --out OUT`" + `, what it has fetched
(iPXE script, Ignition config, image, binaries), how often and when; from OUT/pxe/status.json.

Exit status: 0 when at least one machine has fetched something; 3 when the server has
started but no machine has fetched anything yet (the report is printed all the same, and
a line on stderr says so); 1 when no server has run with this --out.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			b, err := os.ReadFile(a.pxeStatusFile())
			if errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("no `etcdbake serve` has run with --out %s (%s does not exist): start one with `%s --listen ADDR:PORT`", a.outDir, a.pxeStatusFile(), a.cmdLine("serve"))
			}
			if err != nil {
				return err
			}
			var st []pxe.NodeStatus
			if err := json.Unmarshal(b, &st); err != nil {
				return fmt.Errorf("%s: %w", a.pxeStatusFile(), err)
			}
			w := cmd.OutOrStdout()
			if output == "json" {
				if err := writeJSON(w, st); err != nil {
					return err
				}
			} else {
				printServeStatus(w, st)
			}
			for _, n := range st {
				if len(n.Fetched) > 0 {
					return nil
				}
			}
			return &exitError{code: 3, msg: "no machine has fetched anything yet from `etcdbake serve`: PXE-boot the nodes (their firmware chains /boot.ipxe)"}
		},
	}
	outputFlag(cmd, &output, "text", "json")
	return cmd
}

func printServeStatus(w io.Writer, st []pxe.NodeStatus) {
	fmt.Fprintf(w, "%-12s %-17s %s\n", "NODE", "MAC", "FETCHED")
	for _, n := range st {
		var parts []string
		for what, f := range n.Fetched {
			parts = append(parts, fmt.Sprintf("%s x%d (last %s)", what, f.Count, f.Last.UTC().Format(time.RFC3339)))
		}
		sort.Strings(parts)
		if len(parts) == 0 {
			parts = []string{"nothing yet"}
		}
		fmt.Fprintf(w, "%-12s %-17s %s\n", n.Node, n.MAC, strings.Join(parts, ", "))
	}
}

func (a *app) releasesDir() string { return filepath.Join(a.outDir, "releases") }

// releaseServer is the HTTPS listener of --release-listen.
type releaseServer struct {
	ln      net.Listener
	hs      *http.Server
	url     string // what nodes use: https://HOST:PORT/v1/releases
	cluster string
	sans    []string
	cert    pki.Action
}

// releaseSANs are the names in the release server's certificate: the --release-listen
// host unless it is a wildcard, then every --release-san.
func releaseSANs(listen string, extra []string) []string {
	host, _, _ := net.SplitHostPort(listen) // checked by checkListen
	var sans []string
	if ip := net.ParseIP(host); host != "" && (ip == nil || !ip.IsUnspecified()) {
		sans = append(sans, host)
	}
	for _, s := range extra {
		if !slices.Contains(sans, s) {
			sans = append(sans, s)
		}
	}
	return sans
}

// startReleaseServer listens on --release-listen, ensures the server certificate for
// its address and the --release-san names, and prepares the mutual-TLS server of
// OUT/releases. Serving starts with serving().
func (a *app) startReleaseServer(cmd *cobra.Command, c *spec.Cluster, f serveFlags) (*releaseServer, error) {
	sans := releaseSANs(f.releaseListen, f.releaseSANs)
	if len(sans) == 0 {
		return nil, fmt.Errorf("--release-listen %s names no address the nodes can dial, and the server's certificate must name one: add --release-san with this machine's address on the nodes' network, e.g. --release-san 10.88.0.1", f.releaseListen)
	}
	ln, err := net.Listen("tcp", f.releaseListen)
	if err != nil {
		return nil, fmt.Errorf("--release-listen %s: %w", f.releaseListen, err)
	}
	rs, err := a.releaseServer(cmd, c, ln, sans)
	if err != nil {
		ln.Close()
		return nil, err
	}
	return rs, nil
}

func (a *app) releaseServer(cmd *cobra.Command, c *spec.Cluster, ln net.Listener, sans []string) (*releaseServer, error) {
	act, err := pki.EnsureServe(c, a.pkiDir(), sans, a.now())
	if err != nil {
		return nil, fmt.Errorf("release server certificate: %w", err)
	}
	hs, err := bake.ReleaseServer(c, a.pkiDir(), a.releasesDir(), func(acc pxe.Access) { fmt.Fprintln(cmd.ErrOrStderr(), acc) })
	if err != nil {
		return nil, err
	}
	// Failed handshakes (no or a wrong certificate) are logged.
	hs.ErrorLog = log.New(cmd.ErrOrStderr(), "release server: ", 0)
	host, _, _ := net.SplitHostPort(ln.Addr().String())
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = sans[0]
	}
	_, port, _ := net.SplitHostPort(ln.Addr().String()) // the real port when asked for port 0
	return &releaseServer{
		ln: ln, cluster: c.Name, sans: sans, cert: act,
		url: "https://" + net.JoinHostPort(host, port) + strings.TrimSuffix(pxe.ReleasePrefix, "/"),
		hs:  hs,
	}, nil
}

func (rs *releaseServer) announce(cmd *cobra.Command, dir, pkiDir string) {
	crt, _ := pki.ServeCertPath(pkiDir)
	fmt.Fprintf(cmd.OutOrStdout(), "serving the releases of cluster %s in %s at %s (nodes use this URL; mutual TLS: each node with its etcd-firstboot certificate, for its own files only)\n",
		rs.cluster, dir, rs.url)
	fmt.Fprintf(cmd.OutOrStdout(), "release server certificate %s for %s: %s\n", crt, strings.Join(rs.sans, ", "), strings.TrimPrefix(rs.cert.String(), rs.cert.Name+": "))
}

func (rs *releaseServer) serving() *serving {
	return &serving{rs.hs, func(hs *http.Server) error { return hs.ServeTLS(rs.ln, "", "") }}
}

// serveReleasesOnly is `serve --release-listen` without --listen: no PXE, only releases.
func (a *app) serveReleasesOnly(cmd *cobra.Command, f serveFlags) error {
	c, err := a.load(cmd)
	if err != nil {
		return err
	}
	rs, err := a.startReleaseServer(cmd, c, f)
	if err != nil {
		return err
	}
	defer rs.ln.Close()
	rs.announce(cmd, a.releasesDir(), a.pkiDir())
	return serveUntilDone(cmd.Context(), []*serving{rs.serving()})
}
