// Package pki creates and maintains the cluster's certificates: a client/server CA and a
// separate peer CA, and for every node a server, peer, firstboot-client and
// flanneld-client certificate, plus the cluster-wide admin and kube-apiserver client
// certificates. Everything is plain crypto/x509; keys are PKCS#8 PEM.
//
// Layout under the PKI directory (normally out/pki):
//
//	ca.crt ca.key peer-ca.crt peer-ca.key
//	nodes/<node>/{server,peer,firstboot,flanneld}.{crt,key}
//	clients/{admin,kube-apiserver-etcd-client}.{crt,key}
//
// Every function takes the current time explicitly so callers and tests control the
// clock. Library functions return errors; they never print.
package pki

import (
	"crypto/x509"
	"fmt"
	"net/netip"
	"path/filepath"
	"time"

	"github.com/etcdbake/etcdbake/spec"
)

// CA names, which are also their file names without extension.
const (
	CAName     = "ca"      // signs server and client certificates
	PeerCAName = "peer-ca" // signs peer certificates only
)

// Per-node certificate kinds.
const (
	KindServer    = "server"    // etcd's client-port certificate, signed by ca
	KindPeer      = "peer"      // etcd's peer-port certificate, signed by peer-ca
	KindFirstboot = "firstboot" // etcd-firstboot's client certificate
	KindFlanneld  = "flanneld"  // flanneld's client certificate
)

// NodeKinds lists the per-node certificates in the order they are issued and reported.
var NodeKinds = []string{KindServer, KindPeer, KindFirstboot, KindFlanneld}

// Cluster-wide client certificates, signed by ca.
const (
	ClientAdmin         = "admin"
	ClientKubeAPIServer = "kube-apiserver-etcd-client"
)

// Clients lists the cluster-wide client certificates in report order.
var Clients = []string{ClientAdmin, ClientKubeAPIServer}

// Action verbs.
const (
	Created  = "created"
	Reused   = "reused"
	Reissued = "re-issued"
)

// Result is what Ensure did: one Action per certificate, CAs first, then every node's
// certificates in spec order, then the cluster-wide clients.
type Result struct {
	Actions []Action
	stale   []string
}

// Stale lists certificate names ("nodes/<node>/<kind>") found on disk for nodes that are
// no longer in the spec. They are left in place; delete them once the node has left.
func (r *Result) Stale() []string { return append([]string(nil), r.stale...) }

// Changed reports whether any certificate was created or re-issued.
func (r *Result) Changed() bool {
	for _, a := range r.Actions {
		if a.Verb != Reused {
			return true
		}
	}
	return false
}

// Action is what happened to one certificate.
type Action struct {
	// Name identifies the certificate: "ca", "peer-ca", "nodes/etcd-1/server",
	// "clients/admin".
	Name string
	// Verb is Created, Reused or Reissued.
	Verb string
	// Reason says why a certificate was re-issued (e.g. "SANs differ (missing
	// 10.88.0.99)"); for reused certificates it notes the expiry and anything the
	// operator should know.
	Reason string
}

func (a Action) String() string {
	if a.Reason == "" {
		return a.Name + ": " + a.Verb
	}
	return a.Name + ": " + a.Verb + ": " + a.Reason
}

// Pair is a PEM certificate and its PEM private key.
type Pair struct {
	Cert, Key []byte
}

// NodeFiles are one node's certificates.
type NodeFiles struct {
	Server, Peer, Firstboot, Flanneld Pair
}

// Kind returns the pair for one of NodeKinds.
func (n NodeFiles) Kind(kind string) (Pair, bool) {
	switch kind {
	case KindServer:
		return n.Server, true
	case KindPeer:
		return n.Peer, true
	case KindFirstboot:
		return n.Firstboot, true
	case KindFlanneld:
		return n.Flanneld, true
	}
	return Pair{}, false
}

func (n *NodeFiles) set(kind string, p Pair) {
	switch kind {
	case KindServer:
		n.Server = p
	case KindPeer:
		n.Peer = p
	case KindFirstboot:
		n.Firstboot = p
	case KindFlanneld:
		n.Flanneld = p
	}
}

// Set is the whole PKI as needed to render node configs. The CA keys are not included.
type Set struct {
	CA, PeerCA []byte // certificate PEM only
	Nodes      map[string]NodeFiles
	Clients    map[string]Pair
}

// CertInfo describes one certificate as found on disk and what is wrong with it.
// Its JSON form (`etcdbake pki check -o json`) has camelCase keys, as every JSON
// etcdbake prints.
type CertInfo struct {
	Name      string    `json:"name"` // as in Action.Name
	Path      string    `json:"path"` // the certificate file
	Subject   string    `json:"subject"`
	Issuer    string    `json:"issuer"`
	DNSNames  []string  `json:"dnsNames"`
	IPs       []string  `json:"ips"`
	NotBefore time.Time `json:"notBefore"`
	NotAfter  time.Time `json:"notAfter"`
	// DaysLeft is the number of whole days until NotAfter (negative once expired).
	DaysLeft int `json:"daysLeft"`
	// Problems is empty when the certificate is present and matches the spec.
	Problems []string `json:"problems"`
}

// OK reports whether the certificate has no problems.
func (ci CertInfo) OK() bool { return len(ci.Problems) == 0 }

// CAPath returns the certificate and key paths of CAName or PeerCAName.
func CAPath(dir, name string) (crt, key string) {
	base := filepath.Join(dir, name)
	return base + ".crt", base + ".key"
}

// NodeCertPath returns the certificate and key paths of a node's certificate of the
// given kind (one of NodeKinds).
func NodeCertPath(dir, node, kind string) (crt, key string) {
	base := filepath.Join(dir, "nodes", node, kind)
	return base + ".crt", base + ".key"
}

// ClientCertPath returns the certificate and key paths of a cluster-wide client
// certificate (one of Clients).
func ClientCertPath(dir, name string) (crt, key string) {
	base := filepath.Join(dir, "clients", name)
	return base + ".crt", base + ".key"
}

// DaysLeft returns the whole days from now until the certificate's NotAfter, rounded
// down (so 0 means less than a day is left and a negative value means it has expired).
func DaysLeft(certPEM []byte, now time.Time) (int, error) {
	c, err := ParseCert(certPEM)
	if err != nil {
		return 0, err
	}
	return daysLeft(c.NotAfter, now), nil
}

// daysLeft compares at whole seconds, the resolution of certificate times, so a
// certificate issued now for 1y has 365 days left, not 364.
func daysLeft(notAfter, now time.Time) int {
	d := notAfter.Sub(now.Truncate(time.Second))
	days := int(d / (24 * time.Hour))
	if d < 0 && d%(24*time.Hour) != 0 {
		days--
	}
	return days
}

// policy is the PKI part of the spec with defaults filled in.
type policy struct {
	alg                               string
	caLife, leafLife, backdate, renew time.Duration
	org, cluster                      string
}

func policyFor(c *spec.Cluster) (policy, error) {
	if c == nil {
		return policy{}, fmt.Errorf("pki: no cluster spec")
	}
	p := c.PKI
	pol := policy{
		alg:      p.Algorithm,
		caLife:   p.CALifetime.D,
		leafLife: p.LeafLifetime.D,
		backdate: p.Backdate.D,
		renew:    p.RenewBefore.D,
		org:      p.Organization,
		cluster:  c.Name,
	}
	// Specs from spec.Parse are defaulted already; this covers hand-built ones.
	if pol.alg == "" {
		pol.alg = spec.DefaultAlgorithm
	}
	if p.CALifetime.IsZero() {
		pol.caLife = spec.DefaultCALifetime
	}
	if p.LeafLifetime.IsZero() {
		pol.leafLife = spec.DefaultLeafLifetime
	}
	if p.Backdate.IsZero() {
		pol.backdate = spec.DefaultBackdate
	}
	if p.RenewBefore.IsZero() {
		pol.renew = spec.DefaultRenewBefore
	}
	if pol.org == "" {
		pol.org = "etcdbake " + c.Name
	}
	if !knownAlgorithm(pol.alg) {
		return policy{}, fmt.Errorf("pki: %w", unknownAlgorithm(pol.alg))
	}
	for _, d := range []spec.Duration{p.CALifetime, p.LeafLifetime, p.Backdate, p.RenewBefore} {
		if d.Err != nil {
			return policy{}, fmt.Errorf("pki: %w", d.Err)
		}
	}
	if pol.leafLife <= 0 || pol.caLife <= 0 {
		return policy{}, fmt.Errorf("pki: certificate lifetimes must be above 0")
	}
	return pol, nil
}

// leaf is one certificate the spec asks for.
type leaf struct {
	name     string // "nodes/etcd-1/server"
	crt, key string // paths
	issuer   string // CAName or PeerCAName
	cn       string
	dns      []string
	ips      []netip.Addr
	eku      []x509.ExtKeyUsage
}

var (
	ekuServer = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	ekuClient = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
)

// plan lists every leaf certificate of the spec in report order.
func plan(c *spec.Cluster, dir string) ([]leaf, error) {
	var out []leaf
	seen := map[string]bool{}
	for _, n := range c.Nodes {
		if !spec.IsLabel(n.Name) { // the name becomes a directory
			return nil, fmt.Errorf("pki: node name %q cannot be used as a directory name: validate the spec first", n.Name)
		}
		if seen[n.Name] {
			return nil, fmt.Errorf("pki: node name %q appears twice in the spec", n.Name)
		}
		seen[n.Name] = true
		if !n.IP().IsValid() {
			return nil, fmt.Errorf("pki: node %s has no valid address %q: validate the spec first", n.Name, n.Address)
		}
		for _, kind := range NodeKinds {
			l := leaf{name: "nodes/" + n.Name + "/" + kind, issuer: CAName, eku: ekuClient}
			l.crt, l.key = NodeCertPath(dir, n.Name, kind)
			switch kind {
			case KindServer:
				l.cn, l.eku = n.Name, ekuServer
				l.dns, l.ips = c.ServerSANs(n)
			case KindPeer:
				l.cn, l.eku, l.issuer = n.Name, ekuServer, PeerCAName
				l.dns, l.ips = c.PeerSANs(n)
			case KindFirstboot:
				l.cn = "etcd-firstboot:" + n.Name
			case KindFlanneld:
				l.cn = "flanneld:" + n.Name
			}
			out = append(out, l)
		}
	}
	for _, name := range Clients {
		l := leaf{name: "clients/" + name, issuer: CAName, cn: name, eku: ekuClient}
		l.crt, l.key = ClientCertPath(dir, name)
		out = append(out, l)
	}
	return out, nil
}
