package qemu

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/etcdbake/etcdbake/internal/testtools"
	"github.com/etcdbake/etcdbake/spec"
	"github.com/etcdbake/etcdbake/vmcluster"
)

// The firewall policy of TestCluster's spec (withSSH): a client network that holds
// 10.88.0.100 but not 10.88.0.200, the outsider's two addresses on the cluster's segment.
const (
	testSourceNet = "10.88.0.0/25"
	insideAddr    = "10.88.0.100"
	outsideAddr   = "10.88.0.200"
)

// sshKey is the test's login key, made for each run.
type sshKey struct {
	signer  ssh.Signer
	private ed25519.PrivateKey
	public  string // authorized_keys line
}

func newSSHKey(t testing.TB) sshKey {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return sshKey{signer: s, private: priv, public: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(s.PublicKey()))) + " etcdbake-test"}
}

// writeSSHPrivateKey writes the key for an ssh client (-i FILE).
func writeSSHPrivateKey(t testing.TB, k sshKey, path string) {
	t.Helper()
	blk, err := ssh.MarshalPrivateKey(k.private, "etcdbake test")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(blk), 0o600); err != nil {
		t.Fatal(err)
	}
}

// withSSH adds the test's key and a firewall policy narrower than the default to a spec.
func withSSH(specText []byte, k sshKey) []byte {
	return append(append([]byte(nil), specText...), []byte(fmt.Sprintf(`
ssh:
  authorizedKeys: [%q]
  sources: [%s]
firewall:
  clientSources: [%s]
`, k.public, testSourceNet, testSourceNet))...)
}

// attachOutsider puts a network namespace on the cluster's segment, through a tap device
// whose frames the test pumps to and from a new port of the hub. The namespace holds
// insideAddr and outsideAddr: it is a machine on the segment that is not a member.
func attachOutsider(t *testing.T, hub *vmcluster.Hub) *testtools.NetNS {
	ns := testtools.NewNetNS(t, "ebk-outsider")
	const dev = "ebkout0"
	var tap *os.File
	if err := ns.Do(func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
		if err != nil {
			return err
		}
		ifr, err := unix.NewIfreq(dev)
		if err != nil {
			return err
		}
		ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			unix.Close(fd)
			return fmt.Errorf("TUNSETIFF: %w", err)
		}
		tap = os.NewFile(uintptr(fd), dev)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	port, err := hub.Attach("outsider")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hub.Detach("outsider"); tap.Close(); port.Close() })
	go func() { // tap -> hub: each read is one frame
		buf := make([]byte, 1<<16)
		for {
			n, err := tap.Read(buf)
			if err != nil {
				return
			}
			var hdr [4]byte
			binary.BigEndian.PutUint32(hdr[:], uint32(n))
			if _, err := port.Write(append(hdr[:], buf[:n]...)); err != nil {
				return
			}
		}
	}()
	go func() { // hub -> tap
		var hdr [4]byte
		buf := make([]byte, 1<<16)
		for {
			if _, err := io.ReadFull(port, hdr[:]); err != nil {
				return
			}
			n := binary.BigEndian.Uint32(hdr[:])
			if n > uint32(len(buf)) {
				return
			}
			if _, err := io.ReadFull(port, buf[:n]); err != nil {
				return
			}
			if _, err := tap.Write(buf[:n]); err != nil {
				return
			}
		}
	}()
	for _, a := range []string{insideAddr, outsideAddr} {
		ns.Run(t, "ip", "addr", "add", a+"/24", "dev", dev)
	}
	ns.Run(t, "ip", "link", "set", dev, "up")
	return ns
}

var dropCounter = regexp.MustCompile(`counter packets (\d+) bytes \d+ comment "dropped"`)

// droppedInput reads the node's input-chain drop counter.
func (e *b0Env) droppedInput(t *testing.T, node string) int {
	t.Helper()
	res, err := e.cl.Exec(e.ctx, node, "nft", "list", "chain", "inet", spec.FirewallTable, "input")
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("%s: nft list: %v %s", node, err, res.Stderr)
	}
	m := dropCounter.FindStringSubmatch(res.Stdout)
	if m == nil {
		t.Fatalf("%s: no drop counter in the input chain:\n%s", node, res.Stdout)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// sshDial logs in through the node's host forward.
func (e *b0Env) sshDial(node, user string, auth ...ssh.AuthMethod) (*ssh.Client, ssh.PublicKey, error) {
	var hostKey ssh.PublicKey
	cfg := &ssh.ClientConfig{
		User: user, Auth: auth, Timeout: 20 * time.Second,
		HostKeyCallback: func(_ string, _ net.Addr, k ssh.PublicKey) error { hostKey = k; return nil },
	}
	c, err := ssh.Dial("tcp", e.cl.SSHAddr(node), cfg)
	return c, hostKey, err
}

// b11FirewallSSH (B11): from a machine on the segment that is not a member, the peer
// port, flannel's VXLAN port and SSH are dropped and the client port follows
// firewall.clientSources; SSH through the host forward takes the spec's key (sudo gives
// root) and refuses passwords and root. The host keys are recorded for B4, which checks
// them after a reboot.
func (e *b0Env) b11FirewallSSH(t *testing.T) {
	c, cl := e.c, e.cl
	out := attachOutsider(t, cl.Hub())
	client, peer := strconv.Itoa(c.Etcd.ClientPort), strconv.Itoa(c.Etcd.PeerPort)
	sshPort := strconv.Itoa(spec.SSHPort)
	// The tap's first frames (ARP) take a moment: wait until the allowed client address
	// reaches etcd-1's client port.
	first := c.Nodes[0].IP().String()
	deadline := time.Now().Add(30 * time.Second)
	for out.Dial(insideAddr, net.JoinHostPort(first, client), 2*time.Second) != nil {
		if time.Now().After(deadline) {
			t.Fatalf("%s cannot reach %s:%s at all (it is in firewall.clientSources %s)", insideAddr, first, client, testSourceNet)
		}
		time.Sleep(time.Second)
	}
	for _, n := range c.Nodes {
		ip := n.IP().String()
		for _, p := range []struct {
			from, port string
			open       bool
		}{
			{insideAddr, client, true}, {insideAddr, sshPort, true}, {insideAddr, peer, false},
			{outsideAddr, client, false}, {outsideAddr, sshPort, false}, {outsideAddr, peer, false},
		} {
			err := out.Dial(p.from, net.JoinHostPort(ip, p.port), 2*time.Second)
			var ne net.Error
			switch {
			case p.open && err != nil:
				t.Errorf("%s -> %s:%s: %v, want a connection", p.from, ip, p.port, err)
			case !p.open && err == nil:
				t.Errorf("%s -> %s:%s connected, want it dropped", p.from, ip, p.port)
			case !p.open && !(asNetErr(err, &ne) && ne.Timeout()):
				t.Errorf("%s -> %s:%s: %v, want a timeout (dropped, not refused)", p.from, ip, p.port, err)
			}
		}
		// VXLAN: datagrams from the outsider land in the drop counter.
		before := e.droppedInput(t, n.Name)
		const sent = 20
		for i := 0; i < sent; i++ {
			if err := out.SendUDP(outsideAddr, net.JoinHostPort(ip, strconv.Itoa(spec.VXLANPort)), "not a member"); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(time.Second)
		if after := e.droppedInput(t, n.Name); after-before < sent {
			t.Errorf("%s: %d datagrams from %s to the VXLAN port, the drop counter rose by %d", n.Name, sent, outsideAddr, after-before)
		}
		res, err := cl.Exec(e.ctx, n.Name, "nft", "-a", "list", "table", "inet", spec.FirewallTable)
		if err != nil || res.ExitCode != 0 {
			t.Fatalf("%s: %v %s", n.Name, err, res.Stderr)
		}
		rules := 0
		for _, l := range strings.Split(res.Stdout, "\n") {
			l = strings.TrimSpace(l)
			if strings.Contains(l, "# handle") && !strings.HasPrefix(l, "chain ") && !strings.HasPrefix(l, "table ") {
				rules++
			}
		}
		t.Logf("B11 %s: %d firewall rules in table inet %s; every probe from the outsider answered as the policy says", n.Name, rules, spec.FirewallTable)
	}

	// SSH through the host forward.
	e.hostKeys = map[string]string{}
	for _, n := range c.Nodes {
		cli, hk, err := e.sshDial(n.Name, c.SSH.User, ssh.PublicKeys(e.sshKey.signer))
		if err != nil {
			t.Fatalf("%s: ssh as %s with the spec's key: %v", n.Name, c.SSH.User, err)
		}
		e.hostKeys[n.Name] = ssh.FingerprintSHA256(hk)
		s, err := cli.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		got, err := s.CombinedOutput("id -un; sudo -n id -un")
		cli.Close()
		if err != nil || string(got) != c.SSH.User+"\nroot\n" {
			t.Errorf("%s: `id -un; sudo -n id -un` over ssh: %q %v, want %q", n.Name, got, err, c.SSH.User+"\nroot\n")
		}
		if _, _, err := e.sshDial(n.Name, c.SSH.User, ssh.Password(c.SSH.User), ssh.KeyboardInteractive(func(string, string, []string, []bool) ([]string, error) { return []string{c.SSH.User}, nil })); err == nil {
			t.Errorf("%s: a password login as %s succeeded", n.Name, c.SSH.User)
		}
		if _, _, err := e.sshDial(n.Name, "root", ssh.PublicKeys(e.sshKey.signer)); err == nil {
			t.Errorf("%s: root logged in", n.Name)
		}
		res, err := cl.Exec(e.ctx, n.Name, "sshd", "-T")
		if err != nil || res.ExitCode != 0 {
			t.Fatalf("%s: sshd -T: %v %s", n.Name, err, res.Stderr)
		}
		for _, want := range []string{"permitrootlogin no", "passwordauthentication no", "kbdinteractiveauthentication no", "authenticationmethods publickey"} {
			if !strings.Contains(res.Stdout, want+"\n") {
				t.Errorf("%s: sshd -T lacks %q", n.Name, want)
			}
		}
		console, _ := os.ReadFile(cl.Console(n.Name))
		if !bytes.Contains(console, []byte(e.hostKeys[n.Name])) {
			t.Errorf("%s: the console does not show the host key's fingerprint %s", n.Name, e.hostKeys[n.Name])
		}
	}
	res, err := cl.Exec(e.ctx, "etcd-1", "systemd-analyze", "security", "--no-pager", "ssh.service")
	if err == nil {
		lines := strings.Split(strings.TrimSpace(res.Stdout), "\n")
		t.Logf("B11 systemd-analyze security ssh.service: %s; host keys %v", lines[len(lines)-1], e.hostKeys)
	}
}

// checkHostKey says whether the node still shows the host key B11 recorded.
func (e *b0Env) checkHostKey(t *testing.T, node string) {
	if e.hostKeys[node] == "" {
		return
	}
	// etcd's chain no longer waits for basic.target: the cluster can be healthy again
	// before sshd (after basic.target and the host keys) listens. Up to 2 min.
	var cli *ssh.Client
	var hk ssh.PublicKey
	var err error
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(3 * time.Second) {
		if cli, hk, err = e.sshDial(node, e.c.SSH.User, ssh.PublicKeys(e.sshKey.signer)); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Errorf("%s: ssh after the reboot: %v", node, err)
		return
	}
	cli.Close()
	if got := ssh.FingerprintSHA256(hk); got != e.hostKeys[node] {
		t.Errorf("%s: host key %s after the reboot, was %s", node, got, e.hostKeys[node])
	} else {
		t.Logf("%s: the same host key after the reboot (%s)", node, got)
	}
}

func asNetErr(err error, ne *net.Error) bool {
	if err == nil {
		return false
	}
	e, ok := err.(net.Error)
	if !ok {
		return false
	}
	*ne = e
	return true
}
