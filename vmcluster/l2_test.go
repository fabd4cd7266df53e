package vmcluster

import (
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"
)

// TestHub checks the L2 hub without QEMU: frames reach the other ports (broadcast first,
// then only the learned port), never their sender, and a cut link drops both ways.
func TestHub(t *testing.T) {
	h := NewHub()
	defer h.Close()
	ends := map[string]net.Conn{}
	for _, n := range []string{"a", "b", "c"} {
		f, err := h.Attach(n)
		if err != nil {
			t.Fatal(err)
		}
		conn, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ends[n] = conn
	}
	mac := func(b byte) []byte { return []byte{0x52, 0x54, 0, 0, 0, b} }
	send := func(from string, dst, src []byte, payload string) {
		frame := append(append(append([]byte{}, dst...), src...), append([]byte{0x08, 0x00}, payload...)...)
		pkt := binary.BigEndian.AppendUint32(nil, uint32(len(frame)))
		if _, err := ends[from].Write(append(pkt, frame...)); err != nil {
			t.Fatal(err)
		}
	}
	recv := func(at string) string {
		_ = ends[at].SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		var hdr [4]byte
		if _, err := io.ReadFull(ends[at], hdr[:]); err != nil {
			return ""
		}
		b := make([]byte, binary.BigEndian.Uint32(hdr[:]))
		if _, err := io.ReadFull(ends[at], b); err != nil {
			t.Fatal(err)
		}
		return string(b[14:])
	}
	bcast := []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	send("a", bcast, mac(1), "hello")
	if recv("b") != "hello" || recv("c") != "hello" || recv("a") != "" {
		t.Fatal("broadcast not delivered to exactly the other ports")
	}
	send("b", mac(1), mac(2), "to-a") // a's MAC was learned
	if recv("a") != "to-a" || recv("c") != "" {
		t.Fatal("unicast to a learned MAC went elsewhere")
	}
	send("a", mac(9), mac(1), "unknown") // unknown unicast floods
	if recv("b") != "unknown" || recv("c") != "unknown" {
		t.Fatal("unknown unicast not flooded")
	}
	if err := h.CutLink("c"); err != nil {
		t.Fatal(err)
	}
	send("a", bcast, mac(1), "cut1")
	send("c", bcast, mac(3), "cut2")
	if recv("b") != "cut1" || recv("c") != "" || recv("a") != "" || recv("b") != "" {
		t.Fatal("a cut link still carries frames")
	}
	if err := h.RestoreLink("c"); err != nil {
		t.Fatal(err)
	}
	send("c", bcast, mac(3), "back")
	if recv("a") != "back" || recv("b") != "back" {
		t.Fatal("a restored link carries no frames")
	}
	if _, dropped := h.Stats(); dropped != 2 { // cut1 to c, cut2 from c
		t.Errorf("dropped %d frames, want 2", dropped)
	}
}
