// Package firstboot is etcd-firstboot, the agent that runs on every node around
// etcd.service on every boot. Its phases are ordered, named and idempotent:
//
//  1. time gate (before etcd): clock synchronised, inside the certificates' window, skew
//     against a reference below time.maxSkew;
//  2. bootstrap decision (before etcd): restart, new (static bootstrap), join, or replace
//     (remove the stale member, add as learner); never a second cluster;
//  3. health gate (after etcd): local readiness and cluster quorum, learner promotion;
//  4. flannel seeding: create-if-absent of <prefix>/config through the v3 API;
//  5. status: the last decisions and the boot slot, for `etcd-firstboot status`;
//  6. verify-boot (only on a boot of an on-trial A/B entry): this boot is good once
//     the health gate passed, /readyz answers and flanneld has its subnet.
//
// It imports only package spec, the etcd v3 client and small libraries.
package firstboot

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/etcdbake/etcdbake/internal/fileutil"
	"github.com/etcdbake/etcdbake/spec"
)

// Agent runs the phases for one node.
type Agent struct {
	Cfg *spec.NodeConfig
	// Logf receives one line per decision or wait (the command sends it to stderr,
	// which systemd puts in the journal). May be nil.
	Logf func(format string, args ...any)
	// Now is the clock (tests move it); nil means time.Now.
	Now func() time.Time
	// Timeouts override the node file's (Cfg.Timeouts) when non-zero.
	DialTimeout  time.Duration
	ReadyTimeout time.Duration
	RetryEvery   time.Duration
	// RendezvousWindow bounds one attempt of the bootstrap rendezvous (default
	// DefaultRendezvousWindow).
	RendezvousWindow time.Duration
	// BootPaths are where the boot slot information is read (zero fields: the real
	// /proc/cmdline, efivarfs and /efi).
	BootPaths BootPaths
	// FlannelSubnetFile is flanneld's subnet file that verify-boot waits for (default
	// /run/flannel/subnet.env).
	FlannelSubnetFile string
}

func (a *Agent) now() time.Time {
	if a.Now != nil {
		return a.Now()
	}
	return time.Now()
}

func (a *Agent) logf(format string, args ...any) {
	if a.Logf != nil {
		a.Logf(format, args...)
	}
}

func (a *Agent) dialTimeout() time.Duration {
	return durOr(a.DialTimeout, durOr(a.Cfg.Timeouts.Dial.D, spec.DefaultDialTimeout))
}

func (a *Agent) readyTimeout() time.Duration {
	return durOr(a.ReadyTimeout, durOr(a.Cfg.Timeouts.Ready.D, spec.DefaultReadyTimeout))
}

func (a *Agent) retryEvery() time.Duration {
	return durOr(a.RetryEvery, durOr(a.Cfg.Timeouts.Retry.D, spec.DefaultRetryEvery))
}

func durOr(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// tlsConfig is the client side of mutual TLS with this node's etcd-firstboot certificate.
func (a *Agent) tlsConfig() (*tls.Config, error) {
	pair, err := tls.LoadX509KeyPair(a.Cfg.ClientCert, a.Cfg.ClientKey)
	if err != nil {
		return nil, fmt.Errorf("loading the etcd-firstboot client certificate: %w", err)
	}
	caPEM, err := os.ReadFile(a.Cfg.CA)
	if err != nil {
		return nil, fmt.Errorf("reading the etcd CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%s holds no certificate", a.Cfg.CA)
	}
	return &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: pool, MinVersion: tls.VersionTLS13}, nil
}

// TLSConfig is this node's client side of mutual TLS (its etcd-firstboot certificate),
// for the work of other packages that etcd-firstboot runs (the scheduled snapshot).
func (a *Agent) TLSConfig() (*tls.Config, error) { return a.tlsConfig() }

// RequestTimeout bounds one etcd request of this node's work (4 x the dial timeout, as
// the maintenance pass's): a member of a busy node answers in seconds, not milliseconds.
func (a *Agent) RequestTimeout() time.Duration { return 4 * a.dialTimeout() }

// Endpoints are this member's client URL (loopback) and then the other members'.
func (a *Agent) Endpoints() []string {
	return append([]string{a.Cfg.LocalClientURL}, a.peerClientURLs()...)
}

// client connects to the given endpoints without blocking; calls fail fast when nobody
// answers.
func (a *Agent) client(endpoints []string) (*clientv3.Client, error) {
	tc, err := a.tlsConfig()
	if err != nil {
		return nil, err
	}
	return clientv3.New(clientv3.Config{
		Endpoints:            endpoints,
		TLS:                  tc,
		DialTimeout:          a.dialTimeout(),
		DialKeepAliveTime:    5 * time.Second,
		DialKeepAliveTimeout: 3 * time.Second,
		Logger:               zap.NewNop(),
	})
}

// peerClientURLs are the other members' client URLs.
func (a *Agent) peerClientURLs() []string {
	var out []string
	for _, p := range a.Cfg.Peers {
		if p.Name != a.Cfg.Name {
			out = append(out, p.ClientURL)
		}
	}
	return out
}

// writeFileAtomic writes path through a synced temporary file and a rename, creating
// the directory if needed.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return fileutil.WriteAtomic(path, data, mode)
}

func writeJSON(path string, v any, mode os.FileMode) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(path, append(b, '\n'), mode)
}

func readJSON(path string, v any) (bool, error) {
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return true, fmt.Errorf("%s is not valid JSON: %w", path, err)
	}
	return true, nil
}

// withTimeout runs f with a per-call deadline.
func withTimeout[T any](ctx context.Context, d time.Duration, f func(context.Context) (T, error)) (T, error) {
	c, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	return f(c)
}

// readCertFile parses the first certificate of a PEM file.
func readCertFile(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return x509.ParseCertificate(blk.Bytes)
}
