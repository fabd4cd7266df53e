// Package bake is etcdbake's composition root: the one place where the pipeline
// spec -> pki -> Ignition configs -> outputs (disk images, the QEMU images, PXE) is
// assembled. The CLI, the VM runtime's users and the tests call it, so the configs and
// images they use are made exactly as `etcdbake ignition` and `etcdbake image` make them.
// Its functions take a context and return errors; they print nothing themselves (progress
// goes to the Progress callback).
package bake

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/etcdbake/etcdbake/binaries"
	"github.com/etcdbake/etcdbake/ignition"
	"github.com/etcdbake/etcdbake/imagebuild"
	"github.com/etcdbake/etcdbake/imagebuild/base"
	"github.com/etcdbake/etcdbake/internal/fileutil"
	"github.com/etcdbake/etcdbake/pki"
	"github.com/etcdbake/etcdbake/spec"
)

// BinariesURL is the base URL the image build gives Ignition for the binaries; the
// offline applier resolves it to the verified local files (the hashes are those of
// configs served over the network).
const BinariesURL = "https://binaries.etcdbake.invalid"

// Sources is what every product of one spec is made from.
type Sources struct {
	Cluster *spec.Cluster
	// SpecBytes is the spec file as read; it is hashed into the images' SBOM.
	SpecBytes []byte
	// PKIDir holds the CAs and certificates; they are created or reused (pki.Ensure).
	PKIDir string
	// Now is the time certificates are checked and issued at (default time.Now).
	Now func() time.Time
	// Cache holds etcd, etcdctl and flanneld (fetched if missing).
	Cache *binaries.Cache
	// Firstboot is the etcd-firstboot binary and FirstbootVersion its version.
	Firstboot, FirstbootVersion string
	// Fragments are extra Butane fragments for every node, after the spec's own (the VM
	// runtime's guest fragment, for instance).
	Fragments []ignition.Fragment
	// Progress receives one line per step; nil discards them.
	Progress func(format string, args ...any)
}

func (s Sources) progress(format string, args ...any) {
	if s.Progress != nil {
		s.Progress(format, args...)
	}
}

// Configs are every node's rendered Ignition config and what went into them.
type Configs struct {
	// PKI says which certificates were issued, reused or left stale.
	PKI *pki.Result
	// Configs maps node name -> Ignition JSON (spec 3.4.0, validated by Ignition's parser).
	Configs map[string][]byte
	// Binaries are the four programs the configs name (by URL or inline) with their sums.
	Binaries map[string]ignition.Binary
	// Records describe the binaries for the images' SBOM.
	Records []imagebuild.BinaryRecord
	// CertSerials are the nodes' certificate serials (node -> kind -> hex), for releases.
	CertSerials map[string]map[string]string
}

// Load reads and validates the spec and everything it names that the build reads besides
// itself: its Butane fragments are read, translated and checked (ignition.CheckFragments).
// The report holds every problem of both; when it has errors the error is a
// *spec.InvalidError over the whole report, and the cluster is nil only when the spec
// file itself could not be used.
func Load(path string) (*spec.Cluster, spec.Report, error) {
	c, rep, err := spec.Load(path)
	if err != nil || c == nil {
		return c, rep, err
	}
	frep, err := ignition.CheckFragments(c)
	if err != nil {
		return nil, rep, err
	}
	rep.Merge(frep)
	if rep.HasErrors() {
		return c, rep, &spec.InvalidError{Source: path, Report: rep}
	}
	return c, rep, nil
}

// RenderConfigs renders every node's Ignition config. The steps run in the order that
// keeps bad input from leaving output behind: the options and the spec's Butane fragments
// are read and checked first, then the binaries are gathered (fetched if missing), and
// only then is the PKI created or reused and the configs rendered.
func RenderConfigs(ctx context.Context, s Sources, opts ignition.Options) (*Configs, error) {
	if opts.BinariesURL == "" && !opts.Inline {
		return nil, ignition.ErrNoBinarySource
	}
	c := s.Cluster
	in := ignition.Input{Cluster: c, Options: opts}
	var err error
	if in.Fragments, in.PerNode, err = ignition.SpecFragments(c); err != nil {
		return nil, err
	}
	in.Fragments = append(in.Fragments, s.Fragments...)
	out := &Configs{}
	if out.Binaries, out.Records, err = NodeBinaries(ctx, c, s.Cache, s.Firstboot, s.FirstbootVersion); err != nil {
		return nil, err
	}
	in.Binaries = out.Binaries
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	now := time.Now
	if s.Now != nil {
		now = s.Now
	}
	if out.PKI, err = pki.Ensure(c, s.PKIDir, now()); err != nil {
		return nil, err
	}
	if in.PKI, err = pki.Load(c, s.PKIDir); err != nil {
		return nil, err
	}
	if out.CertSerials, err = in.PKI.Serials(); err != nil {
		return nil, err
	}
	render := func() (err error) { out.Configs, err = ignition.Render(in); return err }
	if opts.Inline { // gzip of every binary for every node: tens of seconds
		var size int64
		for _, b := range out.Binaries {
			if st, err := os.Stat(b.Path); err == nil {
				size += st.Size()
			}
		}
		what := fmt.Sprintf("inlining %d binaries (%d MiB, gzip) into %d node configs", len(out.Binaries), size>>20, len(c.Nodes))
		err = binaries.Timed(s.Progress, what, render)
	} else {
		err = render()
	}
	if err != nil {
		return nil, err
	}
	return out, nil
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
	sum, err := fileutil.SHA256(firstboot)
	if err != nil {
		return nil, nil, err
	}
	recs = append(recs, imagebuild.BinaryRecord{Name: "etcd-firstboot", Version: fbVersion, SHA256: sum, Source: "built from this repository"})
	return bins, recs, nil
}

// Recipe is the default base's recipe for a cluster: base.DefaultRecipe plus the spec's
// image.packages and image.kernelModules (c may be nil: the default recipe).
func Recipe(c *spec.Cluster) base.Recipe {
	r := base.DefaultRecipe()
	if c != nil {
		r.Include = append(r.Include, c.Image.Packages...)
		r.KeepModules = append(r.KeepModules, c.Image.KernelModules...)
	}
	return r
}

// Base returns the cluster's default base root filesystem tarball (Recipe): built with
// mmdebstrap into cacheDir (the default cache when empty), or reused when it is there
// already.
func Base(ctx context.Context, cacheDir string, c *spec.Cluster, progress func(format string, args ...any)) (string, error) {
	if cacheDir == "" {
		var err error
		if cacheDir, err = base.DefaultCacheDir(); err != nil {
			return "", err
		}
	}
	if progress == nil {
		progress = func(string, ...any) {}
	}
	return base.Build(ctx, Recipe(c), cacheDir, progress)
}

// ImageOptions say where and how Images writes the disk images.
type ImageOptions struct {
	// Base is a base tarball; empty builds (or reuses) the default one in BaseCacheDir.
	Base, BaseCacheDir string
	OutDir             string
	// ReleasesDir, if set, keeps the build as a release there (imagebuild.BuildOptions).
	ReleasesDir string
	Formats     []string
	// DataSize is the size in bytes of the /var data partition in the image.
	DataSize int64
	// EtcdData maps nodes to restored etcd data directories (RestoreData) that their
	// images' data partitions hold (imagebuild.NodeInput.EtcdData).
	EtcdData map[string]string
	// Meter follows the long steps (see imagebuild.BuildOptions.Meter).
	Meter func(step string, done, total int64)
}

// Images renders every node's config for an offline image build and writes the disk
// images under o.OutDir. The formats are checked before any work starts.
func Images(ctx context.Context, s Sources, o ImageOptions) (*Configs, []imagebuild.Image, error) {
	if err := imagebuild.CheckFormats(o.Formats); err != nil {
		return nil, nil, err
	}
	basePath := o.Base
	if basePath == "" {
		var err error
		if basePath, err = Base(ctx, o.BaseCacheDir, s.Cluster, s.Progress); err != nil {
			return nil, nil, err
		}
	}
	s.progress("reading base %s", basePath)
	baseTree, err := base.ReadContext(ctx, basePath)
	if err != nil {
		return nil, nil, err
	}
	if err := base.Check(baseTree); err != nil {
		return nil, nil, fmt.Errorf("base %s: %w", basePath, err)
	}
	baseHash, err := fileutil.SHA256(basePath)
	if err != nil {
		return nil, nil, err
	}
	cfg, err := RenderConfigs(ctx, s, ignition.Options{BinariesURL: BinariesURL})
	if err != nil {
		return nil, nil, err
	}
	remote := map[string]string{}
	for name, b := range cfg.Binaries {
		remote[BinariesURL+"/"+name] = b.Path
	}
	var nodes []imagebuild.NodeInput
	for _, n := range s.Cluster.Nodes {
		nodes = append(nodes, imagebuild.NodeInput{Name: n.Name, Config: cfg.Configs[n.Name], DNS: n.DNS, EtcdData: o.EtcdData[n.Name]})
	}
	progress := s.Progress
	if progress == nil {
		progress = func(string, ...any) {}
	}
	specJSON, err := json.Marshal(s.Cluster)
	if err != nil {
		return cfg, nil, err
	}
	imgs, err := imagebuild.Build(ctx, imagebuild.BuildOptions{
		Cluster: s.Cluster.Name, Nodes: nodes, Base: baseTree, BaseHash: baseHash,
		SpecHash: fmt.Sprintf("%x", sha256.Sum256(s.SpecBytes)), Binaries: cfg.Records, Remote: remote,
		OutDir: o.OutDir, Formats: o.Formats, DataSize: o.DataSize, VerifyTimeout: s.Cluster.Rollout.Timeout.D,
		ReleasesDir: o.ReleasesDir, CertSerials: cfg.CertSerials, SpecJSON: specJSON,
		Progress: progress, Meter: o.Meter,
	})
	if err != nil {
		return cfg, nil, err
	}
	return cfg, imgs, nil
}
