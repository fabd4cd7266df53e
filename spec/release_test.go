package spec

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"testing"

	"github.com/cespare/xxhash/v2"
)

// TestPieceDigest: releases made now digest their pieces with XXH64; older releases' pieces
// (no ChunkHash) are the first 16 bytes of their sha256, and are still checked that way.
func TestPieceDigest(t *testing.T) {
	piece := bytes.Repeat([]byte("etcdbake"), 1<<17)
	sum := sha256.Sum256(piece)
	x := xxhash.New()
	x.Write(piece)
	for _, tc := range []struct {
		f    ReleaseFile
		want string
	}{
		{ReleaseFile{ChunkHash: ChunkXXH64}, hex.EncodeToString(x.Sum(nil))},
		{ReleaseFile{}, hex.EncodeToString(sum[:16])},
	} {
		if got := tc.f.PieceDigest(piece); got != tc.want {
			t.Errorf("chunkHash %q: %s, want %s", tc.f.ChunkHash, got, tc.want)
		}
	}
	if ChunkDigest(piece) != (ReleaseFile{ChunkHash: ChunkXXH64}).PieceDigest(piece) {
		t.Error("ChunkDigest is not the XXH64 piece digest")
	}
	other := bytes.Clone(piece)
	other[len(other)/2] ^= 1
	if ChunkDigest(other) == ChunkDigest(piece) {
		t.Error("a flipped bit leaves the digest unchanged")
	}
}
