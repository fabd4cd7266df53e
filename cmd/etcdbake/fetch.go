package main

import (
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/etcdbake/etcdbake/binaries"
	"github.com/etcdbake/etcdbake/internal/fileutil"
)

func (a *app) cache(cmd *cobra.Command) (*binaries.Cache, error) {
	return a.cacheAt(cmd.ErrOrStderr())
}

// cacheAt is the binary cache of --cache (default DefaultCacheDir) reporting its steps to
// w as "fetch: ..." lines (nil: silent).
func (a *app) cacheAt(w io.Writer) (*binaries.Cache, error) {
	dir := a.cacheDir
	if dir == "" {
		d, err := binaries.DefaultCacheDir()
		if err != nil {
			return nil, err
		}
		dir = d
	}
	c := &binaries.Cache{Dir: dir}
	if w != nil {
		c.Progress = func(format string, args ...any) { fmt.Fprintf(w, "fetch: "+format+"\n", args...) }
	}
	return c, nil
}

func (a *app) fetchCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "fetch",
		Short: "Fill the verified binary cache with the pinned etcd, etcdctl and flanneld (and the matching etcd-firstboot)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.load(cmd)
			if err != nil {
				return err
			}
			cache, err := a.cache(cmd)
			if err != nil {
				return err
			}
			entries, err := cache.Fetch(cmd.Context(), c)
			if err != nil {
				return err
			}
			// etcd-firstboot as the build commands would bake it (built if needed).
			fb, err := a.firstboot(cmd, "")
			if err != nil {
				return err
			}
			fbSum, err := fileutil.SHA256(fb.Path)
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "BINARY\tVERSION\tSOURCE\tSHA256\tPATH")
			for _, e := range entries {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", e.Name, e.Version, e.Source, e.SHA256, e.Path)
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", binaries.FirstbootName, fb.Version, fb.Source, fbSum, fb.Path)
			return w.Flush()
		},
	}
}
