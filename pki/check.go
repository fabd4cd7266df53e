package pki

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/etcdbake/etcdbake/spec"
)

// onDisk is a certificate and its key as found on disk.
type onDisk struct {
	crtPath, keyPath        string
	certPEM, keyPEM         []byte
	cert                    *x509.Certificate
	key                     crypto.Signer
	certMissing, keyMissing bool
	certErr, keyErr         error // parse errors
	keyMode                 fs.FileMode
}

// readPair reads a certificate and key. Missing or unparsable files are recorded in the
// result; only real I/O failures (permissions, a directory in the way) are errors.
func readPair(crt, key string) (onDisk, error) {
	d := onDisk{crtPath: crt, keyPath: key}
	var err error
	if d.certPEM, d.certMissing, err = readIfExists(crt); err != nil {
		return d, err
	}
	if !d.certMissing {
		d.cert, d.certErr = ParseCert(d.certPEM)
	}
	if d.keyPEM, d.keyMissing, err = readIfExists(key); err != nil {
		return d, err
	}
	if !d.keyMissing {
		d.key, d.keyErr = parseKey(d.keyPEM)
		if fi, err := os.Stat(key); err == nil {
			d.keyMode = fi.Mode().Perm()
		}
	}
	return d, nil
}

func readIfExists(path string) (data []byte, missing bool, err error) {
	data, err = os.ReadFile(path)
	// ENOTDIR: a file where a directory belongs; the file is missing all the same, and
	// writing reports the obstacle.
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return nil, true, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("reading %s: %w", path, err)
	}
	return data, false, nil
}

// pairProblems checks that both files are there, parse, and belong together.
func pairProblems(d onDisk) []string {
	var p []string
	switch {
	case d.certMissing:
		p = append(p, "certificate file missing")
	case d.certErr != nil:
		p = append(p, "certificate unreadable: "+d.certErr.Error())
	}
	switch {
	case d.keyMissing:
		p = append(p, "key file missing")
	case d.keyErr != nil:
		p = append(p, "key unreadable: "+d.keyErr.Error())
	case d.cert != nil && !keyMatches(d.key, d.cert.PublicKey):
		p = append(p, "key does not match the certificate")
	}
	return p
}

func day(t time.Time) string { return t.UTC().Format("2006-01-02 15:04 UTC") }

func plural(n int, unit string) string {
	if n == 1 {
		return "1 " + unit
	}
	return fmt.Sprintf("%d %ss", n, unit)
}

// validityProblems checks the validity window against now and the renewal window.
func validityProblems(c *x509.Certificate, now time.Time, renew time.Duration) []string {
	switch {
	case now.Before(c.NotBefore):
		return []string{fmt.Sprintf("not yet valid (valid from %s): check this machine's clock", day(c.NotBefore))}
	case now.After(c.NotAfter):
		ago := int(now.Truncate(time.Second).Sub(c.NotAfter) / (24 * time.Hour))
		return []string{fmt.Sprintf("expired on %s (%s ago)", day(c.NotAfter), plural(ago, "day"))}
	case c.NotAfter.Sub(now) < renew:
		return []string{fmt.Sprintf("expires on %s (in %s), within pki.renewBefore %s", day(c.NotAfter), plural(daysLeft(c.NotAfter, now), "day"), spec.FormatDuration(renew))}
	}
	return nil
}

// roughly formats a certificate lifetime (which includes the backdate) in days when it
// is long, in minutes otherwise.
func roughly(d time.Duration) string {
	if d >= 48*time.Hour {
		return spec.FormatDuration(d.Round(24 * time.Hour))
	}
	return spec.FormatDuration(d.Round(time.Minute))
}

// caProblems lists what makes an existing CA unusable.
func caProblems(d onDisk, pol policy, now time.Time) []string {
	p := pairProblems(d)
	if d.cert == nil {
		return p
	}
	if !d.cert.IsCA || !d.cert.BasicConstraintsValid || d.cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		p = append(p, "not a CA certificate (needs CA basic constraints and the certSign key usage)")
	}
	return append(p, validityProblems(d.cert, now, pol.renew)...)
}

// caError turns a CA's problems into an error that tells the operator what to do.
// etcdbake never replaces an existing CA: every node trusts it.
func caError(name string, d onDisk, probs []string) error {
	if d.certMissing {
		return fmt.Errorf("pki: %s exists but %s does not: restore the certificate from your backup, or move %s aside to create a new %s (every certificate is then re-issued and every node must be re-provisioned)", d.keyPath, d.crtPath, d.keyPath, name)
	}
	msg := fmt.Sprintf("pki: the existing %s (%s) cannot be used: %s", name, d.crtPath, strings.Join(probs, "; "))
	expiring := true
	for _, p := range probs {
		if !strings.HasPrefix(p, "expire") {
			expiring = false
		}
	}
	if len(probs) == 1 && strings.HasPrefix(probs[0], "not yet valid") {
		return errors.New(msg)
	}
	if expiring {
		return fmt.Errorf("%s; rotating a CA is not automatic: plan a rotation (new CA, re-issue every certificate, re-provision every node), or lower pki.renewBefore to keep issuing until it expires", msg)
	}
	return fmt.Errorf("%s; etcdbake does not create a new CA over an existing one because every node trusts it: restore %s and %s from your backup, or move both aside to start over on purpose (every certificate is then re-issued and every node must be re-provisioned)", msg, d.crtPath, d.keyPath)
}

// leafProblems compares an existing leaf with what the spec asks for. An empty result
// means the certificate can be kept. ca is the current issuing CA (nil when it is
// missing, which is then reported).
func leafProblems(l leaf, d onDisk, ca *x509.Certificate, pol policy, now time.Time) []string {
	p := pairProblems(d)
	c := d.cert
	if c == nil {
		return p
	}
	issuerOK := false
	switch {
	case ca == nil:
		p = append(p, fmt.Sprintf("cannot check the issuer: %s is missing or unreadable", l.issuer))
	case !bytes.Equal(c.RawIssuer, ca.RawSubject):
		p = append(p, fmt.Sprintf("wrong issuer: issued by %q, not by the current %s %q", c.Issuer, l.issuer, ca.Subject))
	case c.CheckSignatureFrom(ca) != nil:
		p = append(p, fmt.Sprintf("wrong issuer: signature does not verify against the current %s (was it replaced?)", l.issuer))
	default:
		issuerOK = true
	}
	if c.Subject.CommonName != l.cn {
		p = append(p, fmt.Sprintf("CN is %q, want %q", c.Subject.CommonName, l.cn))
	}
	if !slices.Equal(c.Subject.Organization, []string{pol.org}) {
		p = append(p, fmt.Sprintf("organization is %q, want %q", strings.Join(c.Subject.Organization, ","), pol.org))
	}
	if s := sanDiff(l, c); s != "" {
		p = append(p, "SANs differ ("+s+")")
	}
	if !sameEKU(c, l.eku) {
		p = append(p, fmt.Sprintf("extended key usage is %s, want %s", ekuNames(c.ExtKeyUsage, c.UnknownExtKeyUsage), ekuNames(l.eku, nil)))
	}
	if c.IsCA {
		p = append(p, "is a CA certificate, want a leaf")
	}
	if c.KeyUsage&x509.KeyUsageDigitalSignature == 0 {
		p = append(p, "key usage lacks digitalSignature")
	}
	if got := keyAlgorithm(c.PublicKey); got != pol.alg {
		p = append(p, fmt.Sprintf("key is %s, pki.algorithm is %s", got, pol.alg))
	}
	if life := c.NotAfter.Sub(c.NotBefore); life > pol.leafLife+pol.backdate+time.Minute {
		p = append(p, fmt.Sprintf("lifetime %s is longer than pki.leafLifetime %s", roughly(life), spec.FormatDuration(pol.leafLife)))
	}
	vp := validityProblems(c, now, pol.renew)
	p = append(p, vp...)
	// The checks above give precise reasons; full chain verification catches anything
	// they do not (unhandled critical extensions, CA validity, EKU nesting).
	if issuerOK && len(vp) == 0 && len(p) == 0 {
		pool := x509.NewCertPool()
		pool.AddCert(ca)
		if _, err := c.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: now, KeyUsages: l.eku}); err != nil {
			p = append(p, fmt.Sprintf("does not verify against the current %s: %v", l.issuer, err))
		}
	}
	return p
}

func toAddr(ip []byte) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}

// sanDiff describes how the certificate's SANs differ from the wanted ones ("" if they
// are equal as sets).
func sanDiff(l leaf, c *x509.Certificate) string {
	want := map[string]bool{}
	var wantList []string
	for _, s := range l.dns {
		want[s], wantList = true, append(wantList, s)
	}
	for _, a := range l.ips {
		want[a.String()], wantList = true, append(wantList, a.String())
	}
	have := map[string]bool{}
	var haveList []string
	add := func(s string) {
		if !have[s] {
			have[s], haveList = true, append(haveList, s)
		}
	}
	for _, s := range c.DNSNames {
		add(s)
	}
	for _, ip := range c.IPAddresses {
		add(toAddr(ip).String())
	}
	for _, u := range c.URIs {
		add(u.String())
	}
	for _, e := range c.EmailAddresses {
		add(e)
	}
	var missing, extra []string
	for _, s := range wantList {
		if !have[s] {
			missing = append(missing, s)
		}
	}
	for _, s := range haveList {
		if !want[s] {
			extra = append(extra, s)
		}
	}
	var parts []string
	if len(missing) > 0 {
		parts = append(parts, "missing "+strings.Join(missing, ", "))
	}
	if len(extra) > 0 {
		parts = append(parts, "unexpected "+strings.Join(extra, ", "))
	}
	return strings.Join(parts, "; ")
}

func sameEKU(c *x509.Certificate, want []x509.ExtKeyUsage) bool {
	if len(c.UnknownExtKeyUsage) > 0 {
		return false
	}
	have := slices.Clone(c.ExtKeyUsage)
	slices.Sort(have)
	have = slices.Compact(have)
	w := slices.Clone(want)
	slices.Sort(w)
	return slices.Equal(have, w)
}

func ekuNames(ekus []x509.ExtKeyUsage, unknown []asn1.ObjectIdentifier) string {
	names := make([]string, 0, len(ekus)+len(unknown))
	for _, e := range ekus {
		switch e {
		case x509.ExtKeyUsageServerAuth:
			names = append(names, "serverAuth")
		case x509.ExtKeyUsageClientAuth:
			names = append(names, "clientAuth")
		case x509.ExtKeyUsageAny:
			names = append(names, "any")
		default:
			names = append(names, fmt.Sprintf("eku(%d)", e))
		}
	}
	for _, o := range unknown {
		names = append(names, o.String())
	}
	if len(names) == 0 {
		return "none"
	}
	return "[" + strings.Join(names, " ") + "]"
}
