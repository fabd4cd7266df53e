package qemu

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"

	"github.com/etcdbake/etcdbake/pki"
	"github.com/etcdbake/etcdbake/spec"
	"github.com/etcdbake/etcdbake/status"
	"github.com/etcdbake/etcdbake/test/workload"
	"github.com/etcdbake/etcdbake/vmcluster"
)

// rolloutTarget is the etcd version U1 upgrades the example's v3.6.16 to: the newest
// v3.7.x the Go module proxy serves here.
const rolloutTarget = "v3.7.3"

// upCluster is the cluster TestUpDown started, as the rollout checks see it.
type upCluster struct {
	run      func(time.Duration, ...string) (string, string, error)
	specPath string
	out      string
	st       *vmcluster.RunState
}

func (u upCluster) pkiDir() string { return filepath.Join(u.out, "pki") }

func (u upCluster) endpoints() map[string]string {
	eps := map[string]string{}
	for n, rn := range u.st.Nodes {
		eps[n] = rn.Endpoint
	}
	return eps
}

func (u upCluster) status(t *testing.T) *status.Cluster {
	t.Helper()
	stdout, _, err := u.run(time.Minute, "status", "-o", "json")
	var c status.Cluster
	if jerr := json.Unmarshal([]byte(stdout), &c); jerr != nil {
		t.Fatalf("status -o json: %v %v", err, jerr)
	}
	return &c
}

// clusterFacts are what must not change across a rolling upgrade, and what must.
type clusterFacts struct {
	ids      map[string]string // node -> member ID
	subnets  map[string]string // node -> flannel subnet
	versions map[string]string // node -> etcd server version
	cluster  map[string]string // node -> the cluster version it reports
	serials  map[string]string // node -> serial of the server certificate it serves
}

func (u upCluster) facts(t *testing.T, tlsCfg *tls.Config) clusterFacts {
	t.Helper()
	st := u.status(t)
	f := clusterFacts{ids: map[string]string{}, subnets: map[string]string{}, versions: map[string]string{}, cluster: map[string]string{}, serials: map[string]string{}}
	for _, m := range st.Members {
		f.ids[m.Name], f.versions[m.Name] = m.ID, m.Version
	}
	for _, l := range st.Flannel {
		f.subnets[l.Node] = l.Subnet
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsCfg}}
	for n, ep := range u.endpoints() {
		resp, err := hc.Get(ep + "/version")
		if err != nil {
			t.Errorf("%s: GET /version: %v", n, err)
			continue
		}
		var v struct{ Etcdcluster string }
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err := json.Unmarshal(b, &v); err != nil {
			t.Errorf("%s: /version %q: %v", n, b, err)
		}
		f.cluster[n] = v.Etcdcluster
		if resp.TLS != nil && len(resp.TLS.PeerCertificates) > 0 {
			f.serials[n] = fmt.Sprintf("%x", resp.TLS.PeerCertificates[0].SerialNumber)
		}
	}
	return f
}

// sample is one look at every member (1 s apart).
type sample struct {
	at       time.Time
	up       map[string]bool // node -> answered Status as a voter that knows a leader
	answered map[string]bool // node -> answered Status as a voter (during an election: no leader)
	leader   string          // the node the answering members name as leader
}

// sampler records, once a second, what each member's latest answer to Status said
// (a voter with a leader, or not). Each member is asked in its own loop with a 10 s
// bound, so a member that answers slowly under emulation is not taken for down; one
// that reboots fails its probes (connection refused, reset or no answer in 10 s).
func sampler(ctx context.Context, eps map[string]string, tlsCfg *tls.Config) (stop func() []sample) {
	ctx, cancel := context.WithCancel(ctx)
	type probe struct {
		up, answered bool
		leader       uint64
		self         uint64
	}
	var mu sync.Mutex
	latest := map[string]probe{}
	var wg sync.WaitGroup
	for n, ep := range eps {
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, TLS: tlsCfg, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer cli.Close()
			for ctx.Err() == nil {
				start := time.Now()
				sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
				r, err := cli.Status(sctx, ep)
				scancel()
				if ctx.Err() != nil {
					return
				}
				p := probe{}
				if err == nil && !r.IsLearner {
					p = probe{answered: true, up: r.Leader != 0, leader: r.Leader, self: r.Header.MemberId}
				}
				mu.Lock()
				latest[n] = p
				mu.Unlock()
				select {
				case <-ctx.Done():
				case <-time.After(time.Second - time.Since(start)):
				}
			}
		}()
	}
	var out []sample
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		ids := map[uint64]string{}
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			s := sample{at: time.Now(), up: map[string]bool{}, answered: map[string]bool{}}
			leaders := map[uint64]int{}
			mu.Lock()
			for n, p := range latest {
				if p.answered {
					s.answered[n] = true
				}
				if p.up {
					s.up[n] = true
					ids[p.self] = n
					leaders[p.leader]++
				}
			}
			mu.Unlock()
			for id, k := range leaders {
				if k > len(eps)/2 || len(leaders) == 1 {
					s.leader = ids[id]
				}
			}
			if len(latest) == len(eps) { // every member answered once
				out = append(out, s)
			}
		}
	}()
	return func() []sample {
		cancel()
		<-done
		wg.Wait()
		return out
	}
}

// downWindow is a run of samples in which one node did not answer.
type downWindow struct {
	node          string
	from, to      time.Time
	leaderBefore  string // the leader in the last sample before the window
	samplesBefore int
}

func downWindows(samples []sample, nodes []string) []downWindow {
	var out []downWindow
	for _, n := range nodes {
		var cur *downWindow
		for i, s := range samples {
			switch {
			case !s.up[n] && cur == nil:
				cur = &downWindow{node: n, from: s.at, to: s.at, samplesBefore: i}
				if i > 0 {
					cur.leaderBefore = samples[i-1].leader
				}
			case !s.up[n]:
				cur.to = s.at
			case cur != nil:
				out = append(out, *cur)
				cur = nil
			}
		}
		if cur != nil {
			out = append(out, *cur)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].from.Before(out[j].from) })
	return out
}

// bootCounts is bootCount of every node.
func (u upCluster) bootCounts(t *testing.T, nodes []string) map[string]int {
	t.Helper()
	boots := map[string]int{}
	for _, n := range nodes {
		boots[n] = u.bootCount(t, n)
	}
	return boots
}

// bootCount is how many boots the node's persistent journal knows.
func (u upCluster) bootCount(t *testing.T, node string) int {
	t.Helper()
	stdout, _, err := u.run(2*time.Minute, "exec", node, "--", "sh", "-c", "journalctl --list-boots --no-pager -q | wc -l")
	var n int
	if _, serr := fmt.Sscan(strings.TrimSpace(stdout), &n); err != nil || serr != nil {
		t.Fatalf("%s: counting boots: %q %v %v", node, stdout, err, serr)
	}
	return n
}

// checkRollout is U1 with U3 inside it, on the cluster TestUpDown started (example spec,
// etcd v3.6.16): the leaf certificates are renewed and the spec moves to etcd
// rolloutTarget; `etcdbake rollout --wait` builds the release for the QEMU cluster,
// publishes it and waits. While the test holds the cluster's reboot lock, the nodes
// stage in parallel and one of them is killed mid-download (U3: power loss while
// staging); `up` brings it back on its active slot and it stages again. Once the lock is
// released the nodes reboot one at a time. With the workload running throughout:
// porcupine Ok, 0 acknowledged writes lost, at every 1 s sample at least 2 answering
// voters and never two nodes down, a leader again within 10 s of an election (a
// hand-off), one down window per node (the killed node two), the leader's node down only
// after leadership moved, member IDs and flannel subnets unchanged, every
// member on the new version and cluster version, serving its renewed certificate.
func checkRollout(t *testing.T, u upCluster) {
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Minute)
	defer cancel()
	tlsCfg := adminTLS(t, u.pkiDir())
	nodes := nodeNames(u.st)
	eps := u.endpoints()
	before := u.facts(t, tlsCfg)
	boots := u.bootCounts(t, nodes)
	t.Logf("U1: before: versions %v, cluster %v, IDs %v, subnets %v", before.versions, before.cluster, before.ids, before.subnets)

	// The new release: renewed leaves, etcd rolloutTarget.
	if _, _, err := u.run(time.Minute, "pki", "--renew"); err != nil {
		t.Fatalf("pki --renew: %v", err)
	}
	b, _ := os.ReadFile(u.specPath)
	nb := strings.Replace(string(b), "version: v3.6.16", "version: "+rolloutTarget, 1)
	if nb == string(b) {
		t.Fatal("the example spec does not name etcd v3.6.16")
	}
	os.WriteFile(u.specPath, []byte(nb), 0o644)
	newSerials := map[string]string{}
	for _, n := range nodes {
		crt, _ := pki.NodeCertPath(u.pkiDir(), n, pki.KindServer)
		pb, err := os.ReadFile(crt)
		if err != nil {
			t.Fatal(err)
		}
		cert, err := pki.ParseCert(pb)
		if err != nil {
			t.Fatal(err)
		}
		newSerials[n] = fmt.Sprintf("%x", cert.SerialNumber)
		if newSerials[n] == before.serials[n] {
			t.Fatalf("%s: pki --renew kept the serial %s", n, newSerials[n])
		}
	}

	// The workload and the 1 s sampler run throughout.
	var weps []string
	for _, n := range nodes {
		weps = append(weps, eps[n])
	}
	stopWorkload := startWorkload(ctx, t, weps, tlsCfg, "/rollout/u1")
	stopSampling := sampler(ctx, eps, tlsCfg)

	// The test holds the reboot lock while the nodes stage.
	cli, err := clientv3.New(clientv3.Config{Endpoints: weps, TLS: tlsCfg, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	sess, err := concurrency.NewSession(cli, concurrency.WithTTL(30))
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	lock := concurrency.NewMutex(sess, spec.RolloutLockPrefix)
	if err := lock.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	type cliResult struct {
		stdout, stderr string
		err            error
	}
	rolled := make(chan cliResult, 1)
	go func() {
		so, se, err := u.run(45*time.Minute, "rollout", "--wait", "--timeout", "40m")
		rolled <- cliResult{so, se, err}
	}()

	// U3: the victim is killed once it has written 64 MiB of its new root.
	victim := nodes[len(nodes)-1]
	var published string
	for {
		var rn spec.RolloutNode
		if r, err := cli.Get(ctx, spec.RolloutNodeKey(victim)); err == nil && len(r.Kvs) == 1 && json.Unmarshal(r.Kvs[0].Value, &rn) == nil &&
			rn.State == spec.RolloutStaging && strings.HasPrefix(rn.Progress, "root") && !strings.HasPrefix(rn.Progress, "root 0/") {
			published = rn.Release
			t.Logf("U3: %s stages %s (%s) %s after the rollout command started: killing its VM", victim, rn.Release, rn.Progress, time.Since(start).Round(time.Second))
			break
		}
		select {
		case r := <-rolled:
			t.Fatalf("U1: rollout ended before %s staged: %v\n%s%s", victim, r.err, r.stderr, r.stdout)
		case <-time.After(time.Second):
		}
	}
	// The VM that dies is a follower: a leader killed costs an election (seconds without
	// a leader under TCG), which is the fault suite's B4, not this check.
	ensureFollower(ctx, t, u.endpoints(), tlsCfg, victim)
	// The kill, status and the supervisor noticing it, up bringing the VM back from its
	// disk, its own data (TestUpDown's checks of a VM that dies).
	killed := time.Now()
	u.st = killAndBringBack(t, u.run, filepath.Join(u.out, "run"), u.st, victim)
	t.Logf("U3: %s back and healthy %s after the kill", victim, time.Since(killed).Round(time.Second))
	var rec spec.NodeRecord
	if r, err := cli.Get(ctx, spec.NodeRecordKey(victim)); err != nil || len(r.Kvs) != 1 || json.Unmarshal(r.Kvs[0].Value, &rec) != nil {
		t.Errorf("U3: %s's record: %v", victim, err)
	} else if rec.Release == published || rec.Slot != "a" {
		t.Errorf("U3: after the power loss while staging %s runs release %s on slot %s: want its active slot a, not the release being staged", victim, rec.Release, rec.Slot)
	}
	// Nobody rebooted while the test held the lock.
	if err := lock.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	unlocked := time.Now()

	var r cliResult
	select {
	case r = <-rolled:
	case <-ctx.Done():
		t.Fatal("U1: rollout --wait did not end")
	}
	total := time.Since(start)
	samples := stopSampling()
	h := stopWorkload()
	if r.err != nil {
		t.Fatalf("U1: rollout --wait: %v\n%s%s", r.err, r.stderr, r.stdout)
	}
	stdout, _, err := u.run(time.Minute, "rollout", "status")
	if err != nil {
		t.Errorf("rollout status: %v", err)
	}
	for _, n := range nodes {
		if !strings.Contains(stdout, n) {
			t.Errorf("rollout status does not list %s", n)
		}
	}

	res, v := checkHistory(ctx, t, "U1", h, cli)
	// The samples: 2 healthy voters at every one, never two nodes down, one window per
	// node (the victim: its kill and its reboot), the leader moved away first.
	perNode, figures, minUp := checkSamples(t, "U1", samples, nodes)
	for _, n := range nodes {
		want := 1
		if n == victim {
			want = 2
		}
		if len(perNode[n]) != want {
			t.Errorf("U1: %s was down %d times, want %d: %v", n, len(perNode[n]), want, figures)
		}
		if got := u.bootCount(t, n) - boots[n]; got != want {
			t.Errorf("U1: %s booted %d times during the rollout, want %d", n, got, want)
		}
	}

	// What must not change, and what must.
	after := u.facts(t, tlsCfg)
	want := strings.TrimPrefix(rolloutTarget, "v")
	for _, n := range nodes {
		if after.ids[n] != before.ids[n] {
			t.Errorf("U1: %s's member ID %s -> %s (replaced, not upgraded)", n, before.ids[n], after.ids[n])
		}
		if after.subnets[n] != before.subnets[n] {
			t.Errorf("U1: %s's flannel subnet %s -> %s", n, before.subnets[n], after.subnets[n])
		}
		if after.versions[n] != want {
			t.Errorf("U1: %s runs etcd %s, want %s", n, after.versions[n], want)
		}
		if after.cluster[n] != "3.7.0" {
			t.Errorf("U1: %s reports cluster version %q, want 3.7.0", n, after.cluster[n])
		}
		if after.serials[n] != newSerials[n] {
			t.Errorf("U1: %s serves certificate serial %s, want the renewed %s", n, after.serials[n], newSerials[n])
		}
	}
	t.Logf("U1: etcd %s -> %s on %d nodes, renewed certificates: %s in all (%s after the lock was released); %s; acknowledged %d, lost %d, porcupine %s, longest write gap %.1fs, fewest healthy voters at a sample %d of %d samples",
		before.versions[nodes[0]], rolloutTarget, len(nodes), total.Round(time.Second), time.Since(unlocked).Round(time.Second), strings.Join(figures, "; "),
		res.Acknowledged(), v.Lost, res.Linearizable, res.GapSeconds, minUp, len(samples))
	t.Logf("U1: rollout --wait:\n%s", r.stdout)
	u.logStaging(t, "U1", nodes)
}

// rootWrittenLine is the agent's summary of a staged root ("stage: /dev/...root-b: 640 MiB
// written in ...").
var rootWrittenLine = regexp.MustCompile(`root-.: .* MiB written`)

// logStaging logs each node's last staging of a root, from its agent's journal (how much
// was downloaded, copied from the running slot, written as zeros; how long it took).
func (u upCluster) logStaging(t *testing.T, name string, nodes []string) {
	t.Helper()
	for _, n := range nodes {
		stdout, _, err := u.run(2*time.Minute, "exec", n, "--", "sh", "-c", "journalctl -q --no-pager -u etcdbake-rollout -o short-precise | grep 'stage: ' | tail -12")
		if err != nil {
			t.Errorf("%s: %s's journal: %v", name, n, err)
			continue
		}
		// The last staging, step by step (where its time goes), then its root in a line.
		lines := strings.Split(strings.TrimSpace(stdout), "\n")
		for i := len(lines) - 1; i >= 0; i-- {
			if strings.Contains(lines[i], "stage: release ") && strings.Contains(lines[i], " into slot ") {
				lines = lines[i:]
				break
			}
		}
		t.Logf("%s: %s's last staging:\n%s", name, n, strings.Join(lines, "\n"))
		for _, l := range lines {
			if _, line, ok := strings.Cut(l, "stage: "); ok && rootWrittenLine.MatchString(line) {
				t.Logf("%s: %s staged %s", name, n, line)
			}
		}
		// What the verification of this boot waited for, and how long it took.
		stdout, _, err = u.run(2*time.Minute, "exec", n, "--", "sh", "-c", "journalctl -q --no-pager -b -u etcdbake-verify-boot -o short-monotonic | grep -E 'verify-boot: (waiting|boot of)' | cut -c1-400 | tail -8")
		if err == nil {
			t.Logf("%s: %s's verify-boot on this boot:\n%s", name, n, stdout)
		}
	}
}

// startWorkload starts test/workload's clients under prefix; stop ends them and returns
// the history. The pace (an operation per client every 200 ms, ~15 a second) keeps the
// three TCG guests on two cores able to stage a release meanwhile: at 20 ms (~150 a
// second) staging took three times as long, and members often took more than 3 s to
// answer Status.
func startWorkload(ctx context.Context, t *testing.T, eps []string, tlsCfg *tls.Config, prefix string) (stop func() *workload.History) {
	t.Helper()
	wctx, wcancel := context.WithCancel(ctx)
	type result struct {
		h   *workload.History
		err error
	}
	wdone := make(chan result, 1)
	ready := make(chan struct{})
	go func() {
		h, err := workload.Run(wctx, workload.Options{Endpoints: eps, TLS: tlsCfg, Prefix: prefix,
			Registers: 2, Keys: 5, Set: true, Interval: 200 * time.Millisecond, OpTimeout: 3 * time.Second, Ready: ready})
		wdone <- result{h, err}
	}()
	select {
	case <-ready:
	case r := <-wdone:
		wcancel()
		t.Fatalf("%s: the workload ended before it started: %v", prefix, r.err)
	case <-time.After(3 * time.Minute):
		wcancel()
		t.Fatalf("%s: the workload's initial puts did not finish within 3 min", prefix)
	}
	return func() *workload.History {
		t.Helper()
		wcancel()
		r := <-wdone
		if r.err != nil {
			t.Fatal(r.err)
		}
		return r.h
	}
}

// checkHistory reads back and checks a workload's history: linearizable, no
// acknowledged write lost, every member with the same HashKV.
func checkHistory(ctx context.Context, t *testing.T, name string, h *workload.History, cli *clientv3.Client) (workload.Result, workload.Report) {
	t.Helper()
	vctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	if err := workload.ReadBack(vctx, h, cli); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	res := workload.Check(h, 3*time.Minute)
	v, err := workload.Verify(vctx, h, cli, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !res.OK() || v.Lost != 0 || !v.HashesEqual {
		t.Errorf("%s: porcupine %s, %d acknowledged writes lost %v, hashes equal %v", name, res.Linearizable, v.Lost, v.LostKeys, v.HashesEqual)
	}
	if res.AckedPuts == 0 || res.AckedSet == 0 {
		t.Errorf("%s: the workload did too little: %s", name, res.Summary(&v))
	}
	return res, v
}

// rebootWindow is the shortest run of samples without a healthy answer that is taken for
// a reboot: a TCG VM is down at least 45 s when it reboots, while a member that answers
// slowly or waits out an election (seen: 7 s after a node came back) is down for less.
// The reboots themselves are counted from each node's journal.
const rebootWindow = 20 * time.Second

// maxElection bounds a run of samples in which the answering voters know no leader (a
// leadership hand-off under emulation takes a few seconds).
const maxElection = 10 * time.Second

// checkSamples requires at least 2 answering voters at every sample (never two nodes
// down), a leader again within maxElection whenever a majority saw none, and no node down
// while it led; it returns the down windows per node
// (rebootWindow or longer: a reboot), the figures and the fewest healthy voters seen.
func checkSamples(t *testing.T, name string, samples []sample, nodes []string) (map[string][]downWindow, []string, int) {
	t.Helper()
	minUp := len(nodes)
	var figures []string
	var leaderless []sample // the current run of samples in an election
	endElection := func() {
		if len(leaderless) == 0 {
			return
		}
		d := leaderless[len(leaderless)-1].at.Sub(leaderless[0].at) + time.Second
		figures = append(figures, fmt.Sprintf("election (no leader seen by a majority) at %s for %.0fs", leaderless[0].at.Format(time.TimeOnly), d.Seconds()))
		if d > maxElection {
			t.Errorf("%s: no leader from %s for %s (more than %s): the cluster stalled", name, leaderless[0].at.Format(time.TimeOnly), d, maxElection)
		}
		leaderless = nil
	}
	for _, s := range samples {
		if len(s.up) < minUp {
			minUp = len(s.up)
		}
		// Never two nodes down: two voters answer at every sample. A sample in which
		// they answer but a majority knows no leader is an election (the agent hands
		// leadership off before a leader's reboot): bounded, not a node down.
		if len(s.answered) < 2 || len(nodes)-len(s.answered) > 1 {
			t.Errorf("%s: at %s only %d voters answered (%v)", name, s.at.Format(time.TimeOnly), len(s.answered), s.answered)
		}
		if len(s.up) < 2 && len(s.answered) >= 2 {
			leaderless = append(leaderless, s)
		} else {
			endElection()
		}
	}
	endElection()
	perNode := map[string][]downWindow{}
	for _, w := range downWindows(samples, nodes) {
		if w.to.Sub(w.from) < rebootWindow { // unanswered probes or an election: not a reboot
			figures = append(figures, fmt.Sprintf("%s unanswered %s (%.0fs)", w.node, w.from.Format(time.TimeOnly), w.to.Sub(w.from).Seconds()+1))
			continue
		}
		perNode[w.node] = append(perNode[w.node], w)
		if w.leaderBefore == w.node {
			t.Errorf("%s: %s went down at %s while it led (leadership had not moved)", name, w.node, w.from.Format(time.TimeOnly))
		}
		figures = append(figures, fmt.Sprintf("%s down %s-%s (%.0fs)", w.node, w.from.Format(time.TimeOnly), w.to.Format(time.TimeOnly), w.to.Sub(w.from).Seconds()+1))
	}
	return perNode, figures, minUp
}

// ensureFollower moves leadership away from node if it leads, and waits until it does not.
func ensureFollower(ctx context.Context, t *testing.T, eps map[string]string, tlsCfg *tls.Config, node string) {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{eps[node]}, TLS: tlsCfg, DialTimeout: 10 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(time.Second) {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		st, err := cli.Status(sctx, eps[node])
		if err != nil || st.Leader == 0 {
			cancel()
			continue
		}
		if st.Leader != st.Header.MemberId {
			cancel()
			return
		}
		ml, err := cli.MemberList(sctx)
		if err == nil {
			for _, m := range ml.Members {
				if m.ID != st.Header.MemberId && !m.IsLearner {
					_, err = cli.MoveLeader(sctx, m.ID)
					t.Logf("U3: %s led: leadership moved to %s (%v)", node, m.Name, err)
					break
				}
			}
		}
		cancel()
	}
	t.Fatalf("U3: %s still leads after a minute of moving leadership away", node)
}

func nodeNames(st *vmcluster.RunState) []string {
	var out []string
	for n := range st.Nodes {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// u2Fragment is U2's bad release: a valid spec on which etcd cannot start.
const u2Fragment = `variant: fcos
version: 1.5.0
systemd:
  units:
    - name: etcd.service
      dropins:
        - name: 99-u2-broken.conf
          contents: |
            [Service]
            ExecStartPre=/bin/false
`

// checkBadRollout is U2 on the cluster U1 upgraded: a release whose etcd cannot start
// (a drop-in that makes it exit) with rollout.timeout 30s (the shortest the spec takes: a
// good boot is never judged by it here). The first node to take it
// fails verification, reboots and comes back on its previous slot by itself, healthy
// with its data; the rollout halts with the reason in `rollout status` and
// `rollout --wait` fails naming it; the other two nodes never reboot; with the workload
// running throughout, nothing acknowledged is lost.
func checkBadRollout(t *testing.T, u upCluster) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	tlsCfg := adminTLS(t, u.pkiDir())
	nodes := nodeNames(u.st)
	eps := u.endpoints()
	before := u.facts(t, tlsCfg)
	boots := u.bootCounts(t, nodes)
	if err := os.WriteFile(filepath.Join(filepath.Dir(u.specPath), "u2-broken.bu"), []byte(u2Fragment), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(u.specPath, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprint(f, "\nrollout:\n  timeout: 30s\nbutane: u2-broken.bu\n")
	f.Close()

	var weps []string
	for _, n := range nodes {
		weps = append(weps, eps[n])
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: weps, TLS: tlsCfg, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	stopWorkload := startWorkload(ctx, t, weps, tlsCfg, "/rollout/u2")
	stopSampling := sampler(ctx, eps, tlsCfg)
	start := time.Now()
	stdout, stderr, err := u.run(30*time.Minute, "rollout", "--wait", "--timeout", "25m")
	took := time.Since(start)
	samples := stopSampling()
	h := stopWorkload()
	if err == nil {
		t.Fatalf("U2: rollout --wait of a release on which etcd cannot start succeeded:\n%s%s", stderr, stdout)
	}
	var halt spec.RolloutHalt
	if r, err := cli.Get(ctx, spec.RolloutHaltKey); err != nil || len(r.Kvs) != 1 || json.Unmarshal(r.Kvs[0].Value, &halt) != nil {
		t.Fatalf("U2: no halt key after the failed rollout: %v", err)
	}
	t.Logf("U2: halted by %s after %s: %s", halt.Node, took.Round(time.Second), halt.Reason)
	// The reason is verify-boot's ("... not verified after 30s: ..."), or, if the
	// deadline rebooted the node before verify-boot ran, that it never got there.
	if !strings.Contains(halt.Reason, "not verified") && !strings.Contains(halt.Reason, "never reached verify-boot") || !strings.Contains(stdout+stderr, halt.Node) {
		t.Errorf("U2: the halt's reason %q does not say the slot was not verified, or rollout --wait does not name %s", halt.Reason, halt.Node)
	}
	// The node reports the halt, then its own state (rolled back) a few seconds later.
	var status string
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(5 * time.Second) {
		status, _, err = u.run(time.Minute, "rollout", "status")
		if err == nil && strings.Contains(status, "HALTED") && strings.Contains(status, spec.RolloutRolledBack) {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("U2: rollout status does not show the halt and the rolled-back node within a minute of the halt: %v", err)
			break
		}
	}
	res, v := checkHistory(ctx, t, "U2", h, cli)
	perNode, figures, minUp := checkSamples(t, "U2", samples, nodes)
	after := u.facts(t, tlsCfg)
	for _, n := range nodes {
		want := 0
		if n == halt.Node {
			want = 2 // the try of the bad slot, then the fallback
		}
		if got := u.bootCount(t, n) - boots[n]; got != want {
			t.Errorf("U2: %s booted %d times, want %d", n, got, want)
		}
		if n != halt.Node && len(perNode[n]) != 0 {
			t.Errorf("U2: %s was down: %v", n, figures)
		}
		if after.ids[n] != before.ids[n] || after.subnets[n] != before.subnets[n] || after.versions[n] != before.versions[n] {
			t.Errorf("U2: %s changed: ID %s -> %s, subnet %s -> %s, version %s -> %s", n, before.ids[n], after.ids[n], before.subnets[n], after.subnets[n], before.versions[n], after.versions[n])
		}
	}
	var rec spec.NodeRecord
	if r, err := cli.Get(ctx, spec.NodeRecordKey(halt.Node)); err != nil || len(r.Kvs) != 1 || json.Unmarshal(r.Kvs[0].Value, &rec) != nil {
		t.Errorf("U2: %s's record: %v", halt.Node, err)
	} else if rec.Release == halt.Release || rec.Fallback == "" {
		t.Errorf("U2: %s runs release %s (fallback %q): want its previous release and the fallback said", halt.Node, rec.Release, rec.Fallback)
	}
	t.Logf("U2: %s tried the bad release and fell back in %s (rollout halted); %s; acknowledged %d, lost %d, porcupine %s, longest write gap %.1fs, fewest healthy voters %d",
		halt.Node, took.Round(time.Second), strings.Join(figures, "; "), res.Acknowledged(), v.Lost, res.Linearizable, res.GapSeconds, minUp)
	u.logStaging(t, "U2", nodes)
}
