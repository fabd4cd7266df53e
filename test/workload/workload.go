// Package workload is the client workload and the correctness checks of the fault-injection
// suite (modelled on etcd's robustness tests and Jepsen).
//
// Run drives a cluster with register clients (linearizable Put/Get of a few keys) and an
// optional set client (unique keys, each put once) and records every operation with its
// call and return time. Check runs the register history through porcupine's
// linearizability checker with a per-key register model and measures the longest
// unavailability gap. Verify, once the cluster has recovered, checks that no acknowledged
// set key was lost and that every member has the same HashKV at one revision.
// SaveOnFailure writes the history and porcupine's visualisation for a failed check.
package workload

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Infinity is the return time of an indeterminate operation: a Put that returned an error
// may have taken effect at any time after its call, so for the checker it never returns
// (it is concurrent with everything that follows its call).
const Infinity int64 = math.MaxInt64

// Operation kinds.
const (
	KindPut = "put"
	KindGet = "get"
)

// Options configures Run.
type Options struct {
	Endpoints []string
	TLS       *tls.Config
	Prefix    string // key prefix; "/workload" when empty
	Registers int    // clients doing random Put/Get over the register keys
	Keys      int    // register keys <prefix>/reg/k0..k{Keys-1}; 5 when 0
	Set       bool   // one client putting unique keys <prefix>/set/<n>
	// Readers adds, for each endpoint listed, a client bound to that endpoint alone that
	// only does linearizable gets of the register keys: what a partitioned member answers
	// is then in the history the checker sees (a stale read makes it not linearizable).
	Readers   []string
	Interval  time.Duration // pause between two operations of one client
	OpTimeout time.Duration // timeout of each operation; 2s when 0
	// Ready, when set, is closed once the register keys hold their initial values and the
	// clients start: a fault injected before then would hit the initial puts, which are
	// retried but not part of the measured workload.
	Ready chan<- struct{}
}

// Op is one register operation, as the linearizability checker sees it.
type Op struct {
	// Client is the porcupine client (stream) id. A client continues under a new id after
	// an indeterminate put, since that put never returns and one stream's ops are sequential.
	Client int    `json:"client"`
	Kind   string `json:"kind"` // KindPut or KindGet
	Key    string `json:"key"`
	Value  string `json:"value,omitempty"` // put: the value written; get: the value read
	Found  bool   `json:"found,omitempty"` // get: the key existed
	Call   int64  `json:"call"`            // ns since History.Start (monotonic)
	Return int64  `json:"return"`          // ns since History.Start; Infinity if indeterminate
	Err    string `json:"err,omitempty"`   // why a put is indeterminate
}

// Indeterminate reports whether the op is a put whose outcome is unknown.
func (o Op) Indeterminate() bool { return o.Return == Infinity }

// SetOp is one put of the set client.
type SetOp struct {
	Key    string `json:"key"`
	Value  string `json:"value"`
	Call   int64  `json:"call"`
	Return int64  `json:"return"` // when the reply (or error) came back
	Acked  bool   `json:"acked"`  // false: indeterminate, it may or may not exist
	Err    string `json:"err,omitempty"`
}

// History is what Run recorded. Times are nanoseconds since Start on the monotonic clock.
type History struct {
	Prefix     string    `json:"prefix"`
	Start      time.Time `json:"start"`
	End        int64     `json:"end"`        // when the workload stopped
	Ops        []Op      `json:"ops"`        // register ops: successful puts and gets, indeterminate puts
	Set        []SetOp   `json:"set"`        // set client puts
	FailedGets int       `json:"failedGets"` // failed gets are not in Ops (they constrain nothing)
	Readers    []Reader  `json:"readers,omitempty"`
	Keys       int       `json:"keys"` // register keys k0..k{Keys-1}
	// Final are ReadBack's linearizable gets of every register key after the workload,
	// checked with Ops: an acknowledged put that was lost makes the history illegal.
	Final []Op `json:"final,omitempty"`
}

// Reader is what one endpoint-bound reader (Options.Readers) did; its successful gets are
// in Ops under Client.
type Reader struct {
	Endpoint string `json:"endpoint"`
	Client   int    `json:"client"`
	OK       int    `json:"ok"`
	Failed   int    `json:"failed"`
	// FailedCalls are when the failed gets were sent (ns since History.Start).
	FailedCalls []int64 `json:"failedCalls,omitempty"`
}

// RegisterKey is the name of register key i.
func RegisterKey(prefix string, i int) string { return prefix + "/reg/k" + strconv.Itoa(i) }

// SetPrefix is the prefix of the set client's keys.
func SetPrefix(prefix string) string { return prefix + "/set/" }

func (o *Options) defaults() error {
	if o.Prefix == "" {
		o.Prefix = "/workload"
	}
	if o.Keys == 0 {
		o.Keys = 5
	}
	if o.OpTimeout == 0 {
		o.OpTimeout = 2 * time.Second
	}
	switch {
	case len(o.Endpoints) == 0:
		return errors.New("workload: no endpoints")
	case o.Registers < 0 || o.Keys < 0 || o.Interval < 0 || o.OpTimeout < 0:
		return errors.New("workload: negative option")
	case o.Registers == 0 && !o.Set && len(o.Readers) == 0:
		return errors.New("workload: no clients (Registers == 0, Set false, no Readers)")
	}
	return nil
}

// recorder hands out times and fresh client ids.
type recorder struct {
	start  time.Time
	nextID atomic.Int64
}

func (r *recorder) now() int64 { return time.Since(r.start).Nanoseconds() }

// Run runs the workload until ctx is done and returns the recorded history. It first puts
// an initial value into every register key (so values left by an earlier run do not
// matter); if that fails, the cluster is not usable and Run returns an error. Operation
// errors during the workload are recorded, not returned.
func Run(ctx context.Context, o Options) (*History, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	newClient := func(endpoints []string) (*clientv3.Client, error) {
		return clientv3.New(clientv3.Config{Endpoints: endpoints, TLS: o.TLS, Logger: zap.NewNop()})
	}
	rec := &recorder{start: time.Now()}
	// Ids 0..Registers-1 are the register clients, then the readers; a register client
	// continues under a fresh id after an indeterminate put.
	rec.nextID.Store(int64(o.Registers + len(o.Readers)))
	h := &History{Prefix: o.Prefix, Start: rec.start, Keys: o.Keys}
	runID := strconv.FormatInt(rec.start.UnixNano(), 36)

	// All clients are created before any starts, so a failure leaves nothing running.
	n := o.Registers
	if o.Set {
		n++
	}
	n += len(o.Readers)
	clients := make([]*clientv3.Client, 0, n)
	for len(clients) < n {
		eps := o.Endpoints
		if i := len(clients) - (n - len(o.Readers)); i >= 0 {
			eps = []string{o.Readers[i]}
		}
		cli, err := newClient(eps)
		if err != nil {
			for _, c := range clients {
				c.Close()
			}
			return nil, fmt.Errorf("workload: client: %w", err)
		}
		clients = append(clients, cli)
	}
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()

	if o.Registers > 0 {
		// A slow cluster (a VM that just became ready) may time out a put: each one is
		// tried for up to 10 operation timeouts; a failed try stays in the history as an
		// indeterminate put of the same value, under a client id of its own (the initial
		// puts have their own ids, apart from the clients that follow).
		id := int(rec.nextID.Add(1) - 1)
		for i := 0; i < o.Keys; i++ {
			deadline := time.Now().Add(10 * o.OpTimeout)
			for {
				op := Op{Client: id, Kind: KindPut, Key: RegisterKey(o.Prefix, i), Value: "init-" + runID}
				octx, cancel := context.WithTimeout(ctx, o.OpTimeout)
				op.Call = rec.now()
				_, err := clients[0].Put(octx, op.Key, op.Value)
				op.Return = rec.now()
				cancel()
				if err == nil {
					h.Ops = append(h.Ops, op)
					break
				}
				op.Return, op.Err = Infinity, err.Error()
				h.Ops = append(h.Ops, op)
				id = int(rec.nextID.Add(1) - 1)
				if ctx.Err() != nil || time.Now().After(deadline) {
					return nil, fmt.Errorf("workload: initial put of %s: %w", op.Key, err)
				}
			}
		}
	}

	if o.Ready != nil {
		close(o.Ready)
	}
	var wg sync.WaitGroup
	regOps := make([][]Op, o.Registers)
	failed := make([]int, o.Registers)
	for c := 0; c < o.Registers; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			regOps[c], failed[c] = registerClient(ctx, clients[c], rec, &o, c)
		}()
	}
	if o.Set {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h.Set = setClient(ctx, clients[o.Registers], rec, &o, runID)
		}()
	}
	readOps := make([][]Op, len(o.Readers))
	h.Readers = make([]Reader, len(o.Readers))
	firstReader := n - len(o.Readers)
	for i, ep := range o.Readers {
		h.Readers[i] = Reader{Endpoint: ep, Client: o.Registers + i}
		wg.Add(1)
		go func() {
			defer wg.Done()
			readOps[i], h.Readers[i].FailedCalls = readerClient(ctx, clients[firstReader+i], rec, &o, o.Registers+i)
			h.Readers[i].Failed = len(h.Readers[i].FailedCalls)
			h.Readers[i].OK = len(readOps[i])
		}()
	}
	wg.Wait()
	h.End = rec.now()
	for c := range regOps {
		h.Ops = append(h.Ops, regOps[c]...)
		h.FailedGets += failed[c]
	}
	for i := range readOps {
		h.Ops = append(h.Ops, readOps[i]...)
	}
	return h, nil
}

// opContext gives one operation its own timeout; it is not cancelled when the workload
// ends, so the last operation of each client completes instead of becoming indeterminate.
func opContext(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), d)
}

// pause waits for the interval; false when the workload is over.
func pause(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func registerClient(ctx context.Context, cli *clientv3.Client, rec *recorder, o *Options, c int) (ops []Op, failedGets int) {
	id := c
	for seq := 0; ctx.Err() == nil; seq++ {
		op := Op{Client: id, Key: RegisterKey(o.Prefix, rand.IntN(o.Keys))}
		octx, cancel := opContext(ctx, o.OpTimeout)
		if rand.IntN(2) == 0 {
			op.Kind = KindPut
			op.Value = fmt.Sprintf("c%d.%d", c, seq)
			op.Call = rec.now()
			_, err := cli.Put(octx, op.Key, op.Value)
			op.Return = rec.now()
			if err != nil {
				op.Return, op.Err = Infinity, err.Error()
				id = int(rec.nextID.Add(1) - 1)
			}
			ops = append(ops, op)
		} else {
			op.Kind = KindGet
			op.Call = rec.now()
			resp, err := cli.Get(octx, op.Key)
			op.Return = rec.now()
			if err != nil {
				failedGets++
			} else {
				if len(resp.Kvs) > 0 {
					op.Found, op.Value = true, string(resp.Kvs[0].Value)
				}
				ops = append(ops, op)
			}
		}
		cancel()
		if !pause(ctx, o.Interval) {
			break
		}
	}
	return ops, failedGets
}

// readerClient does linearizable gets only, through its one endpoint.
func readerClient(ctx context.Context, cli *clientv3.Client, rec *recorder, o *Options, id int) (ops []Op, failed []int64) {
	for ctx.Err() == nil {
		op := Op{Client: id, Kind: KindGet, Key: RegisterKey(o.Prefix, rand.IntN(o.Keys))}
		octx, cancel := opContext(ctx, o.OpTimeout)
		op.Call = rec.now()
		resp, err := cli.Get(octx, op.Key)
		op.Return = rec.now()
		cancel()
		if err != nil {
			failed = append(failed, op.Call)
		} else {
			if len(resp.Kvs) > 0 {
				op.Found, op.Value = true, string(resp.Kvs[0].Value)
			}
			ops = append(ops, op)
		}
		if !pause(ctx, o.Interval) {
			break
		}
	}
	return ops, failed
}

func setClient(ctx context.Context, cli *clientv3.Client, rec *recorder, o *Options, runID string) (ops []SetOp) {
	for n := 0; ctx.Err() == nil; n++ {
		op := SetOp{Key: SetPrefix(o.Prefix) + strconv.Itoa(n), Value: runID + "/" + strconv.Itoa(n)}
		octx, cancel := opContext(ctx, o.OpTimeout)
		op.Call = rec.now()
		_, err := cli.Put(octx, op.Key, op.Value)
		op.Return = rec.now()
		cancel()
		if err != nil {
			op.Err = err.Error()
		} else {
			op.Acked = true
		}
		ops = append(ops, op)
		if !pause(ctx, o.Interval) {
			break
		}
	}
	return ops
}
