package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/etcdbake/etcdbake/pki"
	"github.com/etcdbake/etcdbake/status"
	"github.com/etcdbake/etcdbake/vmcluster"
)

func (a *app) statusCmd() *cobra.Command {
	var output string
	var endpoints []string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show each member's health, leader, raft term/index, version, database use and quota, certificate days left, alarms and warnings",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.load(cmd)
			if err != nil {
				return err
			}
			ca, _ := pki.CAPath(a.pkiDir(), "ca")
			crt, key := pki.ClientCertPath(a.pkiDir(), "admin")
			opts := status.Options{
				Endpoints: endpoints, CAFile: ca, CertFile: crt, KeyFile: key,
				PKIDir: a.pkiDir(), Timeout: timeout, Now: a.now(),
			}
			if len(endpoints) == 0 {
				// A cluster started by `etcdbake up` is reached through its forwards; a
				// node whose VM is not running is said so at once, not dialled.
				if st, err := vmcluster.ReadRunState(a.runDir()); err == nil && st.Running() {
					fmt.Fprintf(cmd.ErrOrStderr(), "status: the QEMU cluster started by up (%s)\n", filepath.Join(a.runDir(), vmcluster.RunStateFile))
					a.upOptions(st, &opts)
					for _, n := range sortedKeys(opts.NotRunning) {
						fmt.Fprintf(cmd.ErrOrStderr(), "status: %s: %s\n", n, opts.NotRunning[n])
					}
				}
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 4*timeout)
			defer cancel()
			st, err := status.Collect(ctx, c, opts)
			var ue *status.UnreachableError
			if errors.As(err, &ue) {
				if output == "json" {
					if err := writeJSON(cmd.OutOrStdout(), ue); err != nil {
						return err
					}
				}
				return &exitError{code: 1, msg: "status: " + ue.Error()}
			}
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if output == "json" {
				if err := writeJSON(w, st); err != nil {
					return err
				}
			} else {
				printStatus(w, st)
			}
			if !st.Quorum {
				return &exitError{code: 1, msg: "the cluster has no quorum or no leader"}
			}
			if len(st.Alarms) > 0 {
				var as []string
				for _, al := range st.Alarms {
					as = append(as, al.Member+" "+al.Alarm)
				}
				return &exitError{code: 1, msg: "alarms raised (" + strings.Join(as, ", ") + "): the cluster answers but does not serve as it should; see the warnings"}
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	cmd.Flags().StringSliceVar(&endpoints, "endpoints", nil, "client URLs to use instead of the spec's (e.g. forwarded ports)")
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Second, "per-request timeout")
	return cmd
}

func printStatus(out interface{ Write([]byte) (int, error) }, st *status.Cluster) {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "MEMBER\tENDPOINT\tHEALTH\tLEADER\tLEARNER\tTERM\tINDEX\tVERSION\tDB IN USE/SIZE (QUOTA)\tCERT DAYS")
	for _, m := range st.Members {
		health := "healthy"
		if !m.Healthy {
			health = "unhealthy: " + status.Brief(m.Cause, m.Error)
		}
		days := "-"
		if m.CertDaysLeft != nil {
			days = fmt.Sprint(*m.CertDaysLeft)
		}
		db := "-"
		if m.DBSize > 0 {
			db = fmt.Sprintf("%s/%s (%.0f%%)", humanBytes(m.DBSizeInUse), humanBytes(m.DBSize), m.QuotaPercent)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%v\t%v\t%d\t%d\t%s\t%s\t%s\n", m.Name, m.Endpoint, health, m.Leader, m.Learner,
			m.RaftTerm, m.RaftIndex, m.Version, db, days)
	}
	w.Flush()
	// The whole cause of each member that did not answer, below the table.
	for _, m := range st.Members {
		if !m.Healthy && m.Error != "" && status.Brief(m.Cause, m.Error) != m.Error {
			fmt.Fprintf(out, "%s (%s): %s\n", m.Name, m.Endpoint, m.Error)
		}
	}
	leader := st.Leader
	if leader == "" {
		leader = "(none)"
	}
	fmt.Fprintf(out, "cluster %s, leader %s, quorum %v\n", st.ClusterID, leader, st.Quorum)
	if s := st.Snapshot; s != nil {
		next := ""
		if !s.NextDue.IsZero() {
			next = ", next due " + s.NextDue.Format(time.RFC3339)
		}
		up := ""
		if s.Object != "" {
			up = ", uploaded as " + s.Object
		}
		fmt.Fprintf(out, "newest scheduled snapshot: %s on %s (revision %d, %s, taken %s%s%s)\n", s.File, s.Node, s.Revision, humanBytes(s.Size), s.Taken.Format(time.RFC3339), up, next)
	}
	for _, wn := range st.Warnings {
		fmt.Fprintf(out, "WARNING: %s\n", wn)
	}
	if len(st.Flannel) > 0 {
		var ls []string
		for _, l := range st.Flannel {
			who := l.Node
			if who == "" {
				who = l.PublicIP
			}
			ls = append(ls, who+"="+l.Subnet)
		}
		fmt.Fprintf(out, "flannel leases (%d): %s\n", len(st.Flannel), strings.Join(ls, " "))
	}
	// What each node boots (disk images: A/B slot and release), and any fallback.
	for _, m := range st.Members {
		if b := m.Boot; b != nil {
			verified := ""
			if v, _, ok := strings.Cut(b.Verify, ":"); ok {
				verified = ", verify-boot " + v
			}
			fmt.Fprintf(out, "%s: slot %s, release %s, boot %s%s (%s)\n", m.Name, b.Slot, b.Release, b.State, verified, b.Entry)
			if b.Fallback != "" {
				fmt.Fprintf(out, "%s: FELL BACK: %s\n", m.Name, b.Fallback)
			}
		}
	}
}

// upOptions points o at the cluster of `etcdbake up` recorded in st: its forwarded
// endpoints, and the nodes whose VM is not running.
func (a *app) upOptions(st *vmcluster.RunState, o *status.Options) {
	o.Endpoints, o.NodeEndpoints, o.NotRunning = nil, map[string]string{}, map[string]string{}
	for _, n := range sortedNodes(st) {
		o.Endpoints = append(o.Endpoints, st.Nodes[n].Endpoint)
		o.NodeEndpoints[n] = st.Nodes[n].Endpoint
	}
	for n, why := range st.NotRunning() {
		o.NotRunning[n] = "its VM is not running (" + why + "); `etcdbake up` starts it again from its disk"
	}
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func writeJSON(w interface{ Write([]byte) (int, error) }, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
