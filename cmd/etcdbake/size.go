package main

import (
	"fmt"
	"math"
	"strings"

	"github.com/dustin/go-humanize"
)

// Sizes on the command line (--data-size) take units: 8GiB, 512MiB, 1.5GiB, plain bytes.
// A bare K, M, G or T is binary, as in qemu-img and truncate (8G = 8GiB); KB, MB, GB, TB
// are powers of 1000. go-humanize parses; parseSize is the one place that calls it.

const mib = 1 << 20

// sizeHelp is how a size is written, for flag usage and errors.
const sizeHelp = "bytes or a number with a unit: 512MiB, 8GiB, 8G (= 8GiB), 8GB (= 8×10⁹)"

// parseSize parses a size with an optional unit.
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	if n := len(t); n >= 2 && strings.ContainsRune("kKmMgGtT", rune(t[n-1])) && strings.ContainsRune("0123456789. ", rune(t[n-2])) {
		t += "iB" // a bare K/M/G/T is binary
	}
	v, err := humanize.ParseBytes(t)
	if err != nil || t == "" || strings.HasPrefix(t, "-") {
		return 0, fmt.Errorf("%q is not a size: give %s", s, sizeHelp)
	}
	if v > math.MaxInt64 {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return int64(v), nil
}

// formatSize writes n in the largest binary unit that divides it.
func formatSize(n int64) string {
	for _, u := range []struct {
		unit string
		size int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n != 0 && n%u.size == 0 {
			return fmt.Sprintf("%d%s", n/u.size, u.unit)
		}
	}
	return fmt.Sprint(n)
}

// partitionSize is a pflag.Value for a partition size: a whole number of MiB (partitions
// are MiB-aligned) of at least min.
type partitionSize struct {
	p   *int64
	min int64
}

func newPartitionSize(p *int64, def, min int64) *partitionSize {
	*p = def
	return &partitionSize{p: p, min: min}
}

func (s *partitionSize) Set(v string) error {
	n, err := parseSize(v)
	if err != nil {
		return err
	}
	switch {
	case n < s.min:
		return fmt.Errorf("%s is less than the minimum of %s", v, formatSize(s.min))
	case n%mib != 0:
		return fmt.Errorf("%s is %d bytes, not a whole number of MiB (partitions are MiB-aligned): use e.g. %s", v, n, formatSize((n+mib-1)/mib*mib))
	}
	*s.p = n
	return nil
}

func (s *partitionSize) String() string { return formatSize(*s.p) }
func (s *partitionSize) Type() string   { return "size" }
