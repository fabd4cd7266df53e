package main

import (
	"fmt"
	"slices"
	"strings"

	"github.com/spf13/cobra"
)

// The -o/--output flags: every command that has one accepts exactly the values it lists
// (text and json unless it says otherwise), checked before the command does anything, in
// one place: checkOutputFlags wraps each command's RunE when the tree is built, so a
// command whose -o is registered elsewhere (status) is checked the same way.

// outputAnnotation, on an output flag, lists its allowed values (set by outputFlag).
const outputAnnotation = "etcdbake-output-formats"

// defaultOutputFormats are what an -o flag without the annotation accepts.
var defaultOutputFormats = []string{"text", "json"}

// outputFlag registers -o/--output on cmd with the given allowed values, the first being
// the default.
func outputFlag(cmd *cobra.Command, p *string, formats ...string) {
	cmd.Flags().StringVarP(p, "output", "o", formats[0], "output format: "+strings.Join(formats, " or "))
	_ = cmd.Flags().SetAnnotation("output", outputAnnotation, formats)
}

// outputFormats are the values cmd's -o accepts.
func outputFormats(cmd *cobra.Command) []string {
	f := cmd.Flags().Lookup("output")
	if f == nil {
		return nil
	}
	if v := f.Annotations[outputAnnotation]; len(v) > 0 {
		return v
	}
	return defaultOutputFormats
}

// checkOutput refuses an -o value cmd does not know (exit 2, naming the allowed ones).
func checkOutput(cmd *cobra.Command) error {
	f := cmd.Flags().Lookup("output")
	if f == nil {
		return nil
	}
	allowed := outputFormats(cmd)
	if v := f.Value.String(); !slices.Contains(allowed, v) {
		return usageErrorf("-o %s: %s prints %s", v, cmd.CommandPath(), strings.Join(allowed, " or "))
	}
	return nil
}

// checkOutputFlags makes every command under root that has an -o flag check its value
// first, before its arguments.
func checkOutputFlags(root *cobra.Command) {
	walk(root, func(c *cobra.Command) {
		if c.Flags().Lookup("output") == nil || c.RunE == nil {
			return
		}
		check := c.Args
		if check == nil {
			check = cobra.ArbitraryArgs
		}
		c.Args = func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(cmd); err != nil {
				return err
			}
			return check(cmd, args)
		}
	})
}

// walk calls f for c and every command below it.
func walk(c *cobra.Command, f func(*cobra.Command)) {
	f(c)
	for _, sub := range c.Commands() {
		walk(sub, f)
	}
}

// usageErrorf is an error in how the command was called: exit 2, like a spec error.
func usageErrorf(format string, args ...any) error {
	return &exitError{code: 2, msg: fmt.Sprintf(format, args...)}
}
