package workload

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

// Input and Output are a register operation as the porcupine model sees it.
type Input struct {
	Put   bool
	Key   string
	Value string // put only
}

// Output of a get; for a put it carries only whether the put is indeterminate.
type Output struct {
	Value         string
	Found         bool
	Indeterminate bool // a put whose outcome is unknown
}

// state is the value of one key (the model is partitioned by key).
type state struct {
	Value string
	Found bool
}

// RegisterModel is a per-key read/write register: a get returns the value of the last put
// linearized before it (or nothing before the first put); a put always succeeds. An
// indeterminate put has Return == Infinity, so the checker may linearize it anywhere after
// its call, including after everything (it never took effect).
var RegisterModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		for _, op := range history {
			k := op.Input.(Input).Key
			byKey[k] = append(byKey[k], op)
		}
		keys := make([]string, 0, len(byKey))
		for k := range byKey {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		out := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() interface{} { return state{} },
	Step: func(st, in, out interface{}) (bool, interface{}) {
		s, i, o := st.(state), in.(Input), out.(Output)
		if i.Put {
			return true, state{Value: i.Value, Found: true}
		}
		return o.Found == s.Found && o.Value == s.Value, s
	},
	Equal: func(a, b interface{}) bool { return a.(state) == b.(state) },
	Hash: func(st interface{}) uint64 {
		s := st.(state)
		h := fnv.New64a()
		h.Write([]byte(s.Value))
		if s.Found {
			h.Write([]byte{1})
		}
		return h.Sum64()
	},
	DescribeOperation: func(in, out interface{}) string {
		i, o := in.(Input), out.(Output)
		key := i.Key[strings.LastIndex(i.Key, "/")+1:]
		switch {
		case i.Put && o.Indeterminate:
			return fmt.Sprintf("put(%s, %s) -> ?", key, i.Value)
		case i.Put:
			return fmt.Sprintf("put(%s, %s)", key, i.Value)
		case !o.Found:
			return fmt.Sprintf("get(%s) -> <none>", key)
		default:
			return fmt.Sprintf("get(%s) -> %s", key, o.Value)
		}
	},
	DescribeState: func(st interface{}) string {
		if s := st.(state); s.Found {
			return s.Value
		}
		return "<none>"
	},
	DescribeOperationMetadata: func(md interface{}) string {
		if md == nil {
			return ""
		}
		return fmt.Sprint(md)
	},
}

// Operations converts the register history for porcupine. An indeterminate put whose value
// no get returned is left out (as etcd's robustness tests do): "it never took effect" is
// one of its possible outcomes, and with no read of its unique value it cannot make a
// history linearizable that is not without it. Left in, each one stays open to the end of
// the history, and a long outage's dozens of them make the search exponential.
func (h *History) Operations() []porcupine.Operation {
	read := map[string]bool{}
	for _, op := range slices.Concat(h.Ops, h.Final) {
		if op.Kind == KindGet && op.Found {
			read[op.Key+"\x00"+op.Value] = true
		}
	}
	out := make([]porcupine.Operation, 0, len(h.Ops)+len(h.Final))
	for _, op := range slices.Concat(h.Ops, h.Final) {
		if op.Kind == KindPut && op.Indeterminate() && !read[op.Key+"\x00"+op.Value] {
			continue
		}
		p := porcupine.Operation{
			ClientId: op.Client,
			Input:    Input{Put: op.Kind == KindPut, Key: op.Key, Value: op.Value},
			Call:     op.Call,
			Output:   Output{Value: op.Value, Found: op.Found, Indeterminate: op.Indeterminate()},
			Return:   op.Return,
		}
		if op.Kind == KindPut {
			p.Output = Output{Indeterminate: op.Indeterminate()}
		}
		if op.Err != "" {
			p.Metadata = op.Err
		}
		out = append(out, p)
	}
	return out
}

// Result is the outcome of Check.
type Result struct {
	AckedPuts         int                   `json:"ackedPuts"`         // register puts that succeeded
	IndeterminatePuts int                   `json:"indeterminatePuts"` // register puts that returned an error
	Reads             int                   `json:"reads"`             // successful gets
	FinalReads        int                   `json:"finalReads"`        // ReadBack's gets, one per register key
	FailedReads       int                   `json:"failedReads"`       // dropped from the history
	AckedSet          int                   `json:"ackedSet"`          // set puts that succeeded
	IndeterminateSet  int                   `json:"indeterminateSet"`  // set puts that returned an error
	Linearizable      porcupine.CheckResult `json:"linearizable"`      // Ok, Illegal or Unknown (timed out)
	// GapSeconds is the longest time without a successful operation of any client:
	// between two successes, or from the start to the first or the last to the end.
	GapSeconds      float64  `json:"gapSeconds"`
	GapStartSeconds float64  `json:"gapStartSeconds"`   // when that gap began
	Readers         []Reader `json:"readers,omitempty"` // the endpoint-bound readers (in Reads/not in FailedReads)

	info porcupine.LinearizationInfo // for the visualisation
}

// Acknowledged is the number of writes that succeeded (register and set).
func (r Result) Acknowledged() int { return r.AckedPuts + r.AckedSet }

// Indeterminate is the number of writes whose outcome is unknown (register and set).
func (r Result) Indeterminate() int { return r.IndeterminatePuts + r.IndeterminateSet }

// OK reports whether the history is linearizable; Unknown (timeout) counts as failure.
func (r Result) OK() bool { return r.Linearizable == porcupine.Ok }

// Check checks the register history for linearizability (porcupine, with the timeout;
// 0 means none) and measures the longest unavailability gap.
func Check(h *History, timeout time.Duration) Result {
	var r Result
	for _, op := range h.Ops {
		switch {
		case op.Kind == KindGet:
			r.Reads++
		case op.Indeterminate():
			r.IndeterminatePuts++
		default:
			r.AckedPuts++
		}
	}
	r.FailedReads = h.FailedGets
	r.FinalReads = len(h.Final)
	r.Readers = h.Readers
	for _, op := range h.Set {
		if op.Acked {
			r.AckedSet++
		} else {
			r.IndeterminateSet++
		}
	}
	r.Linearizable, r.info = porcupine.CheckOperationsVerbose(RegisterModel, h.Operations(), timeout)
	gap, at := longestGap(h)
	r.GapSeconds, r.GapStartSeconds = time.Duration(gap).Seconds(), time.Duration(at).Seconds()
	return r
}

// longestGap is the longest interval in [0, End] without a successful operation.
func longestGap(h *History) (gap, at int64) {
	ok := []int64{0}
	for _, op := range h.Ops {
		if !op.Indeterminate() {
			ok = append(ok, op.Return)
		}
	}
	for _, op := range h.Set {
		if op.Acked {
			ok = append(ok, op.Return)
		}
	}
	end := h.End
	for _, t := range ok {
		end = max(end, t)
	}
	ok = append(ok, end)
	slices.Sort(ok)
	for i := 1; i < len(ok); i++ {
		if d := ok[i] - ok[i-1]; d > gap {
			gap, at = d, ok[i-1]
		}
	}
	return gap, at
}

// Window is what the workload achieved between two instants (a fault and its recovery).
type Window struct {
	AckedWrites int // register and set puts sent and acknowledged within the window
	// WriteGap is the longest time in the window without an acknowledged write (from the
	// window's start to the first, between two, from the last to the window's end).
	WriteGap time.Duration
}

// Window measures the writes between from and to (wall-clock instants of this process).
func (h *History) Window(from, to time.Time) Window {
	lo, hi := from.Sub(h.Start).Nanoseconds(), to.Sub(h.Start).Nanoseconds()
	acks := []int64{lo, hi}
	var w Window
	add := func(call, ret int64) {
		if call >= lo && ret <= hi {
			w.AckedWrites++
		}
		if ret > lo && ret < hi {
			acks = append(acks, ret)
		}
	}
	for _, op := range h.Ops {
		if op.Kind == KindPut && !op.Indeterminate() {
			add(op.Call, op.Return)
		}
	}
	for _, op := range h.Set {
		if op.Acked {
			add(op.Call, op.Return)
		}
	}
	slices.Sort(acks)
	for i := 1; i < len(acks); i++ {
		w.WriteGap = max(w.WriteGap, time.Duration(acks[i]-acks[i-1]))
	}
	return w
}

// Summary is one line for a test log. v may be nil when Verify has not run.
func (r Result) Summary(v *Report) string {
	lost, hash := "?", "?"
	if v != nil {
		lost = fmt.Sprint(v.Lost)
		hash = fmt.Sprintf("mismatch@%d", v.Revision)
		if v.HashesEqual {
			hash = fmt.Sprintf("equal@%d", v.Revision)
		}
	}
	readers := ""
	for _, rd := range r.Readers {
		readers += fmt.Sprintf(" reader[%s]=%d ok/%d failed", rd.Endpoint, rd.OK, rd.Failed)
	}
	return fmt.Sprintf("acknowledged=%d (reg %d, set %d) lost=%s indeterminate=%d (reg %d, set %d) reads=%d final-reads=%d porcupine=%s gap=%.2fs@%.2fs hashkv=%s%s",
		r.Acknowledged(), r.AckedPuts, r.AckedSet, lost, r.Indeterminate(), r.IndeterminatePuts, r.IndeterminateSet,
		r.Reads, r.FinalReads, r.Linearizable, r.GapSeconds, r.GapStartSeconds, hash, readers)
}

// SaveOnFailure writes, when the check (or the verification, if v is not nil) failed, the
// history (history.json), the results (result.json) and porcupine's visualisation
// (porcupine.html, open it in a browser) into dir, and returns their paths. It writes
// nothing and returns nil when everything passed.
func SaveOnFailure(dir string, h *History, r Result, v *Report) ([]string, error) {
	if r.OK() && (v == nil || v.OK()) {
		return nil, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var paths []string
	writeJSON := func(name string, x any) error {
		b, err := json.MarshalIndent(x, "", "  ")
		if err != nil {
			return err
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, append(b, '\n'), 0o644); err != nil {
			return err
		}
		paths = append(paths, p)
		return nil
	}
	if err := writeJSON("history.json", h); err != nil {
		return paths, err
	}
	summary := struct {
		Summary string  `json:"summary"`
		Result  Result  `json:"result"`
		Report  *Report `json:"report,omitempty"`
	}{r.Summary(v), r, v}
	if err := writeJSON("result.json", summary); err != nil {
		return paths, err
	}
	p := filepath.Join(dir, "porcupine.html")
	if err := porcupine.VisualizePath(RegisterModel, r.info, p); err != nil {
		return paths, fmt.Errorf("visualisation: %w", err)
	}
	return append(paths, p), nil
}
