package pki

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/etcdbake/etcdbake/spec"
)

// The release server's certificate (`etcdbake serve --release-listen`): nodes download
// their release over mutual TLS and check this certificate against ca.crt, which they
// already hold. It is issued on the operator's machine, where the CA key stays, and is
// kept out of nodes/ and clients/: no node ever receives it.
const (
	ServeName = "serve/server"   // its name in Actions and messages
	ServeCN   = "etcdbake-serve" // its subject CN
)

// The release server only serves; it is never a client.
var ekuServerOnly = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}

// ServeCertPath returns the certificate and key paths of the release server's
// certificate: dir/serve/server.{crt,key}.
func ServeCertPath(dir string) (crt, key string) {
	base := filepath.Join(dir, "serve", "server")
	return base + ".crt", base + ".key"
}

// EnsureServeCert makes sure dir/serve/server.{crt,key} hold a server certificate for the
// release server, issued by the cluster's client/server CA ("ca") for sans (the IP
// addresses and DNS names nodes dial; at least one), with the spec's key algorithm,
// lifetime and backdate like every other leaf. A certificate that still matches (issuer,
// CN, SANs as a set, serverAuth, key algorithm, validity beyond pki.renewBefore) is kept;
// anything else is re-issued with a new key. It returns the file paths; EnsureServe also
// says what it did.
func EnsureServeCert(c *spec.Cluster, dir string, sans []string, now time.Time) (crt, key string, err error) {
	if _, err := EnsureServe(c, dir, sans, now); err != nil {
		return "", "", err
	}
	crt, key = ServeCertPath(dir)
	return crt, key, nil
}

// EnsureServe is EnsureServeCert that reports what it did: Created, Reused (with the
// expiry) or Reissued (with the reason, e.g. "SANs differ (missing 10.88.0.2)"). The CA
// must exist already (`etcdbake pki` creates it); it is never created or changed here.
// Nothing is written when an error is returned.
func EnsureServe(c *spec.Cluster, dir string, sans []string, now time.Time) (Action, error) {
	pol, err := policyFor(c)
	if err != nil {
		return Action{}, err
	}
	l := leaf{name: ServeName, issuer: CAName, cn: ServeCN, eku: ekuServerOnly}
	l.crt, l.key = ServeCertPath(dir)
	if l.dns, l.ips, err = parseSANs(sans); err != nil {
		return Action{}, err
	}

	caCrt, caKey := CAPath(dir, CAName)
	cd, err := readPair(caCrt, caKey)
	if err != nil {
		return Action{}, fmt.Errorf("pki: %w", err)
	}
	if cd.certMissing && cd.keyMissing {
		return Action{}, fmt.Errorf("pki: no CA in %s (%s is missing): the release server's certificate is issued by the cluster's CA; create the PKI first with `etcdbake pki`", dir, caCrt)
	}
	if probs := caProblems(cd, pol, now); len(probs) > 0 {
		return Action{}, caError(CAName, cd, probs)
	}
	issuer := &ca{name: CAName, cert: cd.cert, key: cd.key, crtPath: caCrt, keyPath: caKey}

	d, err := readPair(l.crt, l.key)
	if err != nil {
		return Action{}, fmt.Errorf("pki: %w", err)
	}
	w := writer{root: dir}
	act := leafAction(l, d, issuer.cert, pol, now, &w)
	if act.Verb != Reused {
		certPEM, keyPEM, err := issueLeaf(l, issuer, pol, now)
		if err != nil {
			return Action{}, fmt.Errorf("pki: %w", err)
		}
		w.add(l.key, keyPEM, keyMode)
		w.add(l.crt, certPEM, certMode)
	}
	if err := w.commit(); err != nil {
		return Action{}, fmt.Errorf("pki: %w", err)
	}
	return act, nil
}

// parseSANs splits the release server's names into IP addresses and DNS names, dropping
// duplicates. Addresses nobody can dial (0.0.0.0, ::) and malformed names are refused.
func parseSANs(sans []string) (dns []string, ips []netip.Addr, err error) {
	if len(sans) == 0 {
		return nil, nil, errors.New("pki: the release server's certificate needs at least one SAN: the IP address or DNS name the nodes dial (e.g. 10.88.0.1)")
	}
	for _, s := range sans {
		if a, err := netip.ParseAddr(s); err == nil {
			a = a.Unmap()
			if a.IsUnspecified() || a.Zone() != "" {
				return nil, nil, fmt.Errorf("pki: release server SAN %q is not an address a node can dial: give the server's own address on the nodes' network", s)
			}
			if !slices.Contains(ips, a) {
				ips = append(ips, a)
			}
			continue
		}
		if !dnsName(s) {
			return nil, nil, fmt.Errorf("pki: release server SAN %q is neither an IP address nor a lowercase DNS name (e.g. 10.88.0.1 or releases.example.net)", s)
		}
		if !slices.Contains(dns, s) {
			dns = append(dns, s)
		}
	}
	return dns, ips, nil
}

// dnsName is a lowercase DNS name of RFC 1123 labels (no wildcards).
func dnsName(s string) bool {
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if !spec.IsLabel(label) {
			return false
		}
	}
	return true
}
