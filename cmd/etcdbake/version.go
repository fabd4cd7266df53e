package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"

	"github.com/etcdbake/etcdbake/binaries"
)

// selfBuild is etcdbake's own build information; tests replace it to act as a release.
var selfBuild = binaries.SelfBuild

// etcdbakeVersion is the version to show: the one the Makefile stamps (-X main.version),
// else the module version in the build information (`go install ...@v1.2.0`), else dev.
func etcdbakeVersion() string {
	if version != "dev" && version != "" {
		return version
	}
	if v := selfBuild().Version; v != "" {
		return v
	}
	return version
}

// builtWith are the libraries whose versions `etcdbake version` reports.
var builtWith = []struct{ name, module string }{
	{"etcd client", "go.etcd.io/etcd/client/v3"},
	{"Ignition", "github.com/coreos/ignition/v2"},
	{"Butane", "github.com/coreos/butane"},
	{"go-diskfs", "github.com/diskfs/go-diskfs"},
}

// addVersion gives root a --version flag and a version command; both print versionText.
func (a *app) addVersion(root *cobra.Command) {
	root.Version = etcdbakeVersion()
	cobra.AddTemplateFunc("etcdbakeVersionText", func(*cobra.Command) string { return a.versionText() })
	root.SetVersionTemplate(`{{etcdbakeVersionText .}}`)
	root.AddCommand(&cobra.Command{
		Use:   "version",
		Short: "Print etcdbake's version, the libraries it was built with and the etcd-firstboot it bakes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := io.WriteString(cmd.OutOrStdout(), a.versionText())
			return err
		},
	})
}

// versionText is etcdbake's version, its toolchain and libraries, and which etcd-firstboot
// `ignition`, `image` and `up` would bake (without building anything).
func (a *app) versionText() string {
	var b strings.Builder
	self := selfBuild()
	fmt.Fprintf(&b, "etcdbake %s\n", etcdbakeVersion())
	fmt.Fprintf(&b, "  module      %s %s\n", binaries.Module, self.Describe())
	fmt.Fprintf(&b, "  go          %s %s/%s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
	deps := map[string]string{}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			v := d.Version
			if d.Replace != nil {
				v += " => " + d.Replace.Path + " " + d.Replace.Version
			}
			deps[d.Path] = v
		}
	}
	b.WriteString("built with:\n")
	for _, l := range builtWith {
		v := deps[l.module]
		if v == "" {
			v = "(not in the build information)"
		}
		fmt.Fprintf(&b, "  %-11s %s %s\n", l.name, l.module, v)
	}
	fmt.Fprintf(&b, "etcd-firstboot (baked into the node configs):\n  %s\n", a.firstbootStatus(self))
	return b.String()
}

// firstbootStatus says which etcd-firstboot would be baked and whether it matches, or how
// it would be obtained; it builds nothing.
func (a *app) firstbootStatus(want binaries.Build) string {
	if next := firstbootNextToSelf(); next != "" {
		got, warn, err := binaries.CheckFirstboot(next, want)
		if err != nil {
			return fmt.Sprintf("%s (next to etcdbake) is NOT usable: %v", next, err)
		}
		s := fmt.Sprintf("%s %s (next to etcdbake; static linux/amd64)", next, got.Describe())
		if warn != "" {
			s += "\n  warning: " + warn
		}
		return s
	}
	cache, err := a.cacheAt(nil)
	if err != nil {
		return "none next to etcdbake, and no binary cache: " + err.Error()
	}
	if want.Released() {
		if e, err := cache.Lookup(binaries.FirstbootName, want.Version); err == nil {
			return fmt.Sprintf("%s %s (cached; built from %s)", e.Path, want.Version, e.Detail)
		}
		return fmt.Sprintf("none yet: the first `etcdbake ignition` builds %s@%s with the go command into %s", binaries.FirstbootPackage, want.Version, cache.Dir)
	}
	cwd, _ := os.Getwd()
	if co := binaries.FindCheckout(cwd, selfDir()); co != "" {
		return fmt.Sprintf("none next to etcdbake: `etcdbake ignition` builds one from the checkout %s (go build ./cmd/etcd-firstboot, static) into %s", co, cache.Dir)
	}
	return "none next to etcdbake, and this development build has no checkout to build one from: " + binaries.FirstbootFix(want, "")
}

// selfDir is the directory of the running etcdbake ("" when unknown).
func selfDir() string {
	self, err := os.Executable()
	if err != nil {
		return ""
	}
	return filepath.Dir(self)
}

// firstbootNextToSelf is etcd-firstboot in etcdbake's directory, or "" when there is none.
func firstbootNextToSelf() string {
	d := selfDir()
	if d == "" {
		return ""
	}
	p := filepath.Join(d, binaries.FirstbootName)
	if _, err := os.Lstat(p); err != nil {
		return ""
	}
	return p
}
