package binaries

import (
	"sync"
	"time"
)

// HeartbeatInterval is how often Timed reports a step that is still running.
var HeartbeatInterval = 15 * time.Second

// Timed runs fn, the long step what, and reports it through progress (nil discards): a
// line "what ..." when it starts, "what: still running (45s)" every HeartbeatInterval
// while it runs, and "what: done in 2m10s" or "what: failed after 3.1s" when it ends. It
// returns fn's error.
func Timed(progress func(format string, args ...any), what string, fn func() error) error {
	if progress == nil {
		return fn()
	}
	start := time.Now()
	progress("%s ...", what)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(HeartbeatInterval)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				progress("%s: still running (%s)", what, roundElapsed(time.Since(start)))
			}
		}
	}()
	err := fn()
	close(stop)
	wg.Wait() // no heartbeat after the final line
	if err != nil {
		progress("%s: failed after %s", what, roundElapsed(time.Since(start)))
	} else {
		progress("%s: done in %s", what, roundElapsed(time.Since(start)))
	}
	return err
}

// roundElapsed keeps elapsed times readable: tenths of a second below a minute, whole
// seconds above.
func roundElapsed(d time.Duration) time.Duration {
	if d < time.Minute {
		return d.Round(100 * time.Millisecond)
	}
	return d.Round(time.Second)
}
