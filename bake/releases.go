package bake

import (
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/etcdbake/etcdbake/pki"
	"github.com/etcdbake/etcdbake/pxe"
	"github.com/etcdbake/etcdbake/spec"
)

// QEMUReleaseServer is the release server of a QEMU cluster (`etcdbake up`, the VM
// tests): OUT's releases over mutual TLS, with a server certificate from the cluster CA
// for QEMUReleaseAddr (made or reused here), to be served on a unix socket that each VM
// reaches through its guest forward (vmcluster.GuestForward with `etcdbake qemu-relay`).
func QEMUReleaseServer(c *spec.Cluster, pkiDir, releasesDir string, now time.Time, log func(pxe.Access)) (*http.Server, error) {
	host, _, _ := net.SplitHostPort(QEMUReleaseAddr)
	if _, _, err := pki.EnsureServeCert(c, pkiDir, []string{host}, now); err != nil {
		return nil, fmt.Errorf("release server certificate: %w", err)
	}
	return ReleaseServer(c, pkiDir, releasesDir, log)
}

// ReleaseServer is the mutual-TLS server of the releases in releasesDir (pxe's handler,
// TLS 1.3, client certificates from the cluster CA) with the server certificate that
// pki.EnsureServe keeps in pkiDir. The caller serves it on its listener (ServeTLS with
// empty file names).
func ReleaseServer(c *spec.Cluster, pkiDir, releasesDir string, log func(pxe.Access)) (*http.Server, error) {
	crt, key := pki.ServeCertPath(pkiDir)
	ca, _ := pki.CAPath(pkiDir, pki.CAName)
	conf, err := pxe.ReleaseTLSConfig(ca, crt, key)
	if err != nil {
		return nil, err
	}
	nodes := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		nodes[i] = n.Name
	}
	h, err := pxe.NewReleaseHandler(pxe.ReleaseOptions{Cluster: c.Name, Dir: releasesDir, Nodes: nodes, Log: log})
	if err != nil {
		return nil, err
	}
	// The header timeout bounds the TLS handshake too: an emulated node that has just
	// started staging beside two others can take more than 10 s for it.
	return &http.Server{Handler: h, TLSConfig: conf, ReadHeaderTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute}, nil
}
