package kernelver

import (
	"slices"
	"testing"
)

func TestCompare(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want int
	}{
		{"6.1.0-28-cloud-amd64", "6.1.0-9-cloud-amd64", 1},
		{"6.1.0-9-cloud-amd64", "6.1.0-28-cloud-amd64", -1},
		{"6.10.0-1-amd64", "6.9.0-1-amd64", 1},
		{"6.10.0-1", "6.9.12-1", 1},
		{"6.1.0-09", "6.1.0-9", 0},
		{"6.1.0-9", "6.1.0-9", 0},
		{"6.1.0-9-amd64", "6.1.0-9", 1},
	} {
		if got := Compare(c.a, c.b); got != c.want {
			t.Errorf("Compare(%q, %q) = %d, want %d", c.a, c.b, got, c.want)
		}
	}
}

func TestNewest(t *testing.T) {
	vs := []string{"6.1.0-9-cloud-amd64", "6.1.0-28-cloud-amd64", "6.1.0-10-cloud-amd64", "6.2.0-1-cloud-amd64"}
	withInitrd := map[string]bool{"6.1.0-9-cloud-amd64": true, "6.1.0-28-cloud-amd64": true, "6.1.0-10-cloud-amd64": true}
	v, ok := Newest(vs, func(v string) bool { return withInitrd[v] })
	if !ok || v != "6.1.0-28-cloud-amd64" {
		t.Errorf("Newest = %q %v, want 6.1.0-28-cloud-amd64 (6.2.0-1 has no initrd)", v, ok)
	}
	if !slices.Equal(vs, []string{"6.1.0-9-cloud-amd64", "6.1.0-28-cloud-amd64", "6.1.0-10-cloud-amd64", "6.2.0-1-cloud-amd64"}) {
		t.Errorf("Newest reordered its argument: %v", vs)
	}
	if _, ok := Newest(vs, func(string) bool { return false }); ok {
		t.Error("Newest found a usable version where none is")
	}
}
