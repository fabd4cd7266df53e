package vmcluster

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/etcdbake/etcdbake/internal/fileutil"
)

// A Cluster is several VMs on one private Ethernet segment (a Hub in this process), each
// with a second, user-mode NIC (restrict=on) that only carries host forwards from
// 127.0.0.1:<port> to the guest's etcd client and peer ports.
//
// Every guest needs GuestButane(ClientPort, PeerPort, UserMACs...) in its Ignition config,
// so that the user NIC gets slirp's address by DHCP (without a default route) and etcd
// listens on it.

// ClusterOptions describe the VMs of a cluster.
type ClusterOptions struct {
	// Images maps a node name to its disk image (raw or qcow2). Each VM writes to its own
	// copy-on-write overlay in Dir; the images stay pristine.
	Images map[string]string
	// MACs maps a node name to its spec MAC, used on the private segment (so the node's
	// static address lands there).
	MACs map[string]string
	// UserMACs maps a node name to the MAC of its user-mode NIC; default UserMAC(MACs[n]).
	UserMACs map[string]string
	// Dir holds overlays, firmware variables, console logs, QMP sockets and
	// endpoints.json.
	Dir       string
	MemoryMiB int // per VM; default 768
	// TimeServer, when valid, is an address on the segment where the hub answers NTP
	// (ServeTime) with this machine's clock plus TimeOffset: the VMs' time source.
	TimeServer netip.Addr
	TimeOffset time.Duration
	// ClientPort and PeerPort are the guest ports etcd listens on (the spec's
	// etcd.clientPort and etcd.peerPort; GuestButane must be given the same): each VM
	// forwards a port on 127.0.0.1 to each of them. Both are required.
	ClientPort, PeerPort int
	// Accel is "tcg" (the default) or "kvm" (only after ProbeKVM said it works).
	Accel string
	// KeepDisks boots from the overlays already in Dir (made by an earlier StartCluster
	// for the same images), so the nodes keep their etcd data; missing ones are created.
	KeepDisks bool
	// PXE maps a node to the URL its firmware (QEMU's iPXE) boots through the user-mode
	// NIC's DHCP bootfile: that node starts with a blank disk the size of its image and
	// must install itself (e.g. from `etcdbake serve`); its image is not used otherwise.
	// Its user-mode NIC can reach the host (no restrict=on; 10.0.2.2 is the host's
	// loopback), and the VM reboots in place instead of exiting.
	PXE map[string]string
	// RebootInPlace lets a guest reboot itself (an A/B slot update, a failed boot
	// verification, `systemctl reboot`): QEMU resets the machine and keeps running, with
	// its forwards. Without it a guest reboot ends the VM (the node shows as exited).
	RebootInPlace bool
	// GuestForwards let every guest reach services of the caller (see GuestForward).
	GuestForwards []GuestForward
}

// overlaySuffix ends the name of a node's disk in the run directory (<node>.overlay.qcow2).
const overlaySuffix = ".overlay.qcow2"

// Cluster is a running set of VMs and their hub.
type Cluster struct {
	// Started is when the VMs were launched.
	Started time.Time

	dir   string
	mem   int
	accel string
	// rebootInPlace: ClusterOptions.RebootInPlace.
	rebootInPlace bool
	// guestFwd: ClusterOptions.GuestForwards as -netdev user options.
	guestFwd []string
	// The guest's etcd ports the forwards go to (ClusterOptions.ClientPort, PeerPort).
	guestClient, guestPeer int
	hub                    *Hub
	mu                     sync.Mutex
	nodes                  map[string]*clusterNode
	epMu                   sync.Mutex // serialises writeEndpoints
}

type clusterNode struct {
	name, image, mac, userMAC string
	overlay, vars             string
	pxe                       string        // PXE boot URL ("" = boot the image)
	rtc                       time.Duration // guest clock offset for the next boot
	vm                        *VM
	endpoint                  string
	peer                      string
	// The host ports of the forwards, kept across restarts (0 until the first boot).
	clientPort, peerPort, sshPort int
}

// StartCluster launches every VM at once and returns when each one's forwarded port is
// known (the guests are still booting). Stop it when done.
func StartCluster(ctx context.Context, o ClusterOptions) (*Cluster, error) {
	if err := Check(); err != nil {
		return nil, err
	}
	c, err := newCluster(o)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return nil, err
	}
	if o.TimeServer.IsValid() {
		c.hub.ServeTime(o.TimeServer, o.TimeOffset)
	}
	// Overlays and firmware variables first (qemu-img takes a moment), in parallel.
	if err := c.each(func(n *clusterNode) error { return n.prepare(ctx, o.KeepDisks) }); err != nil {
		return nil, err
	}
	c.Started = time.Now()
	if err := c.each(func(n *clusterNode) error { return c.boot(n) }); err != nil {
		c.Stop()
		return nil, err
	}
	if err := c.each(func(n *clusterNode) error { return c.readPort(ctx, n) }); err != nil {
		c.Stop()
		return nil, err
	}
	if err := c.writeEndpoints(); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

// newCluster checks o and sets up the cluster's nodes, without starting anything.
func newCluster(o ClusterOptions) (*Cluster, error) {
	if len(o.Images) == 0 {
		return nil, fmt.Errorf("ClusterOptions.Images: no node images")
	}
	if o.Dir == "" {
		return nil, fmt.Errorf("ClusterOptions.Dir: no run directory")
	}
	for _, p := range []struct {
		field string
		port  int
	}{{"ClientPort", o.ClientPort}, {"PeerPort", o.PeerPort}} {
		if p.port <= 0 || p.port > 65535 {
			return nil, fmt.Errorf("ClusterOptions.%s %d: give the guest's etcd port (the spec's etcd.clientPort / etcd.peerPort)", p.field, p.port)
		}
	}
	if o.ClientPort == o.PeerPort {
		return nil, fmt.Errorf("ClusterOptions.ClientPort and PeerPort are both %d", o.ClientPort)
	}
	mem := o.MemoryMiB
	if mem == 0 {
		mem = 768
	}
	var guestFwd []string
	for _, g := range o.GuestForwards {
		opt, err := g.netdevOption()
		if err != nil {
			return nil, fmt.Errorf("ClusterOptions.%w", err)
		}
		guestFwd = append(guestFwd, opt)
	}
	c := &Cluster{dir: o.Dir, mem: mem, accel: o.Accel, rebootInPlace: o.RebootInPlace, guestFwd: guestFwd, guestClient: o.ClientPort, guestPeer: o.PeerPort, hub: NewHub(), nodes: map[string]*clusterNode{}}
	for name, img := range o.Images {
		mac := o.MACs[name]
		if mac == "" {
			return nil, fmt.Errorf("node %s has no MAC", name)
		}
		um := o.UserMACs[name]
		if um == "" {
			um = UserMAC(mac)
		}
		abs, err := filepath.Abs(img)
		if err != nil {
			return nil, err
		}
		c.nodes[name] = &clusterNode{
			name: name, image: abs, mac: mac, userMAC: um,
			overlay: filepath.Join(o.Dir, name+overlaySuffix),
			vars:    filepath.Join(o.Dir, name+".vars.fd"),
			pxe:     o.PXE[name],
		}
	}
	return c, nil
}

func (c *Cluster) each(f func(n *clusterNode) error) error {
	var wg sync.WaitGroup
	errs := make(chan error, len(c.nodes))
	for _, n := range c.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(n); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// prepare makes the node's overlay over its image (a blank disk, as the image was built)
// and firmware variables; with keep, an existing overlay and variables are used as they are.
func (n *clusterNode) prepare(ctx context.Context, keep bool) error {
	if keep {
		_, e1 := os.Stat(n.overlay)
		_, e2 := os.Stat(n.vars)
		if e1 == nil && e2 == nil {
			return nil
		}
	}
	format := "raw"
	if strings.HasSuffix(n.image, ".qcow2") {
		format = "qcow2"
	}
	_ = os.Remove(n.overlay)
	_ = os.Remove(filepath.Join(filepath.Dir(n.overlay), n.name+".log"))
	args := []string{"create", "-q", "-f", "qcow2", "-b", n.image, "-F", format, n.overlay}
	if n.pxe != "" {
		// A blank disk as big as the image (its virtual size) that PXE installs onto.
		out, err := exec.CommandContext(ctx, "qemu-img", "info", "--output=json", n.image).Output()
		if err != nil {
			return fmt.Errorf("size of %s: %v", n.image, err)
		}
		var info struct {
			VirtualSize int64 `json:"virtual-size"`
		}
		if err := json.Unmarshal(out, &info); err != nil || info.VirtualSize == 0 {
			return fmt.Errorf("size of %s: %v %s", n.image, err, out)
		}
		args = []string{"create", "-q", "-f", "qcow2", n.overlay, strconv.FormatInt(info.VirtualSize, 10)}
	}
	if out, err := exec.CommandContext(ctx, "qemu-img", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("disk for %s: %v: %s", n.name, err, out)
	}
	b, err := os.ReadFile(OVMFVars)
	if err != nil {
		return err
	}
	return os.WriteFile(n.vars, b, 0o644)
}

// boot starts QEMU for a node with its existing overlay and firmware variables.
func (c *Cluster) boot(n *clusterNode) error {
	l2, err := c.hub.Attach(n.name)
	if err != nil {
		return err
	}
	defer l2.Close() // the child has its own copy after Start
	vm := &VM{Name: n.name, Console: c.Console(n.name), qmpPath: filepath.Join(c.dir, n.name+".qmp"), qgaPath: filepath.Join(c.dir, n.name+".qga"), done: make(chan error, 1)}
	_ = os.Remove(vm.qmpPath)
	_ = os.Remove(vm.qgaPath)
	args := c.qemuArgs(n, vm)
	vm.cmd = exec.Command("qemu-system-x86_64", args...)
	vm.cmd.ExtraFiles = []*os.File{l2}
	var stderr strings.Builder
	vm.cmd.Stderr = &stderr
	// QEMU's children (a guest forward's relay, one per connection) inherit nothing
	// we wait for, but should one keep the stderr pipe open, Wait must still return
	// when QEMU is gone: the supervisor takes a VM for running until it does.
	vm.cmd.WaitDelay = 2 * time.Second
	if err := vm.cmd.Start(); err != nil {
		return fmt.Errorf("starting QEMU for %s: %w", n.name, err)
	}
	go func() {
		err := vm.cmd.Wait()
		if err != nil && stderr.Len() > 0 {
			err = fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
		}
		vm.done <- err
	}()
	c.mu.Lock()
	n.vm = vm
	n.endpoint, n.peer = "", ""
	c.mu.Unlock()
	return nil
}

// qemuArgs is the QEMU command line of the node's next boot as vm (whose console, QMP and
// agent paths it uses); the private segment's NIC is fd 3.
func (c *Cluster) qemuArgs(n *clusterNode, vm *VM) []string {
	// The host ports are chosen by QEMU at the first boot and kept by restarts.
	fwd := fmt.Sprintf("hostfwd=tcp:127.0.0.1:%d-:%d,hostfwd=tcp:127.0.0.1:%d-:%d,hostfwd=tcp:127.0.0.1:%d-:%d",
		n.clientPort, c.guestClient, n.peerPort, c.guestPeer, n.sshPort, GuestSSHPort)
	disk := []string{"-drive", "if=virtio,format=qcow2,file=" + n.overlay}
	// First NIC: the private segment (fd 3 is ExtraFiles[0]).
	l2nic := "virtio-net-pci,netdev=l2,mac=" + strings.ToLower(n.mac)
	// Second NIC: host forward to etcd only; restrict=on keeps the guest off the host.
	for _, g := range c.guestFwd {
		fwd += "," + g
	}
	user := []string{"-netdev", "user,id=u0,restrict=on," + fwd, "-device", "virtio-net-pci,netdev=u0,mac=" + strings.ToLower(n.userMAC)}
	if n.pxe != "" {
		// The disk first (blank until installed), then PXE on the user NIC; no option ROM
		// on the private segment's NIC (nothing answers DHCP there).
		disk = []string{"-drive", "if=none,id=d0,format=qcow2,file=" + n.overlay, "-device", "virtio-blk-pci,drive=d0,bootindex=0"}
		l2nic += ",romfile="
		user = []string{"-netdev", "user,id=u0,bootfile=" + n.pxe + "," + fwd, "-device", "virtio-net-pci,netdev=u0,bootindex=1,mac=" + strings.ToLower(n.userMAC)}
	}
	args := []string{
		"-name", n.name, "-machine", "q35", "-m", strconv.Itoa(c.mem), "-smp", "1",
		"-drive", "if=pflash,format=raw,readonly=on,file=" + OVMFCode,
		"-drive", "if=pflash,format=raw,file=" + n.vars,
	}
	args = append(args, disk...)
	args = append(args, "-netdev", "stream,id=l2,addr.type=fd,addr.str=3", "-device", l2nic)
	args = append(args, user...)
	args = append(args,
		// The console log survives restarts (append).
		"-chardev", "file,id=con,path="+vm.Console+",append=on", "-serial", "chardev:con",
		"-display", "none", "-monitor", "none",
		"-qmp", "unix:"+vm.qmpPath+",server=on,wait=off",
	)
	if n.pxe == "" && !c.rebootInPlace {
		args = append(args, "-no-reboot") // a guest reboot ends the VM
	}
	args = append(args, guestAgentArgs(vm.qgaPath)...)
	args = append(args, accelArgs(c.accel)...)
	if n.rtc != 0 {
		// The guest's hardware clock starts this far from the host's.
		args = append(args, "-rtc", "base="+time.Now().Add(n.rtc).UTC().Format("2006-01-02T15:04:05"))
	}
	return args
}

func (c *Cluster) readPort(ctx context.Context, n *clusterNode) error {
	c.mu.Lock()
	vm := n.vm
	c.mu.Unlock()
	port, err := vm.HostPort(ctx, c.guestClient)
	if err != nil {
		return err
	}
	peer, err := vm.HostPort(ctx, c.guestPeer)
	if err != nil {
		return err
	}
	ssh, err := vm.HostPort(ctx, GuestSSHPort)
	if err != nil {
		return err
	}
	c.mu.Lock()
	n.clientPort, n.peerPort, n.sshPort = port, peer, ssh
	n.endpoint = fmt.Sprintf("https://127.0.0.1:%d", port)
	n.peer = fmt.Sprintf("https://127.0.0.1:%d", peer)
	c.mu.Unlock()
	return nil
}

// SSHFile is the file in the run directory that maps each node to its SSH forward
// ({"<node>": "127.0.0.1:<port>", ...}), next to endpoints.json.
const SSHFile = "ssh.json"

// writeEndpoints writes Dir/endpoints.json ({"<node>": "https://127.0.0.1:<port>", ...})
// and Dir/ssh.json.
func (c *Cluster) writeEndpoints() error {
	c.epMu.Lock()
	defer c.epMu.Unlock()
	ssh := map[string]string{}
	for _, n := range c.Nodes() {
		if a := c.SSHAddr(n); a != "" {
			ssh[n] = a
		}
	}
	for file, v := range map[string]map[string]string{"endpoints.json": c.Endpoints(), SSHFile: ssh} {
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return err
		}
		if err := fileutil.WriteAtomic(filepath.Join(c.dir, file), append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func (c *Cluster) node(name string) (*clusterNode, error) {
	n := c.nodes[name]
	if n == nil {
		return nil, fmt.Errorf("no node %q in the cluster", name)
	}
	return n, nil
}

// Nodes returns the node names, sorted.
func (c *Cluster) Nodes() []string {
	var out []string
	for n := range c.nodes {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// PeerEndpoint is the host URL of the node's etcd peer port (forwarded for tests that
// check it refuses clients).
func (c *Cluster) PeerEndpoint(node string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n, ok := c.nodes[node]; ok {
		return n.peer
	}
	return ""
}

// Endpoint is the node's etcd client URL on the host (https://127.0.0.1:port), or "" while
// the node is down.
func (c *Cluster) Endpoint(node string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n := c.nodes[node]; n != nil {
		return n.endpoint
	}
	return ""
}

// Endpoints maps every running node to its endpoint.
func (c *Cluster) Endpoints() map[string]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]string{}
	for name, n := range c.nodes {
		if n.endpoint != "" {
			out[name] = n.endpoint
		}
	}
	return out
}

// SSHAddr is the host address (127.0.0.1:port) forwarded to the node's SSH port, or ""
// before its first boot.
func (c *Cluster) SSHAddr(node string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n := c.nodes[node]; n != nil && n.sshPort != 0 {
		return fmt.Sprintf("127.0.0.1:%d", n.sshPort)
	}
	return ""
}

// Console is the path of the node's serial console log (kept across restarts).
func (c *Cluster) Console(node string) string {
	return filepath.Join(c.dir, node+".log")
}

// VM returns the node's current QEMU process (nil after Kill).
func (c *Cluster) VM(node string) *VM {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n := c.nodes[node]; n != nil {
		return n.vm
	}
	return nil
}

// Kill stops a node's VM at once, like pulling the power cord. Its disk (the overlay)
// is kept for Restart.
func (c *Cluster) Kill(node string) error {
	n, err := c.node(node)
	if err != nil {
		return err
	}
	c.mu.Lock()
	vm := n.vm
	n.vm, n.endpoint, n.peer = nil, "", ""
	c.mu.Unlock()
	if vm != nil {
		vm.Kill()
	}
	return c.writeEndpoints()
}

// Restart kills the node's VM if it runs and boots it again from the same overlay (so
// its disk state, etcd data included, is kept). Its forwarded ports stay the same, so
// clients of the cluster keep working across restarts (should another process have taken
// a port meanwhile, QEMU picks a new one; Endpoint and endpoints.json give the current
// one). A cut link stays cut.
func (c *Cluster) Restart(ctx context.Context, node string) error {
	return c.RestartWith(ctx, node, RestartOptions{})
}

// RestartOptions change a node's next boot.
type RestartOptions struct {
	// ClockOffset starts the guest's hardware clock this far from the host's (QEMU
	// -rtc base=); it stays for later restarts until changed (0 = the host's clock).
	ClockOffset time.Duration
	// WipeDisk replaces the node's disk with a blank one made from its image, as after a
	// disk loss: the data partition is empty and formatted on boot.
	WipeDisk bool
}

// RestartWith is Restart with a changed clock or a fresh disk.
func (c *Cluster) RestartWith(ctx context.Context, node string, o RestartOptions) error {
	if err := c.Kill(node); err != nil {
		return err
	}
	n, _ := c.node(node)
	c.mu.Lock()
	n.rtc = o.ClockOffset
	c.mu.Unlock()
	if o.WipeDisk {
		if err := n.prepare(ctx, false); err != nil {
			return err
		}
	}
	if err := c.boot(n); err != nil {
		return err
	}
	if err := c.readPort(ctx, n); err != nil {
		// Most likely a kept port was taken meanwhile: let QEMU choose new ones.
		c.mu.Lock()
		vm := n.vm
		n.vm, n.clientPort, n.peerPort = nil, 0, 0
		c.mu.Unlock()
		vm.Kill()
		if err := c.boot(n); err != nil {
			return err
		}
		if err := c.readPort(ctx, n); err != nil {
			return err
		}
	}
	return c.writeEndpoints()
}

// Exec runs a command in the node as root through its guest agent (see VM.Exec).
func (c *Cluster) Exec(ctx context.Context, node string, argv ...string) (ExecResult, error) {
	vm := c.VM(node)
	if vm == nil {
		return ExecResult{}, fmt.Errorf("node %s is not running", node)
	}
	return vm.Exec(ctx, argv...)
}

// CutLink drops every frame to and from the node on the private segment (its host
// forward still works, so it can be observed while partitioned).
func (c *Cluster) CutLink(node string) error { return c.hub.CutLink(node) }

// RestoreLink undoes CutLink.
func (c *Cluster) RestoreLink(node string) error { return c.hub.RestoreLink(node) }

// Hub is the private segment, for statistics.
func (c *Cluster) Hub() *Hub { return c.hub }

// Stop kills every VM and closes the hub. Files in Dir are kept.
func (c *Cluster) Stop() {
	c.mu.Lock()
	var vms []*VM
	for _, n := range c.nodes {
		if n.vm != nil {
			vms = append(vms, n.vm)
			n.vm, n.endpoint, n.peer = nil, "", ""
		}
	}
	c.mu.Unlock()
	var wg sync.WaitGroup
	for _, vm := range vms {
		wg.Add(1)
		go func() { defer wg.Done(); vm.Kill() }()
	}
	wg.Wait()
	c.hub.Close()
}
