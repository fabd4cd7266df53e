package main

import (
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{
		"1073741824": 1 << 30,
		"8GiB":       8 << 30,
		"8G":         8 << 30,
		"8g":         8 << 30,
		"8 GiB":      8 << 30,
		"512MiB":     512 << 20,
		"512M":       512 << 20,
		"1.5GiB":     3 << 29,
		"8GB":        8e9,
		"2T":         2 << 40,
	} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "GiB", "8parsecs", "-8GiB", "eight"} {
		if _, err := parseSize(in); err == nil || !strings.Contains(err.Error(), "is not a size") {
			t.Errorf("parseSize(%q): %v, want a not-a-size error", in, err)
		}
	}
	for n, want := range map[int64]string{1 << 30: "1GiB", 1536 << 20: "1536MiB", 1000: "1000", 0: "0"} {
		if got := formatSize(n); got != want {
			t.Errorf("formatSize(%d) = %q, want %q", n, got, want)
		}
	}
}
