package firstboot

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// Status is what `etcd-firstboot status` shows: the last result of every phase.
type Status struct {
	Node      string           `json:"node"`
	Cluster   string           `json:"cluster"`
	Time      *TimeResult      `json:"time,omitempty"`
	Bootstrap *BootstrapResult `json:"bootstrap,omitempty"`
	Ready     *ReadyResult     `json:"ready,omitempty"`
	Flannel   *FlannelResult   `json:"flannel,omitempty"`
	// Verify is verify-boot's result on this boot (only boots of an on-trial entry).
	Verify *VerifyResult `json:"verify,omitempty"`
	// Boot is the boot slot as read live by ReadStatus (never recorded): nil on machines
	// without etcdbake A/B slots.
	Boot *BootInfo `json:"boot,omitempty"`
	// CertDaysLeft maps each of the node's certificates to the whole days left.
	CertDaysLeft map[string]int `json:"certDaysLeft,omitempty"`
	Updated      time.Time      `json:"updated"`
}

// StatusPath is where the phases record their results (under the run dir, so it starts
// empty on every boot).
func (a *Agent) StatusPath() string { return filepath.Join(a.Cfg.RunDir, "status.json") }

// ReadyFlagPath exists once the health gate has passed on this boot.
func (a *Agent) ReadyFlagPath() string { return filepath.Join(a.Cfg.RunDir, "ready") }

func (a *Agent) update(f func(*Status)) error {
	var st Status
	if _, err := readJSON(a.StatusPath(), &st); err != nil {
		st = Status{}
	}
	st.Node, st.Cluster, st.Updated = a.Cfg.Name, a.Cfg.Cluster, a.now().UTC()
	st.Boot = nil // read live, never recorded
	f(&st)
	return writeJSON(a.StatusPath(), st, 0o644)
}

// Prepare runs the phases before etcd starts: the time gate, then the bootstrap decision.
// Any refusal returns an error (the unit fails and systemd retries it).
func (a *Agent) Prepare(ctx context.Context) error {
	tr, err := a.TimeGate(ctx)
	if uerr := a.update(func(s *Status) { s.Time, s.Bootstrap, s.Ready, s.Flannel = &tr, nil, nil, nil }); uerr != nil {
		return fmt.Errorf("writing status: %w", uerr)
	}
	if err != nil {
		_ = os.Remove(a.Cfg.BootstrapEnv) // etcd must not start on an older decision
		return err
	}
	br, err := a.Bootstrap(ctx)
	if uerr := a.update(func(s *Status) { s.Bootstrap = &br }); uerr != nil {
		return fmt.Errorf("writing status: %w", uerr)
	}
	return err
}

// RunReady runs the phases after etcd has started: health gate and flannel seeding; on
// success it writes the ready flag.
func (a *Agent) RunReady(ctx context.Context) error {
	_ = os.Remove(a.ReadyFlagPath())
	rr, fr, err := a.Ready(ctx)
	if uerr := a.update(func(s *Status) { s.Ready, s.Flannel = &rr, &fr }); uerr != nil {
		return fmt.Errorf("writing status: %w", uerr)
	}
	if err != nil {
		return err
	}
	return writeFileAtomic(a.ReadyFlagPath(), []byte(rr.Message+"\n"), 0o644)
}

// ReadStatus returns the recorded status with the certificates' days left and the boot
// slot as of now. After a fallback, the boot's Fallback carries the verify-boot result
// recorded for the failed slot, if any.
func (a *Agent) ReadStatus() (Status, error) {
	var st Status
	ok, err := readJSON(a.StatusPath(), &st)
	if err != nil {
		return st, err
	}
	if !ok {
		st.Node, st.Cluster = a.Cfg.Name, a.Cfg.Cluster
	}
	st.CertDaysLeft = map[string]int{}
	for _, p := range []string{a.Cfg.CA, a.Cfg.PeerCA, a.Cfg.ServerCert, a.Cfg.PeerCert, a.Cfg.ClientCert} {
		c, err := readCertFile(p)
		if err != nil {
			continue
		}
		st.CertDaysLeft[filepath.Base(p)] = int(c.NotAfter.Sub(a.now()) / (24 * time.Hour))
	}
	bi, err := ReadBootInfo(a.BootPaths)
	if err != nil {
		bi = &BootInfo{Generation: -1, State: BootUnknown, Problems: []string{err.Error()}}
	}
	if fb := bi.fallback(); fb != nil {
		if r := a.lastVerify(); r != nil && r.Slot == fb.Slot && r.Generation == fb.Generation {
			fb.Verify = r
		}
	}
	st.Boot = bi
	return st, nil
}
