package vmcluster

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strings"
	"time"
)

// WaitSSH waits until an SSH server greets on addr with its "SSH-" banner. A node's SSH
// forward accepts connections as soon as its QEMU runs and resets them while the guest's
// sshd is not listening yet, which on a first boot is after etcd is healthy (sshd starts
// after its host keys are made). notify, if not nil, is called once, after the first
// attempt failed, with that attempt's error.
func WaitSSH(ctx context.Context, addr string, notify func(error)) error {
	notified := false
	for {
		err := sshBanner(ctx, addr)
		if err == nil {
			return nil
		}
		if !notified && notify != nil {
			notify(err)
			notified = true
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no SSH server greeted on %s: %w", addr, err)
		case <-time.After(time.Second):
		}
	}
}

// sshBanner connects to addr and reads the server's first line.
func sshBanner(ctx context.Context, addr string) error {
	actx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(actx, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	stop := context.AfterFunc(actx, func() { conn.SetReadDeadline(time.Now()) })
	defer stop()
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "SSH-") {
		return fmt.Errorf("%s answered %q, not an SSH banner", addr, strings.TrimSpace(line))
	}
	return nil
}
