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
func (a *Agent) verifyConditions(ctx context.Context) []string {
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
	return out
}

// checkSubnetFile accepts flanneld's subnet file once it names this node's subnet.
func checkSubnetFile(path string) error {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("flanneld has not written %s", path)
	}
	if err != nil {
		return fmt.Errorf("reading flanneld's subnet file: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "FLANNEL_SUBNET="); ok && v != "" {
			return nil
		}
	}
	return fmt.Errorf("flanneld's %s has no FLANNEL_SUBNET= line yet", path)
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

	var last []string
	checked, lastKey := false, ""
	for ctx.Err() == nil {
		u := a.verifyConditions(ctx)
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
