package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"
)

// The spec file is given with -f or, to the commands that read it, as the one positional
// argument: `etcdbake validate cluster.yaml`. Set for the whole tree by specArgs.

// specCommands read (or, init, write) the spec: they take it as their one argument.
var specCommands = []string{
	"etcdbake init", "etcdbake validate", "etcdbake pki", "etcdbake pki check",
	"etcdbake ignition", "etcdbake kubeadm", "etcdbake status", "etcdbake fetch",
	"etcdbake image", "etcdbake build", "etcdbake up", "etcdbake serve",
	"etcdbake rollout", "etcdbake rollout status", "etcdbake rollout resume",
}

// specArgs sets the argument checks of every command under root: the spec commands take
// at most one argument, the spec file; the others keep their own check, and a stray
// argument that is a spec file is answered with where the spec goes. A wrong argument
// is a usage error (exit 2).
func (a *app) specArgs(root *cobra.Command) {
	walk(root, func(c *cobra.Command) {
		if !c.Runnable() {
			return
		}
		if slices.Contains(specCommands, c.CommandPath()) {
			c.Args = a.specArg
			c.Use += " [SPEC]"
			return
		}
		orig := c.Args
		if orig == nil {
			orig = cobra.ArbitraryArgs
		}
		c.Args = func(cmd *cobra.Command, args []string) error {
			err := orig(cmd, args)
			if err == nil {
				return nil
			}
			for _, arg := range args {
				if isSpecFile(arg) {
					return usageErrorf("unexpected argument %s: %s does not read the spec; to give the spec to a command that does, use -f %s", arg, cmd.CommandPath(), arg)
				}
			}
			return usageErrorf("%s (see %s --help)", err, cmd.CommandPath())
		}
	})
}

// specArg accepts the spec file as the one positional argument, unless -f names
// another.
func (a *app) specArg(cmd *cobra.Command, args []string) error {
	switch {
	case len(args) == 0:
		return nil
	case len(args) > 1:
		return usageErrorf("%s takes one argument, the spec file, not %d (%s)", cmd.CommandPath(), len(args), strings.Join(args, " "))
	}
	if f := cmd.Flags().Lookup("spec"); f != nil && f.Changed && !samePath(f.Value.String(), args[0]) {
		return usageErrorf("two spec files: -f %s and %s: give one", f.Value.String(), args[0])
	}
	if cmd.HasAvailableSubCommands() && !exists(args[0]) && !strings.Contains(filepath.Base(args[0]), ".") {
		// `etcdbake pki chek`: more likely a mistyped command than a spec file.
		var subs []string
		for _, c := range cmd.Commands() {
			if c.IsAvailableCommand() {
				subs = append(subs, c.Name())
			}
		}
		return usageErrorf("%s %s: no such command (%s has %s) nor spec file", cmd.CommandPath(), args[0], cmd.CommandPath(), strings.Join(subs, ", "))
	}
	a.specPath = args[0]
	return nil
}

// isSpecFile says whether arg names an existing YAML file.
func isSpecFile(arg string) bool {
	ext := strings.ToLower(filepath.Ext(arg))
	if ext != ".yaml" && ext != ".yml" {
		return false
	}
	fi, err := os.Stat(arg)
	return err == nil && fi.Mode().IsRegular()
}

// samePath says whether two paths name the same file (or would).
func samePath(p, q string) bool {
	if filepath.Clean(p) == filepath.Clean(q) {
		return true
	}
	fp, err1 := os.Stat(p)
	fq, err2 := os.Stat(q)
	return err1 == nil && err2 == nil && os.SameFile(fp, fq)
}
