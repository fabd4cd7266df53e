package status

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Cause is why an endpoint does (not) answer, as found by Diagnose.
type Cause string

// The causes Diagnose tells apart.
const (
	// CauseOK: the TLS handshake (or plain connection for http://) worked and the server
	// answered etcd's GET /version.
	CauseOK Cause = "ok"
	// CauseRefused: nothing listens on the port (reported at once).
	CauseRefused Cause = "connectionRefused"
	// CauseClosed: the port accepted the connection and closed it before answering (a
	// forward with nothing listening behind it, e.g. a VM whose etcd is not up yet).
	CauseClosed Cause = "connectionClosed"
	// CauseTimeout: no answer within the timeout (an address not reachable from here, or
	// a server that accepts connections and never answers).
	CauseTimeout Cause = "timeout"
	// CauseUnknownAuthority: the server's certificate is not signed by the CA file used.
	CauseUnknownAuthority Cause = "unknownAuthority"
	// CauseNameMismatch: the server's certificate does not name the endpoint's host.
	CauseNameMismatch Cause = "nameMismatch"
	// CauseCertInvalid: the server's certificate is expired or not yet valid, or otherwise
	// unusable.
	CauseCertInvalid Cause = "certificateInvalid"
	// CauseClientCertRejected: the server refused this client's certificate.
	CauseClientCertRejected Cause = "clientCertificateRejected"
	// CausePlainHTTP: an https:// endpoint whose server speaks plain HTTP.
	CausePlainHTTP Cause = "plainHTTP"
	// CauseTLSServer: an http:// endpoint whose server speaks TLS.
	CauseTLSServer Cause = "tlsServer"
	// CauseNotEtcd: the server answers HTTP(S) but not as etcd does.
	CauseNotEtcd Cause = "notEtcd"
	// CauseOther: anything else (a bad URL, an unknown host name, ...); see the message.
	CauseOther Cause = "other"
)

// Probe is how Diagnose reaches an endpoint.
type Probe struct {
	// TLS holds the client certificate and the trusted CAs (as from TLSConfig);
	// ServerName is set per endpoint.
	TLS *tls.Config
	// CAFile names the CA file behind TLS.RootCAs, for messages.
	CAFile string
	// Timeout bounds each endpoint's diagnosis (default 5 s).
	Timeout time.Duration
}

// Diagnosis is what one endpoint answered.
type Diagnosis struct {
	Endpoint string `json:"endpoint"`
	Cause    Cause  `json:"cause"`
	// Message says what is wrong and what to check, for people.
	Message string `json:"message"`
	// Version is the etcd server version, when it answered.
	Version string `json:"version,omitempty"`
	// Elapsed is how long the diagnosis took.
	Elapsed time.Duration `json:"-"`
}

// OK says whether the endpoint answered as an etcd server with this client's TLS setup.
func (d Diagnosis) OK() bool { return d.Cause == CauseOK }

func (d Diagnosis) String() string { return d.Endpoint + ": " + d.Message }

// UnreachableError is returned when no endpoint answered; it holds each one's diagnosis.
type UnreachableError struct {
	Diagnoses []Diagnosis `json:"unreachable"`
	// NotRunning are the members known to be down, not asked (Options.NotRunning).
	NotRunning map[string]string `json:"notRunning,omitempty"`
}

func (e *UnreachableError) Error() string {
	var b strings.Builder
	b.WriteString("no endpoint answered:")
	for _, d := range e.Diagnoses {
		b.WriteString("\n  " + d.String())
	}
	names := make([]string, 0, len(e.NotRunning))
	for n := range e.NotRunning {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		b.WriteString("\n  " + n + ": " + e.NotRunning[n])
	}
	return b.String()
}

// DiagnoseAll diagnoses the endpoints in parallel, in their order.
func DiagnoseAll(ctx context.Context, endpoints []string, p Probe) []Diagnosis {
	out := make([]Diagnosis, len(endpoints))
	var wg sync.WaitGroup
	for i, ep := range endpoints {
		wg.Add(1)
		go func() { defer wg.Done(); out[i] = Diagnose(ctx, ep, p) }()
	}
	wg.Wait()
	return out
}

// Diagnose dials the endpoint directly, does the TLS handshake an etcd client would
// (https://) and asks GET /version, and says in words what went wrong: connection refused
// (at once), the connection closed, no answer in time, a certificate from another CA, a
// name mismatch, plain HTTP on a TLS port or TLS on an http:// endpoint, a rejected client
// certificate, or a server that is not etcd.
func Diagnose(ctx context.Context, endpoint string, p Probe) Diagnosis {
	start := time.Now()
	d := diagnose(ctx, endpoint, p)
	d.Endpoint, d.Elapsed = endpoint, time.Since(start)
	return d
}

func diagnose(ctx context.Context, endpoint string, p Probe) Diagnosis {
	if p.Timeout <= 0 {
		p.Timeout = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, p.Timeout)
	defer cancel()
	u, err := url.Parse(endpoint)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return Diagnosis{Cause: CauseOther, Message: fmt.Sprintf("not an endpoint URL: want https://HOST:PORT, got %q", endpoint)}
	}
	host, port := u.Hostname(), u.Port()
	if port == "" {
		port = "2379"
	}
	addr := net.JoinHostPort(host, port)
	var dialer net.Dialer
	conn, err := dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return dialFailure(ctx, addr, p.Timeout, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	if u.Scheme == "http" {
		return diagnosePlain(ctx, conn, addr, host, p)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if p.TLS != nil {
		cfg = p.TLS.Clone()
	}
	cfg.ServerName, cfg.NextProtos = host, nil
	tc := tls.Client(conn, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return handshakeFailure(ctx, addr, p, err)
	}
	// In TLS 1.3 the server checks the client's certificate after the client has
	// finished its handshake: a rejection shows on the first read.
	return askVersion(ctx, tc, addr, p, true)
}

// dialFailure explains a failed TCP connect.
func dialFailure(ctx context.Context, addr string, timeout time.Duration, err error) Diagnosis {
	var dnsErr *net.DNSError
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return Diagnosis{Cause: CauseRefused, Message: fmt.Sprintf("connection refused: nothing listens on %s (is etcd running there, is the port right?)", addr)}
	case isTimeout(ctx, err):
		return Diagnosis{Cause: CauseTimeout, Message: fmt.Sprintf("no answer within %s: connecting to %s timed out (is the address reachable from here?)", timeout, addr)}
	case errors.As(err, &dnsErr):
		return Diagnosis{Cause: CauseOther, Message: fmt.Sprintf("cannot resolve host %q: %v", dnsErr.Name, dnsErr.Err)}
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return Diagnosis{Cause: CauseOther, Message: fmt.Sprintf("%s is not reachable from here: %v", addr, err)}
	}
	return Diagnosis{Cause: CauseOther, Message: fmt.Sprintf("connecting to %s: %v", addr, err)}
}

// chainsTo reports whether cert verifies against cfg's trusted CAs, ignoring its names.
func chainsTo(cert *x509.Certificate, cfg *tls.Config) bool {
	if cert == nil || cfg == nil {
		return false
	}
	_, err := cert.Verify(x509.VerifyOptions{Roots: cfg.RootCAs, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	return err == nil
}

// handshakeFailure explains a failed TLS handshake.
func handshakeFailure(ctx context.Context, addr string, p Probe, err error) Diagnosis {
	var ua x509.UnknownAuthorityError
	var hn x509.HostnameError
	var inv x509.CertificateInvalidError
	var rh tls.RecordHeaderError
	caFile := p.CAFile
	if caFile == "" {
		caFile = "the system's CAs"
	}
	switch {
	case errors.As(err, &ua):
		issuer := "(unknown)"
		if ua.Cert != nil {
			issuer = fmt.Sprintf("%q", ua.Cert.Issuer.String())
		}
		return Diagnosis{Cause: CauseUnknownAuthority, Message: fmt.Sprintf(
			"TLS: the server's certificate is issued by %s, which is not the CA in %s: the cluster was set up with another PKI (use the --out it was made with)",
			issuer, caFile)}
	case errors.As(err, &hn) && !chainsTo(hn.Certificate, p.TLS):
		// Go checks the name before the chain: a certificate from another CA that also
		// has other names is first of all from another CA.
		return Diagnosis{Cause: CauseUnknownAuthority, Message: fmt.Sprintf(
			"TLS: the server's certificate is issued by %q, which is not the CA in %s (and it names %s, not %s): this is not a server of this cluster (use the --out it was made with, and check the endpoint)",
			hn.Certificate.Issuer.String(), caFile, sanList(hn.Certificate), hn.Host)}
	case errors.As(err, &hn):
		return Diagnosis{Cause: CauseNameMismatch, Message: fmt.Sprintf(
			"TLS: the server's certificate is not valid for %s; it names %s (use an endpoint with one of these names or addresses, or add it to the node and re-run `etcdbake pki`)",
			hn.Host, sanList(hn.Certificate))}
	case errors.As(err, &inv):
		return Diagnosis{Cause: CauseCertInvalid, Message: fmt.Sprintf("TLS: the server's certificate is not usable: %v (check the clocks and `etcdbake pki check`)", inv)}
	case errors.As(err, &rh):
		if looksHTTP(rh.RecordHeader[:]) {
			return Diagnosis{Cause: CausePlainHTTP, Message: fmt.Sprintf("the server at %s speaks plain HTTP, not TLS: etcdbake's clusters serve https (is this the etcd client port?)", addr)}
		}
		return Diagnosis{Cause: CauseOther, Message: fmt.Sprintf("the server at %s does not speak TLS (it answered %q)", addr, rh.RecordHeader[:])}
	case isRemoteAlert(err):
		return Diagnosis{Cause: CauseClientCertRejected, Message: fmt.Sprintf("TLS: the server rejected the handshake (%v): is the client certificate from this cluster's CA (run `etcdbake pki`, check --out)?", err)}
	case isTimeout(ctx, err):
		return Diagnosis{Cause: CauseTimeout, Message: fmt.Sprintf("no answer within %s: %s accepts connections but did not answer the TLS handshake (a hung server, or a different protocol)", p.Timeout, addr)}
	case isClosed(err):
		return Diagnosis{Cause: CauseClosed, Message: fmt.Sprintf("%s accepted the connection and closed it during the TLS handshake (nothing listening behind a forward yet, or a server that is starting)", addr)}
	}
	return Diagnosis{Cause: CauseOther, Message: fmt.Sprintf("TLS handshake with %s: %v", addr, err)}
}

// diagnosePlain asks an http:// endpoint; when it does not answer HTTP it checks whether
// the port speaks TLS.
func diagnosePlain(ctx context.Context, conn net.Conn, addr, host string, p Probe) Diagnosis {
	d := askVersion(ctx, conn, addr, p, false)
	if d.OK() || d.Cause == CauseTimeout || d.Cause == CauseRefused {
		return d
	}
	// A Go TLS server answers an HTTP request with a 400 "Client sent an HTTP request to
	// an HTTPS server", others close the connection or send an alert: try a handshake.
	var dialer net.Dialer
	c2, err := dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return d
	}
	defer c2.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c2.SetDeadline(dl)
	}
	tc := tls.Client(c2, &tls.Config{ServerName: host, InsecureSkipVerify: true}) // only to see whether it speaks TLS
	if tc.HandshakeContext(ctx) == nil {
		return Diagnosis{Cause: CauseTLSServer, Message: fmt.Sprintf("the endpoint is http:// but the server at %s speaks TLS: use https://%s", addr, addr)}
	}
	return d
}

// askVersion sends GET /version on an established connection and checks the answer is
// etcd's.
func askVersion(ctx context.Context, conn net.Conn, addr string, p Probe, isTLS bool) Diagnosis {
	req := "GET /version HTTP/1.1\r\nHost: " + addr + "\r\nConnection: close\r\nUser-Agent: etcdbake-status\r\n\r\n"
	if _, err := io.WriteString(conn, req); err != nil {
		return readFailure(ctx, addr, p, isTLS, err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return readFailure(ctx, addr, p, isTLS, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	var v struct {
		Server string `json:"etcdserver"`
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &v) != nil || v.Server == "" {
		if !isTLS && strings.Contains(string(body), "HTTPS server") {
			return Diagnosis{Cause: CauseTLSServer, Message: fmt.Sprintf("the endpoint is http:// but the server at %s speaks TLS: use https://%s", addr, addr)}
		}
		return Diagnosis{Cause: CauseNotEtcd, Message: fmt.Sprintf("%s answers HTTP but not as etcd (GET /version: %s %q): is this the etcd client port?", addr, resp.Status, firstLine(body))}
	}
	return Diagnosis{Cause: CauseOK, Version: v.Server, Message: "etcd " + v.Server + " answers"}
}

func readFailure(ctx context.Context, addr string, p Probe, isTLS bool, err error) Diagnosis {
	switch {
	case isTLS && isRemoteAlert(err):
		return Diagnosis{Cause: CauseClientCertRejected, Message: fmt.Sprintf("TLS: the server rejected this client's certificate (%v): is it from this cluster's CA (run `etcdbake pki`, check --out)?", err)}
	case isTimeout(ctx, err):
		return Diagnosis{Cause: CauseTimeout, Message: fmt.Sprintf("no answer within %s: %s accepted the connection but did not answer GET /version", p.Timeout, addr)}
	case isClosed(err):
		return Diagnosis{Cause: CauseClosed, Message: fmt.Sprintf("%s accepted the connection and closed it without answering (nothing listening behind a forward yet, or a server that is starting)", addr)}
	}
	return Diagnosis{Cause: CauseOther, Message: fmt.Sprintf("GET /version from %s: %v", addr, err)}
}

func isTimeout(ctx context.Context, err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) ||
		(errors.As(err, &ne) && ne.Timeout()) || ctx.Err() == context.DeadlineExceeded
}

// isRemoteAlert: the peer sent a TLS alert (crypto/tls reports it as a net.OpError with
// Op "remote error"; tls.AlertError is for QUIC).
func isRemoteAlert(err error) bool {
	var op *net.OpError
	var alert tls.AlertError
	return (errors.As(err, &op) && op.Op == "remote error") || errors.As(err, &alert)
}

func isClosed(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, net.ErrClosed)
}

func looksHTTP(b []byte) bool {
	s := string(b)
	return strings.HasPrefix(s, "HTTP") || strings.HasPrefix(s, "<")
}

func sanList(c *x509.Certificate) string {
	if c == nil {
		return "no names"
	}
	var names []string
	names = append(names, c.DNSNames...)
	for _, ip := range c.IPAddresses {
		names = append(names, ip.String())
	}
	if len(names) == 0 {
		return "no subject alternative names"
	}
	return strings.Join(names, ", ")
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	if len(s) > 80 {
		s = s[:80] + "..."
	}
	return s
}

// Brief is a cause in a few words, for progress lines and table cells; causes that need
// the detail (certificates, protocols) give the whole message.
func Brief(c Cause, message string) string {
	switch c {
	case CauseOK:
		return "answers"
	case CauseRefused:
		return "connection refused"
	case CauseClosed:
		return "connection closed without an answer"
	case CauseTimeout:
		return "no answer in time"
	case CauseNotRunning:
		return "not running"
	}
	return message
}
