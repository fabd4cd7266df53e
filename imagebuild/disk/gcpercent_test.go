package disk

import (
	"runtime/debug"
	"testing"
)

// TestLowGCPercentOverlapping: overlapping writers leave the process's GC percentage as
// it was before the first one, whichever ends first.
func TestLowGCPercentOverlapping(t *testing.T) {
	orig := debug.SetGCPercent(137)
	defer debug.SetGCPercent(orig)
	a := lowGCPercent()
	if got := debug.SetGCPercent(writerGCPercent); got != writerGCPercent {
		t.Errorf("during a write: GC percent %d, want %d", got, writerGCPercent)
	}
	b := lowGCPercent()
	a()
	if got := debug.SetGCPercent(writerGCPercent); got != writerGCPercent {
		t.Errorf("while a second write runs: GC percent %d, want %d", got, writerGCPercent)
	}
	b()
	b() // a second call changes nothing
	if got := debug.SetGCPercent(137); got != 137 {
		t.Errorf("after both writes: GC percent %d, want 137 (the value before)", got)
	}
}
