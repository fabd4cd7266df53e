package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/etcdbake/etcdbake/spec"
	"github.com/etcdbake/etcdbake/vmcluster"
)

// sshCmd logs in to a node with the system's ssh client, as the spec's SSH user: at the
// forwarded port when the cluster runs under `up`, else at the node's spec address.
func (a *app) sshCmd() *cobra.Command {
	var identity string
	cmd := &cobra.Command{
		Use:   "ssh NODE [-- COMMAND [ARG...]]",
		Short: "Log in to a node (key-only, as ssh.user; `sudo` for root) with your ssh client",
		Long: `Runs your ssh client against the node: under ` + "`etcdbake up`" + ` the forwarded port on
127.0.0.1, otherwise the node's address from the spec. The login is ssh.user (default core),
who becomes root with sudo. The host key is recorded under the name
etcdbake-<cluster>-<node> in your known_hosts (under up: in OUT/run/known_hosts, trusted
on first use); it stays the same across reboots and A/B updates (the node keeps it on its
data partition; the node's console prints its fingerprint at every boot).`,
		Example: `  etcdbake ssh etcd-1
  etcdbake ssh etcd-1 -- sudo journalctl -u etcd -n 20
  etcdbake ssh -i ~/.ssh/etcd_ed25519 etcd-2`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.load(cmd)
			if err != nil {
				return err
			}
			argv, forward, err := a.sshArgv(c, args[0], identity, args[1:])
			if err != nil {
				return err
			}
			// Under `up`, a node that has just booted may be healthy before its sshd
			// listens: wait for it (bounded) rather than fail with "connection reset".
			if forward != "" {
				wctx, cancel := context.WithTimeout(cmd.Context(), 2*time.Minute)
				err := vmcluster.WaitSSH(wctx, forward, func(err error) {
					fmt.Fprintf(cmd.ErrOrStderr(), "etcdbake: %s's sshd does not answer on %s yet (%v): waiting up to 2 min\n", args[0], forward, err)
				})
				cancel()
				if err != nil {
					return fmt.Errorf("%s: %w (its console: %s)", args[0], err, filepath.Join(a.runDir(), args[0]+".log"))
				}
			}
			ssh := exec.CommandContext(cmd.Context(), argv[0], argv[1:]...)
			ssh.Stdin, ssh.Stdout, ssh.Stderr = cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr()
			err = ssh.Run()
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				// ssh printed why; pass its exit status on (255: ssh's own failure).
				return &exitError{code: ee.ExitCode()}
			}
			if errors.Is(err, exec.ErrNotFound) {
				return fmt.Errorf("no ssh client found: install OpenSSH's client (Debian: apt install openssh-client)")
			}
			return err
		},
	}
	cmd.Flags().StringVarP(&identity, "identity", "i", "", "private key file to log in with (default: your ssh agent and ~/.ssh keys)")
	return cmd
}

// sshArgv is the ssh command line for a node, and the forward it goes to when the
// cluster runs under `up` ("" otherwise).
func (a *app) sshArgv(c *spec.Cluster, node, identity string, command []string) (argv []string, forward string, err error) {
	n, ok := c.NodeByName(node)
	if !ok {
		var names []string
		for _, n := range c.Nodes {
			names = append(names, n.Name)
		}
		return nil, "", usageErrorf("no node %q in %s (nodes: %v)", node, a.specPath, names)
	}
	if len(c.SSH.AuthorizedKeys) == 0 {
		return nil, "", fmt.Errorf("%s has no ssh.authorizedKeys, so no one can log in to %s: add your public key (the .pub file's line) and rebuild", a.specPath, node)
	}
	host, port := n.IP().String(), strconv.Itoa(spec.SSHPort)
	var opts []string
	if st, err := vmcluster.ReadRunState(a.runDir()); err == nil && st.Running() {
		// A cluster of `etcdbake up` runs from this output directory: its forward.
		if forward, err = vmcluster.SSHAddrIn(a.runDir(), node); err != nil {
			return nil, "", err
		}
		if host, port, err = net.SplitHostPort(forward); err != nil {
			return nil, "", err
		}
		// Local VMs: their keys are trusted on first use and kept, readable, in the run
		// directory, out of your known_hosts (`down --purge` starts over with new keys).
		opts = []string{"-o", "UserKnownHostsFile=" + filepath.Join(a.runDir(), "known_hosts"), "-o", "StrictHostKeyChecking=accept-new", "-o", "HashKnownHosts=no"}
	}
	argv = append([]string{"ssh", "-p", port, "-l", c.SSH.User, "-o", "HostKeyAlias=etcdbake-" + c.Name + "-" + node}, opts...)
	if identity != "" {
		argv = append(argv, "-i", identity, "-o", "IdentitiesOnly=yes")
	}
	argv = append(argv, host)
	if len(command) > 0 {
		argv = append(argv, "--")
		argv = append(argv, command...)
	}
	return argv, forward, nil
}
