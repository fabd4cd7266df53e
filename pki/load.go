package pki

import (
	"crypto/x509"
	"fmt"
	"strings"
	"time"

	"github.com/etcdbake/etcdbake/spec"
)

const runPKI = "run `etcdbake pki`"

// Load reads every certificate and key the spec needs, for rendering node configs. It
// fails when anything is missing, unreadable, does not match its key or is not signed by
// its CA. It does not judge expiry or drift against the spec; Check does that.
func Load(c *spec.Cluster, dir string) (*Set, error) {
	if c == nil {
		return nil, fmt.Errorf("pki: no cluster spec")
	}
	leaves, err := plan(c, dir)
	if err != nil {
		return nil, err
	}
	set := &Set{Nodes: map[string]NodeFiles{}, Clients: map[string]Pair{}}
	var probs []string
	cas := map[string]*x509.Certificate{}
	for _, name := range []string{CAName, PeerCAName} {
		crt, _ := CAPath(dir, name)
		data, missing, err := readIfExists(crt)
		if err != nil {
			return nil, fmt.Errorf("pki: %w", err)
		}
		if missing {
			probs = append(probs, name+": certificate file missing")
			continue
		}
		if cas[name], err = ParseCert(data); err != nil {
			probs = append(probs, name+": "+err.Error())
			continue
		}
		if name == CAName {
			set.CA = data
		} else {
			set.PeerCA = data
		}
	}
	for _, l := range leaves {
		d, err := readPair(l.crt, l.key)
		if err != nil {
			return nil, fmt.Errorf("pki: %w", err)
		}
		if d.certMissing && d.keyMissing {
			probs = append(probs, l.name+": missing")
			continue
		}
		p := pairProblems(d)
		if issuer := cas[l.issuer]; len(p) == 0 && issuer != nil && d.cert.CheckSignatureFrom(issuer) != nil {
			p = append(p, "not signed by the current "+l.issuer)
		}
		if len(p) > 0 {
			probs = append(probs, l.name+": "+strings.Join(p, "; "))
			continue
		}
		pair := Pair{Cert: d.certPEM, Key: d.keyPEM}
		if node, kind, ok := strings.Cut(strings.TrimPrefix(l.name, "nodes/"), "/"); ok && strings.HasPrefix(l.name, "nodes/") {
			nf := set.Nodes[node]
			nf.set(kind, pair)
			set.Nodes[node] = nf
		} else {
			set.Clients[strings.TrimPrefix(l.name, "clients/")] = pair
		}
	}
	if len(probs) > 0 {
		const show = 5
		more := ""
		if len(probs) > show {
			more = fmt.Sprintf("; and %d more", len(probs)-show)
			probs = probs[:show]
		}
		return nil, fmt.Errorf("pki: certificates in %s are missing or unusable (%s%s): %s", dir, strings.Join(probs, "; "), more, runPKI)
	}
	return set, nil
}

// Check inspects every certificate the spec needs and compares it with the spec. A
// certificate is OK exactly when Ensure would reuse it unchanged. The error is only for
// I/O failures (and a spec Ensure could not use either); problems are per certificate.
func Check(c *spec.Cluster, dir string, now time.Time) ([]CertInfo, error) {
	pol, err := policyFor(c)
	if err != nil {
		return nil, err
	}
	leaves, err := plan(c, dir)
	if err != nil {
		return nil, err
	}
	var out []CertInfo
	cas := map[string]onDisk{}
	for _, name := range []string{CAName, PeerCAName} {
		crt, key := CAPath(dir, name)
		d, err := readPair(crt, key)
		if err != nil {
			return nil, fmt.Errorf("pki: %w", err)
		}
		cas[name] = d
		ci := info(name, d, now)
		if d.certMissing && d.keyMissing {
			ci.Problems = []string{"missing: " + runPKI}
		} else {
			ci.Problems = append(caProblems(d, pol, now), modeProblem(d)...)
		}
		if a := cas[CAName]; name == PeerCAName && a.cert != nil && d.cert != nil && a.cert.PublicKey != nil &&
			a.key != nil && keyMatches(a.key, d.cert.PublicKey) {
			ci.Problems = append(ci.Problems, "same key as ca: the peer CA must be separate so that client certificates cannot be used on the peer port")
		}
		out = append(out, ci)
	}
	for _, l := range leaves {
		d, err := readPair(l.crt, l.key)
		if err != nil {
			return nil, fmt.Errorf("pki: %w", err)
		}
		ci := info(l.name, d, now)
		if d.certMissing && d.keyMissing {
			ci.Problems = []string{"missing: " + runPKI}
		} else {
			ci.Problems = append(leafProblems(l, d, cas[l.issuer].cert, pol, now), modeProblem(d)...)
		}
		out = append(out, ci)
	}
	return out, nil
}

func modeProblem(d onDisk) []string {
	if !d.keyMissing && d.keyMode&0o077 != 0 {
		return []string{fmt.Sprintf("key file %s has mode %04o: it must be 0600 (%s fixes it)", d.keyPath, d.keyMode, "`etcdbake pki`")}
	}
	return nil
}

func info(name string, d onDisk, now time.Time) CertInfo {
	ci := CertInfo{Name: name, Path: d.crtPath}
	if c := d.cert; c != nil {
		ci.Subject = c.Subject.String()
		ci.Issuer = c.Issuer.String()
		ci.DNSNames = append([]string(nil), c.DNSNames...)
		for _, ip := range c.IPAddresses {
			ci.IPs = append(ci.IPs, toAddr(ip).String())
		}
		ci.NotBefore, ci.NotAfter = c.NotBefore, c.NotAfter
		ci.DaysLeft = daysLeft(c.NotAfter, now)
	}
	return ci
}
