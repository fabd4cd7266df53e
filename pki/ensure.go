package pki

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/etcdbake/etcdbake/spec"
)

// ca is a CA in use during Ensure.
type ca struct {
	name             string
	cert             *x509.Certificate
	key              crypto.Signer
	certPEM, keyPEM  []byte // set only for a new CA
	crtPath, keyPath string
}

// Ensure creates or reuses the CAs and issues every certificate the spec needs under
// dir, at time now.
//
// Existing CAs are always reused; a CA whose key is missing or does not match, or which
// expires within pki.renewBefore, is an error (etcdbake never replaces a CA on its own).
// A leaf is reused when it still matches the spec in every respect (issuer, subject,
// SANs, extended key usage, key algorithm, lifetime, validity beyond renewBefore) and is
// re-issued with a new key otherwise; the Action says why.
//
// Leaves are valid from now-backdate to now+leafLifetime (capped at the CA's expiry);
// CAs from now-backdate to now+caLifetime.
//
// Everything is computed in memory first. Files are then written atomically (temporary
// file + rename); only created and re-issued certificates are written, so reused ones
// stay byte-identical. Any error before the files are renamed into place (bad spec, CA
// problem, unwritable directory) leaves the directory exactly as it was.
func Ensure(c *spec.Cluster, dir string, now time.Time) (*Result, error) {
	return ensureLeaves(c, dir, now, false)
}

// Renew is Ensure that re-issues every existing leaf (new key, new serial, a full
// lifetime from now), however long it is still valid: how the nodes' certificates are
// renewed before they expire (a new release rolls them out). CAs are reused as always.
func Renew(c *spec.Cluster, dir string, now time.Time) (*Result, error) {
	return ensureLeaves(c, dir, now, true)
}

func ensureLeaves(c *spec.Cluster, dir string, now time.Time, renew bool) (*Result, error) {
	pol, err := policyFor(c)
	if err != nil {
		return nil, err
	}
	leaves, err := plan(c, dir)
	if err != nil {
		return nil, err
	}
	w := writer{root: dir}
	res := &Result{}

	// CAs: reuse what is there, create what is not.
	cas := map[string]*ca{}
	var newCAs []*ca
	for _, name := range []string{CAName, PeerCAName} {
		crt, key := CAPath(dir, name)
		d, err := readPair(crt, key)
		if err != nil {
			return nil, fmt.Errorf("pki: %w", err)
		}
		a := &ca{name: name, crtPath: crt, keyPath: key}
		cas[name] = a
		if d.certMissing && d.keyMissing {
			newCAs = append(newCAs, a)
			res.Actions = append(res.Actions, Action{Name: name, Verb: Created})
			continue
		}
		if probs := caProblems(d, pol, now); len(probs) > 0 {
			return nil, caError(name, d, probs)
		}
		a.cert, a.key = d.cert, d.key
		note := fmt.Sprintf("valid until %s (%s left)", day(a.cert.NotAfter), plural(daysLeft(a.cert.NotAfter, now), "day"))
		if alg := keyAlgorithm(a.cert.PublicKey); alg != pol.alg {
			note += fmt.Sprintf("; the CA key stays %s (pki.algorithm %s applies to leaves; CA rotation is not automatic)", alg, pol.alg)
		}
		if d.keyMode&0o077 != 0 {
			w.chmods = append(w.chmods, key)
			note += fmt.Sprintf("; key file mode %04o tightened to 0600", d.keyMode)
		}
		res.Actions = append(res.Actions, Action{Name: name, Verb: Reused, Reason: note})
	}
	if a, b := cas[CAName], cas[PeerCAName]; a.cert != nil && b.cert != nil && keyMatches(a.key, b.cert.PublicKey) {
		return nil, fmt.Errorf("pki: %s and %s hold the same key: they must be separate CAs so that a client certificate can never be used on etcd's peer port; move %s and %s aside to create a new peer CA (peer certificates are then re-issued)", a.crtPath, b.crtPath, b.crtPath, b.keyPath)
	}
	if err := parallel(len(newCAs), runtime.GOMAXPROCS(0), func(i int) error { return newCAs[i].create(pol, now) }); err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	for _, a := range newCAs {
		w.add(a.keyPath, a.keyPEM, keyMode)
		w.add(a.crtPath, a.certPEM, certMode)
	}

	// Leaves: decide for each, then issue the ones that need it in parallel.
	type job struct {
		l               leaf
		certPEM, keyPEM []byte
	}
	var jobs []*job
	for _, l := range leaves {
		d, err := readPair(l.crt, l.key)
		if err != nil {
			return nil, fmt.Errorf("pki: %w", err)
		}
		act := leafAction(l, d, cas[l.issuer].cert, pol, now, &w)
		if renew && act.Verb == Reused {
			act.Verb, act.Reason = Reissued, "renewed on request"
		}
		res.Actions = append(res.Actions, act)
		if act.Verb != Reused {
			jobs = append(jobs, &job{l: l})
		}
	}
	// Key generation is CPU-bound (RSA-4096 takes about a second per key).
	err = parallel(len(jobs), runtime.GOMAXPROCS(0), func(i int) error {
		j := jobs[i]
		var err error
		j.certPEM, j.keyPEM, err = issueLeaf(j.l, cas[j.l.issuer], pol, now)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	for _, j := range jobs {
		w.add(j.l.key, j.keyPEM, keyMode)
		w.add(j.l.crt, j.certPEM, certMode)
	}

	if res.stale, err = staleCerts(c, dir); err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	if err := w.commit(); err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	return res, nil
}

// certTimes is the validity window of a certificate issued at now for life. Times are
// whole seconds, as X.509 stores them.
func certTimes(now time.Time, pol policy, life time.Duration) (notBefore, notAfter time.Time) {
	now = now.UTC().Truncate(time.Second)
	return now.Add(-pol.backdate), now.Add(life)
}

func (a *ca) create(pol policy, now time.Time) error {
	key, err := generateKey(pol.alg)
	if err != nil {
		return err
	}
	serial, err := randomSerial()
	if err != nil {
		return err
	}
	cn := pol.cluster + " etcd CA"
	if a.name == PeerCAName {
		cn = pol.cluster + " etcd peer CA"
	}
	nb, na := certTimes(now, pol, pol.caLife)
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn, Organization: []string{pol.org}},
		NotBefore:             nb,
		NotAfter:              na,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true, // signs leaves only
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return fmt.Errorf("creating %s: %w", a.name, err)
	}
	if a.cert, err = x509.ParseCertificate(der); err != nil {
		return fmt.Errorf("creating %s: %w", a.name, err)
	}
	if a.keyPEM, err = encodeKey(key); err != nil {
		return err
	}
	a.key, a.certPEM = key, encodeCert(der)
	return nil
}

// issueLeaf makes a new key and certificate for l, signed by its CA.
func issueLeaf(l leaf, issuer *ca, pol policy, now time.Time) (certPEM, keyPEM []byte, err error) {
	key, err := generateKey(pol.alg)
	if err != nil {
		return nil, nil, err
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, err
	}
	nb, na := certTimes(now, pol, pol.leafLife)
	if na.After(issuer.cert.NotAfter) {
		na = issuer.cert.NotAfter // a certificate cannot usefully outlive its CA
	}
	ips := make([]net.IP, len(l.ips))
	for i, a := range l.ips {
		ips[i] = net.IP(a.AsSlice())
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: l.cn, Organization: []string{pol.org}},
		NotBefore:             nb,
		NotAfter:              na,
		KeyUsage:              keyUsageFor(key.Public()),
		ExtKeyUsage:           l.eku,
		BasicConstraintsValid: true,
		DNSNames:              l.dns,
		IPAddresses:           ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer.cert, key.Public(), issuer.key)
	if err != nil {
		return nil, nil, fmt.Errorf("issuing %s: %w", l.name, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("issuing %s: %w", l.name, err)
	}
	// A fresh certificate must pass the same checks the next run applies; otherwise
	// every run would re-issue it.
	if probs := leafProblems(l, onDisk{cert: cert, key: key}, issuer.cert, pol, now); len(probs) > 0 {
		return nil, nil, fmt.Errorf("issuing %s: the new certificate does not match the spec: %s", l.name, strings.Join(probs, "; "))
	}
	if keyPEM, err = encodeKey(key); err != nil {
		return nil, nil, err
	}
	return encodeCert(der), keyPEM, nil
}

// parallel runs f(0..n-1) on up to workers goroutines and returns the error of the
// lowest index that failed.
func parallel(n, workers int, f func(i int) error) error {
	errs := make([]error, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(n, workers) {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				errs[i] = f(i)
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// staleCerts lists certificates under nodes/ that belong to nodes no longer in the spec.
func staleCerts(c *spec.Cluster, dir string) ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(dir, "nodes"))
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		if _, ok := c.NodeByName(e.Name()); ok {
			continue
		}
		files, err := os.ReadDir(filepath.Join(dir, "nodes", e.Name()))
		if err != nil {
			return nil, err
		}
		for _, f := range files {
			if name, ok := strings.CutSuffix(f.Name(), ".crt"); ok && !f.IsDir() && !strings.HasPrefix(name, ".") {
				out = append(out, "nodes/"+e.Name()+"/"+name)
			}
		}
	}
	return out, nil
}

// leafAction decides what happens to a leaf found on disk as d: created, re-issued (with
// the problems as the reason) or reused (a too-open key file mode is tightened by w).
func leafAction(l leaf, d onDisk, ca *x509.Certificate, pol policy, now time.Time, w *writer) Action {
	act := Action{Name: l.name}
	switch probs := leafProblems(l, d, ca, pol, now); {
	case d.certMissing && d.keyMissing:
		act.Verb = Created
	case len(probs) > 0:
		act.Verb, act.Reason = Reissued, strings.Join(probs, "; ")
	default:
		act.Verb = Reused
		act.Reason = fmt.Sprintf("valid until %s (%s left)", day(d.cert.NotAfter), plural(daysLeft(d.cert.NotAfter, now), "day"))
		if d.keyMode&0o077 != 0 {
			w.chmods = append(w.chmods, l.key)
			act.Reason += fmt.Sprintf("; key file mode %04o tightened to 0600", d.keyMode)
		}
	}
	return act
}
