package testtools

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// NetNS is a network namespace a test made (`ip netns add`), removed at the test's end.
type NetNS struct{ Name string }

// NewNetNS makes a namespace with its loopback up. It needs root and iproute2: without
// root the test is skipped (a bare `go test` as a user), under `make test` it fails.
func NewNetNS(t testing.TB, name string) *NetNS {
	t.Helper()
	if os.Geteuid() != 0 {
		if UnderMakeTest() {
			t.Fatal("network namespace tests need root (make test runs them as root in CI)")
		}
		t.Skip("network namespaces need root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		Missing(t, "ip (iproute2)")
	}
	name = fmt.Sprintf("%s-%d", name, os.Getpid())
	Run(t, "ip", "netns", "add", name)
	ns := &NetNS{Name: name}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	ns.Run(t, "ip", "link", "set", "lo", "up")
	return ns
}

// Run runs a command on the host and fails the test, with its output, if it fails.
func Run(t testing.TB, argv ...string) string {
	t.Helper()
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, out)
	}
	return string(out)
}

// Run runs a command inside the namespace (ip netns exec).
func (ns *NetNS) Run(t testing.TB, argv ...string) string {
	t.Helper()
	return Run(t, append([]string{"ip", "netns", "exec", ns.Name}, argv...)...)
}

// Do runs f on an OS thread that has entered the namespace: sockets f opens belong to it
// and keep working after f returns. The thread is discarded afterwards.
func (ns *NetNS) Do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the goroutine's end discards the thread with its namespace.
		runtime.LockOSThread()
		fd, err := unix.Open(filepath.Join("/run/netns", ns.Name), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("entering namespace %s: %w", ns.Name, err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

// Listen opens a TCP listener in the namespace that accepts and closes connections.
func (ns *NetNS) Listen(t testing.TB, addr string) {
	t.Helper()
	var l net.Listener
	if err := ns.Do(func() (err error) { l, err = net.Listen("tcp", addr); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
}

// Dial connects from the namespace, from the local address from (may be empty), and
// closes the connection at once.
func (ns *NetNS) Dial(from, to string, timeout time.Duration) error {
	return ns.Do(func() error {
		d := net.Dialer{Timeout: timeout}
		if from != "" {
			d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		c, err := d.DialContext(ctx, "tcp", to)
		if err != nil {
			return err
		}
		return c.Close()
	})
}

// ListenUDP opens a UDP socket in the namespace; received datagrams' payloads go to the
// returned channel.
func (ns *NetNS) ListenUDP(t testing.TB, addr string) <-chan string {
	t.Helper()
	var pc net.PacketConn
	if err := ns.Do(func() (err error) { pc, err = net.ListenPacket("udp", addr); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	got := make(chan string, 64)
	go func() {
		buf := make([]byte, 2048)
		for {
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			select {
			case got <- string(buf[:n]):
			default:
			}
		}
	}()
	return got
}

// SendUDP sends one datagram from the namespace, from the local address from.
func (ns *NetNS) SendUDP(from, to, payload string) error {
	return ns.Do(func() error {
		raddr, err := net.ResolveUDPAddr("udp", to)
		if err != nil {
			return err
		}
		c, err := net.DialUDP("udp", &net.UDPAddr{IP: net.ParseIP(from)}, raddr)
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte(payload))
		return err
	})
}
