package pki

import (
	"fmt"
	"os"
	"testing"
)

// TestSerials: a set's serials are each node certificate's, as crypto/x509 reads the
// file; re-issuing one certificate changes its serial and no other.
func TestSerials(t *testing.T) {
	c := example(t)
	dir := t.TempDir()
	ensure(t, c, dir, t0)
	read := func() map[string]map[string]string {
		set, err := Load(c, dir)
		if err != nil {
			t.Fatal(err)
		}
		s, err := set.Serials()
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	before := read()
	seen := map[string]bool{}
	for _, n := range c.Nodes {
		for _, kind := range NodeKinds {
			crt, _ := NodeCertPath(dir, n.Name, kind)
			b, _ := os.ReadFile(crt)
			cert, err := ParseCert(b)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := before[n.Name][kind], fmt.Sprintf("%x", cert.SerialNumber); got != want || got == "" || seen[got] {
				t.Errorf("%s %s: serial %q, the file's %q (or repeated)", n.Name, kind, got, want)
			}
			seen[before[n.Name][kind]] = true
		}
	}
	crt, key := NodeCertPath(dir, "etcd-2", KindServer)
	os.Remove(crt)
	os.Remove(key)
	ensure(t, c, dir, t0)
	after := read()
	for _, n := range c.Nodes {
		for _, kind := range NodeKinds {
			changed := after[n.Name][kind] != before[n.Name][kind]
			if changed != (n.Name == "etcd-2" && kind == KindServer) {
				t.Errorf("%s %s: serial %s -> %s", n.Name, kind, before[n.Name][kind], after[n.Name][kind])
			}
		}
	}
}
