// Command etcdbake turns one cluster spec into everything a production etcd + flannel
// cluster needs: PKI, per-node Ignition configs, verified binaries, and cluster status.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/etcdbake/etcdbake/ignition"
	"github.com/etcdbake/etcdbake/spec"
)

// version is etcdbake's (and the etcd-firstboot it builds) version; set with
// -ldflags "-X main.version=...".
var version = "dev"

// exitError carries a specific exit code with a message already printed (or none).
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

func main() {
	// Every long step (fetch builds, the base, image writing, qemu-img, up) runs under this
	// context: the first Ctrl-C or SIGTERM cancels it and the step cleans up after itself;
	// a second one kills the process at once (the handler is gone by then).
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() { <-ctx.Done(); stop() }()
	cmd := newRootCmd()
	err := cmd.ExecuteContext(ctx)
	stop()
	if err != nil && ctx.Err() != nil && errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "etcdbake: interrupted")
		os.Exit(130)
	}
	if err != nil {
		var ee *exitError
		var inv *spec.InvalidError
		var frag *ignition.FragmentError
		switch {
		case errors.As(err, &ee):
			if ee.msg != "" {
				fmt.Fprintln(os.Stderr, "etcdbake:", ee.msg)
			}
			os.Exit(ee.code)
		case errors.As(err, &inv):
			fmt.Fprintln(os.Stderr, "etcdbake:", inv.Error())
			os.Exit(2)
		case errors.As(err, &frag): // the user's Butane fragment, like a spec error
			fmt.Fprintln(os.Stderr, "etcdbake:", frag.Error())
			os.Exit(2)
		default:
			fmt.Fprintln(os.Stderr, "etcdbake:", err)
			os.Exit(1)
		}
	}
}
