package main

import (
	"fmt"
	"io"
	"os"
	"strings"
)

// newMeter draws progress for long steps: a bar redrawn in place when w is a terminal,
// otherwise a plain line at every quarter.
func newMeter(w io.Writer) func(step string, done, total int64) {
	tty := false
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			tty = true
		}
	}
	last := map[string]int64{}
	return func(step string, done, total int64) {
		if total <= 0 {
			return
		}
		pct := done * 100 / total
		if tty {
			const width = 30
			n := int(pct * width / 100)
			fmt.Fprintf(w, "\r  %-22s [%s%s] %3d%%", step, strings.Repeat("#", n), strings.Repeat(".", width-n), pct)
			if done >= total {
				fmt.Fprintln(w)
			}
			return
		}
		if q, seen := last[step]; !seen || pct/25 > q/25 {
			fmt.Fprintf(w, "  %s: %d%%\n", step, pct)
			last[step] = pct
		}
	}
}
