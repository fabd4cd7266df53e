package spec

import (
	"crypto/sha256"
	"encoding/hex"
	"time"
)

// A release is what one image build puts into an A/B slot (see imagebuild): the shared
// root, each node's partition, the kernel and initrd, and this manifest. The operator's
// machine keeps releases under OUT/releases/<id>/ and serves them to the nodes
// (`etcdbake serve`); a node stages its own files into its inactive slot.

// ReleaseManifestName is the manifest's file name in a release (and on the wire), and
// ReleaseSpecName the spec the release was built from (JSON, defaults applied): what a
// later release is checked against.
const (
	ReleaseManifestName = "manifest.json"
	ReleaseSpecName     = "spec.json"
)

// ReleaseBinary is one baked program of a release.
type ReleaseBinary struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	SHA256  string `json:"sha256"`
	Source  string `json:"source"`
}

// ReleaseFile is one file of a release with its digest.
type ReleaseFile struct {
	Path   string `json:"path"` // relative to the release directory
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
	// Zeros are the file's all-zero ranges (whole ZeroChunk's; the last may end at
	// the file's end), in order: a node staging a partition image writes them as zeros
	// instead of downloading them (a quarter of a root is free space). The sha256 still
	// covers the whole file.
	Zeros []Extent `json:"zeros,omitempty"`
	// Chunks are the digests of the file's ZeroChunk-sized pieces (ChunkDigest), in
	// order: a node copies the pieces its running slot already holds from there and
	// downloads only the others.
	Chunks []string `json:"chunks,omitempty"`
}

// ChunkDigest is a piece's digest in ReleaseFile.Chunks: the first 16 bytes of its
// sha256, hex. It only picks what to copy: the whole file's sha256 checks the result.
func ChunkDigest(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:16])
}

// RootPiecesName is where every node partition of an A/B image or release holds its
// slot's root as a ReleaseFile (size, sha256, zeros, piece digests), relative to the
// partition: a node staging a release copies the pieces its running root already holds.
const RootPiecesName = "etcdbake/root-pieces.json"

// ZeroChunk is the granularity of a release file's Zeros.
const ZeroChunk = 1 << 20

// Extent is a range of bytes.
type Extent struct {
	Off int64 `json:"off"`
	Len int64 `json:"len"`
}

// ReleaseNode is what a release holds for one node.
type ReleaseNode struct {
	Node ReleaseFile `json:"node"`
	// Options is the kernel command line of the node's entry for each slot, and Entries
	// the whole entry file (loader/entries/<EntryName>.conf) the node writes to boot
	// the release from that slot.
	Options map[string]string `json:"options"`
	Entries map[string]string `json:"entries"`
	// CertSerials are the serial numbers (hex) of the node's certificates, by kind.
	CertSerials map[string]string `json:"certSerials,omitempty"`
}

// ReleaseManifest describes a release.
type ReleaseManifest struct {
	ID         string          `json:"id"`
	Cluster    string          `json:"cluster"`
	Created    time.Time       `json:"created"`
	SpecSHA256 string          `json:"specSHA256"`
	BaseSHA256 string          `json:"baseSHA256"`
	Binaries   []ReleaseBinary `json:"binaries"`
	Kernel     string          `json:"kernel"`
	// SlotSize is the root partition size the release was built for: a node whose slots
	// are smaller cannot take it.
	SlotSize int64                  `json:"slotSize"`
	Spec     ReleaseFile            `json:"spec"`
	Root     ReleaseFile            `json:"root"`
	Linux    ReleaseFile            `json:"linux"`
	Initrd   ReleaseFile            `json:"initrd"`
	Nodes    map[string]ReleaseNode `json:"nodes"`
}
