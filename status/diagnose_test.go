package status

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/etcdbake/etcdbake/internal/testcluster"
	"github.com/etcdbake/etcdbake/pki"
)

// tlsServer serves TLS with the given certificate on addr (127.0.0.x:0) and answers
// nothing useful: the handshake is what is diagnosed.
func tlsServer(t *testing.T, addr, crt, key string) string {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(crt, key)
	if err != nil {
		t.Fatal(err)
	}
	l, err := tls.Listen("tcp", addr, &tls.Config{Certificates: []tls.Certificate{pair}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.(*tls.Conn).Handshake()
				buf := make([]byte, 512)
				_, _ = c.Read(buf)
			}()
		}
	}()
	return "https://" + l.Addr().String()
}

// silentServer accepts connections and never answers.
func silentServer(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var held []net.Conn
	t.Cleanup(func() {
		l.Close()
		for _, c := range held {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	return "https://" + l.Addr().String()
}

func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// TestDiagnose runs the diagnosis against real listeners on 127.0.0.x, one per cause, and
// a real etcd (embed) with the project's PKI for the healthy case, an http:// endpoint to
// it, and a client certificate from another CA; each message must name the cause and
// what to check, and a refused port must be reported at once.
func TestDiagnose(t *testing.T) {
	c := testcluster.Spec(t, "diag", 1, 31)
	tc := testcluster.StartAll(t, c)
	ca, crt, key := tc.ClientFiles("admin")
	tlsCfg, err := TLSConfig(ca, crt, key)
	if err != nil {
		t.Fatal(err)
	}
	probe := Probe{TLS: tlsCfg, CAFile: ca, Timeout: 5 * time.Second}

	// Another PKI for the same spec: its CA is not ours.
	otherDir := filepath.Join(t.TempDir(), "pki")
	if _, err := pki.Ensure(c, otherDir, time.Now()); err != nil {
		t.Fatal(err)
	}
	foreignSrv, foreignSrvKey := pki.NodeCertPath(otherDir, "m1", "server")
	ownSrv, ownSrvKey := pki.NodeCertPath(tc.PKIDir, "m1", "server")
	foreignCrt, foreignKey := pki.ClientCertPath(otherDir, "admin")
	foreignCfg, err := TLSConfig(ca, foreignCrt, foreignKey)
	if err != nil {
		t.Fatal(err)
	}
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "hello") }))
	defer plain.Close()
	etcdURL := c.ClientURL(c.Nodes[0])
	etcdHostPort := strings.TrimPrefix(etcdURL, "https://")

	cases := []struct {
		name     string
		endpoint string
		probe    Probe
		timeout  time.Duration
		cause    Cause
		phrases  []string
		within   time.Duration
	}{
		{"healthy etcd", etcdURL, probe, 0, CauseOK, []string{"etcd 3.6.16 answers"}, 5 * time.Second},
		{"closed port", "https://" + closedPort(t), probe, 0, CauseRefused, []string{"connection refused", "nothing listens on 127.0.0.1:"}, time.Second},
		{"certificate from another CA", tlsServer(t, "127.0.0.1:0", foreignSrv, foreignSrvKey), probe, 0, CauseUnknownAuthority,
			[]string{`issued by "CN=diag etcd CA`, "not the CA in " + ca, "another PKI"}, 5 * time.Second},
		// Go checks the name first; the other CA is still what is said.
		{"another CA and another name", tlsServer(t, "127.0.0.78:0", foreignSrv, foreignSrvKey), probe, 0, CauseUnknownAuthority,
			[]string{`issued by "CN=diag etcd CA`, "not the CA in " + ca, "not 127.0.0.78", "not a server of this cluster"}, 5 * time.Second},
		{"name mismatch", tlsServer(t, "127.0.0.77:0", ownSrv, ownSrvKey), probe, 0, CauseNameMismatch,
			[]string{"not valid for 127.0.0.77", "it names m1, localhost, 127.0.0.31, 127.0.0.1, ::1"}, 5 * time.Second},
		{"plain HTTP on a TLS port", strings.Replace(plain.URL, "http://", "https://", 1), probe, 0, CausePlainHTTP,
			[]string{"speaks plain HTTP, not TLS"}, 5 * time.Second},
		{"http:// endpoint to a TLS server", "http://" + etcdHostPort, probe, 0, CauseTLSServer,
			[]string{"the endpoint is http:// but the server at " + etcdHostPort + " speaks TLS: use https://" + etcdHostPort}, 5 * time.Second},
		{"plain HTTP that is not etcd", plain.URL, probe, 0, CauseNotEtcd, []string{"answers HTTP but not as etcd", `"hello"`}, 5 * time.Second},
		{"client certificate from another CA", etcdURL, Probe{TLS: foreignCfg, CAFile: ca}, 0, CauseClientCertRejected,
			[]string{"rejected this client's certificate", "remote error: tls:"}, 5 * time.Second},
		{"accepts but never answers", silentServer(t), probe, 700 * time.Millisecond, CauseTimeout,
			[]string{"no answer within 700ms", "accepts connections but did not answer the TLS handshake"}, 3 * time.Second},
		{"not a URL", "127.0.0.1:2379", probe, 0, CauseOther, []string{"want https://HOST:PORT"}, time.Second},
	}
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			p := tt.probe
			if tt.timeout != 0 {
				p.Timeout = tt.timeout
			}
			d := Diagnose(context.Background(), tt.endpoint, p)
			t.Logf("%s (%s, %s)", d, d.Cause, d.Elapsed.Round(time.Millisecond))
			if d.Cause != tt.cause {
				t.Errorf("cause %q, want %q", d.Cause, tt.cause)
			}
			for _, ph := range tt.phrases {
				if !strings.Contains(d.Message, ph) {
					t.Errorf("message %q lacks %q", d.Message, ph)
				}
			}
			if d.Endpoint != tt.endpoint || d.Elapsed > tt.within {
				t.Errorf("endpoint %q, took %s (want under %s)", d.Endpoint, d.Elapsed, tt.within)
			}
			if tt.timeout != 0 && d.Elapsed < tt.timeout {
				t.Errorf("gave up after %s, before the timeout %s", d.Elapsed, tt.timeout)
			}
		})
	}

	// DiagnoseAll runs in parallel: a silent server does not delay the others' answers
	// beyond one timeout.
	start := time.Now()
	ds := DiagnoseAll(context.Background(), []string{silentServer(t), "https://" + closedPort(t), etcdURL}, Probe{TLS: tlsCfg, CAFile: ca, Timeout: time.Second})
	if took := time.Since(start); took > 2500*time.Millisecond {
		t.Errorf("DiagnoseAll took %s for a 1 s timeout", took)
	}
	if ds[0].Cause != CauseTimeout || ds[1].Cause != CauseRefused || !ds[2].OK() || ds[1].Elapsed > 500*time.Millisecond {
		t.Errorf("DiagnoseAll: %+v", ds)
	}
}

// TestCollectSaysWhy: Collect reports each endpoint's cause instead of the etcd client's
// "context deadline exceeded", at once for refused ports; a member known to be down is
// reported under its given endpoint without being dialled.
func TestCollectSaysWhy(t *testing.T) {
	c := testcluster.Spec(t, "why", 3, 41)
	tc := testcluster.StartAll(t, c)
	ca, crt, key := tc.ClientFiles("admin")
	ctx := context.Background()

	// Nothing answers: one error naming each endpoint's cause, well before the timeout.
	closed1, closed2 := "https://"+closedPort(t), "https://"+closedPort(t)
	start := time.Now()
	_, err := Collect(ctx, c, Options{Endpoints: []string{closed1, closed2}, CAFile: ca, CertFile: crt, KeyFile: key, Timeout: 5 * time.Second})
	var ue *UnreachableError
	if !errors.As(err, &ue) || len(ue.Diagnoses) != 2 || time.Since(start) > 2*time.Second {
		t.Fatalf("Collect with closed ports: %v after %s", err, time.Since(start))
	}
	for _, ep := range []string{closed1, closed2} {
		if !strings.Contains(err.Error(), ep+": connection refused") {
			t.Errorf("error %q does not say %s is refused", err, ep)
		}
	}
	if strings.Contains(err.Error(), "deadline") {
		t.Errorf("error still says deadline: %v", err)
	}

	// m3 stopped: its row says connection refused, under its endpoint, quickly.
	tc.Stop("m3")
	start = time.Now()
	st, err := Collect(ctx, c, Options{CAFile: ca, CertFile: crt, KeyFile: key, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	m3 := st.Members[2]
	if m3.Name != "m3" || m3.Healthy || m3.Cause != CauseRefused || !strings.Contains(m3.Error, "connection refused") || m3.Endpoint != c.ClientURL(c.Nodes[2]) {
		t.Errorf("m3: %+v", m3)
	}
	if took := time.Since(start); took > 4*time.Second {
		t.Errorf("Collect took %s with a refused member", took)
	}
	if len(st.Unreachable) != 1 || st.Unreachable[0].Endpoint != c.ClientURL(c.Nodes[2]) {
		t.Errorf("unreachable: %+v", st.Unreachable)
	}

	// Known not running (as `etcdbake up` knows of a dead VM): the reason, the given
	// endpoint, no dial.
	shown := "https://127.0.0.1:1"
	st, err = Collect(ctx, c, Options{CAFile: ca, CertFile: crt, KeyFile: key, Timeout: 5 * time.Second,
		NodeEndpoints: map[string]string{"m3": shown}, NotRunning: map[string]string{"m3": "its VM is not running"}})
	if err != nil {
		t.Fatal(err)
	}
	if m3 := st.Members[2]; m3.Cause != CauseNotRunning || m3.Error != "its VM is not running" || m3.Endpoint != shown || len(st.Unreachable) != 1 {
		t.Errorf("m3 not running: %+v, unreachable %+v", m3, st.Unreachable)
	}
}

// TestJSONKeysAreCamelCase: every key `etcdbake status -o json` can print is camelCase
// (initialisms upper-case after the first word, as in clusterID and publicIP).
func TestJSONKeysAreCamelCase(t *testing.T) {
	days := 3
	st := Cluster{ClusterID: "1", Leader: "m1", Quorum: true,
		Members:     []Member{{Name: "m1", ID: "a", Endpoint: "https://x:1", Error: "e", Cause: CauseRefused, Version: "3.6.16", CertDaysLeft: &days}},
		Flannel:     []Lease{{Subnet: "10.244.1.0/24", PublicIP: "10.0.0.1", Node: "m1"}},
		Unreachable: []Diagnosis{{Endpoint: "https://x:1", Cause: CauseRefused, Message: "m", Version: "v"}}}
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				keys = append(keys, k)
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	walk(v)
	camel := regexp.MustCompile(`^[a-z][a-zA-Z]*$`)
	if len(keys) < 20 {
		t.Fatalf("only %d keys in %s", len(keys), b)
	}
	for _, k := range keys {
		if !camel.MatchString(k) {
			t.Errorf("key %q is not camelCase", k)
		}
	}
}
