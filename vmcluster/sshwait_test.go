package vmcluster

import (
	"context"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestWaitSSH: connections closed without a greeting (a forward whose guest does not
// listen yet) are retried until a server sends its banner; notify is called once. A
// server that never greets ends the wait with ctx's deadline and names the address.
func TestWaitSSH(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var accepted atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if accepted.Add(1) > 2 {
				c.Write([]byte("SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"))
			}
			c.Close()
		}
	}()
	notes := 0
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := WaitSSH(ctx, ln.Addr().String(), func(error) { notes++ }); err != nil {
		t.Fatal(err)
	}
	if notes != 1 || accepted.Load() != 3 {
		t.Errorf("notify called %d times, %d connections; want 1 and 3", notes, accepted.Load())
	}

	// A listener that accepts and says nothing.
	mute, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer mute.Close()
	go func() {
		for {
			c, err := mute.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	ctx2, cancel2 := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel2()
	err = WaitSSH(ctx2, mute.Addr().String(), nil)
	if err == nil || !strings.Contains(err.Error(), mute.Addr().String()) {
		t.Fatalf("a server that never greets: %v", err)
	}
}
