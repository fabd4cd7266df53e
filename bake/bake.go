// Package bake runs the whole pipeline for one spec: verified binaries, PKI, per-node
// Ignition configs and disk images. The CLI, the QEMU harness and tests share it, so the
// images they boot are made exactly as `etcdbake image` makes them.
package bake

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"

	"github.com/etcdbake/etcdbake/binaries"
	"github.com/etcdbake/etcdbake/ignition"
	"github.com/etcdbake/etcdbake/imagebuild"
	"github.com/etcdbake/etcdbake/imagebuild/base"
	"github.com/etcdbake/etcdbake/pki"
	"github.com/etcdbake/etcdbake/spec"
)

// BinariesURL is the base URL the image build gives Ignition for the binaries; the
// offline applier resolves it to the verified local files (the hashes are those of
// configs served over the network).
const BinariesURL = "https://binaries.etcdbake.invalid"

// Options for Images.
type Options struct {
	Cluster *spec.Cluster
	// SpecBytes is hashed into the SBOM.
	SpecBytes []byte
	PKIDir    string
	// Cache holds etcd, etcdctl and flanneld (fetched if missing).
	Cache *binaries.Cache
	// Firstboot is the etcd-firstboot binary and its version.
	Firstboot, FirstbootVersion string
	// Base is a base tarball; empty builds (or reuses) the default one in BaseCacheDir.
	Base, BaseCacheDir string
	// Fragments are extra Butane fragments for every node (e.g. the QEMU harness's).
	Fragments []ignition.Fragment
	OutDir    string
	Formats   []string
	DataSize  int64
	Progress  func(format string, args ...any)
	// Meter follows the long steps (see imagebuild.BuildOptions.Meter).
	Meter func(step string, done, total int64)
}

// NodeBinaries gathers the four programs: the verified cache (fetched if missing) and
// etcd-firstboot.
func NodeBinaries(ctx context.Context, c *spec.Cluster, cache *binaries.Cache, firstboot, fbVersion string) (map[string]ignition.Binary, []imagebuild.BinaryRecord, error) {
	entries, err := cache.LookupAll(c)
	if err != nil {
		if entries, err = cache.Fetch(ctx, c); err != nil {
			return nil, nil, err
		}
	}
	bins := map[string]ignition.Binary{}
	var recs []imagebuild.BinaryRecord
	for _, e := range entries {
		sum, err := e.SHA512()
		if err != nil {
			return nil, nil, err
		}
		bins[e.Name] = ignition.Binary{Name: e.Name, Version: e.Version, Path: e.Path, SHA512: sum}
		recs = append(recs, imagebuild.BinaryRecord{Name: e.Name, Version: e.Version, SHA256: e.SHA256, Source: e.Source + " " + e.Detail})
	}
	fb, err := ignition.LocalBinary("etcd-firstboot", firstboot)
	if err != nil {
		return nil, nil, err
	}
	fb.Version = fbVersion
	bins["etcd-firstboot"] = fb
	sum, err := FileSHA256(firstboot)
	if err != nil {
		return nil, nil, err
	}
	recs = append(recs, imagebuild.BinaryRecord{Name: "etcd-firstboot", Version: fbVersion, SHA256: sum, Source: "built from this repository"})
	return bins, recs, nil
}

// Fragments reads the spec's Butane fragments: for every node, and per node.
func Fragments(c *spec.Cluster) ([]ignition.Fragment, map[string][]ignition.Fragment, error) {
	var all []ignition.Fragment
	per := map[string][]ignition.Fragment{}
	if c.Butane != "" {
		f, err := ignition.ReadFragment(c.Butane)
		if err != nil {
			return nil, nil, err
		}
		all = append(all, f)
	}
	for _, n := range c.Nodes {
		if n.Butane != "" {
			f, err := ignition.ReadFragment(n.Butane)
			if err != nil {
				return nil, nil, fmt.Errorf("nodes %s: %w", n.Name, err)
			}
			per[n.Name] = append(per[n.Name], f)
		}
	}
	return all, per, nil
}

// Images builds every node's disk image under OutDir and returns what was written.
func Images(ctx context.Context, o Options) ([]imagebuild.Image, error) {
	if err := imagebuild.CheckFormats(o.Formats); err != nil {
		return nil, err
	}
	progress := o.Progress
	if progress == nil {
		progress = func(string, ...any) {}
	}
	c := o.Cluster
	basePath := o.Base
	if basePath == "" {
		var err error
		if basePath, err = base.Build(ctx, base.DefaultRecipe(), o.BaseCacheDir, progress); err != nil {
			return nil, err
		}
	}
	progress("reading base %s", basePath)
	baseTree, err := base.ReadContext(ctx, basePath)
	if err != nil {
		return nil, err
	}
	if err := base.Check(baseTree); err != nil {
		return nil, fmt.Errorf("base %s: %w", basePath, err)
	}
	baseHash, err := FileSHA256(basePath)
	if err != nil {
		return nil, err
	}
	bins, records, err := NodeBinaries(ctx, c, o.Cache, o.Firstboot, o.FirstbootVersion)
	if err != nil {
		return nil, err
	}
	in := ignition.Input{Cluster: c, Binaries: bins, Options: ignition.Options{BinariesURL: BinariesURL}}
	if in.PKI, err = pki.Load(c, o.PKIDir); err != nil {
		return nil, err
	}
	if in.Fragments, in.PerNode, err = Fragments(c); err != nil {
		return nil, err
	}
	in.Fragments = append(in.Fragments, o.Fragments...)
	configs, err := ignition.Render(in)
	if err != nil {
		return nil, err
	}
	remote := map[string]string{}
	for name, b := range bins {
		remote[BinariesURL+"/"+name] = b.Path
	}
	var nodes []imagebuild.NodeInput
	for _, n := range c.Nodes {
		nodes = append(nodes, imagebuild.NodeInput{Name: n.Name, Config: configs[n.Name], DNS: n.DNS})
	}
	return imagebuild.Build(ctx, imagebuild.BuildOptions{
		Cluster: c.Name, Nodes: nodes, Base: baseTree, BaseHash: baseHash,
		SpecHash: fmt.Sprintf("%x", sha256.Sum256(o.SpecBytes)), Binaries: records, Remote: remote,
		OutDir: o.OutDir, Formats: o.Formats, DataSize: o.DataSize, Progress: progress, Meter: o.Meter,
	})
}

// FileSHA256 hashes a file.
func FileSHA256(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return fmt.Sprintf("%x", h.Sum(nil)), nil
}
