package main

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
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
		Short: "Show each member's health, leader, raft term/index, version, DB size, learner flag and certificate days left",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.load(cmd)
			if err != nil {
				return err
			}
			ca, _ := pki.CAPath(a.pkiDir(), "ca")
			crt, key := pki.ClientCertPath(a.pkiDir(), "admin")
			if len(endpoints) == 0 {
				// A cluster started by `etcdbake up` is reached through its forwards.
				if st, err := vmcluster.ReadRunState(a.runDir()); err == nil && st.Running() {
					for _, n := range sortedNodes(st) {
						endpoints = append(endpoints, st.Nodes[n].Endpoint)
					}
					fmt.Fprintf(cmd.ErrOrStderr(), "status: the QEMU cluster started by up (%s)\n", filepath.Join(a.runDir(), vmcluster.RunStateFile))
				}
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 4*timeout)
			defer cancel()
			st, err := status.Collect(ctx, c, status.Options{
				Endpoints: endpoints, CAFile: ca, CertFile: crt, KeyFile: key,
				PKIDir: a.pkiDir(), Timeout: timeout, Now: a.now(),
			})
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
	fmt.Fprintln(w, "MEMBER\tENDPOINT\tHEALTH\tLEADER\tLEARNER\tTERM\tINDEX\tVERSION\tDB SIZE\tCERT DAYS")
	for _, m := range st.Members {
		health := "healthy"
		if !m.Healthy {
			health = "unhealthy: " + m.Error
		}
		days := "-"
		if m.CertDaysLeft != nil {
			days = fmt.Sprint(*m.CertDaysLeft)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%v\t%v\t%d\t%d\t%s\t%s\t%s\n", m.Name, m.Endpoint, health, m.Leader, m.Learner,
			m.RaftTerm, m.RaftIndex, m.Version, humanBytes(m.DBSize), days)
	}
	w.Flush()
	fmt.Fprintf(out, "cluster %s, leader %s, quorum %v\n", st.ClusterID, st.Leader, st.Quorum)
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
