package firstboot

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/beevik/ntp"

	"github.com/etcdbake/etcdbake/spec"
)

// TimeResult is the time gate's decision.
type TimeResult struct {
	Decision string `json:"decision"` // "pass" or "refuse"
	// Source is the reference the clock was measured against: "ntp <host:port>",
	// "peer <client URL>", or "none" when nothing answered.
	Source string `json:"source"`
	// Offset is the local clock minus the reference (positive: the local clock is ahead).
	// Zero when Source is "none".
	Offset time.Duration `json:"offset"`
	// Threshold is the largest |Offset| accepted: time.maxSkew for NTP, time.maxSkew + 1s
	// for a peer's HTTP Date header (which has a resolution of one second).
	Threshold time.Duration `json:"threshold"`
	// Waited is how long the gate took (monotonic time: clock steps do not change it).
	Waited time.Duration `json:"waited"`
	// CertWindow is the tightest validity window of the node's certificates and CAs.
	CertWindow string `json:"certWindow"`
	Message    string `json:"message"`
}

// Time gate decisions.
const (
	timePass   = "pass"
	timeRefuse = "refuse"
)

const (
	ntpQueryTimeout = 2 * time.Second
	// dateResolution is the allowance for a peer's HTTP Date header, which is truncated
	// to whole seconds.
	dateResolution = time.Second
	// timeLogEvery spaces the "waiting for time sync" lines.
	timeLogEvery = 5 * time.Second
)

// TimeGate runs before etcd starts. It waits up to time.syncTimeout for an NTP server of
// time.servers to confirm that the local clock is within time.maxSkew; if no NTP server
// answers at all it measures the skew against the peers' HTTP Date headers instead; and
// it checks that the local time lies inside the validity window of the node's
// certificates and CAs. The local clock is a.now() throughout; deadlines and Waited use
// the monotonic clock, so a clock step by chrony during the wait changes neither.
//
// The error is non-nil exactly when Decision is "refuse": a *RefusalError naming the
// offset, threshold, source and certificate window, or an I/O error (unreadable
// certificates) or the context's error.
func (a *Agent) TimeGate(ctx context.Context) (TimeResult, error) {
	start := time.Now()
	maxSkew := durOr(a.Cfg.Time.MaxSkew.D, spec.DefaultMaxSkew)
	syncTimeout := durOr(a.Cfg.Time.SyncTimeout.D, spec.DefaultSyncTimeout)
	res := TimeResult{Source: "none", Threshold: maxSkew}
	fail := func(err error) (TimeResult, error) {
		res.Decision, res.Waited, res.Message = timeRefuse, time.Since(start).Round(time.Millisecond), err.Error()
		a.logf("time gate: refuse after %s: %v", res.Waited, err)
		return res, err
	}

	// The certificates first: they are cheap to read, and unreadable ones stop everything.
	win, err := loadCertWindow(a.nodeCertPaths())
	if err != nil {
		return fail(fmt.Errorf("time gate: %w", err))
	}
	res.CertWindow = win.String()
	if probs := win.problems(a.now()); len(probs) > 0 {
		a.logf("time gate: local time %s is outside the certificate window %s: waiting for a time reference before deciding",
			rfc3339(a.now()), res.CertWindow)
	}

	m, err := a.waitNTP(ctx, start, maxSkew, syncTimeout)
	if err != nil {
		return fail(fmt.Errorf("time gate interrupted after %s: %w", time.Since(start).Round(time.Millisecond), err))
	}
	if m.source == "" {
		pm, err := a.peerSkew(ctx, maxSkew)
		if err != nil {
			return fail(fmt.Errorf("time gate: %w", err))
		}
		pm.tried = append(m.tried, pm.tried...)
		m = pm
	}

	// Judge the certificates with the clock as it is now: chrony may have stepped it.
	now := a.now()
	res.Waited = time.Since(start).Round(time.Millisecond)
	certProbs := win.problems(now)
	if m.source != "" {
		res.Source, res.Offset, res.Threshold = m.source, m.offset, m.limit
	}

	var clock, certs, hint string
	skewOK := m.source == "" || m.ok
	switch {
	case m.source == "":
		clock = fmt.Sprintf("no time reference answered within %s (%s), so the clock could only be checked against the certificate window (offset not measured, source none, threshold %s)",
			syncTimeout, strings.Join(m.tried, "; "), maxSkew)
	case m.ok:
		clock = fmt.Sprintf("local clock is within %s of %s (offset %s)", m.limitText(maxSkew), m.source, signedOffset(m.offset))
	default:
		clock = fmt.Sprintf("local clock is %s %s %s (offset %s, local minus reference), more than the allowed %s",
			magnitude(m.offset), aheadBehind(m.offset), m.source, signedOffset(m.offset), m.limitText(maxSkew))
		if strings.HasPrefix(m.source, "ntp ") {
			clock += fmt.Sprintf(" after waiting %s (time.syncTimeout) for the clock to be synchronised", syncTimeout)
		}
		hint = "check the node's time synchronisation (`chronyc tracking`, `chronyc sources`) and time.servers"
	}
	if len(certProbs) == 0 {
		certs = fmt.Sprintf("local time %s is inside the certificate window %s", rfc3339(now), res.CertWindow)
	} else {
		certs = fmt.Sprintf("certificate has expired or is not yet valid at local time %s: %s; certificate window %s",
			rfc3339(now), strings.Join(certProbs, "; "), res.CertWindow)
		switch {
		case m.source != "" && m.ok:
			hint = fmt.Sprintf("the clock agrees with %s, so the certificate is wrong: if it really expired, run `etcdbake pki` and install the new certificates on the node", m.source)
		case m.source != "":
			hint += "; the clock is wrong, not (necessarily) the certificate"
		default:
			hint = "either the clock or the certificate is wrong: check the time (`date -u`, `chronyc tracking`); if the certificate really expired, run `etcdbake pki` and install the new certificates on the node"
		}
	}
	msg := clock + "; " + certs
	if hint != "" {
		msg += ": " + hint
	}
	res.Message = fmt.Sprintf("%s (after %s)", msg, res.Waited)

	if skewOK && len(certProbs) == 0 {
		res.Decision = timePass
		if m.source == "" {
			res.Message = "warning: " + res.Message
		}
		a.logf("time gate: pass: %s", res.Message)
		return res, nil
	}
	res.Decision = timeRefuse
	a.logf("time gate: refuse: %s", res.Message)
	return res, &RefusalError{Reason: "time gate: " + res.Message}
}

// timeMeasure is one measurement of the local clock against a reference.
type timeMeasure struct {
	source string        // "" when nothing answered
	offset time.Duration // local minus reference
	limit  time.Duration // the threshold that applies to this source
	ok     bool          // |offset| <= limit
	tried  []string      // what did not answer, for the message when nothing did
}

func (m timeMeasure) limitText(maxSkew time.Duration) string {
	if m.limit == maxSkew {
		return fmt.Sprintf("%s (time.maxSkew)", maxSkew)
	}
	return fmt.Sprintf("%s (time.maxSkew %s + %s for the 1-second resolution of the HTTP Date header)", m.limit, maxSkew, m.limit-maxSkew)
}

// waitNTP polls the NTP servers until one confirms the clock or syncTimeout has passed
// since start. It returns the last valid measurement (source "" if no server gave one)
// and an error only when ctx ends.
func (a *Agent) waitNTP(ctx context.Context, start time.Time, maxSkew, syncTimeout time.Duration) (timeMeasure, error) {
	var last timeMeasure
	if len(a.Cfg.Time.Servers) == 0 {
		last.tried = []string{"no NTP server configured (time.servers)"}
		return last, nil
	}
	var lastLog time.Time
	for {
		var status []string
		for _, s := range a.Cfg.Time.Servers {
			if err := ctx.Err(); err != nil {
				return last, err
			}
			src := "ntp " + ntpAddr(s)
			qt := min(ntpQueryTimeout, max(syncTimeout-time.Since(start), 500*time.Millisecond))
			off, err := a.queryNTP(ctx, ntpAddr(s), qt)
			if err != nil {
				status = append(status, fmt.Sprintf("%s %v", src, err))
				continue
			}
			last = timeMeasure{source: src, offset: off, limit: maxSkew, ok: absDuration(off) <= maxSkew}
			if last.ok {
				return last, nil
			}
			status = append(status, fmt.Sprintf("%s measures offset %s, more than %s", src, signedOffset(off), maxSkew))
		}
		elapsed := time.Since(start)
		if elapsed >= syncTimeout {
			if last.source == "" {
				last.tried = status
			}
			return last, nil
		}
		if lastLog.IsZero() || time.Since(lastLog) >= timeLogEvery {
			a.logf("waiting for time sync: %s (%s of %s)", strings.Join(status, "; "), elapsed.Round(time.Second), syncTimeout)
			lastLog = time.Now()
		}
		if err := sleepOrDone(ctx, min(a.retryEvery(), syncTimeout-elapsed)); err != nil {
			return last, err
		}
	}
}

// queryNTP asks one server and returns the local clock (a.now()) minus the server's. A
// response that is not usable for synchronisation (kiss of death, unsynchronised
// server, stale reference) is an error.
func (a *Agent) queryNTP(ctx context.Context, addr string, timeout time.Duration) (time.Duration, error) {
	var stop func() bool
	defer func() {
		if stop != nil {
			stop()
		}
	}()
	r, err := ntp.QueryWithOptions(addr, ntp.QueryOptions{
		Timeout: timeout,
		// The four NTP timestamps are taken with a.now(), so ClockOffset measures the
		// clock this gate judges.
		GetSystemTime: a.now,
		Dialer: func(_, raddr string) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, "udp", raddr)
			if err == nil {
				stop = context.AfterFunc(ctx, func() { c.Close() })
			}
			return c, err
		},
	})
	if err != nil {
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		return 0, fmt.Errorf("not answering: %w", err)
	}
	if err := r.Validate(); err != nil {
		return 0, fmt.Errorf("answered but is not a usable reference: %w", err)
	}
	return -r.ClockOffset, nil
}

// ntpAddr adds NTP's port 123 to a server written without a port.
func ntpAddr(s string) string {
	if _, _, err := net.SplitHostPort(s); err == nil {
		return s
	}
	return net.JoinHostPort(strings.TrimSuffix(strings.TrimPrefix(s, "["), "]"), "123")
}

// peerSkew measures the local clock against the HTTP Date header of every peer's
// /version endpoint (mutual TLS) and judges the median peer by |offset| (with two, the
// closer one). Source is "" when no peer answers.
func (a *Agent) peerSkew(ctx context.Context, maxSkew time.Duration) (timeMeasure, error) {
	urls := a.peerClientURLs()
	if len(urls) == 0 {
		return timeMeasure{tried: []string{"no peers"}}, nil
	}
	tc, err := a.tlsConfig()
	if err != nil {
		return timeMeasure{}, err
	}
	tc.Time = a.now // verify the peers' certificates with the clock being judged
	tr := &http.Transport{TLSClientConfig: tc, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: a.dialTimeout()}

	type answer struct {
		url    string
		offset time.Duration
		err    error
	}
	answers := make([]answer, len(urls))
	var wg sync.WaitGroup
	for i, u := range urls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			off, err := a.peerOffset(ctx, hc, u)
			answers[i] = answer{u, off, err}
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return timeMeasure{}, err
	}

	var m timeMeasure
	var ok []answer
	for _, an := range answers {
		if an.err != nil {
			m.tried = append(m.tried, fmt.Sprintf("peer %s %v", an.url, an.err))
			continue
		}
		a.logf("time gate: peer %s measures offset %s (HTTP Date, 1-second resolution)", an.url, signedOffset(an.offset))
		ok = append(ok, an)
	}
	if len(ok) == 0 {
		return m, nil
	}
	slices.SortStableFunc(ok, func(x, y answer) int { return cmp.Compare(absDuration(x.offset), absDuration(y.offset)) })
	pick := ok[(len(ok)-1)/2]
	limit := maxSkew + dateResolution
	return timeMeasure{source: "peer " + pick.url, offset: pick.offset, limit: limit, ok: absDuration(pick.offset) <= limit}, nil
}

// peerOffset is the local midpoint of the request minus the peer's Date header plus half
// a second (the header is truncated to whole seconds).
func (a *Agent) peerOffset(ctx context.Context, hc *http.Client, url string) (time.Duration, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(url, "/")+"/version", nil)
	if err != nil {
		return 0, fmt.Errorf("bad URL: %w", err)
	}
	t1 := a.now()
	resp, err := hc.Do(req)
	t2 := a.now()
	if err != nil {
		return 0, fmt.Errorf("not answering: %w", err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	hd := resp.Header.Get("Date")
	date, err := http.ParseTime(hd)
	if err != nil {
		return 0, fmt.Errorf("answered without a usable Date header (%q)", hd)
	}
	mid := t1.Add(t2.Sub(t1) / 2)
	return mid.Sub(date.Add(dateResolution / 2)), nil
}

// nodeCertPaths are the certificates whose validity the gate checks, in report order.
func (a *Agent) nodeCertPaths() []string {
	var out []string
	for _, p := range []string{a.Cfg.ServerCert, a.Cfg.PeerCert, a.Cfg.ClientCert, a.Cfg.CA, a.Cfg.PeerCA} {
		if p != "" && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

type certValidity struct {
	name                string
	notBefore, notAfter time.Time
}

// certWindow is the intersection of the certificates' validity windows.
type certWindow struct {
	certs               []certValidity
	notBefore, notAfter time.Time
	nbFrom, naFrom      string
}

func loadCertWindow(paths []string) (certWindow, error) {
	var w certWindow
	for _, p := range paths {
		c, err := readCertFile(p)
		if err != nil {
			return w, fmt.Errorf("reading certificate %s: %w", p, err)
		}
		cv := certValidity{filepath.Base(p), c.NotBefore.UTC(), c.NotAfter.UTC()}
		w.certs = append(w.certs, cv)
		if w.nbFrom == "" || cv.notBefore.After(w.notBefore) {
			w.notBefore, w.nbFrom = cv.notBefore, cv.name
		}
		if w.naFrom == "" || cv.notAfter.Before(w.notAfter) {
			w.notAfter, w.naFrom = cv.notAfter, cv.name
		}
	}
	return w, nil
}

func (w certWindow) String() string {
	if len(w.certs) == 0 {
		return "none (no certificates configured)"
	}
	from := w.nbFrom
	if w.naFrom != w.nbFrom {
		from = "not before of " + w.nbFrom + ", not after of " + w.naFrom
	}
	return fmt.Sprintf("%s .. %s (%s, tightest of node certs and CAs)", rfc3339(w.notBefore), rfc3339(w.notAfter), from)
}

// problems names every certificate that is not valid at now (x509: valid when
// NotBefore <= now <= NotAfter); certificates with the same window share one entry.
func (w certWindow) problems(now time.Time) []string {
	type group struct {
		state string
		cert  certValidity
		names []string
	}
	var groups []*group
	for _, c := range w.certs {
		state := ""
		switch {
		case now.Before(c.notBefore):
			state = "not yet valid"
		case now.After(c.notAfter):
			state = "expired"
		default:
			continue
		}
		i := slices.IndexFunc(groups, func(g *group) bool {
			return g.state == state && g.cert.notBefore.Equal(c.notBefore) && g.cert.notAfter.Equal(c.notAfter)
		})
		if i < 0 {
			groups = append(groups, &group{state: state, cert: c})
			i = len(groups) - 1
		}
		groups[i].names = append(groups[i].names, c.name)
	}
	var out []string
	for _, g := range groups {
		verb := map[bool]string{true: "is", false: "are"}[len(g.names) == 1]
		if g.state == "expired" {
			verb = map[bool]string{true: "has", false: "have"}[len(g.names) == 1]
		}
		out = append(out, fmt.Sprintf("%s %s %s (notBefore %s, notAfter %s)",
			strings.Join(g.names, ", "), verb, g.state, rfc3339(g.cert.notBefore), rfc3339(g.cert.notAfter)))
	}
	return out
}

func sleepOrDone(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func absDuration(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}

func rfc3339(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// fmtOffset writes a signed offset to the millisecond ("+0s", "-5.001s").
func signedOffset(d time.Duration) string {
	s := d.Round(time.Millisecond).String()
	if d >= 0 {
		return "+" + s
	}
	return s
}

func magnitude(d time.Duration) string { return absDuration(d).Round(time.Millisecond).String() }

func aheadBehind(d time.Duration) string {
	if d < 0 {
		return "behind"
	}
	return "ahead of"
}
