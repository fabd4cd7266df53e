// Command etcd-firstboot runs on every node around etcd.service, on every boot:
//
//	etcd-firstboot prepare  time gate and bootstrap decision, before etcd starts
//	etcd-firstboot ready    health gate, learner promotion, flannel seeding, after etcd starts
//	etcd-firstboot status   the last decisions and the boot slot (--json for machines)
//	etcd-firstboot verify-boot
//	                        on a boot of an on-trial A/B entry (etcdbake-verify-boot.service,
//	                        Before=boot-complete.target): waits until the health gate passed,
//	                        /readyz answers and flanneld has its subnet; exit 0 blesses the
//	                        boot, non-zero (or SIGTERM at the unit's timeout) leaves it
//	                        unblessed so that the boot loader falls back to the other slot
//	etcd-firstboot stage URL
//	                        downloads this node's part of a release (URL:
//	                        https://HOST:PORT/v1/releases/<id>, etcdbake serve's release
//	                        listener, mutual TLS with the node's certificate) into the
//	                        inactive A/B slot, checked by sha256; nothing boots it yet
//	etcd-firstboot arm GENERATION
//	                        writes the staged slot's boot entry with one try: the next
//	                        reboot tries it, and falls back if it is not verified
//	etcd-firstboot rollout [--timeout D]
//	                        the rollout agent (etcdbake-rollout.service, after the health
//	                        gate): finishes the last boot's step, then follows the release
//	                        `etcdbake rollout` publishes: stages it, waits for the reboot lock
//	                        and the gates, hands leadership off, arms the slot and reboots
//	etcd-firstboot maintain [--json]
//	                        one maintenance pass: a NOSPACE alarm repaired (by the leader's
//	                        node), this member defragmented when fragmented (under the
//	                        cluster's lock, one member at a time, the leader's last), a
//	                        warning near the quota
//	etcd-firstboot snapshot [--json]
//	                        one run of the snapshot schedule (etcdbake-snapshot.timer, the
//	                        same calendar times on every node): unless another node took
//	                        this period's, takes a verified snapshot under the cluster's lock
//	                        into the data partition, records it in etcd, keeps backup.keep
//
// A refusal exits non-zero with the reason on stderr; the systemd units retry.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdbake/etcdbake/backup"
	"github.com/etcdbake/etcdbake/firstboot"
	"github.com/etcdbake/etcdbake/spec"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

// run is the whole command; it returns the exit code.
func run(args []string, stdout, stderr io.Writer) int {
	return runWith(args, stdout, stderr, firstboot.BootPaths{})
}

// runWith is run reading the boot slot from the given paths (tests point them at a fake
// ESP; zero fields are the real /proc/cmdline, efivarfs and /efi).
func runWith(args []string, stdout, stderr io.Writer, boot firstboot.BootPaths) int {
	if len(args) < 1 || !slices.Contains([]string{"prepare", "ready", "status", "verify-boot", "stage", "arm", "rollout", "maintain", "snapshot"}, args[0]) {
		fmt.Fprintln(stderr, "usage: etcd-firstboot prepare|ready|status|verify-boot|stage URL|arm GENERATION|rollout|maintain|snapshot [--config FILE] [--json] [--timeout D]")
		return 2
	}
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", spec.NodeConfigPath, "node settings written by etcdbake")
	asJSON := fs.Bool("json", false, "status, maintain, snapshot: print JSON")
	timeout := fs.Duration("timeout", spec.DefaultRolloutTimeout, "rollout: the bound on a new slot's verification (spec rollout.timeout)")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	var operand string
	if args[0] == "stage" || args[0] == "arm" {
		if fs.NArg() != 1 {
			fmt.Fprintf(stderr, "usage: etcd-firstboot %s\n", map[string]string{"stage": "stage URL (https://HOST:PORT/v1/releases/<id>)", "arm": "arm GENERATION (a number newer than the running entry's)"}[args[0]])
			return 2
		}
		operand = fs.Arg(0)
	}
	nc, err := spec.LoadNodeConfig(*cfgPath)
	if err != nil {
		fmt.Fprintln(stderr, "etcd-firstboot:", err)
		return 1
	}
	start := time.Now()
	a := &firstboot.Agent{Cfg: nc, BootPaths: boot, Logf: func(format string, args ...any) {
		fmt.Fprintf(stderr, "etcd-firstboot: "+format+"\n", args...)
	}}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	switch args[0] {
	case "prepare":
		err = a.Prepare(ctx)
	case "ready":
		err = a.RunReady(ctx)
	case "status":
		err = printStatus(stdout, a, *asJSON)
	case "verify-boot":
		err = a.VerifyBoot(ctx)
	case "stage":
		var st *firstboot.Staged
		logged := map[string]int64{}
		progress := func(file string, done, total int64) { // every 64 MiB, in the journal
			if done-logged[file] >= 64<<20 || done == total {
				logged[file] = done
				a.Logf("stage: %s: %d of %d MiB", path.Base(file), done>>20, total>>20)
			}
		}
		if st, err = a.Stage(ctx, firstboot.StageOptions{URL: operand, Progress: progress}); err == nil {
			fmt.Fprintf(stdout, "release %s staged in slot %s\n", st.Release, st.Slot)
		}
	case "rollout":
		err = a.RunRollout(ctx, firstboot.RolloutOptions{Timeout: *timeout, Reboot: func(ctx context.Context) error {
			out, err := exec.CommandContext(ctx, "systemctl", "reboot").CombinedOutput()
			if err != nil {
				return fmt.Errorf("systemctl reboot: %v: %s", err, out)
			}
			return nil
		}})
		if errors.Is(err, context.Canceled) {
			err = nil // stopped by systemd
		}
	case "maintain":
		var rep firstboot.MaintainReport
		m := nc.Maintenance
		rep, err = a.Maintain(ctx, firstboot.MaintainOptions{QuotaBytes: m.QuotaBytes,
			DefragRatio: m.DefragRatio, DefragMinFree: m.DefragMinFree, DefragBetween: m.DefragBetween.D})
		for _, w := range rep.Warnings {
			a.Logf("maintain: WARNING: %s", w)
		}
		if rep.Skipped != "" {
			a.Logf("maintain: %s", rep.Skipped)
		}
		if *asJSON && err == nil {
			err = json.NewEncoder(stdout).Encode(rep)
		}
	case "snapshot":
		var rep *backup.ScheduledReport
		if rep, err = scheduledSnapshot(ctx, a); rep != nil {
			switch {
			case rep.Taken != nil:
				a.Logf("snapshot: took %s (revision %d, %d bytes), verified", rep.Taken.File, rep.Taken.Revision, rep.Taken.Size)
				if rep.Taken.Object != "" {
					a.Logf("snapshot: uploaded as %s", rep.Taken.Object)
				}
			case rep.Skipped != "":
				a.Logf("snapshot: skipped: %s", rep.Skipped)
			}
			for _, f := range append(rep.Removed, rep.RemovedFromTarget...) {
				a.Logf("snapshot: removed %s (backup.keep %d)", f, nc.Backup.Keep)
			}
			if *asJSON && err == nil {
				err = json.NewEncoder(stdout).Encode(rep)
			}
		}
	case "arm":
		var gen int
		if gen, err = strconv.Atoi(operand); err != nil || gen < 1 {
			fmt.Fprintf(stderr, "etcd-firstboot: arm: %q is not a generation (a whole number above 0)\n", operand)
			return 2
		}
		var entry string
		if entry, err = a.Arm(gen); err == nil {
			fmt.Fprintf(stdout, "armed %s: the next reboot tries it\n", entry)
		}
	}
	if err != nil {
		fmt.Fprintln(stderr, "etcd-firstboot:", err)
		return 1
	}
	if args[0] != "status" {
		fmt.Fprintf(stderr, "etcd-firstboot: %s done in %s\n", args[0], time.Since(start).Round(time.Millisecond))
	}
	return 0
}

func printStatus(w io.Writer, a *firstboot.Agent, asJSON bool) error {
	st, err := a.ReadStatus()
	if err != nil {
		return err
	}
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	fmt.Fprintf(w, "node %s of cluster %s (updated %s)\n", st.Node, st.Cluster, st.Updated.Format(time.RFC3339))
	if t := st.Time; t != nil {
		fmt.Fprintf(w, "time gate:  %s via %s, offset %s (max %s), certificates %s\n            %s\n", t.Decision, t.Source, t.Offset, t.Threshold, t.CertWindow, t.Message)
	}
	if b := st.Bootstrap; b != nil {
		fmt.Fprintf(w, "bootstrap:  %s (state %s): %s\n", b.Decision, b.State, b.Reason)
	}
	if r := st.Ready; r != nil {
		fmt.Fprintf(w, "health:     %s, member %s, cluster %s: %s\n", r.Decision, r.MemberID, r.ClusterID, r.Message)
	}
	if f := st.Flannel; f != nil {
		fmt.Fprintf(w, "flannel:    %s: %s\n", f.Decision, f.Message)
	}
	printBoot(w, st.Boot)
	if v := st.Verify; v != nil {
		fmt.Fprintf(w, "verify:     %s: %s\n", v.Result, v.Message)
	}
	names := make([]string, 0, len(st.CertDaysLeft))
	for n := range st.CertDaysLeft {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "cert:       %s: %d days left\n", n, st.CertDaysLeft[n])
	}
	return nil
}

// stateNotes explain the boot assessment states in `status`.
var stateNotes = map[string]string{
	firstboot.BootGood:          "blessed",
	firstboot.BootIndeterminate: "on trial: not blessed yet, verify-boot decides",
	firstboot.BootBad:           "marked bad: the next boot falls back",
	firstboot.BootClean:         "booted an entry without a boot counter",
	firstboot.BootUnknown:       "the boot loader's state could not be read",
}

func printBoot(w io.Writer, b *firstboot.BootInfo) {
	if b == nil {
		return
	}
	fmt.Fprintf(w, "boot:       slot %s, release %s, entry %s, state %s (%s)\n", orNone(b.Slot), orNone(b.Release), orNone(b.Entry), b.State, stateNotes[b.State])
	for _, p := range b.Problems {
		fmt.Fprintf(w, "boot:       WARNING: %s\n", p)
	}
	if f := b.Fallback; f != nil {
		fmt.Fprintf(w, "fallback:   %s\n            %s\n", f.Summary(b.Slot), f.Reason())
	}
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// scheduledSnapshot is one run of the snapshot schedule: the lock is the cluster's
// (firstboot's), the snapshot and its files are package backup's.
func scheduledSnapshot(ctx context.Context, a *firstboot.Agent) (*backup.ScheduledReport, error) {
	tc, err := a.TLSConfig()
	if err != nil {
		return nil, err
	}
	nc := a.Cfg
	target, err := backup.NodeTarget(nc.Backup.Target)
	if err != nil {
		return nil, err
	}
	return backup.Scheduled(ctx, backup.ScheduledOptions{
		Endpoints: a.Endpoints(), TLS: tc, Node: nc.Name, Cluster: nc.Cluster, CA: nc.CA,
		Dir: nc.Backup.Dir, Keep: nc.Backup.Keep, NextDue: nextCalendarElapse(ctx, nc.Backup.Schedule), Target: target,
		Timeout: a.RequestTimeout(),
		Lock: func(ctx context.Context, cli *clientv3.Client) (func(), error) {
			l, err := a.AcquireRolloutLock(ctx, cli, 5*time.Minute)
			if err != nil {
				return nil, err
			}
			return func() { _ = l.Release(context.Background()) }, nil
		},
	})
}

// nextCalendarElapse is when the OnCalendar expression schedule elapses next, as systemd
// computes it (`systemd-analyze calendar`); zero when it cannot tell (no schedule, no
// systemd). The timer's own NextElapseUSecRealtime is no use here: systemd reports it as
// infinite while the timer's service runs, which is when this is asked.
func nextCalendarElapse(ctx context.Context, schedule string) time.Time {
	if schedule == "" {
		return time.Time{}
	}
	cmd := exec.CommandContext(ctx, "systemd-analyze", "calendar", "--iterations=1", schedule)
	cmd.Env = append(os.Environ(), "TZ=UTC")
	out, err := cmd.Output()
	if err != nil {
		return time.Time{}
	}
	return parseNextElapse(out)
}

// parseNextElapse reads the "Next elapse:" line of `systemd-analyze calendar` run with
// TZ=UTC ("    Next elapse: Fri 2026-12-04 11:34:00 UTC"); zero when there is none.
func parseNextElapse(out []byte) time.Time {
	for _, line := range strings.Split(string(out), "\n") {
		v, ok := strings.CutPrefix(strings.TrimSpace(line), "Next elapse:")
		if !ok {
			continue
		}
		t, err := time.Parse("Mon 2006-01-02 15:04:05 MST", strings.TrimSpace(v))
		if zone, _ := t.Zone(); err != nil || zone != "UTC" {
			return time.Time{} // another zone's abbreviation says nothing of its offset
		}
		return t
	}
	return time.Time{}
}
