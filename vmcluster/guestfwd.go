package vmcluster

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
)

// GuestForward lets the guests reach a service on this machine at an address of their
// user-mode NIC's network (e.g. 10.0.2.100:8443), even with restrict=on: for each guest
// connection QEMU runs Relay with the connection as its standard input and output (QEMU's
// guestfwd=...-cmd:). The relay is meant to connect to one unix socket of the caller's
// (see Relay), so the guests reach that service and nothing else.
type GuestForward struct {
	// Guest is the address:port the guests connect to, on 10.0.2.0/24.
	Guest string
	// Relay is the command and its arguments; none may contain a space, a comma or a
	// quote (QEMU's option syntax and its argument splitting).
	Relay []string
}

// netdevOption is the forward as a -netdev user option.
func (g GuestForward) netdevOption() (string, error) {
	host, port, err := net.SplitHostPort(g.Guest)
	if err != nil || net.ParseIP(host).To4() == nil || !strings.HasPrefix(host, "10.0.2.") || port == "" {
		return "", fmt.Errorf("GuestForward.Guest %q: want an IPv4 address:port on the user-mode network 10.0.2.0/24", g.Guest)
	}
	if len(g.Relay) == 0 {
		return "", fmt.Errorf("GuestForward %s: no relay command", g.Guest)
	}
	for _, a := range g.Relay {
		if a == "" || strings.ContainsAny(a, " \t,'\"\\") {
			return "", fmt.Errorf("GuestForward %s: relay argument %q has a space, comma, quote or backslash (or is empty): QEMU cannot pass it", g.Guest, a)
		}
	}
	return "guestfwd=tcp:" + g.Guest + "-cmd:" + strings.Join(g.Relay, " "), nil
}

// Relay copies between a guest connection (in, out: a relay command's standard input
// and output) and the service at dest, until both directions end or ctx does. dest is a
// unix socket's path, or "tcp:ADDR:PORT" for a TCP service on this machine's loopback
// (any other address is refused: a forward reaches this machine's services, nothing
// beyond it).
func Relay(ctx context.Context, dest string, in io.Reader, out io.Writer) error {
	network, addr := "unix", dest
	if a, ok := strings.CutPrefix(dest, "tcp:"); ok {
		host, _, err := net.SplitHostPort(a)
		if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
			return fmt.Errorf("relay destination %q: want tcp:LOOPBACK-ADDRESS:PORT", dest)
		}
		network, addr = "tcp", a
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	done := make(chan error, 1)
	go func() {
		_, err := io.Copy(conn, in)
		if cw, ok := conn.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite() // the guest is done sending: let the service see EOF
		}
		done <- err
	}()
	_, err = io.Copy(out, conn)
	if err != nil {
		return err
	}
	// The service closed its side; the guest's side ends with the relay process.
	return nil
}
