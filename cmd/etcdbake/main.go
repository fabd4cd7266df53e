// Command etcdbake turns one cluster spec into everything a production etcd + flannel
// cluster needs: PKI, per-node Ignition configs, verified binaries, and cluster status.
package main

import (
	"errors"
	"fmt"
	"os"

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
	cmd := newRootCmd()
	if err := cmd.Execute(); err != nil {
		var ee *exitError
		var inv *spec.InvalidError
		switch {
		case errors.As(err, &ee):
			if ee.msg != "" {
				fmt.Fprintln(os.Stderr, "etcdbake:", ee.msg)
			}
			os.Exit(ee.code)
		case errors.As(err, &inv):
			fmt.Fprintln(os.Stderr, "etcdbake:", inv.Error())
			os.Exit(2)
		default:
			fmt.Fprintln(os.Stderr, "etcdbake:", err)
			os.Exit(1)
		}
	}
}
