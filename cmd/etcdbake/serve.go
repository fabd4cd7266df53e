package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/etcdbake/etcdbake/ignition"
	"github.com/etcdbake/etcdbake/pxe"
)

func (a *app) pxeStatusFile() string { return filepath.Join(a.outDir, "pxe", "status.json") }

type serveFlags struct {
	listen, url, firstboot string
	allInterfaces          bool
	fcos                   pxe.FCOS
}

func (a *app) serveCmd() *cobra.Command {
	var f serveFlags
	cmd := &cobra.Command{
		Use:   "serve --listen ADDR:PORT",
		Short: "Provision machines over PXE/iPXE: boot scripts, Ignition configs and binaries by MAC",
		Long: `Serves every node of the spec, found by nodes[].mac, on Matchbox's paths:
/boot.ipxe, /ipxe?mac=MAC, /ignition?mac=MAC, and the binaries the configs name under
/binaries/NAME (the configs are rendered with --binaries-url URL/binaries, so each node
fetches and verifies them here). An unknown MAC gets a 404, never another node's config.

MAC matching is not authentication: anyone on the network who knows a node's MAC can
fetch its config and private key. Serve only on a provisioning network you trust.

Nothing listens on all interfaces unless --all-interfaces is given. The access log goes
to stderr; "etcdbake serve status" shows which node has fetched what.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return a.runServe(cmd, f) },
	}
	cmd.Flags().StringVar(&f.listen, "listen", "", "address to listen on, e.g. 10.88.0.1:8080 (required)")
	cmd.Flags().StringVar(&f.url, "url", "", "how the machines reach this server (default http://LISTEN)")
	cmd.Flags().BoolVar(&f.allInterfaces, "all-interfaces", false, "allow --listen on a wildcard address (0.0.0.0, ::)")
	cmd.Flags().StringVar(&f.fcos.Kernel, "fcos-kernel", "", "URL of the Fedora CoreOS / Flatcar live kernel the iPXE scripts boot")
	cmd.Flags().StringVar(&f.fcos.Initramfs, "fcos-initramfs", "", "URL of the live initramfs")
	cmd.Flags().StringVar(&f.fcos.Rootfs, "fcos-rootfs", "", "URL of the live rootfs (Fedora CoreOS; not for Flatcar)")
	cmd.Flags().StringVar(&f.fcos.Args, "kernel-args", "", "extra kernel arguments, e.g. console=ttyS0")
	cmd.Flags().StringVar(&f.firstboot, "firstboot", "", "etcd-firstboot binary (default: next to etcdbake)")
	cmd.AddCommand(a.serveStatusCmd())
	return cmd
}

// checkListen refuses a missing or wildcard listen address (unless allowed).
func checkListen(listen string, all bool) error {
	if listen == "" {
		return errors.New("--listen is required: the address of this machine on the provisioning network, e.g. --listen 10.88.0.1:8080")
	}
	host, port, err := net.SplitHostPort(listen)
	if err != nil || port == "" {
		return fmt.Errorf("--listen %q: want HOST:PORT, e.g. 10.88.0.1:8080", listen)
	}
	ip := net.ParseIP(host)
	if (host == "" || (ip != nil && ip.IsUnspecified())) && !all {
		return fmt.Errorf("--listen %q listens on every interface, which would offer node secrets on all networks: give this machine's provisioning address, or add --all-interfaces if that is really wanted", listen)
	}
	return nil
}

func (a *app) runServe(cmd *cobra.Command, f serveFlags) error {
	if err := checkListen(f.listen, f.allInterfaces); err != nil {
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
	c, configs, bins, err := a.renderIgnition(cmd, ignition.Options{BinariesURL: base + "/binaries"}, f.firstboot)
	if err != nil {
		return err
	}
	o := pxe.Options{Cluster: c.Name, URL: base, FCOS: f.fcos, StatusFile: a.pxeStatusFile(),
		Log: func(acc pxe.Access) { fmt.Fprintln(cmd.ErrOrStderr(), acc) }}
	for _, n := range c.Nodes {
		o.Nodes = append(o.Nodes, pxe.Node{Name: n.Name, MAC: n.MAC, Config: configs[n.Name]})
	}
	for _, b := range bins {
		o.Binaries = append(o.Binaries, pxe.Binary{Name: b.Name, Path: b.Path})
	}
	sort.Slice(o.Binaries, func(i, j int) bool { return o.Binaries[i].Name < o.Binaries[j].Name })
	srv, err := pxe.New(o)
	if err != nil {
		return err
	}
	// A fresh status for this run (the file says what was fetched since it started).
	_ = os.Remove(a.pxeStatusFile())
	fmt.Fprintf(cmd.OutOrStdout(), "serving %d nodes of cluster %s on %s (machines use %s); iPXE: chain %s/boot.ipxe\n",
		len(o.Nodes), c.Name, ln.Addr(), base, base)
	hs := &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second}
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return hs.Shutdown(sctx)
	}
}

func (a *app) serveStatusCmd() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Which node has fetched what from the running (or last) `etcdbake serve`",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			b, err := os.ReadFile(a.pxeStatusFile())
			if errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("%s does not exist: no node has fetched anything from `etcdbake serve --out %s` yet", a.pxeStatusFile(), a.outDir)
			}
			if err != nil {
				return err
			}
			if output == "json" {
				_, err := cmd.OutOrStdout().Write(b)
				return err
			}
			if output != "table" {
				return fmt.Errorf("--output %q: want table or json", output)
			}
			var st []pxe.NodeStatus
			if err := json.Unmarshal(b, &st); err != nil {
				return fmt.Errorf("%s: %w", a.pxeStatusFile(), err)
			}
			w := cmd.OutOrStdout()
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
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	return cmd
}
