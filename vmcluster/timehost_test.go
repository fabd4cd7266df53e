package vmcluster

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"
)

// TestHubTimeHost talks to the hub's time host as a VM would: ARP for its address, then
// an NTP client query; the answer must be a valid NTPv4 server reply carrying the hub's
// clock plus the configured offset, addressed back to the asker.
func TestHubTimeHost(t *testing.T) {
	h := NewHub()
	defer h.Close()
	f, err := h.Attach("vm")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	server := netip.MustParseAddr("10.88.0.254")
	const offset = 90 * time.Minute
	h.ServeTime(server, offset)
	vmMAC := []byte{0x52, 0x54, 0, 0x88, 0, 0x11}
	vmIP := netip.MustParseAddr("10.88.0.11").As4()
	srvIP := server.As4()

	write := func(frame []byte) {
		if _, err := conn.Write(append(binary.BigEndian.AppendUint32(nil, uint32(len(frame))), frame...)); err != nil {
			t.Fatal(err)
		}
	}
	read := func() []byte {
		_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		var hdr [4]byte
		if _, err := io.ReadFull(conn, hdr[:]); err != nil {
			t.Fatalf("no reply: %v", err)
		}
		b := make([]byte, binary.BigEndian.Uint32(hdr[:]))
		if _, err := io.ReadFull(conn, b); err != nil {
			t.Fatal(err)
		}
		return b
	}

	// ARP: who has 10.88.0.254?
	arp := append(append([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, vmMAC...), 0x08, 0x06,
		0, 1, 0x08, 0, 6, 4, 0, 1)
	arp = append(append(append(append(arp, vmMAC...), vmIP[:]...), make([]byte, 6)...), srvIP[:]...)
	write(arp)
	r := read()
	if !bytes.Equal(r[0:6], vmMAC) || binary.BigEndian.Uint16(r[12:14]) != 0x0806 || binary.BigEndian.Uint16(r[20:22]) != 2 ||
		!bytes.Equal(r[22:28], timeHostMAC[:]) || !bytes.Equal(r[28:32], srvIP[:]) || !bytes.Equal(r[38:42], vmIP[:]) {
		t.Fatalf("bad ARP reply % x", r)
	}

	// NTP client query (mode 3) from port 40123 with a recognisable transmit timestamp.
	ntpReq := ntpQueryFrame(vmMAC, vmIP, srvIP)
	write(ntpReq)
	ntpReq = ntpReq[len(ntpReq)-48:]
	start := time.Now()
	r = read()
	if !bytes.Equal(r[0:6], vmMAC) || binary.BigEndian.Uint16(r[12:14]) != 0x0800 {
		t.Fatalf("reply not addressed to the VM: % x", r[:14])
	}
	ip := r[14:34]
	if ipChecksum(ip) != 0 || !bytes.Equal(ip[12:16], srvIP[:]) || !bytes.Equal(ip[16:20], vmIP[:]) || ip[9] != 17 {
		t.Fatalf("bad IP header % x", ip)
	}
	if binary.BigEndian.Uint16(r[34:36]) != 123 || binary.BigEndian.Uint16(r[36:38]) != 40123 {
		t.Fatalf("bad UDP ports % x", r[34:42])
	}
	ntp := r[42:]
	if ntp[0]&7 != 4 || ntp[0]>>3&7 != 4 || ntp[1] != 1 || ntp[0]>>6 == 3 {
		t.Fatalf("not a synchronised NTPv4 server reply: % x", ntp[:4])
	}
	if !bytes.Equal(ntp[24:32], ntpReq[40:48]) {
		t.Fatal("originate timestamp does not echo the client's transmit timestamp")
	}
	secs := int64(binary.BigEndian.Uint32(ntp[40:44])) - ntpEpochOffset
	got := time.Unix(secs, 0)
	want := start.Add(offset)
	if d := got.Sub(want); d < -2*time.Second || d > 2*time.Second {
		t.Fatalf("server time %s, want about %s", got, want)
	}
}

// TestHubDenyTime: a VM denied time gets no NTP answer (also after its port is replaced,
// as when it restarts), while ARP still works; allowed again, it gets one.
func TestHubDenyTime(t *testing.T) {
	h := NewHub()
	defer h.Close()
	server := netip.MustParseAddr("10.88.0.254")
	h.ServeTime(server, 0)
	h.DenyTime("vm", true)
	attach := func() net.Conn {
		f, err := h.Attach("vm")
		if err != nil {
			t.Fatal(err)
		}
		conn, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		return conn
	}
	vmMAC := []byte{0x52, 0x54, 0, 0x88, 0, 0x12}
	vmIP := netip.MustParseAddr("10.88.0.12").As4()
	srvIP := server.As4()
	ntpQuery := func() []byte {
		f := ntpQueryFrame(vmMAC, vmIP, srvIP)
		return append(binary.BigEndian.AppendUint32(nil, uint32(len(f))), f...)
	}
	answered := func(conn net.Conn) bool {
		if _, err := conn.Write(ntpQuery()); err != nil {
			t.Fatal(err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		var hdr [4]byte
		_, err := io.ReadFull(conn, hdr[:])
		return err == nil
	}

	c1 := attach()
	if answered(c1) {
		t.Fatal("a VM denied time got an NTP answer")
	}
	c1.Close()
	c2 := attach() // the VM restarted: still denied
	defer c2.Close()
	if answered(c2) {
		t.Fatal("a restarted VM denied time got an NTP answer")
	}
	if n := h.NTPDenied(); n != 2 {
		t.Errorf("NTPDenied = %d, want 2", n)
	}
	h.DenyTime("vm", false)
	if !answered(c2) {
		t.Fatal("no NTP answer after DenyTime(false)")
	}
}

// ntpQueryFrame is an Ethernet frame with an NTPv4 client query (mode 3) from the VM's
// UDP port 40123 to the time host, its transmit timestamp 01..08.
func ntpQueryFrame(vmMAC []byte, vmIP, srvIP [4]byte) []byte {
	ntpReq := make([]byte, 48)
	ntpReq[0] = 4<<3 | 3
	copy(ntpReq[40:48], []byte{1, 2, 3, 4, 5, 6, 7, 8})
	ipHdr := []byte{0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0}
	binary.BigEndian.PutUint16(ipHdr[2:4], 20+8+48)
	ipHdr = append(append(ipHdr, vmIP[:]...), srvIP[:]...)
	binary.BigEndian.PutUint16(ipHdr[10:12], ipChecksum(ipHdr))
	udp := []byte{0x9c, 0xbb, 0, 123, 0, 8 + 48, 0, 0}
	frame := append(append(append(append(append([]byte{}, timeHostMAC[:]...), vmMAC...), 0x08, 0x00), ipHdr...), udp...)
	return append(frame, ntpReq...)
}

// TestFreeHostAddr: the time host takes the highest free host address of the nodes'
// prefix, never the broadcast or network address, and a prefix without room is refused.
func TestFreeHostAddr(t *testing.T) {
	a := netip.MustParseAddr
	for _, tc := range []struct {
		prefix string
		used   []netip.Addr
		want   string // "" = error
	}{
		{"10.88.0.11/24", []netip.Addr{a("10.88.0.11"), a("10.88.0.12")}, "10.88.0.254"},
		{"10.88.0.11/24", []netip.Addr{a("10.88.0.254"), a("10.88.0.253")}, "10.88.0.252"},
		{"192.168.7.1/30", []netip.Addr{a("192.168.7.1")}, "192.168.7.2"},
		{"192.168.7.1/30", []netip.Addr{a("192.168.7.1"), a("192.168.7.2")}, ""},
		{"192.168.7.1/31", nil, ""},
		{"fd00::1/64", nil, ""},
	} {
		got, err := FreeHostAddr(netip.MustParsePrefix(tc.prefix), tc.used...)
		if tc.want == "" {
			if err == nil {
				t.Errorf("%s %v: %s, want an error", tc.prefix, tc.used, got)
			}
			continue
		}
		if err != nil || got != a(tc.want) {
			t.Errorf("%s %v: %s, %v; want %s", tc.prefix, tc.used, got, err, tc.want)
		}
	}
}
