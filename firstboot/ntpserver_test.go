package firstboot

import (
	"encoding/binary"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// ntpServer is a small real NTPv4 server on 127.0.0.1 for tests: it answers client
// requests with the real time plus a configurable offset, as a synchronised stratum-2
// server would.
type ntpServer struct {
	conn    *net.UDPConn
	offset  atomic.Int64 // added to the real time, in nanoseconds
	leap    atomic.Uint32
	queries atomic.Int64
}

// ntpEpochOffset is the number of seconds from 1900-01-01 (NTP era 0) to 1970-01-01.
const ntpEpochOffset = 2208988800

func startNTPServer(t testing.TB, offset time.Duration) *ntpServer {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatalf("ntp server: %v", err)
	}
	s := &ntpServer{conn: c}
	s.offset.Store(int64(offset))
	t.Cleanup(func() { c.Close() })
	go s.serve()
	return s
}

// Addr is host:port of the server.
func (s *ntpServer) Addr() string { return s.conn.LocalAddr().String() }

// SetOffset moves the server's clock against the real time.
func (s *ntpServer) SetOffset(d time.Duration) { s.offset.Store(int64(d)) }

// SetUnsynchronised makes the server answer with leap indicator 3 (clock not
// synchronised), which clients must not use.
func (s *ntpServer) SetUnsynchronised() { s.leap.Store(3) }

// Queries is the number of client requests answered.
func (s *ntpServer) Queries() int64 { return s.queries.Load() }

func (s *ntpServer) now() time.Time { return time.Now().Add(time.Duration(s.offset.Load())) }

// putTimestamp writes t as a 64-bit NTP timestamp (era 0: seconds since 1900, 32-bit fraction).
func putTimestamp(b []byte, t time.Time) {
	frac := uint64(t.Nanosecond()) << 32 / uint64(time.Second)
	binary.BigEndian.PutUint64(b, uint64(t.Unix()+ntpEpochOffset)<<32|frac)
}

func (s *ntpServer) serve() {
	buf := make([]byte, 1024)
	for {
		n, from, err := s.conn.ReadFromUDP(buf)
		if err != nil {
			return // closed
		}
		// An NTPv3/v4 client request: 48 bytes or more, mode 3.
		if n < 48 || buf[0]&0x07 != 3 {
			continue
		}
		s.queries.Add(1)
		_, _ = s.conn.WriteToUDP(s.response(buf[:n], s.now()), from)
	}
}

// response builds the 48-byte server reply to req, with the receive and transmit
// timestamps at recv.
func (s *ntpServer) response(req []byte, recv time.Time) []byte {
	r := make([]byte, 48)
	version := (req[0] >> 3) & 0x07
	r[0] = byte(s.leap.Load())<<6 | version<<3 | 4  // leap, version, mode 4 (server)
	r[1] = 2                                        // stratum 2: synchronised to an upstream server
	r[2] = 6                                        // poll 2^6 s
	r[3] = 0xec                                     // precision 2^-20 s
	binary.BigEndian.PutUint32(r[4:], 0x0000_0100)  // root delay ~4ms
	binary.BigEndian.PutUint32(r[8:], 0x0000_0100)  // root dispersion ~4ms
	copy(r[12:16], net.IPv4(127, 127, 1, 0).To4())  // reference ID
	putTimestamp(r[16:], recv.Add(-16*time.Second)) // reference time: last update
	copy(r[24:32], req[40:48])                      // origin = the client's transmit field
	putTimestamp(r[32:], recv)                      // receive
	putTimestamp(r[40:], s.now())                   // transmit
	return r
}
