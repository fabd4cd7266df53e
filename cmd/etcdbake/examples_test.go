package main

import (
	"testing"

	"github.com/spf13/cobra"
)

// TestExamplesHaveCommands: every entry of the examples table is a command of the tree
// (a renamed command would otherwise lose its examples silently).
func TestExamplesHaveCommands(t *testing.T) {
	paths := map[string]bool{}
	walk(newRootCmd(), func(c *cobra.Command) { paths[c.CommandPath()] = true })
	for p := range examples {
		if !paths[p] {
			t.Errorf("examples has %q, which is no command", p)
		}
	}
}
