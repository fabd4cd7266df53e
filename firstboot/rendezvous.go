package firstboot

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/url"
	"os"
	"slices"
	"sort"
	"sync"
	"time"
)

// The bootstrap rendezvous. A node with an empty data dir and no bootstrap marker cannot
// tell a cluster that was never started from one whose data it lost with its disk (the
// marker lives on the same disk). Starting a new cluster in the second case, while the
// members that kept their data are down, would let two wiped members form a second
// cluster with the same ID. So a new cluster starts only when EVERY member of the spec
// is fresh at the same time: while it waits, etcd-firstboot serves RendezvousPath on its
// peer address (etcd is not running yet, so the port is free; the firewall already lets
// peers in), with mutual TLS on the peer certificates, and asks every other member in
// turn. A member that kept its data never serves it, so the wiped ones keep refusing
// until the operator restores the cluster.
const RendezvousPath = "/etcdbake/v1/bootstrap"

// DefaultRendezvousWindow is how long one attempt waits for every member to answer.
const DefaultRendezvousWindow = 30 * time.Second

// rendezvousGrace is how long a member that has seen every other keeps answering for
// those that have not seen it yet.
const rendezvousGrace = 3 * time.Second

// rendezvousInfo is what a fresh member says about itself.
type rendezvousInfo struct {
	Name              string `json:"name"`
	Cluster           string `json:"cluster"`
	Token             string `json:"token"`
	ExpectedClusterID string `json:"expectedClusterID"`
	Fresh             bool   `json:"fresh"` // empty data dir and no bootstrap marker
	// Seen are the members this one has seen fresh so far: a member that has seen every
	// other keeps answering until they have all seen it too, so none is left waiting.
	Seen []string `json:"seen,omitempty"`
}

func (a *Agent) rendezvousWindow() time.Duration {
	return durOr(a.RendezvousWindow, durOr(a.Cfg.Timeouts.Rendezvous.D, DefaultRendezvousWindow))
}

// peerTLS is mutual TLS with this node's peer certificate against the peer CA.
func (a *Agent) peerTLS() (*tls.Config, error) {
	if a.Cfg.PeerKey == "" {
		return nil, errors.New("the node file names no peer key (peerKey): rebuild the node's config with this etcdbake")
	}
	pair, err := tls.LoadX509KeyPair(a.Cfg.PeerCert, a.Cfg.PeerKey)
	if err != nil {
		return nil, fmt.Errorf("loading the peer certificate: %w", err)
	}
	caPEM, err := os.ReadFile(a.Cfg.PeerCA)
	if err != nil {
		return nil, fmt.Errorf("reading the peer CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%s holds no certificate", a.Cfg.PeerCA)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{pair},
		RootCAs:      pool,
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS13,
	}, nil
}

// rendezvous serves this node's rendezvous answer on its peer address and asks every
// other member until each has answered as a fresh member of the same cluster, or the
// window has passed. It returns the members that did not (sorted).
func (a *Agent) rendezvous(ctx context.Context) ([]string, error) {
	tc, err := a.peerTLS()
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(a.Cfg.PeerURL)
	if err != nil {
		return nil, fmt.Errorf("peer URL %q: %w", a.Cfg.PeerURL, err)
	}
	me := rendezvousInfo{Name: a.Cfg.Name, Cluster: a.Cfg.Cluster, Token: a.Cfg.Token,
		ExpectedClusterID: hexID(ExpectedClusterID(a.Cfg)), Fresh: true}
	ln, err := tls.Listen("tcp", u.Host, tc)
	if err != nil {
		return nil, fmt.Errorf("serving the bootstrap rendezvous on %s: %w", u.Host, err)
	}
	var mu sync.Mutex
	seen, acked := map[string]bool{}, map[string]bool{}
	mux := http.NewServeMux()
	mux.HandleFunc(RendezvousPath, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		answer := me
		for n := range seen {
			answer.Seen = append(answer.Seen, n)
		}
		mu.Unlock()
		sort.Strings(answer.Seen)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(answer)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ErrorLog: log.New(io.Discard, "", 0)}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: tc, DisableKeepAlives: true}}
	deadline := time.Now().Add(a.rendezvousWindow())
	var others []string
	for _, p := range a.Cfg.Peers {
		if p.Name != a.Cfg.Name {
			others = append(others, p.Name)
		}
	}
	var allSeenAt time.Time
	complete := func(m map[string]bool) bool {
		for _, n := range others {
			if !m[n] {
				return false
			}
		}
		return true
	}
	for {
		var wg sync.WaitGroup
		for _, p := range a.Cfg.Peers {
			mu.Lock()
			done := p.Name == a.Cfg.Name || (seen[p.Name] && acked[p.Name])
			mu.Unlock()
			if done {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				info, err := askRendezvous(ctx, hc, p.PeerURL)
				if err != nil || info.Name != p.Name || info.Cluster != me.Cluster || info.Token != me.Token ||
					info.ExpectedClusterID != me.ExpectedClusterID || !info.Fresh {
					return
				}
				mu.Lock()
				seen[p.Name] = true
				acked[p.Name] = slices.Contains(info.Seen, me.Name)
				mu.Unlock()
			}()
		}
		wg.Wait()
		mu.Lock()
		all, acks := complete(seen), complete(acked)
		mu.Unlock()
		if all && allSeenAt.IsZero() {
			allSeenAt = time.Now()
		}
		// Done when every member was seen and has seen this one, or, having seen them all
		// (all fresh: starting is safe), after a grace in which the slower ones can still
		// see this one (a member that left first cannot say it saw us); at the deadline,
		// with whatever was seen.
		if (all && (acks || time.Since(allSeenAt) >= rendezvousGrace)) || !time.Now().Before(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	mu.Lock()
	defer mu.Unlock()
	var missing []string
	for _, p := range a.Cfg.Peers {
		if p.Name != a.Cfg.Name && !seen[p.Name] {
			missing = append(missing, p.Name)
		}
	}
	sort.Strings(missing)
	return missing, nil
}

func askRendezvous(ctx context.Context, hc *http.Client, peerURL string) (rendezvousInfo, error) {
	var info rendezvousInfo
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, peerURL+RendezvousPath, nil)
	if err != nil {
		return info, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return info, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return info, fmt.Errorf("%s: %s", peerURL, resp.Status)
	}
	err = json.NewDecoder(resp.Body).Decode(&info)
	return info, err
}
