package pxe

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fileDisk is a Disk on a file that zeroes by writing zeros.
type fileDisk struct{ f *os.File }

func (d fileDisk) WriteAt(p []byte, off int64) (int, error) { return d.f.WriteAt(p, off) }
func (d fileDisk) Zero(off, n int64) error {
	_, err := d.f.WriteAt(make([]byte, n), off)
	return err
}

// sparseImage writes a 40 MiB file with data at a few places and holes elsewhere.
func sparseImage(t *testing.T) (string, []byte) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.raw")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const size = 40 << 20
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for i, off := range []int64{0, 1 << 20, 9<<20 + 512, 20 << 20, size - 4096} {
		chunk := bytes.Repeat([]byte{byte(i + 1)}, 4096*(i+1))
		if off == 20<<20 {
			chunk = bytes.Repeat([]byte("data"), 3<<20) // 12 MiB: several extents
		}
		if _, err := f.WriteAt(chunk[:min(int64(len(chunk)), size-off)], off); err != nil {
			t.Fatal(err)
		}
	}
	whole, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return p, whole
}

func TestSparseRoundTrip(t *testing.T) {
	p, whole := sparseImage(t)
	var stream bytes.Buffer
	if err := WriteSparse(&stream, p); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(stream.Bytes())
	want, size, err := StreamSHA256(p)
	if err != nil || want != hex.EncodeToString(sum[:]) || size != int64(len(whole)) {
		t.Fatalf("StreamSHA256: %s %d %v, want %x %d", want, size, err, sum, len(whole))
	}
	if stream.Len() >= len(whole)/2 {
		t.Errorf("stream %d bytes for a %d-byte image that is mostly holes", stream.Len(), len(whole))
	}
	t.Logf("image %d bytes, stream %d bytes", len(whole), stream.Len())

	receive := func(b []byte, want string) ([]byte, error) {
		out := filepath.Join(t.TempDir(), "target")
		// A used disk: old bytes everywhere, which the holes must not keep.
		if err := os.WriteFile(out, bytes.Repeat([]byte{0xaa}, len(whole)), 0o644); err != nil {
			t.Fatal(err)
		}
		f, err := os.OpenFile(out, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		r := bytes.NewReader(b)
		size, err := SparseHeader(r)
		if err != nil {
			return nil, err
		}
		var last int64
		err = ReadSparse(r, size, fileDisk{f}, want, func(done int64) {
			if done < last {
				t.Errorf("progress went back: %d after %d", done, last)
			}
			last = done
		})
		got, _ := os.ReadFile(out)
		return got, err
	}
	got2, err := receive(stream.Bytes(), want)
	if err != nil || !bytes.Equal(got2, whole) {
		t.Fatalf("round trip: %v, equal %v", err, bytes.Equal(got2, whole))
	}

	// A flipped byte, an extent moved (its record's offset: the data is intact but
	// lands elsewhere), a cut stream, a wrong hash, a wrong magic: refused.
	flipped := bytes.Clone(stream.Bytes())
	flipped[len(flipped)/2] ^= 1
	moved := bytes.Clone(stream.Bytes())
	moved[24+6] ^= 0x10 // the first extent's offset (bytes 24-31), by 4 KiB
	for name, c := range map[string]struct {
		b    []byte
		want string
		msg  string
	}{
		"flipped byte": {flipped, want, "corrupted"},
		"moved extent": {moved, want, "corrupted"},
		"cut short":    {stream.Bytes()[:stream.Len()-100], want, "cut short"},
		"wrong hash":   {stream.Bytes(), strings.Repeat("0", 64), "corrupted"},
		"not a stream": {[]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), want, "not an etcdbake sparse image"},
	} {
		if _, err := receive(c.b, c.want); err == nil || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: %v, want an error saying %q", name, err, c.msg)
		}
	}
}
