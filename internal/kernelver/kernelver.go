// Package kernelver orders Linux kernel version strings, so that every part of etcdbake
// that picks "the newest kernel" of a base (the disk image's ESP, the PXE installer)
// picks the same one. It imports nothing beyond the standard library: the installer's
// runtime (cmd/etcdbake-installer) depends on it through pxe.
package kernelver

import (
	"slices"
	"strings"
)

// Compare orders kernel version strings: runs of digits compare numerically,
// everything else bytewise, and a digit run sorts after a non-digit run
// ("6.1.0-28-cloud-amd64" > "6.1.0-9-cloud-amd64"). It returns -1, 0 or +1.
func Compare(a, b string) int {
	for a != "" && b != "" {
		da, db := isDigit(a[0]), isDigit(b[0])
		if da && db {
			na, ra := splitRun(a, true)
			nb, rb := splitRun(b, true)
			na2, nb2 := strings.TrimLeft(na, "0"), strings.TrimLeft(nb, "0")
			if len(na2) != len(nb2) {
				return cmpInt(len(na2), len(nb2))
			}
			if c := strings.Compare(na2, nb2); c != 0 {
				return c
			}
			a, b = ra, rb
			continue
		}
		if da != db {
			// digits sort after non-digits
			if da {
				return 1
			}
			return -1
		}
		sa, ra := splitRun(a, false)
		sb, rb := splitRun(b, false)
		if c := strings.Compare(sa, sb); c != 0 {
			return c
		}
		a, b = ra, rb
	}
	return cmpInt(len(a), len(b))
}

// SortNewestFirst sorts versions in place, newest first (see Compare).
func SortNewestFirst(versions []string) {
	slices.SortStableFunc(versions, func(a, b string) int { return Compare(b, a) })
}

// Newest returns the newest of versions for which usable is true (e.g. the kernel has a
// matching initrd), and false when there is none.
func Newest(versions []string, usable func(version string) bool) (string, bool) {
	vs := slices.Clone(versions)
	SortNewestFirst(vs)
	for _, v := range vs {
		if usable(v) {
			return v, true
		}
	}
	return "", false
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func splitRun(s string, digits bool) (string, string) {
	i := 0
	for i < len(s) && isDigit(s[i]) == digits {
		i++
	}
	return s[:i], s[i:]
}

func cmpInt(a, b int) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
