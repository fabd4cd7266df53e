package vmcluster

import (
	"bufio"
	"context"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestGuestForwardOption: a forward becomes QEMU's guestfwd=...-cmd: option on the
// user-mode NIC (which keeps restrict=on); addresses off 10.0.2.0/24 and relay arguments
// QEMU cannot pass are refused, naming the field.
func TestGuestForwardOption(t *testing.T) {
	o := ClusterOptions{Images: map[string]string{"etcd-1": "etcd-1.raw"}, MACs: map[string]string{"etcd-1": "52:54:00:88:00:11"},
		Dir: t.TempDir(), ClientPort: 12379, PeerPort: 12380,
		GuestForwards: []GuestForward{{Guest: "10.0.2.100:8443", Relay: []string{"/opt/x/etcdbake", "qemu-relay", "/run/x/release.sock"}}}}
	c, err := newCluster(o)
	if err != nil {
		t.Fatal(err)
	}
	var user string
	for _, a := range c.qemuArgs(c.nodes["etcd-1"], &VM{Name: "etcd-1", Console: "con", qmpPath: "qmp", qgaPath: "qga"}) {
		if strings.HasPrefix(a, "user,") {
			user = a
		}
	}
	if !strings.Contains(user, ",guestfwd=tcp:10.0.2.100:8443-cmd:/opt/x/etcdbake qemu-relay /run/x/release.sock") || !strings.Contains(user, "restrict=on") {
		t.Errorf("user-mode NIC: %s", user)
	}
	for _, bad := range []GuestForward{
		{Guest: "127.0.0.1:8443", Relay: []string{"/bin/relay"}},
		{Guest: "10.0.2.100", Relay: []string{"/bin/relay"}},
		{Guest: "10.0.2.100:8443"},
		{Guest: "10.0.2.100:8443", Relay: []string{"/bin/relay", "a,b"}},
		{Guest: "10.0.2.100:8443", Relay: []string{"/my dir/relay"}},
	} {
		o.GuestForwards = []GuestForward{bad}
		if _, err := newCluster(o); err == nil || !strings.Contains(err.Error(), "ClusterOptions.GuestForward") {
			t.Errorf("%+v: %v, want refused naming ClusterOptions.GuestForward", bad, err)
		}
	}
}

// TestRelay: what the guest sends reaches the service (a unix socket, or a TCP port on
// loopback), its answer comes back, and the relay ends when the service closes the
// connection. A destination off loopback is refused.
func TestRelay(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "svc.sock")
	unixLn, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer unixLn.Close()
	tcpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcpLn.Close()
	for dest, ln := range map[string]net.Listener{sock: unixLn, "tcp:" + tcpLn.Addr().String(): tcpLn} {
		go func() {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			line, _ := bufio.NewReader(conn).ReadString('\n')
			io.WriteString(conn, "echo: "+line)
			conn.Close()
		}()
		inR, inW := io.Pipe()
		var out strings.Builder
		done := make(chan error, 1)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		go func() { done <- Relay(ctx, dest, inR, &out) }()
		io.WriteString(inW, "hello\n")
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("%s: %v", dest, err)
			}
		case <-ctx.Done():
			t.Fatalf("%s: the relay did not end when the service closed", dest)
		}
		if out.String() != "echo: hello\n" {
			t.Errorf("%s: relayed answer %q", dest, out.String())
		}
	}
	ctx := context.Background()
	if err := Relay(ctx, filepath.Join(t.TempDir(), "none.sock"), strings.NewReader(""), io.Discard); err == nil {
		t.Error("a relay to a missing socket succeeded")
	}
	for _, bad := range []string{"tcp:192.0.2.1:80", "tcp:example.com:80", "tcp:127.0.0.1"} {
		if err := Relay(ctx, bad, strings.NewReader(""), io.Discard); err == nil || !strings.Contains(err.Error(), "LOOPBACK") {
			t.Errorf("relay to %s: %v, want a refusal", bad, err)
		}
	}
}
