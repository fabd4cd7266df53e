// Package status asks a running cluster how it is, member by member, over the etcd v3
// API with mutual TLS.
package status

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/etcdbake/etcdbake/backup"
	"github.com/etcdbake/etcdbake/pki"
	"github.com/etcdbake/etcdbake/spec"
)

// Options say how to reach the cluster.
type Options struct {
	// Endpoints default to the spec's client URLs.
	Endpoints []string
	CAFile    string
	CertFile  string
	KeyFile   string
	// PKIDir is read for each node's certificate lifetimes (may be empty).
	PKIDir  string
	Timeout time.Duration
	Now     time.Time
	// NodeEndpoints maps member names to the endpoint that reaches each (e.g. the
	// forwarded ports of `etcdbake up`), so that a member that does not answer is shown
	// under that endpoint with its diagnosis (default: the member's advertised URL).
	NodeEndpoints map[string]string
	// NotRunning names members known to be down without asking (member name -> why, e.g.
	// "its VM is not running"); they are reported with that reason and not dialled.
	NotRunning map[string]string
}

// Member is one row of the status table.
type Member struct {
	Name     string `json:"name"`
	ID       string `json:"id"`
	Endpoint string `json:"endpoint"`
	Healthy  bool   `json:"healthy"`
	Error    string `json:"error,omitempty"`
	// Cause classifies Error (see Diagnose; "notRunning" for Options.NotRunning).
	Cause     Cause  `json:"cause,omitempty"`
	Leader    bool   `json:"leader"`
	Learner   bool   `json:"learner"`
	RaftTerm  uint64 `json:"raftTerm"`
	RaftIndex uint64 `json:"raftIndex"`
	Version   string `json:"version"`
	// DBSize is the database file's size; DBSizeInUse what its data takes (the rest is
	// free pages that defragmentation returns); QuotaPercent is DBSize of the spec's
	// etcd.quotaBackendBytes (etcd stops taking writes at 100%: NOSPACE).
	DBSize       int64   `json:"dbSize"`
	DBSizeInUse  int64   `json:"dbSizeInUse"`
	QuotaPercent float64 `json:"quotaPercent"`
	// CertDaysLeft is the fewest days left on the node's server and peer certificates
	// (nil when the PKI directory has none for this member).
	CertDaysLeft *int `json:"certDaysLeft,omitempty"`
	// Boot is what the node published about its boot (A/B slot, release, fallback);
	// nil for nodes without slots (Ignition on Fedora CoreOS / Flatcar) or not yet
	// published.
	Boot *spec.NodeRecord `json:"boot,omitempty"`
}

// Cluster is the whole answer.
type Cluster struct {
	ClusterID string   `json:"clusterID"`
	Leader    string   `json:"leader"`
	Members   []Member `json:"members"`
	// Quorum says whether a majority of voting members answered.
	Quorum bool `json:"quorum"`
	// Flannel lists the subnet leases under the spec's flannel prefix (empty when the
	// cluster could not be read).
	Flannel []Lease `json:"flannelLeases"`
	// Unreachable holds the diagnosis of each endpoint that did not answer.
	Unreachable []Diagnosis `json:"unreachable,omitempty"`
	// Alarms are the cluster's raised alarms (NOSPACE, CORRUPT), per member.
	Alarms []Alarm `json:"alarms,omitempty"`
	// Snapshot is the cluster's newest scheduled snapshot (spec backup; nil: none yet).
	Snapshot *spec.SnapshotRecord `json:"snapshot,omitempty"`
	// Warnings say what needs the operator before it stops the cluster.
	Warnings []string `json:"warnings,omitempty"`
}

// Alarm is one raised alarm.
type Alarm struct {
	Member string `json:"member"`
	Alarm  string `json:"alarm"`
}

// CauseNotRunning marks a member named in Options.NotRunning.
const CauseNotRunning Cause = "notRunning"

// Lease is one flanneld subnet lease.
type Lease struct {
	Subnet   string `json:"subnet"`
	PublicIP string `json:"publicIP"`
	// Node is the spec node whose address is PublicIP ("" if none).
	Node string `json:"node,omitempty"`
}

// TLSConfig loads the client certificate and CA for talking to etcd.
func TLSConfig(caFile, certFile, keyFile string) (*tls.Config, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("loading client certificate %s: %w (run `etcdbake pki`)", certFile, err)
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("reading CA %s: %w (run `etcdbake pki`)", caFile, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%s holds no PEM certificate", caFile)
	}
	return &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: pool, MinVersion: tls.VersionTLS13}, nil
}

// Collect connects with the given client certificate and reports every member.
func Collect(ctx context.Context, c *spec.Cluster, o Options) (*Cluster, error) {
	if len(o.Endpoints) == 0 {
		o.Endpoints = c.ClientEndpoints()
	}
	if o.Timeout == 0 {
		o.Timeout = 5 * time.Second
	}
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	tlsCfg, err := TLSConfig(o.CAFile, o.CertFile, o.KeyFile)
	if err != nil {
		return nil, err
	}
	// Each endpoint is diagnosed first, in parallel, by a direct dial and TLS handshake:
	// the etcd client would only say "context deadline exceeded" after the full timeout.
	var asked []string
	for _, ep := range o.Endpoints {
		skip := false
		for name := range o.NotRunning {
			skip = skip || o.NodeEndpoints[name] == ep
		}
		if !skip {
			asked = append(asked, ep)
		}
	}
	probe := Probe{TLS: tlsCfg, CAFile: o.CAFile, Timeout: o.Timeout}
	diag := map[string]Diagnosis{}
	var good []string
	var bad []Diagnosis
	for _, d := range DiagnoseAll(ctx, asked, probe) {
		diag[d.Endpoint] = d
		if d.OK() {
			good = append(good, d.Endpoint)
		} else {
			bad = append(bad, d)
		}
	}
	if len(good) == 0 {
		return nil, &UnreachableError{Diagnoses: bad, NotRunning: o.NotRunning}
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   good,
		TLS:         tlsCfg,
		DialTimeout: o.Timeout,
		DialOptions: []grpc.DialOption{grpc.WithBlock()},
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("connecting to %v: %w", good, explain(err))
	}
	defer cli.Close()

	lctx, cancel := context.WithTimeout(ctx, o.Timeout)
	ml, err := cli.MemberList(lctx)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("listing members via %v: %w", good, explain(err))
	}
	out := &Cluster{ClusterID: fmt.Sprintf("%x", ml.Header.ClusterId), Unreachable: bad}
	byID := map[uint64]*Member{}
	for _, m := range ml.Members {
		mem := Member{Name: m.Name, ID: fmt.Sprintf("%x", m.ID), Learner: m.IsLearner, Error: "no endpoint answered for this member"}
		if mem.Name == "" {
			mem.Name = "(not started)"
		}
		if len(m.ClientURLs) > 0 {
			mem.Endpoint = m.ClientURLs[0]
		}
		out.Members = append(out.Members, mem)
	}
	for i := range out.Members {
		id := ml.Members[i].ID
		byID[id] = &out.Members[i]
	}
	// Ask each endpoint that answered the probe for its member's status.
	for _, ep := range good {
		sctx, cancel := context.WithTimeout(ctx, o.Timeout)
		st, err := cli.Status(sctx, ep)
		cancel()
		if err != nil {
			continue
		}
		m, ok := byID[st.Header.MemberId]
		if !ok {
			continue
		}
		m.Endpoint = ep
		fill(m, st, out, c.Etcd.QuotaBackendBytes)
	}
	// Members that did not answer: say why, from what is known or the endpoint's
	// diagnosis; members reached by no given endpoint are tried at their advertised URL.
	for i := range out.Members {
		m := &out.Members[i]
		if m.Healthy || m.Version != "" {
			continue
		}
		if ep := o.NodeEndpoints[m.Name]; ep != "" {
			m.Endpoint = ep
		}
		if why, ok := o.NotRunning[m.Name]; ok {
			m.Error, m.Cause = why, CauseNotRunning
			continue
		}
		d, known := diag[m.Endpoint]
		if !known && m.Endpoint != "" && !slices.Contains(o.Endpoints, m.Endpoint) {
			d, known = Diagnose(ctx, m.Endpoint, probe), true
			if d.OK() {
				sctx, cancel := context.WithTimeout(ctx, o.Timeout)
				st, err := cli.Status(sctx, m.Endpoint)
				cancel()
				if err == nil {
					fill(m, st, out, c.Etcd.QuotaBackendBytes)
					continue
				}
				m.Error, m.Cause = explain(err).Error(), CauseOther
				continue
			}
		}
		if known && !d.OK() {
			m.Error, m.Cause = d.Message, d.Cause
		}
	}
	voters, healthyVoters := 0, 0
	for i := range out.Members {
		m := &out.Members[i]
		if !m.Learner {
			voters++
			if m.Healthy {
				healthyVoters++
			}
		}
		if o.PKIDir != "" {
			m.CertDaysLeft = certDaysLeft(o.PKIDir, m.Name, o.Now)
		}
	}
	out.Quorum = voters > 0 && healthyVoters > voters/2 && out.Leader != ""
	if out.Quorum {
		actx, cancel := context.WithTimeout(ctx, o.Timeout)
		al, err := cli.AlarmList(actx)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("listing alarms: %w", explain(err))
		}
		names := map[uint64]string{}
		for _, m := range ml.Members {
			names[m.ID] = m.Name
		}
		for _, a := range al.Alarms {
			who := names[a.MemberID]
			if who == "" {
				who = fmt.Sprintf("%x", a.MemberID)
			}
			out.Alarms = append(out.Alarms, Alarm{Member: who, Alarm: a.Alarm.String()})
		}
		leases, err := flannelLeases(ctx, cli, c, o.Timeout)
		if err != nil {
			return nil, fmt.Errorf("reading flannel leases: %w", explain(err))
		}
		out.Flannel = leases
		records, err := nodeRecords(ctx, cli, o.Timeout)
		if err != nil {
			return nil, fmt.Errorf("reading the nodes' boot records: %w", explain(err))
		}
		for i := range out.Members {
			if r, ok := records[out.Members[i].Name]; ok {
				out.Members[i].Boot = &r
			}
		}
		if out.Snapshot, err = backup.LastScheduled(ctx, cli, o.Timeout); err != nil {
			return nil, fmt.Errorf("reading the newest scheduled snapshot: %w", explain(err))
		}
	}
	sort.SliceStable(out.Members, func(i, j int) bool { return out.Members[i].Name < out.Members[j].Name })
	out.Warnings = warnings(c, out, o.Now)
	return out, nil
}

// warnings names what will stop the cluster unless the operator acts: alarms, a database
// near its quota or fragmented, certificates within spec.pki.renewBefore of expiry.
func warnings(c *spec.Cluster, out *Cluster, now time.Time) []string {
	var w []string
	for _, a := range out.Alarms {
		w = append(w, fmt.Sprintf("%s: alarm %s raised", a.Member, a.Alarm)+alarmHint(a.Alarm))
	}
	// The schedule's period is what the node's timer said: from the snapshot to its next
	// run. Overdue by a whole period past that is two periods without a snapshot.
	if s := out.Snapshot; s != nil && s.UploadError != "" {
		w = append(w, fmt.Sprintf("the newest scheduled snapshot (by %s) was kept on the node but not uploaded to backup.target: %s", s.Node, s.UploadError))
	}
	if s := out.Snapshot; s != nil && !s.NextDue.IsZero() && s.NextDue.After(s.Taken) {
		if period := s.NextDue.Sub(s.Taken); now.Sub(s.Taken) > 2*period {
			w = append(w, fmt.Sprintf("the newest scheduled snapshot is %s old (taken by %s, the schedule runs about every %s): the nodes' snapshot timers are not taking them; see journalctl -u etcdbake-snapshot.service on the nodes",
				now.Sub(s.Taken).Round(time.Minute), s.Node, period.Round(time.Minute)))
		}
	}
	for i := range out.Members {
		m := &out.Members[i]
		if m.DBSize == 0 {
			continue
		}
		if m.QuotaPercent >= 100*spec.QuotaWarnRatio {
			w = append(w, fmt.Sprintf("%s: the database is %.0f%% of the quota (%s of etcd.quotaBackendBytes %s): at 100%% etcd raises NOSPACE and takes no writes; compact and defragment, or raise the quota",
				m.Name, m.QuotaPercent, humanize.IBytes(uint64(m.DBSize)), humanize.IBytes(uint64(c.Etcd.QuotaBackendBytes))))
		}
		// The thresholds the nodes' maintenance pass defragments at (spec.maintenance).
		if free := m.DBSize - m.DBSizeInUse; m.DBSizeInUse > 0 && float64(m.DBSizeInUse) < c.Maintenance.DefragRatio*float64(m.DBSize) && free > c.Maintenance.DefragMinFreeBytes {
			w = append(w, fmt.Sprintf("%s: the database is fragmented: %s in use of %s, %s reclaimable by defragmentation", m.Name,
				humanize.IBytes(uint64(m.DBSizeInUse)), humanize.IBytes(uint64(m.DBSize)), humanize.IBytes(uint64(free))))
		}
		if d := m.CertDaysLeft; d != nil && c.PKI.RenewBefore.D > 0 && time.Duration(*d)*24*time.Hour < c.PKI.RenewBefore.D {
			w = append(w, fmt.Sprintf("%s: its certificates expire in %d days (pki.renewBefore %s): etcdbake pki --renew, etcdbake image, etcdbake rollout", m.Name, *d, c.PKI.RenewBefore.Raw))
		}
	}
	return w
}

func alarmHint(alarm string) string {
	switch alarm {
	case "NOSPACE":
		return ": the cluster takes no writes until the database is compacted, defragmented and the alarm disarmed"
	case "CORRUPT":
		return ": a member's data differs from the others'; see etcd's log on each node"
	}
	return ""
}

// flannelLeases lists <prefix>/subnets/: keys like 10.244.7.0-24, values with PublicIP.
func flannelLeases(ctx context.Context, cli *clientv3.Client, c *spec.Cluster, timeout time.Duration) ([]Lease, error) {
	prefix := c.Flannel.Prefix
	if prefix == "" {
		prefix = spec.DefaultPrefix
	}
	gctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := cli.Get(gctx, strings.TrimSuffix(prefix, "/")+"/subnets/", clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	byIP := map[string]string{}
	for _, n := range c.Nodes {
		byIP[n.IP().String()] = n.Name
	}
	var out []Lease
	for _, kv := range resp.Kvs {
		key := string(kv.Key)
		l := Lease{Subnet: strings.Replace(key[strings.LastIndex(key, "/")+1:], "-", "/", 1)}
		var v struct{ PublicIP string }
		if json.Unmarshal(kv.Value, &v) == nil {
			l.PublicIP, l.Node = v.PublicIP, byIP[v.PublicIP]
		}
		out = append(out, l)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node+out[i].Subnet < out[j].Node+out[j].Subnet })
	return out, nil
}

// nodeRecords reads the records the nodes published under spec.NodeRecordPrefix, by node.
func nodeRecords(ctx context.Context, cli *clientv3.Client, timeout time.Duration) (map[string]spec.NodeRecord, error) {
	gctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := cli.Get(gctx, spec.NodeRecordPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	out := map[string]spec.NodeRecord{}
	for _, kv := range resp.Kvs {
		var r spec.NodeRecord
		if json.Unmarshal(kv.Value, &r) == nil && r.Node == strings.TrimPrefix(string(kv.Key), spec.NodeRecordPrefix) {
			out[r.Node] = r
		}
	}
	return out, nil
}

// fill copies one member's answer into its row. Raised alarms, which every member lists
// among its errors, do not make a member unhealthy: Cluster.Alarms reports them.
func fill(m *Member, st *clientv3.StatusResponse, out *Cluster, quota int64) {
	var errs []string
	for _, e := range st.Errors {
		if !strings.HasPrefix(e, "memberID:") { // an AlarmMember, as etcd formats it
			errs = append(errs, e)
		}
	}
	m.Healthy, m.Error = len(errs) == 0, ""
	if len(errs) > 0 {
		m.Error = strings.Join(errs, "; ")
	}
	m.Leader, m.RaftTerm, m.RaftIndex = st.Leader == st.Header.MemberId, st.RaftTerm, st.RaftIndex
	m.Version, m.DBSize, m.DBSizeInUse, m.Learner = st.Version, st.DbSize, st.DbSizeInUse, st.IsLearner
	if q := quota; q > 0 {
		m.QuotaPercent = 100 * float64(st.DbSize) / float64(q)
	}
	if m.Leader {
		out.Leader = m.Name
	}
}

func certDaysLeft(dir, node string, now time.Time) *int {
	var least *int
	for _, kind := range []string{"server", "peer"} {
		crt, _ := pki.NodeCertPath(dir, node, kind)
		b, err := os.ReadFile(crt)
		if err != nil {
			continue
		}
		d, err := pki.DaysLeft(b, now)
		if err != nil {
			continue
		}
		if least == nil || d < *least {
			least = &d
		}
	}
	return least
}

// explain adds the likely fix to the errors operators meet most.
func explain(err error) error {
	var uaErr x509.UnknownAuthorityError
	var invErr x509.CertificateInvalidError
	switch {
	case errors.As(err, &uaErr):
		return fmt.Errorf("%w: the server's certificate is not from this PKI's CA; check --out/pki matches the cluster", err)
	case errors.As(err, &invErr):
		return fmt.Errorf("%w: check the clocks and `etcdbake pki check`", err)
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%w: no answer in time (is the cluster up, are the endpoints and the client certificate right?)", err)
	}
	return err
}
