// Package pxe serves nodes their boot scripts, Ignition configs and binaries by MAC
// address over HTTP, on Matchbox's paths, so existing iPXE setups work unchanged:
//
//	/boot.ipxe           chains to ipxe?mac=${mac:hexhyp}
//	/ipxe?mac=MAC        that machine's iPXE script
//	/ignition?mac=MAC    that node's Ignition config
//	/binaries/NAME       the binaries the configs name (Ignition verifies their sha512)
//
// MACs are accepted with colons or hyphens, in any case. An unknown MAC gets a 404 that
// says so, never another node's config. Matching by MAC is not authentication: anyone on
// the network who knows or guesses a node's MAC gets its config, private key included.
//
// The package is an output of the one-way flow spec -> pki -> Ignition -> outputs: it is
// handed the rendered configs and the binaries' files and serves them as they are.
package pxe

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/etcdbake/etcdbake/internal/fileutil"
)

// Node is one machine the server provisions.
type Node struct {
	Name   string
	MAC    string // as in the spec; any form net.ParseMAC accepts
	Config []byte // its Ignition config (JSON), for /ignition
	Image  string // its raw disk image, for installs (/image)

	imageSHA256 string
	imageSize   int64
}

// Binary is a file served under /binaries/Name.
type Binary struct {
	Name string
	Path string
}

// FCOS boots Fedora CoreOS (or Flatcar) live images, supplied by the user, with the
// node's config: the iPXE script loads Kernel and Initramfs and passes
// ignition.config.url pointing back at this server.
type FCOS struct {
	Kernel    string // URL of the live kernel
	Initramfs string // URL of the live initramfs
	Rootfs    string // URL of the live rootfs (coreos.live.rootfs_url); empty for Flatcar
	Args      string // extra kernel arguments, e.g. "console=ttyS0"
}

// Options configure a Server.
type Options struct {
	Cluster string // the cluster's name, for messages
	Nodes   []Node
	// URL is how machines reach this server (e.g. http://10.88.0.1:8080); the iPXE
	// scripts and the kernel's ignition.config.url are built from it.
	URL      string
	Binaries []Binary
	// FCOS, when its URLs are set, makes /ipxe boot the live images with the node's
	// Ignition config; otherwise /ipxe boots Installer, which writes the node's Image to
	// its disk and reboots into it.
	FCOS      FCOS
	Installer *Installer
	// KernelArgs are added to the installer's kernel command line (e.g. console=ttyS0).
	KernelArgs string
	// StatusFile, when set, is rewritten (atomically) after every request that served a
	// node something: which node fetched what, when, how often.
	StatusFile string
	// Log receives one record per request (the access log).
	Log func(Access)
	Now func() time.Time
}

// Access is one request, as the access log records it.
type Access struct {
	Time   time.Time `json:"time"`
	Remote string    `json:"remote"`
	Path   string    `json:"path"`
	MAC    string    `json:"mac,omitempty"`  // normalised, when the request named one
	Node   string    `json:"node,omitempty"` // the node it matched
	What   string    `json:"what"`           // what was served, or why nothing was
	Status int       `json:"status"`
	Bytes  int64     `json:"bytes"`
}

func (a Access) String() string {
	node := a.Node
	if node == "" {
		node = "-"
	}
	mac := a.MAC
	if mac == "" {
		mac = "-"
	}
	return fmt.Sprintf("%s %s mac=%s node=%s %d %dB %s: %s", a.Time.UTC().Format(time.RFC3339), a.Remote, mac, node, a.Status, a.Bytes, a.Path, a.What)
}

// NodeStatus is what one node has fetched.
type NodeStatus struct {
	Node    string           `json:"node"`
	MAC     string           `json:"mac"`
	Fetched map[string]Fetch `json:"fetched"` // by what: "ipxe", "ignition", "binary <name>"
}

// Fetch counts the successful fetches of one thing by one node.
type Fetch struct {
	Count int       `json:"count"`
	First time.Time `json:"first"`
	Last  time.Time `json:"last"`
}

// Server is the HTTP handler. Create it with New.
type Server struct {
	o      Options
	byMAC  map[string]*Node
	bins   map[string]string
	mu     sync.Mutex
	status map[string]*NodeStatus // by node name
}

// New checks the options and returns the server.
func New(o Options) (*Server, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.URL == "" {
		return nil, errors.New("pxe: no server URL (how the machines reach this server, e.g. http://10.88.0.1:8080)")
	}
	o.URL = strings.TrimRight(o.URL, "/")
	s := &Server{o: o, byMAC: map[string]*Node{}, bins: map[string]string{}, status: map[string]*NodeStatus{}}
	for i := range o.Nodes {
		n := &o.Nodes[i]
		mac, err := NormalizeMAC(n.MAC)
		if err != nil {
			return nil, fmt.Errorf("pxe: node %s: nodes[].mac: %w: PXE provisioning finds nodes by MAC, so every node needs one", n.Name, err)
		}
		if other := s.byMAC[mac]; other != nil {
			return nil, fmt.Errorf("pxe: nodes %s and %s have the same MAC %s", other.Name, n.Name, mac)
		}
		if len(n.Config) == 0 && n.Image == "" {
			return nil, fmt.Errorf("pxe: node %s has neither an Ignition config nor a disk image to serve", n.Name)
		}
		if n.Image != "" {
			sum, size, err := StreamSHA256(n.Image)
			if err != nil {
				return nil, fmt.Errorf("pxe: node %s: %w (build the images first: etcdbake image)", n.Name, err)
			}
			n.imageSHA256, n.imageSize = sum, size
		}
		s.byMAC[mac] = n
		s.status[n.Name] = &NodeStatus{Node: n.Name, MAC: mac, Fetched: map[string]Fetch{}}
	}
	for _, b := range o.Binaries {
		if _, err := os.Stat(b.Path); err != nil {
			return nil, fmt.Errorf("pxe: binary %s: %w", b.Name, err)
		}
		s.bins[b.Name] = b.Path
	}
	return s, nil
}

// NormalizeMAC parses a MAC written with colons or hyphens (any case) and returns it
// lower-case with colons.
func NormalizeMAC(s string) (string, error) {
	if s == "" {
		return "", errors.New("no MAC address")
	}
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return "", fmt.Errorf("%q is not a MAC address (six hex pairs, e.g. 52:54:00:12:34:56 or 52-54-00-12-34-56)", s)
	}
	return hw.String(), nil
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a := Access{Time: s.o.Now(), Remote: r.RemoteAddr, Path: r.URL.RequestURI()}
	defer func() {
		if s.o.Log != nil {
			s.o.Log(a)
		}
	}()
	fail := func(status int, what string) {
		a.Status, a.What = status, what
		http.Error(w, what, status)
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		fail(http.StatusMethodNotAllowed, "only GET and HEAD")
		return
	}
	node := func() *Node {
		q := r.URL.Query().Get("mac")
		if q == "" {
			fail(http.StatusBadRequest, "no mac parameter: ask for "+r.URL.Path+"?mac=52:54:00:12:34:56 (iPXE: mac=${mac:hexhyp})")
			return nil
		}
		mac, err := NormalizeMAC(q)
		if err != nil {
			fail(http.StatusBadRequest, err.Error())
			return nil
		}
		a.MAC = mac
		n := s.byMAC[mac]
		if n == nil {
			fail(http.StatusNotFound, fmt.Sprintf("no node of cluster %s has MAC %s: add it as nodes[].mac in the spec", s.o.Cluster, mac))
			return nil
		}
		a.Node = n.Name
		return n
	}
	switch {
	case r.URL.Path == "/boot.ipxe":
		a.What = "boot script"
		a.Status = http.StatusOK
		a.Bytes = s.write(w, "text/plain; charset=utf-8", []byte("#!ipxe\nchain ipxe?mac=${mac:hexhyp}\n"))
	case r.URL.Path == "/ipxe":
		n := node()
		if n == nil {
			return
		}
		script, err := s.ipxeScript(n)
		if err != nil {
			fail(http.StatusNotFound, err.Error())
			return
		}
		a.What, a.Status = "ipxe script", http.StatusOK
		a.Bytes = s.write(w, "text/plain; charset=utf-8", script)
		s.fetched(n, "ipxe", a.Time)
	case r.URL.Path == "/ignition":
		n := node()
		if n == nil {
			return
		}
		if len(n.Config) == 0 {
			fail(http.StatusNotFound, "node "+n.Name+" has no Ignition config on this server (it is provisioned with its disk image)")
			return
		}
		a.What, a.Status = "ignition config", http.StatusOK
		a.Bytes = s.write(w, "application/vnd.coreos.ignition+json", n.Config)
		s.fetched(n, "ignition", a.Time)
	case r.URL.Path == "/image":
		n := node()
		if n == nil {
			return
		}
		if n.Image == "" {
			fail(http.StatusNotFound, "node "+n.Name+" has no disk image on this server")
			return
		}
		a.What, a.Status = "disk image (sparse stream)", http.StatusOK
		w.Header().Set("Content-Type", "application/octet-stream")
		cw := &countingWriter{w: w}
		if r.Method == http.MethodGet {
			if err := WriteSparse(cw, n.Image); err != nil {
				a.What = "disk image, cut short: " + err.Error()
			}
		}
		a.Bytes = cw.n
		s.fetched(n, "image", a.Time)
	case r.URL.Path == "/installed":
		n := node()
		if n == nil {
			return
		}
		what := "installed"
		if r.URL.Query().Get("result") != "ok" {
			what = "install failed: " + r.URL.Query().Get("error")
		}
		a.What, a.Status = "report: "+what, http.StatusOK
		a.Bytes = s.write(w, "text/plain; charset=utf-8", []byte("ok\n"))
		s.fetched(n, what, a.Time)
	case r.URL.Path == "/installer/vmlinuz" || r.URL.Path == "/installer/initrd.img":
		if s.o.Installer == nil {
			fail(http.StatusNotFound, "this server has no installer (it serves Fedora CoreOS boots)")
			return
		}
		b := s.o.Installer.Kernel
		if strings.HasSuffix(r.URL.Path, "initrd.img") {
			b = s.o.Installer.Initrd
		}
		a.What, a.Status = "installer "+strings.TrimPrefix(r.URL.Path, "/installer/"), http.StatusOK
		a.Bytes = s.write(w, "application/octet-stream", b)
	case strings.HasPrefix(r.URL.Path, "/binaries/"):
		name := strings.TrimPrefix(r.URL.Path, "/binaries/")
		path, ok := s.bins[name]
		if !ok {
			fail(http.StatusNotFound, fmt.Sprintf("no binary %q here (served: %s)", name, strings.Join(s.binaryNames(), ", ")))
			return
		}
		f, err := os.Open(path)
		if err != nil {
			fail(http.StatusInternalServerError, "binary "+name+": "+err.Error())
			return
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			fail(http.StatusInternalServerError, "binary "+name+": "+err.Error())
			return
		}
		// Binaries carry no secret: any machine may fetch them. Ignition's requests
		// name no MAC, so they are in the access log but not in a node's status.
		a.What, a.Status = "binary "+name, http.StatusOK
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", fmt.Sprint(st.Size()))
		if r.Method == http.MethodGet {
			n, _ := io.Copy(w, f)
			a.Bytes = n
		}
	default:
		fail(http.StatusNotFound, "not found: this server serves /boot.ipxe, /ipxe?mac=, /ignition?mac=, /image?mac=, /installer/ and /binaries/NAME")
	}
}

func (s *Server) write(w http.ResponseWriter, ctype string, b []byte) int64 {
	w.Header().Set("Content-Type", ctype)
	w.Header().Set("Content-Length", fmt.Sprint(len(b)))
	n, _ := w.Write(b)
	return int64(n)
}

func (s *Server) binaryNames() []string {
	var names []string
	for n := range s.bins {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// ipxeScript boots the FCOS live images with the node's config URL, or the installer
// with the node's image URL and checksum.
func (s *Server) ipxeScript(n *Node) ([]byte, error) {
	mac, _ := NormalizeMAC(n.MAC)
	q := "?mac=" + strings.ReplaceAll(mac, ":", "-")
	f := s.o.FCOS
	if f.Kernel != "" && f.Initramfs != "" {
		if len(n.Config) == 0 {
			return nil, fmt.Errorf("node %s has no Ignition config on this server", n.Name)
		}
		args := []string{"initrd=main", "ignition.firstboot", "ignition.platform.id=metal", "ignition.config.url=" + s.o.URL + "/ignition" + q}
		if f.Rootfs != "" {
			args = append(args, "coreos.live.rootfs_url="+f.Rootfs)
		}
		if f.Args != "" {
			args = append(args, f.Args)
		}
		return []byte(fmt.Sprintf("#!ipxe\n# etcdbake: node %s of cluster %s: Fedora CoreOS / Flatcar live boot with its Ignition config\nkernel %s %s\ninitrd --name main %s\nboot\n",
			n.Name, s.o.Cluster, f.Kernel, strings.Join(args, " "), f.Initramfs)), nil
	}
	if n.Image == "" || s.o.Installer == nil {
		return nil, fmt.Errorf("node %s is known, but this server has nothing to boot it with: give it the node images (etcdbake image) or --fcos-kernel and --fcos-initramfs", n.Name)
	}
	args := []string{"initrd=initrd.img", "boot=etcdbake", "ip=dhcp", "BOOTIF=01-${mac:hexhyp}",
		"etcdbake.image=" + s.o.URL + "/image" + q, "etcdbake.sha256=" + n.imageSHA256, "etcdbake.report=" + s.o.URL + "/installed" + q}
	if s.o.KernelArgs != "" {
		args = append(args, s.o.KernelArgs)
	}
	return []byte(fmt.Sprintf("#!ipxe\n# etcdbake: node %s of cluster %s: install its disk image (%d MiB, stream sha256 %s), then boot it\nkernel %s/installer/vmlinuz %s\ninitrd --name initrd.img %s/installer/initrd.img\nboot\n",
		n.Name, s.o.Cluster, n.imageSize>>20, n.imageSHA256, s.o.URL, strings.Join(args, " "), s.o.URL)), nil
}

type countingWriter struct {
	w interface{ Write([]byte) (int, error) }
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func (s *Server) fetched(n *Node, what string, t time.Time) {
	s.mu.Lock()
	st := s.status[n.Name]
	f := st.Fetched[what]
	if f.Count == 0 {
		f.First = t
	}
	f.Count++
	f.Last = t
	st.Fetched[what] = f
	snapshot := s.statusLocked()
	s.mu.Unlock()
	if s.o.StatusFile != "" {
		if b, err := json.MarshalIndent(snapshot, "", "  "); err == nil {
			_ = os.MkdirAll(filepath.Dir(s.o.StatusFile), 0o755)
			_ = fileutil.WriteAtomic(s.o.StatusFile, append(b, '\n'), 0o644)
		}
	}
}

// Status returns what every node has fetched, in node name order.
func (s *Server) Status() []NodeStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.statusLocked()
}

func (s *Server) statusLocked() []NodeStatus {
	out := make([]NodeStatus, 0, len(s.status))
	for _, st := range s.status {
		c := *st
		c.Fetched = map[string]Fetch{}
		for k, v := range st.Fetched {
			c.Fetched[k] = v
		}
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out
}
