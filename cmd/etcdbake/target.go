package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/etcdbake/etcdbake/pki"
	"github.com/etcdbake/etcdbake/spec"
	"github.com/etcdbake/etcdbake/status"
	"github.com/etcdbake/etcdbake/vmcluster"
)

// requestTimeout bounds each request to etcd of the rollout and snapshot commands.
const requestTimeout = 5 * time.Second

// clusterTarget is how the commands that talk to etcd (rollout, snapshot) reach the
// cluster: the status options (admin certificate, endpoints, up's forwards) and whether
// it is `up`'s QEMU cluster.
type clusterTarget struct {
	opts status.Options
	up   bool
}

// clusterTarget finds the cluster as `etcdbake status` does: --endpoints, else the
// cluster started by `up` when it runs, else the spec's client URLs.
func (a *app) clusterTarget(cmd *cobra.Command, c *spec.Cluster, endpoints []string) clusterTarget {
	ca, _ := pki.CAPath(a.pkiDir(), "ca")
	crt, key := pki.ClientCertPath(a.pkiDir(), "admin")
	t := clusterTarget{opts: status.Options{Endpoints: endpoints, CAFile: ca, CertFile: crt, KeyFile: key,
		PKIDir: a.pkiDir(), Timeout: requestTimeout, Now: a.now()}}
	if st, err := vmcluster.ReadRunState(a.runDir()); err == nil && st.Running() {
		t.up = true
		if len(endpoints) == 0 {
			fmt.Fprintf(cmd.ErrOrStderr(), "%s: the QEMU cluster started by up (%s)\n", topCommand(cmd), filepath.Join(a.runDir(), vmcluster.RunStateFile))
			a.upOptions(st, &t.opts)
		}
	}
	if len(t.opts.Endpoints) == 0 {
		t.opts.Endpoints = c.ClientEndpoints()
	}
	return t
}

// live is the endpoints of members not known to be down.
func (t clusterTarget) live() ([]string, error) {
	var eps []string
	for _, ep := range t.opts.Endpoints {
		down := false
		for n := range t.opts.NotRunning {
			down = down || t.opts.NodeEndpoints[n] == ep
		}
		if !down {
			eps = append(eps, ep)
		}
	}
	if len(eps) == 0 {
		return nil, errors.New("no member of the cluster runs: start it (`etcdbake up`) first")
	}
	return eps, nil
}

// tls is the admin client's TLS configuration.
func (t clusterTarget) tls() (*tls.Config, error) {
	return status.TLSConfig(t.opts.CAFile, t.opts.CertFile, t.opts.KeyFile)
}

// client connects to the endpoints of members not known to be down.
func (t clusterTarget) client() (*clientv3.Client, error) {
	tlsCfg, err := t.tls()
	if err != nil {
		return nil, err
	}
	eps, err := t.live()
	if err != nil {
		return nil, err
	}
	return clientv3.New(clientv3.Config{Endpoints: eps, TLS: tlsCfg, DialTimeout: requestTimeout, Logger: zap.NewNop()})
}

// topCommand is the name of cmd's top-level subcommand ("rollout" for `rollout status`).
func topCommand(cmd *cobra.Command) string {
	for cmd.HasParent() && cmd.Parent().HasParent() {
		cmd = cmd.Parent()
	}
	return cmd.Name()
}
