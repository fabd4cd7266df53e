package firstboot

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdbake/etcdbake/spec"
)

// Verify-boot results.
const (
	VerifyGood   = "good"
	VerifyFailed = "failed"
)

// VerifyRecordName is the file in the state dir (data partition) that keeps the last
// verify-boot result across the reboot that follows a failure.
const VerifyRecordName = "verify-boot.json"

// VerifyResult is the outcome of verify-boot on one boot of a counted (on-trial) entry.
type VerifyResult struct {
	Result     string `json:"result"` // good or failed
	Slot       string `json:"slot"`
	Release    string `json:"release"`
	Entry      string `json:"entry"`
	Generation int    `json:"generation"` // -1 when the booted entry is not an etcdbake entry
	// Waiting lists the conditions still unmet when verify-boot gave up.
	Waiting []string      `json:"waiting,omitempty"`
	Message string        `json:"message"`
	Started time.Time     `json:"started"`
	Took    time.Duration `json:"took"`
}

// VerifyRecordPath is where the last verify-boot result is kept across reboots.
func (a *Agent) VerifyRecordPath() string { return filepath.Join(a.Cfg.StateDir, VerifyRecordName) }

func (a *Agent) flannelSubnetFile() string {
	if a.FlannelSubnetFile != "" {
		return a.FlannelSubnetFile
	}
	return filepath.Join(spec.FlannelRunDir, "subnet.env")
}

// verifyConditions checks everything verify-boot waits for, in order, and returns one
// sentence per condition that does not hold.
func (a *Agent) verifyConditions(ctx context.Context, step *RolloutState, cli *clientv3.Client) []string {
	var out []string
	// The ready flag lives in the run dir (tmpfs), so it exists only if the health gate
	// passed on this boot.
	if _, err := os.Stat(a.ReadyFlagPath()); err != nil {
		out = append(out, fmt.Sprintf("the health gate has not written its ready flag %s", a.ReadyFlagPath()))
	}
	if err := a.probe(ctx, "/readyz"); err != nil {
		out = append(out, fmt.Sprintf("the local member is not ready (%s/readyz): %v", a.Cfg.LocalClientURL, err))
	}
	if a.Cfg.Flannel.Key != "" {
		if err := checkSubnetFile(a.flannelSubnetFile()); err != nil {
			out = append(out, err.Error())
		}
	}
	if len(out) == 0 && step != nil && cli != nil {
		out = append(out, a.rolloutConditions(ctx, step, cli)...)
	}
	return out
}

// checkSubnetFile accepts flanneld's subnet file once it names this node's subnet.
func checkSubnetFile(path string) error {
	_, err := subnetFromFile(path)
	return err
}

// subnetFromFile reads FLANNEL_SUBNET from flanneld's subnet file.
func subnetFromFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("flanneld has not written %s", path)
	}
	if err != nil {
		return "", fmt.Errorf("reading flanneld's subnet file: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "FLANNEL_SUBNET="); ok && v != "" {
			return v, nil
		}
	}
	return "", fmt.Errorf("flanneld's %s has no FLANNEL_SUBNET= line yet", path)
}

// rolloutConditions are verify-boot's extra checks on the boot of a rollout step (the
// agent's state says this slot and release were armed): the member came back with its
// data (the same member ID, the same HashKV as a peer at a common revision, so it has
// caught up) and flannel kept the node's subnet.
func (a *Agent) rolloutConditions(ctx context.Context, st *RolloutState, cli *clientv3.Client) []string {
	var out []string
	cctx, cancel := context.WithTimeout(ctx, a.RequestTimeout())
	defer cancel()
	if s, err := cli.Status(cctx, a.Cfg.LocalClientURL); err != nil {
		out = append(out, fmt.Sprintf("the local member does not answer Status: %v", err))
	} else if s.Header.MemberId != st.MemberID {
		out = append(out, fmt.Sprintf("the local member is %x, not %x as before the reboot (its data was replaced)", s.Header.MemberId, st.MemberID))
	}
	if _, err := a.CompareHash(ctx, cli); err != nil {
		out = append(out, fmt.Sprintf("the local member's data is not verified against a peer: %v", err))
	}
	if st.Subnet != "" {
		if got, err := subnetFromFile(a.flannelSubnetFile()); err == nil && got != st.Subnet {
			out = append(out, fmt.Sprintf("flannel's subnet is %s, not %s as before the reboot", got, st.Subnet))
		}
	}
	return out
}

// VerifyBoot decides whether this boot of an on-trial entry is good: it polls (every
// Timeouts.Retry) until the health gate's ready flag exists on this boot, the local
// member answers /readyz, and, when the node runs flannel, flanneld has written its
// subnet file. It returns nil once all hold; when ctx ends first (systemd's SIGTERM at
// the unit's TimeoutStartSec, the rollout bound) it returns an error naming what was
// still unmet. Either way the result goes into the status and into VerifyRecordPath on
// the data partition, so that `status` can say after a fallback why the slot failed.
func (a *Agent) VerifyBoot(ctx context.Context) error {
	start := a.now()
	res := VerifyResult{Generation: -1, Started: start.UTC()}
	bi, err := ReadBootInfo(a.BootPaths)
	if err != nil {
		a.logf("verify-boot: %v (verifying anyway)", err)
	}
	if bi != nil {
		res.Slot, res.Release, res.Entry, res.Generation = bi.Slot, bi.Release, bi.Entry, bi.Generation
	}
	what := fmt.Sprintf("boot of slot %s (release %s, entry %s)", orNone(res.Slot), orNone(res.Release), orNone(res.Entry))
	a.logf("verify-boot: verifying this %s", what)
	// A boot into a slot that the rollout agent armed is checked for the member's data too.
	var step *RolloutState
	var cli *clientv3.Client
	var st RolloutState
	if ok, _ := readJSON(a.RolloutStatePath(), &st); ok && st.Phase == PhaseArmed && bi != nil && st.Slot == bi.Slot && st.Release == bi.Release {
		if cli, err = a.client([]string{a.Cfg.LocalClientURL}); err != nil {
			a.logf("verify-boot: %v", err)
		} else {
			step = &st
			defer cli.Close()
		}
	}

	var last []string
	checked, lastKey := false, ""
	for ctx.Err() == nil {
		u := a.verifyConditions(ctx, step, cli)
		if ctx.Err() != nil {
			break // this attempt was cut short: the previous one's findings stand
		}
		checked, last = true, u
		if len(u) == 0 {
			break
		}
		if k := strings.Join(u, "; "); k != lastKey {
			a.logf("verify-boot: waiting (%s so far) for: %s", a.now().Sub(start).Round(time.Second), k)
			lastKey = k
		}
		select {
		case <-ctx.Done():
		case <-time.After(a.retryEvery()):
		}
	}
	res.Took = a.now().Sub(start)
	var verr error
	switch {
	case checked && len(last) == 0:
		res.Result = VerifyGood
		checks := "ready flag, /readyz"
		if a.Cfg.Flannel.Key != "" {
			checks += ", flannel subnet"
		}
		if step != nil {
			checks += ", member ID, HashKV against a peer"
		}
		res.Message = fmt.Sprintf("%s verified after %s: %s", what, res.Took.Round(time.Second), checks)
		a.logf("verify-boot: %s", res.Message)
		defer a.publishVerified(ctx)
	case !checked:
		res.Result = VerifyFailed
		res.Message = fmt.Sprintf("%s not verified: stopped (%v) after %s before any check completed", what, context.Cause(ctx), res.Took.Round(time.Second))
		verr = errors.New(res.Message)
	default:
		res.Result = VerifyFailed
		res.Waiting = last
		res.Message = fmt.Sprintf("%s not verified after %s: %s", what, res.Took.Round(time.Second), strings.Join(res.Waiting, "; "))
		verr = errors.New(res.Message)
	}
	uerr := a.update(func(s *Status) { s.Verify = &res })
	if uerr != nil {
		uerr = fmt.Errorf("writing status: %w", uerr)
	}
	perr := writeJSON(a.VerifyRecordPath(), res, 0o644)
	if perr != nil {
		perr = fmt.Errorf("recording the verify-boot result in %s: %w", a.VerifyRecordPath(), perr)
	}
	return errors.Join(verr, uerr, perr)
}

// publishVerified republishes the boot record with this boot's verify result (after
// the status has it).
func (a *Agent) publishVerified(ctx context.Context) {
	cli, err := a.client([]string{a.Cfg.LocalClientURL})
	if err == nil {
		err = a.PublishBoot(ctx, cli)
		cli.Close()
	}
	if err != nil {
		a.logf("verify-boot: publishing this node's boot record: %v", err)
	}
}

// lastVerify reads the recorded verify-boot result; nil when there is none or it is
// unreadable.
func (a *Agent) lastVerify() *VerifyResult {
	var r VerifyResult
	if ok, err := readJSON(a.VerifyRecordPath(), &r); !ok || err != nil {
		return nil
	}
	return &r
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}
