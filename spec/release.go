package spec

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/cespare/xxhash/v2"
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
	// Chunks are the digests of the file's ZeroChunk-sized pieces (PieceDigest), in
	// order: a node copies the pieces its running slot already holds from there,
	// downloads only the others, and checks every piece against its digest as it writes
	// it.
	Chunks []string `json:"chunks,omitempty"`
	// ChunkHash names the hash of Chunks: ChunkXXH64, or empty for the first 16 bytes of
	// the piece's sha256 (releases made before ChunkXXH64).
	ChunkHash string `json:"chunkHash,omitempty"`
}

// ChunkXXH64 is the piece digest of releases made now: XXH64, hex. A node checks every
// piece of a partition it stages, most of them copied from its own running slot, and
// in a small VM under emulation sha256 runs at about 19 MB/s where XXH64 runs at about
// 840 MB/s: the check would take longer than the copy. The pieces are digests of what
// the operator's release holds, fetched with the manifest over mutual TLS (which guards
// the transfer); they catch a piece that is not what the release says (a running slot
// that changed, a bad disk, a server serving something else), not a forger. The whole
// file's sha256 stays in the manifest for everything else (installs, etcdbake image).
const ChunkXXH64 = "xxh64"

// ChunkDigest is the digest of a piece in a ReleaseFile made now (ChunkXXH64).
func ChunkDigest(b []byte) string {
	return fmt.Sprintf("%016x", xxhash.Sum64(b))
}

// PieceDigest is the digest of piece b in the hash f.Chunks use.
func (f ReleaseFile) PieceDigest(b []byte) string {
	if f.ChunkHash == ChunkXXH64 {
		return ChunkDigest(b)
	}
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
