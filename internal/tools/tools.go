//go:build tools

// Package tools pins modules the build and tests use before code imports them.
package tools

import (
	_ "github.com/coreos/butane/config"
	_ "github.com/coreos/ignition/v2/config"
	_ "github.com/diskfs/go-diskfs"
	_ "github.com/spf13/cobra"
	_ "go.etcd.io/etcd/client/v3"
	_ "go.etcd.io/etcd/server/v3/embed"
)
