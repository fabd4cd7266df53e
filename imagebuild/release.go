package imagebuild

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/etcdbake/etcdbake/internal/fileutil"
	"github.com/etcdbake/etcdbake/spec"
)

// A release is what one build puts into a slot, kept under the releases directory
// (OUT/releases) side by side with earlier ones, so that a node can be given any of them:
//
//	<id>/manifest.json            ReleaseManifest
//	<id>/root.ext4                the shared root file system
//	<id>/boot/linux, boot/initrd  the kernel and initrd (the same for every node)
//	<id>/nodes/<node>/node.ext4   each node's own partition
//
// The ID derives from the inputs (ReleaseID), so building the same inputs again gives
// the same release, which is then left as it is.

// Release file names, relative to the release's directory (spec's).
const (
	ReleaseManifestName = spec.ReleaseManifestName
	ReleaseRoot         = "root.ext4"
	ReleaseLinux        = "boot/linux"
	ReleaseInitrd       = "boot/initrd"
)

// ReleaseNodeImage is a node's partition image in a release.
func ReleaseNodeImage(node string) string { return filepath.Join("nodes", node, "node.ext4") }

// The release manifest's types are spec's: the node reads them too.
type (
	ReleaseFile     = spec.ReleaseFile
	ReleaseNode     = spec.ReleaseNode
	ReleaseManifest = spec.ReleaseManifest
)

// releaseParts is what Build hands to writeRelease: the files it made in its temporary
// directory (moved into the release, not copied) and what the manifest records.
type releaseParts struct {
	id          string
	rootImg     string
	nodeImgs    map[string]string
	options     map[string]map[string]string
	entries     map[string]map[string]string
	boot        bootFiles
	when        time.Time
	slotSize    int64
	baseHash    string
	specHash    string
	cluster     string
	binaries    []BinaryRecord
	certSerials map[string]map[string]string
	specJSON    []byte
}

// writeRelease writes the release into dir/<id> through a temporary directory renamed
// into place at the end (a reader never sees half a release). An existing release with
// the same ID is kept as it is.
func writeRelease(ctx context.Context, dir string, p releaseParts) (string, error) {
	final := filepath.Join(dir, p.id)
	if _, err := os.Stat(filepath.Join(final, ReleaseManifestName)); err == nil {
		return final, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(dir, "."+p.id+".tmp-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	m := ReleaseManifest{ID: p.id, Cluster: p.cluster, Created: p.when, SpecSHA256: p.specHash, BaseSHA256: p.baseHash,
		Binaries: p.binaries, Kernel: p.boot.kernel, SlotSize: p.slotSize, Nodes: map[string]ReleaseNode{}}
	// place moves (or writes) one file into the release and records its digest.
	place := func(rel, from string, data []byte) (ReleaseFile, error) {
		if err := ctx.Err(); err != nil {
			return ReleaseFile{}, err
		}
		to := filepath.Join(tmp, rel)
		if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
			return ReleaseFile{}, err
		}
		if from != "" {
			if err := os.Rename(from, to); err != nil {
				return ReleaseFile{}, err
			}
		} else if err := os.WriteFile(to, data, 0o644); err != nil {
			return ReleaseFile{}, err
		}
		return digestRelease(rel, to)
	}
	if m.Root, err = place(ReleaseRoot, p.rootImg, nil); err != nil {
		return "", err
	}
	if len(p.specJSON) > 0 {
		if m.Spec, err = place(spec.ReleaseSpecName, "", p.specJSON); err != nil {
			return "", err
		}
	}
	for _, f := range []struct {
		rel  string
		data []byte
		out  *ReleaseFile
	}{{ReleaseLinux, p.boot.linux, &m.Linux}, {ReleaseInitrd, p.boot.initrd, &m.Initrd}} {
		if *f.out, err = place(f.rel, "", f.data); err != nil {
			return "", err
		}
	}
	nodes := make([]string, 0, len(p.nodeImgs))
	for n := range p.nodeImgs {
		nodes = append(nodes, n)
	}
	sort.Strings(nodes)
	for _, n := range nodes {
		f, err := place(ReleaseNodeImage(n), p.nodeImgs[n], nil)
		if err != nil {
			return "", err
		}
		m.Nodes[n] = ReleaseNode{Node: f, Options: p.options[n], Entries: p.entries[n], CertSerials: p.certSerials[n]}
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(tmp, ReleaseManifestName), append(b, '\n'), 0o644); err != nil {
		return "", err
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, final); err != nil {
		return "", err
	}
	fileutil.SyncDir(dir)
	return final, nil
}

// digestRelease reads a release file once for its size, sha256, all-zero ranges and
// piece digests.
func digestRelease(rel, path string) (ReleaseFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return ReleaseFile{}, err
	}
	defer f.Close()
	rf := ReleaseFile{Path: rel, ChunkHash: spec.ChunkXXH64}
	h := sha256.New()
	buf := make([]byte, spec.ZeroChunk)
	zero := make([]byte, spec.ZeroChunk)
	for {
		k, err := io.ReadFull(f, buf)
		if k > 0 {
			h.Write(buf[:k])
			rf.Chunks = append(rf.Chunks, spec.ChunkDigest(buf[:k]))
			if bytes.Equal(buf[:k], zero[:k]) {
				if z := len(rf.Zeros); z > 0 && rf.Zeros[z-1].Off+rf.Zeros[z-1].Len == rf.Size {
					rf.Zeros[z-1].Len += int64(k)
				} else {
					rf.Zeros = append(rf.Zeros, spec.Extent{Off: rf.Size, Len: int64(k)})
				}
			}
			rf.Size += int64(k)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return ReleaseFile{}, fmt.Errorf("reading %s: %w", path, err)
		}
	}
	rf.SHA256 = hex.EncodeToString(h.Sum(nil))
	return rf, nil
}

// ReadReleaseManifest reads a release's manifest from its directory.
func ReadReleaseManifest(dir string) (*ReleaseManifest, error) {
	b, err := os.ReadFile(filepath.Join(dir, ReleaseManifestName))
	if err != nil {
		return nil, err
	}
	var m ReleaseManifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, ReleaseManifestName), err)
	}
	return &m, nil
}
