package vmcluster

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"
)

// Hub is a private Ethernet segment for VMs on this machine: a learning switch in the
// test process. Each VM's NIC is one end of a socketpair (QEMU `-netdev stream` on an
// inherited fd); nothing reaches a real interface, no port or path is used, and parallel
// runs cannot see each other. Frames on the stream are a 4-byte big-endian length
// followed by the Ethernet frame.
type Hub struct {
	mu    sync.Mutex
	ports map[string]*hubPort
	macs  map[[6]byte]string // learned source MAC -> port name
	// Stats, for tests.
	forwarded, dropped uint64
	// The time host (ServeTime): its address and the offset it adds to this clock.
	timeIP     netip.Addr
	timeOffset time.Duration
	noTime     map[string]bool // ports whose NTP queries go unanswered (DenyTime)
	ntpDenied  uint64
}

type hubPort struct {
	name string
	conn net.Conn
	out  chan []byte
	cut  bool
	done chan struct{}
}

// maxFrame bounds a frame read from QEMU (virtio-net without offloads: 1514 bytes; allow
// for jumbo or GSO frames).
const maxFrame = 1 << 16

// NewHub returns an empty hub.
func NewHub() *Hub {
	return &Hub{ports: map[string]*hubPort{}, macs: map[[6]byte]string{}, noTime: map[string]bool{}}
}

// Attach creates the named port and returns QEMU's end of it, to pass to the child as an
// inherited file (cmd.ExtraFiles) and close in the parent after Start. Attaching a name
// again (a restarted VM) replaces the old port, keeping its link state (cut or not).
func (h *Hub) Attach(name string) (*os.File, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("l2 socketpair for %s: %w", name, err)
	}
	mine := os.NewFile(uintptr(fds[0]), "l2-hub-"+name)
	child := os.NewFile(uintptr(fds[1]), "l2-vm-"+name)
	conn, err := net.FileConn(mine) // dups the fd
	mine.Close()
	if err != nil {
		child.Close()
		return nil, fmt.Errorf("l2 port for %s: %w", name, err)
	}
	p := &hubPort{name: name, conn: conn, out: make(chan []byte, 512), done: make(chan struct{})}
	h.mu.Lock()
	if old := h.ports[name]; old != nil {
		p.cut = old.cut
		old.close()
	}
	h.ports[name] = p
	h.mu.Unlock()
	go h.readLoop(p)
	go p.writeLoop()
	return child, nil
}

// Detach removes a port (its VM is gone).
func (h *Hub) Detach(name string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if p := h.ports[name]; p != nil {
		p.close()
		delete(h.ports, name)
	}
}

// CutLink drops every frame from and to the named VM, as if its cable were pulled (the
// guest keeps carrier; only traffic stops).
func (h *Hub) CutLink(name string) error { return h.setCut(name, true) }

// RestoreLink undoes CutLink.
func (h *Hub) RestoreLink(name string) error { return h.setCut(name, false) }

func (h *Hub) setCut(name string, cut bool) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	p := h.ports[name]
	if p == nil {
		return fmt.Errorf("l2 hub: no port %q", name)
	}
	p.cut = cut
	return nil
}

// Close stops the hub and closes every port.
func (h *Hub) Close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for n, p := range h.ports {
		p.close()
		delete(h.ports, n)
	}
}

// Stats returns how many frames were delivered to a port and how many were dropped (cut
// links, full queues).
func (h *Hub) Stats() (forwarded, dropped uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.forwarded, h.dropped
}

func (p *hubPort) close() {
	select {
	case <-p.done:
	default:
		close(p.done)
		p.conn.Close()
	}
}

func (p *hubPort) writeLoop() {
	for {
		select {
		case <-p.done:
			return
		case f := <-p.out:
			if _, err := p.conn.Write(f); err != nil {
				return
			}
		}
	}
}

func (h *Hub) readLoop(p *hubPort) {
	var hdr [4]byte
	for {
		if _, err := io.ReadFull(p.conn, hdr[:]); err != nil {
			return
		}
		n := binary.BigEndian.Uint32(hdr[:])
		if n > maxFrame {
			return // the stream is out of step; give up on this port
		}
		buf := make([]byte, 4+n)
		copy(buf, hdr[:])
		if _, err := io.ReadFull(p.conn, buf[4:]); err != nil {
			return
		}
		h.forward(p, buf)
	}
}

// forward delivers one framed packet (length prefix included) from port src.
func (h *Hub) forward(src *hubPort, pkt []byte) {
	frame := pkt[4:]
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ports[src.name] != src { // a replaced port still draining
		return
	}
	if src.cut || len(frame) < 14 {
		h.dropped++
		return
	}
	var dst, srcMAC [6]byte
	copy(dst[:], frame[0:6])
	copy(srcMAC[:], frame[6:12])
	if srcMAC[0]&1 == 0 {
		h.macs[srcMAC] = src.name
	}
	if reply, consumed := h.answerLocal(src, frame); reply != nil || consumed {
		if reply != nil {
			framed := make([]byte, 4+len(reply))
			binary.BigEndian.PutUint32(framed, uint32(len(reply)))
			copy(framed[4:], reply)
			select {
			case src.out <- framed:
				h.forwarded++
			default:
				h.dropped++
			}
		}
		if consumed {
			return
		}
	}
	send := func(p *hubPort) {
		if p.cut {
			h.dropped++
			return
		}
		select {
		case p.out <- pkt:
			h.forwarded++
		default:
			h.dropped++
		}
	}
	if dst[0]&1 == 0 { // unicast
		if name, ok := h.macs[dst]; ok {
			if p := h.ports[name]; p != nil && p != src {
				send(p)
				return
			}
			if name == src.name {
				return
			}
		}
	}
	for _, p := range h.ports {
		if p != src {
			send(p)
		}
	}
}
