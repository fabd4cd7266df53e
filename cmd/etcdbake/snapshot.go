package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/etcdbake/etcdbake/backup"
	"github.com/etcdbake/etcdbake/internal/fileutil"
	"github.com/etcdbake/etcdbake/pki"
	"github.com/etcdbake/etcdbake/spec"
)

func (a *app) snapshotsDir() string { return filepath.Join(a.outDir, "snapshots") }

func (a *app) snapshotCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "snapshot",
		Short: "Save and verify self-contained snapshots of the cluster's etcd data",
		Long: `A snapshot file is a tar archive of a manifest (cluster name and ID, CA, members, revision,
HashKV at that revision, etcd version, sha256, size, time, spec hash) and the database as
etcd's Snapshot API sends it. It restores with nothing from the old cluster but the spec
and the PKI; ` + "`tar xf FILE db`" + ` gives what etcdutl snapshot restore takes.`,
	}
	cmd.AddCommand(a.snapshotSaveCmd(), a.snapshotVerifyCmd(), a.snapshotListCmd(), a.snapshotFetchCmd())
	return cmd
}

func (a *app) snapshotSaveCmd() *cobra.Command {
	var endpoints []string
	var output string
	cmd := &cobra.Command{
		Use:   "save [FILE]",
		Short: "Take a snapshot with the admin certificate, verify it and write it to FILE (default OUT/snapshots/CLUSTER-TIME" + spec.SnapshotExt + ")",
		Long: `save streams the database of one member (a caught-up follower when there is one, so the
leader keeps serving) and verifies it before FILE is written: etcd's own checksum, bbolt's
integrity check, and the HashKV at the snapshot's revision computed from the file equal to
what every answering member computes for that revision. Nothing is left at FILE on error.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.load(cmd)
			if err != nil {
				return err
			}
			t := a.clusterTarget(cmd, c, endpoints)
			tlsCfg, err := t.tls()
			if err != nil {
				return err
			}
			eps, err := t.live()
			if err != nil {
				return err
			}
			ca, _ := pki.CAPath(a.pkiDir(), pki.CAName)
			fp, err := backup.CAFingerprint(ca)
			if err != nil {
				return fmt.Errorf("the cluster CA: %w (run `etcdbake pki`)", err)
			}
			specSum, err := fileutil.SHA256(a.specPath)
			if err != nil {
				return err
			}
			now := a.now().UTC()
			file := filepath.Join(a.snapshotsDir(), spec.SnapshotFileName(c.Name, now))
			switch {
			case len(args) == 1:
				if file = args[0]; exists(file) {
					return usageErrorf("%s exists: a snapshot never replaces a file; give another name", file)
				}
			default:
				if err := os.MkdirAll(a.snapshotsDir(), 0o700); err != nil {
					return err
				}
				// A snapshot fetched from the target, or saved, in the same second.
				for i, first := 2, file; exists(file); i++ {
					file = numbered(first, i)
				}
			}
			start := time.Now()
			m, err := backup.Save(cmd.Context(), file, backup.SaveOptions{Endpoints: eps, TLS: tlsCfg, Cluster: c.Name, CAFingerprint: fp,
				SpecSHA256: specSum, By: "etcdbake snapshot save", Timeout: requestTimeout, Now: a.now})
			if err != nil {
				return err
			}
			if output == "json" {
				return writeJSON(cmd.OutOrStdout(), m)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s\n", file)
			fmt.Fprintf(cmd.ErrOrStderr(), "snapshot: saved and verified in %s\n", time.Since(start).Round(time.Millisecond))
			printManifest(cmd.ErrOrStderr(), m)
			return nil
		},
	}
	cmd.Flags().StringSliceVar(&endpoints, "endpoints", nil, "client URLs to use instead of the spec's (e.g. forwarded ports)")
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text or json (the manifest)")
	return cmd
}

func (a *app) snapshotVerifyCmd() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "verify FILE",
		Short: "Check a snapshot file whole and that it belongs to the spec's cluster (its name and CA)",
		Long: `verify reads the manifest, checks the database's size and sha256, etcd's own checksum and
bbolt's integrity check, computes the revision, key count and HashKV from the database and
compares them with the manifest, then checks that the snapshot is of the spec's cluster:
the same name and the CA in OUT/pki. Exit 0 when all hold, 1 otherwise.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.load(cmd)
			if err != nil {
				return err
			}
			want, err := a.snapshotExpect(cmd, c)
			if err != nil {
				return err
			}
			m, err := backup.Verify(args[0], want)
			if err != nil {
				return &exitError{code: 1, msg: err.Error()}
			}
			if output == "json" {
				return writeJSON(cmd.OutOrStdout(), m)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: verified\n", args[0])
			printManifest(cmd.OutOrStdout(), m)
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text or json (the manifest)")
	return cmd
}

// snapshotExpect is what a snapshot of the spec's cluster must say: its name and the CA
// in OUT/pki (not checked, with a note, when there is no CA yet).
func (a *app) snapshotExpect(cmd *cobra.Command, c *spec.Cluster) (backup.Expect, error) {
	want := backup.Expect{Cluster: c.Name}
	ca, _ := pki.CAPath(a.pkiDir(), pki.CAName)
	if fp, err := backup.CAFingerprint(ca); err == nil {
		want.CAFingerprint = fp
	} else if !errors.Is(err, os.ErrNotExist) {
		return want, err
	} else {
		fmt.Fprintf(cmd.ErrOrStderr(), "snapshot: no CA at %s: the snapshot's CA is not checked\n", ca)
	}
	return want, nil
}

func (a *app) snapshotFetchCmd() *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "fetch [OBJECT]",
		Short: "Download a snapshot from the backup target (default: the newest of the cluster), verify it and write it to OUT/snapshots",
		Long: `fetch downloads one snapshot object from backup.target (with the credentials in
backup.target.credentialsFile), verifies it as snapshot verify does (whole, and of the
spec's cluster) and only then writes it, by default to OUT/snapshots under the object's
name (NAME-2, NAME-3, ... when a different snapshot has that name there; the same
snapshot is kept once); its path is printed. That file is what ` + "`etcdbake restore`" + ` and ` + "`etcdbake up --restore`" + ` take
after a majority of the members lost their data. Exit 1 when the object does not verify;
nothing is written then.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.load(cmd)
			if err != nil {
				return err
			}
			if c.Backup.Target == nil {
				return usageErrorf("snapshot fetch: the spec has no backup.target to fetch from")
			}
			t, err := backup.SpecTarget(c.Backup.Target)
			if err != nil {
				return err
			}
			want, err := a.snapshotExpect(cmd, c)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Minute)
			defer cancel()
			key := ""
			if len(args) == 1 {
				key = args[0]
			} else {
				objs, err := backup.ListTarget(ctx, *t, c.Name)
				if err != nil {
					return err
				}
				if len(objs) == 0 {
					return fmt.Errorf("snapshot fetch: no snapshot of cluster %s in %s", c.Name, t)
				}
				key = objs[0].Key
			}
			named := file != ""
			if !named {
				if err := os.MkdirAll(a.snapshotsDir(), 0o700); err != nil {
					return err
				}
				file = filepath.Join(a.snapshotsDir(), path.Base(key))
			} else if _, err := os.Stat(file); err == nil {
				return usageErrorf("%s exists: a snapshot never replaces a file; give another --file", file)
			}
			// Downloaded next to FILE under a temporary name, verified, then renamed: FILE
			// exists only as a verified snapshot.
			tmp, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".fetch-")
			if err != nil {
				return err
			}
			tmp.Close()
			os.Remove(tmp.Name())
			defer os.Remove(tmp.Name())
			start := time.Now()
			if err := backup.Download(ctx, *t, key, tmp.Name()); err != nil {
				return err
			}
			m, err := backup.Verify(tmp.Name(), want)
			if err != nil {
				return &exitError{code: 1, msg: fmt.Sprintf("snapshot fetch: %s from %s does not verify, nothing was written: %v", key, t, err)}
			}
			if named {
				if err := os.Rename(tmp.Name(), file); err != nil {
					return err
				}
			} else if file, err = placeFetched(tmp.Name(), file); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s\n", file)
			fmt.Fprintf(cmd.ErrOrStderr(), "snapshot: %s fetched from %s and verified in %s\n", key, t, time.Since(start).Round(time.Millisecond))
			printManifest(cmd.ErrOrStderr(), m)
			return nil
		},
	}
	cmd.Flags().StringVar(&file, "file", "", "where to write it (default OUT/snapshots/OBJECT-NAME)")
	return cmd
}

// numbered is the i-th name for a snapshot file in OUT/snapshots: file itself for 1,
// then NAME-2.snapshot.tar, NAME-3.snapshot.tar, ...
func numbered(file string, i int) string {
	if i < 2 {
		return file
	}
	return fmt.Sprintf("%s-%d%s", strings.TrimSuffix(file, spec.SnapshotExt), i, spec.SnapshotExt)
}

// placeFetched moves the verified download tmp to the default path file, never over
// another file: the same snapshot fetched before is kept as it is, and a different one
// of the same name (a `snapshot save` in the same second as the schedule) makes this
// one NAME-2, NAME-3, ... It returns the path that holds the snapshot.
func placeFetched(tmp, file string) (string, error) {
	sum := "" // of tmp, read only when a name is taken
	for i := 1; i < 100; i++ {
		dst := numbered(file, i)
		// A hard link fails when dst exists: two fetches at once never replace each
		// other's file.
		err := os.Link(tmp, dst)
		if err == nil {
			return dst, os.Remove(tmp)
		}
		if !errors.Is(err, fs.ErrExist) {
			return "", err
		}
		if sum == "" {
			if sum, err = fileutil.SHA256(tmp); err != nil {
				return "", err
			}
		}
		if have, err := fileutil.SHA256(dst); err == nil && have == sum {
			return dst, os.Remove(tmp)
		}
	}
	return "", fmt.Errorf("%s: 99 other snapshots of that name are here already; give --file", file)
}

func (a *app) snapshotListCmd() *cobra.Command {
	var output string
	var endpoints []string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the snapshots in OUT/snapshots, those the nodes keep (backup.schedule) and the backup target's, newest first",
		Long: `list reads each file's manifest in OUT/snapshots (it does not verify the files: snapshot
verify does; a file that is not a snapshot is listed with why), then asks the cluster for
what each node keeps from the schedule (backup.schedule, backup.keep) on its data partition,
and lists the backup target (backup.target, with backup.target.credentialsFile). What does
not answer is left out with a note.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			type row struct {
				File     string                 `json:"file"`
				Node     string                 `json:"node,omitempty"` // "": in OUT/snapshots
				Target   string                 `json:"target,omitempty"`
				Taken    time.Time              `json:"taken"`
				Manifest *spec.SnapshotManifest `json:"manifest,omitempty"`
				Record   *spec.SnapshotRecord   `json:"record,omitempty"`
				Error    string                 `json:"error,omitempty"`
			}
			files, err := filepath.Glob(filepath.Join(a.snapshotsDir(), "*"+spec.SnapshotExt))
			if err != nil {
				return err
			}
			var rows []row
			for _, f := range files {
				m, err := backup.ReadManifest(f)
				r := row{File: f, Manifest: m}
				if err != nil {
					r.Error = err.Error()
				} else {
					r.Taken = m.Taken
				}
				rows = append(rows, r)
			}
			if nodes, err := a.nodeSnapshots(cmd, endpoints); err != nil {
				fmt.Fprintf(cmd.ErrOrStderr(), "snapshot: the nodes' snapshots are not listed: %v\n", err)
			} else {
				for _, l := range nodes {
					for _, rec := range l.Snapshots {
						rows = append(rows, row{File: rec.File, Node: l.Node, Taken: rec.Taken, Record: &rec})
					}
				}
			}
			if c, err := a.load(cmd); err == nil && c.Backup.Target != nil {
				objs, err := targetSnapshots(cmd, c)
				if err != nil {
					fmt.Fprintf(cmd.ErrOrStderr(), "snapshot: the target's snapshots are not listed: %v\n", err)
				}
				for _, o := range objs {
					taken, _ := time.Parse("20060102T150405Z", strings.TrimSuffix(strings.TrimPrefix(path.Base(o.Key), c.Name+"-"), spec.SnapshotExt))
					rows = append(rows, row{File: o.Key, Target: c.Backup.Target.Bucket, Taken: taken, Record: &spec.SnapshotRecord{File: o.Key, Size: o.Size, Taken: taken}})
				}
			}
			sort.SliceStable(rows, func(i, j int) bool {
				return rows[i].Error == "" && (rows[j].Error != "" || rows[i].Taken.After(rows[j].Taken))
			})
			if output == "json" {
				return writeJSON(cmd.OutOrStdout(), rows)
			}
			if len(rows) == 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "no snapshots in %s (etcdbake snapshot save) nor on the nodes\n", a.snapshotsDir())
				return nil
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "TAKEN\tAGE\tREVISION\tSIZE\tWHERE\tFILE")
			for _, r := range rows {
				switch {
				case r.Manifest != nil:
					m := r.Manifest
					fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\t%s\n", m.Taken.Format(time.RFC3339), a.now().Sub(m.Taken).Round(time.Minute),
						m.Revision, humanBytes(m.Size), "here (from "+m.From+")", r.File)
				case r.Record != nil && r.Target != "":
					fmt.Fprintf(w, "%s\t%s\t-\t%s\t%s\t%s\n", r.Taken.Format(time.RFC3339), a.now().Sub(r.Taken).Round(time.Minute),
						humanBytes(r.Record.Size), "s3 "+r.Target, r.File)
				case r.Record != nil:
					fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\t%s\n", r.Taken.Format(time.RFC3339), a.now().Sub(r.Taken).Round(time.Minute),
						r.Record.Revision, humanBytes(r.Record.Size), "node "+r.Node, r.File)
				default:
					fmt.Fprintf(w, "-\t-\t-\t-\there\t%s: %s\n", r.File, r.Error)
				}
			}
			return w.Flush()
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	cmd.Flags().StringSliceVar(&endpoints, "endpoints", nil, "client URLs to use instead of the spec's (e.g. forwarded ports)")
	return cmd
}

// targetSnapshots lists the spec's backup target (backup.target), with the credentials
// from backup.target.credentialsFile.
func targetSnapshots(cmd *cobra.Command, c *spec.Cluster) ([]backup.TargetObject, error) {
	t, err := backup.SpecTarget(c.Backup.Target)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
	defer cancel()
	return backup.ListTarget(ctx, *t, c.Name)
}

// nodeSnapshots asks the cluster what each node keeps from the snapshot schedule.
func (a *app) nodeSnapshots(cmd *cobra.Command, endpoints []string) ([]spec.NodeSnapshots, error) {
	c, err := a.load(cmd)
	if err != nil {
		return nil, err
	}
	cli, err := a.clusterTarget(cmd, c, endpoints).client()
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	var names []string
	for _, n := range c.Nodes {
		names = append(names, n.Name)
	}
	lists, err := backup.NodeSnapshots(cmd.Context(), cli, requestTimeout, names)
	if err != nil {
		return nil, err
	}
	var out []spec.NodeSnapshots
	for _, n := range names {
		if l, ok := lists[n]; ok {
			out = append(out, l)
		}
	}
	return out, nil
}

func printManifest(w io.Writer, m *spec.SnapshotManifest) {
	fmt.Fprintf(w, "cluster %s (ID %s), taken %s from %s (etcd %s) by %s\n", m.Cluster, m.ClusterID, m.Taken.Format(time.RFC3339), m.From, m.EtcdVersion, m.By)
	fmt.Fprintf(w, "revision %d (compacted at %d), %d keys, HashKV %d, %s, sha256 %s\n", m.Revision, m.CompactRevision, m.Keys, m.HashKV, humanBytes(m.Size), m.SHA256)
	var names []string
	for _, mem := range m.Members {
		names = append(names, mem.Name)
	}
	fmt.Fprintf(w, "members: %v\n", names)
}
