package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/etcdbake/etcdbake/imagebuild"
	"github.com/etcdbake/etcdbake/pki"
	"github.com/etcdbake/etcdbake/spec"
	"github.com/etcdbake/etcdbake/vmcluster"
)

// When certificates are created or re-issued, what was made from the old ones is stale:
// the Ignition configs in OUT/ignition, the images in OUT/images, a cluster running under
// `up`. reportStaleOutputs names those that exist and the command that refreshes each,
// leaving out what the running command rewrites itself. (up's own images in OUT/qemu are
// rebuilt by up when their inputs change.)

// changedNodes are the nodes whose certificates changed, in spec order: every node when a
// CA did.
func changedNodes(res *pki.Result) (nodes []string, all bool) {
	var every []string
	for _, act := range res.Actions {
		rest, ok := strings.CutPrefix(act.Name, "nodes/")
		if !ok {
			if (act.Name == pki.CAName || act.Name == pki.PeerCAName) && act.Verb != pki.Reused {
				all = true
			}
			continue
		}
		node, _, _ := strings.Cut(rest, "/")
		if !slices.Contains(every, node) {
			every = append(every, node)
		}
		if act.Verb != pki.Reused && !slices.Contains(nodes, node) {
			nodes = append(nodes, node)
		}
	}
	if all {
		return every, true
	}
	return nodes, false
}

// rewrites says which outputs the running command writes anew after this report.
func rewrites(cmd *cobra.Command) (ignition, images bool) {
	switch cmd.CommandPath() {
	case "etcdbake ignition":
		return true, false
	case "etcdbake image":
		return false, true
	case "etcdbake build":
		f := cmd.Flags()
		return f.Changed("binaries-url") || f.Changed("inline-binaries"), true
	}
	return false, false
}

func (a *app) reportStaleOutputs(cmd *cobra.Command, res *pki.Result) {
	nodes, all := changedNodes(res)
	if len(nodes) == 0 {
		return
	}
	var lines []string
	ign, img := rewrites(cmd)
	if !ign {
		var files []string
		for _, n := range nodes {
			if p := filepath.Join(a.outDir, "ignition", n+".ign"); exists(p) {
				files = append(files, p)
			}
		}
		if len(files) > 0 {
			flags, known := ignitionSourceFlags(files[0])
			l := fmt.Sprintf("%s: `%s %s`", strings.Join(files, " "), a.cmdLine("ignition"), flags)
			if !known {
				l += " (or --inline-binaries, as they were made)"
			}
			lines = append(lines, l)
		}
	}
	if !img {
		var files []string
		formats := map[string]bool{}
		for _, n := range nodes {
			for _, f := range imagebuild.FormatNames() {
				if p := filepath.Join(a.outDir, "images", imagebuild.FormatFile(n, f)); exists(p) {
					files = append(files, p)
					formats[f] = true
				}
			}
		}
		if len(files) > 0 {
			refresh := a.cmdLine("image")
			if len(formats) == 1 {
				for f := range formats {
					refresh += " --format " + f
				}
			}
			lines = append(lines, fmt.Sprintf("%s: `%s` (with the --base and --data-size they were built with, if any)", strings.Join(files, " "), refresh))
		}
	}
	if st, err := vmcluster.ReadRunState(a.runDir()); err == nil && st.Running() {
		var running []string
		for _, n := range nodes {
			if _, ok := st.Nodes[n]; ok {
				running = append(running, n)
			}
		}
		switch {
		case len(running) > 0 && !all:
			// Same CA: the new leaves roll out like any release, one node at a time.
			lines = append(lines, fmt.Sprintf("the cluster running under `etcdbake up` (%s): `%s` (a rolling upgrade; the data stays)",
				strings.Join(running, " "), a.cmdLine("rollout")+" --wait"))
		case len(running) > 0:
			lines = append(lines, fmt.Sprintf("the cluster running under `etcdbake up` (%s): `%s --purge` then `%s` (this discards the VMs' etcd data)",
				strings.Join(running, " "), a.cmdLine("down"), a.cmdLine("up")))
		}
	}
	if len(lines) == 0 {
		return
	}
	who := "the old certificates of " + strings.Join(nodes, ", ")
	if all {
		who = "certificates of the old CA"
	}
	w := cmd.ErrOrStderr()
	fmt.Fprintf(w, "pki: these outputs still hold %s; refresh each with the command after it:\n", who)
	for _, l := range lines {
		fmt.Fprintf(w, "pki:   %s\n", l)
	}
}

// ignitionSourceFlags says how the existing config got its binaries: --binaries-url URL
// or --inline-binaries; known is false when the config does not say.
func ignitionSourceFlags(path string) (flags string, known bool) {
	const unknown = "--binaries-url URL"
	b, err := os.ReadFile(path)
	if err != nil {
		return unknown, false
	}
	var cfg struct {
		Storage struct {
			Files []struct {
				Path     string `json:"path"`
				Contents struct {
					Source *string `json:"source"`
				} `json:"contents"`
			} `json:"files"`
		} `json:"storage"`
	}
	if json.Unmarshal(b, &cfg) != nil {
		return unknown, false
	}
	for _, f := range cfg.Storage.Files {
		if f.Path != spec.BinDir+"/etcd" || f.Contents.Source == nil {
			continue
		}
		src := *f.Contents.Source
		if strings.HasPrefix(src, "data:") {
			return "--inline-binaries", true
		}
		if base, ok := strings.CutSuffix(src, "/etcd"); ok {
			return "--binaries-url " + base, true
		}
	}
	return unknown, false
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
