package vmcluster

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"
)

// The hub's own address on the segment when it serves time (locally administered MAC).
var timeHostMAC = [6]byte{0x02, 0x00, 0x00, 0xe7, 0xcd, 0x01}

// ntpEpochOffset is the number of seconds from 1900 (NTP) to 1970 (Unix).
const ntpEpochOffset = 2208988800

// ServeTime makes the hub answer, as a host on the segment with address ip, ARP requests
// for ip and NTP queries (UDP port 123) sent to it, with this machine's clock plus offset.
// VMs then have a time source without any route off the machine (chrony and
// etcd-firstboot's time gate query it like any NTP server). An offset lets tests skew
// the cluster's reference clock.
func (h *Hub) ServeTime(ip netip.Addr, offset time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.timeIP, h.timeOffset = ip, offset
}

// DenyTime makes the time host ignore (deny true) or answer again (false) the NTP queries
// of the named VM, which then has no reachable time source while the others keep theirs.
// It holds across restarts of that VM until changed.
func (h *Hub) DenyTime(name string, deny bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if deny {
		h.noTime[name] = true
	} else {
		delete(h.noTime, name)
	}
}

// NTPDenied is how many NTP queries DenyTime has left unanswered.
func (h *Hub) NTPDenied() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.ntpDenied
}

// TimeServer is the address ServeTime answers on (invalid when it does not).
func (h *Hub) TimeServer() netip.Addr {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.timeIP
}

// FreeHostAddr picks an address for the time host (ClusterOptions.TimeServer) on the
// nodes' segment: the highest host address of prefix (an IPv4 prefix with room for at
// least two hosts) that none of used takes, below the broadcast address.
func FreeHostAddr(prefix netip.Prefix, used ...netip.Addr) (netip.Addr, error) {
	p := prefix.Masked()
	bits := p.Addr().BitLen() - p.Bits()
	if !p.Addr().Is4() || bits < 2 {
		return netip.Addr{}, fmt.Errorf("%s: the time host needs an IPv4 prefix with room for it next to the nodes", prefix)
	}
	taken := map[netip.Addr]bool{}
	for _, a := range used {
		taken[a] = true
	}
	first := binary.BigEndian.Uint32(p.Addr().AsSlice())
	last := first | (1<<bits - 1) // the broadcast address
	for cand := last - 1; cand > first; cand-- {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], cand)
		if ip := netip.AddrFrom4(b); !taken[ip] {
			return ip, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("no free address in %s for the time host", p)
}

// answerLocal handles a frame addressed to the hub's time host; it reports whether the
// frame was for the time host only (and so is not switched further). Called with h.mu held.
func (h *Hub) answerLocal(src *hubPort, frame []byte) (reply []byte, consumed bool) {
	if !h.timeIP.IsValid() || len(frame) < 14 {
		return nil, false
	}
	ip := h.timeIP.As4()
	switch binary.BigEndian.Uint16(frame[12:14]) {
	case 0x0806: // ARP
		a := frame[14:]
		if len(a) < 28 || binary.BigEndian.Uint16(a[6:8]) != 1 || [4]byte(a[24:28]) != ip {
			return nil, false
		}
		r := make([]byte, 14+28)
		copy(r[0:6], a[8:14]) // to the requester
		copy(r[6:12], timeHostMAC[:])
		binary.BigEndian.PutUint16(r[12:14], 0x0806)
		ra := r[14:]
		binary.BigEndian.PutUint16(ra[0:2], 1)      // Ethernet
		binary.BigEndian.PutUint16(ra[2:4], 0x0800) // IPv4
		ra[4], ra[5] = 6, 4
		binary.BigEndian.PutUint16(ra[6:8], 2) // reply
		copy(ra[8:14], timeHostMAC[:])
		copy(ra[14:18], ip[:])
		copy(ra[18:24], a[8:14])
		copy(ra[24:28], a[14:18])
		return r, false // broadcast requests still reach the other VMs
	case 0x0800: // IPv4
		p := frame[14:]
		if len(p) < 20 || p[0]>>4 != 4 || p[9] != 17 || [4]byte(p[16:20]) != ip {
			return nil, false
		}
		ihl := int(p[0]&0x0f) * 4
		if len(p) < ihl+8+48 || binary.BigEndian.Uint16(p[ihl+2:ihl+4]) != 123 {
			return nil, true // for the time host but not NTP: nothing else listens
		}
		req := p[ihl+8:]
		if req[0]&0x07 != 3 { // client mode only
			return nil, true
		}
		if h.noTime[src.name] {
			h.ntpDenied++
			return nil, true
		}
		now := time.Now().Add(h.timeOffset)
		ntp := make([]byte, 48)
		ntp[0] = 0<<6 | 4<<3 | 4                     // no leap warning, version 4, server
		ntp[1] = 1                                   // stratum 1
		ntp[2] = req[2]                              // poll
		ntp[3] = 0xec                                // precision 2^-20
		binary.BigEndian.PutUint32(ntp[8:12], 1<<10) // root dispersion ~16 ms
		copy(ntp[12:16], "LOCL")
		putNTPTime(ntp[16:24], now)  // reference
		copy(ntp[24:32], req[40:48]) // originate = client's transmit
		putNTPTime(ntp[32:40], now)  // receive
		putNTPTime(ntp[40:48], now)  // transmit

		r := make([]byte, 14+20+8+48)
		copy(r[0:6], frame[6:12])
		copy(r[6:12], timeHostMAC[:])
		binary.BigEndian.PutUint16(r[12:14], 0x0800)
		ipr := r[14:34]
		ipr[0], ipr[8], ipr[9] = 0x45, 64, 17
		binary.BigEndian.PutUint16(ipr[2:4], uint16(20+8+48))
		copy(ipr[12:16], ip[:])
		copy(ipr[16:20], p[12:16])
		binary.BigEndian.PutUint16(ipr[10:12], ipChecksum(ipr))
		udp := r[34:42]
		binary.BigEndian.PutUint16(udp[0:2], 123)
		copy(udp[2:4], p[ihl:ihl+2]) // to the client's port
		binary.BigEndian.PutUint16(udp[4:6], 8+48)
		// UDP checksum 0: allowed over IPv4.
		copy(r[42:], ntp)
		return r, true
	}
	return nil, false
}

func putNTPTime(b []byte, t time.Time) {
	secs := uint64(t.Unix()) + ntpEpochOffset
	frac := uint64(t.Nanosecond()) << 32 / 1e9
	binary.BigEndian.PutUint32(b[0:4], uint32(secs))
	binary.BigEndian.PutUint32(b[4:8], uint32(frac))
}

func ipChecksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(h); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i : i+2]))
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}
