package main

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/etcdbake/etcdbake/pki"
	"github.com/etcdbake/etcdbake/spec"
)

func (a *app) pkiCmd() *cobra.Command {
	var renew bool
	cmd := &cobra.Command{
		Use:   "pki",
		Short: "Create or reuse the CAs and issue every certificate under OUT/pki",
		Long: `pki creates or reuses the CAs and issues every certificate the spec needs under OUT/pki.
A certificate that still matches the spec is reused.

--renew re-issues every node and client certificate (new keys, a full lifetime from now;
the CAs stay): build a release with the new certificates (etcdbake image) and roll it out
(etcdbake rollout) before the old ones expire.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.load(cmd)
			if err != nil {
				return err
			}
			if renew {
				res, err := pki.Renew(c, a.pkiDir(), a.now())
				if err != nil {
					return err
				}
				a.reportPKI(cmd, res, true)
				return nil
			}
			return a.ensurePKI(cmd, c, true)
		},
	}
	cmd.Flags().BoolVar(&renew, "renew", false, "re-issue every leaf certificate even if it is still valid (the CAs stay)")
	cmd.AddCommand(a.pkiCheckCmd())
	return cmd
}

// ensurePKI runs pki.Ensure and reports what changed (everything when verbose).
func (a *app) ensurePKI(cmd *cobra.Command, c *spec.Cluster, verbose bool) error {
	res, err := pki.Ensure(c, a.pkiDir(), a.now())
	if err != nil {
		return err
	}
	a.reportPKI(cmd, res, verbose)
	return nil
}

// reportPKI prints what pki.Ensure did: the changes (everything when verbose) and the
// certificates of nodes no longer in the spec.
func (a *app) reportPKI(cmd *cobra.Command, res *pki.Result, verbose bool) {
	if res == nil {
		return
	}
	w := cmd.OutOrStdout()
	for _, act := range res.Actions {
		if verbose || act.Verb != "reused" {
			fmt.Fprintf(w, "pki: %s\n", act)
		}
	}
	for _, s := range res.Stale() {
		fmt.Fprintf(cmd.ErrOrStderr(), "pki: %s is not in the spec any more (left in place; delete it when the node is gone)\n", s)
	}
	a.reportStaleOutputs(cmd, res)
}

func (a *app) pkiCheckCmd() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Show every certificate and fail if one is expired, not yet valid, or drifted from the spec",
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.load(cmd)
			if err != nil {
				return err
			}
			infos, err := pki.Check(c, a.pkiDir(), a.now())
			if err != nil {
				return err
			}
			if noneExist(infos) {
				return &exitError{code: 1, msg: fmt.Sprintf("no PKI in %s: run `%s` to create it", a.pkiDir(), a.cmdLine("pki"))}
			}
			bad := 0
			for _, ci := range infos {
				if !ci.OK() {
					bad++
				}
			}
			w := cmd.OutOrStdout()
			if output == "json" {
				if err := writeJSON(w, jsonCertInfos(infos)); err != nil {
					return err
				}
			} else {
				for _, ci := range infos {
					state := "ok"
					if !ci.OK() {
						state = "PROBLEM"
					}
					fmt.Fprintf(w, "%s [%s]\n  subject:  %s\n  issuer:   %s\n  SANs:     %s\n  valid:    %s .. %s (%d days left)\n",
						ci.Name, state, ci.Subject, ci.Issuer, strings.Join(append(append([]string(nil), ci.DNSNames...), ci.IPs...), ", "),
						ci.NotBefore.UTC().Format(time.RFC3339), ci.NotAfter.UTC().Format(time.RFC3339), ci.DaysLeft)
					for _, p := range ci.Problems {
						fmt.Fprintf(w, "  problem:  %s\n", p)
					}
				}
			}
			if bad > 0 {
				return &exitError{code: 1, msg: fmt.Sprintf("%d of %d certificates have problems: run `%s` to re-issue drifted or expiring leaves", bad, len(infos), a.cmdLine("pki"))}
			}
			if output != "json" {
				fmt.Fprintf(w, "all %d certificates ok\n", len(infos))
			}
			return nil
		},
	}
	outputFlag(cmd, &output, "text", "json")
	return cmd
}

// noneExist says whether not one of the certificate files is there: no PKI at all.
func noneExist(infos []pki.CertInfo) bool {
	for _, ci := range infos {
		if _, err := os.Stat(ci.Path); err == nil {
			return false
		}
	}
	return true
}

// jsonCertInfos gives empty lists as [] rather than null, so a reader need not tell the two
// apart.
func jsonCertInfos(infos []pki.CertInfo) []pki.CertInfo {
	out := make([]pki.CertInfo, len(infos))
	for i, ci := range infos {
		for _, l := range []*[]string{&ci.DNSNames, &ci.IPs, &ci.Problems} {
			if *l == nil {
				*l = []string{}
			}
		}
		out[i] = ci
	}
	return out
}
