package disk

import (
	"runtime/debug"
	"sync"
)

// writerGCPercent is the GOGC the ext4 writer runs with. go-diskfs re-parses directories
// and bitmaps on every call and leaves gigabytes of short-lived garbage; with a base's
// contents live on the heap the default GOGC lets the heap grow by that much into fresh
// pages, whose first touch costs more here than collecting more often (measured: 2.2 s
// at 25, 2.9 s at 100, 6 s at 400 for the Debian root, 373 MB, 14,349 entries).
const writerGCPercent = 25

// The GC percentage is process-wide: lowGCPercent confines the change to the time an
// ext4 writer runs. Writers may overlap (nothing forbids two Builds in one process), so
// the first one in sets it and the last one out restores the value found before; a plain
// save-and-restore per call would, with overlapping calls, restore another call's 25.
var gcMu struct {
	sync.Mutex
	users int
	prev  int
}

// lowGCPercent sets the GC percentage for an ext4 write; call the returned function when
// the write ends.
func lowGCPercent() (restore func()) {
	gcMu.Lock()
	if gcMu.users == 0 {
		gcMu.prev = debug.SetGCPercent(writerGCPercent)
	}
	gcMu.users++
	gcMu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			gcMu.Lock()
			defer gcMu.Unlock()
			if gcMu.users--; gcMu.users == 0 {
				debug.SetGCPercent(gcMu.prev)
			}
		})
	}
}
