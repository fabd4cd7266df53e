package backup

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/etcdbake/etcdbake/spec"
)

// Expect names the cluster a snapshot must belong to; empty fields are not checked.
type Expect struct {
	Cluster       string
	CAFingerprint string
}

// ForeignError is a snapshot of another cluster (its name or its CA).
type ForeignError struct {
	Path, Field, Snapshot, Want string
}

func (e *ForeignError) Error() string {
	return fmt.Sprintf("%s belongs to another cluster: its %s is %s, this spec's is %s; restore it with the spec and PKI of the cluster it was taken from",
		e.Path, e.Field, e.Snapshot, e.Want)
}

// IsCorrupt says whether err is about a damaged file or one that is not a snapshot.
func IsCorrupt(err error) bool { return errors.Is(err, errCorrupt) }

// Verify checks a snapshot file whole: the manifest, the database's size and sha256,
// etcd's own checksum, bbolt's integrity check, and the revision, compact revision, key
// count and HashKV computed from the database against the manifest; then that it belongs
// to the expected cluster. It writes only under a temporary directory, removed on return.
func Verify(path string, want Expect) (*spec.SnapshotManifest, error) {
	scratch, err := os.MkdirTemp("", "etcdbake-verify-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(scratch)
	return verifyInto(path, want, scratch)
}

// verifyInto verifies path and leaves its database at scratch/db.
func verifyInto(path string, want Expect, scratch string) (*spec.SnapshotManifest, error) {
	db := filepath.Join(scratch, spec.SnapshotDBName)
	m, err := readArchive(path, db)
	if err != nil {
		return nil, err
	}
	info, err := inspect(db, scratch)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", errCorrupt, path, err)
	}
	if info.Revision != m.Revision || info.CompactRevision != m.CompactRevision || info.HashKV != m.HashKV || info.Keys != m.Keys {
		return nil, fmt.Errorf("%w: %s: the database is at revision %d (compacted at %d) with %d keys hashing to %d; the manifest says revision %d (compacted at %d), %d keys, hash %d",
			errCorrupt, path, info.Revision, info.CompactRevision, info.Keys, info.HashKV, m.Revision, m.CompactRevision, m.Keys, m.HashKV)
	}
	if want.Cluster != "" && m.Cluster != want.Cluster {
		return nil, &ForeignError{Path: path, Field: "cluster name", Snapshot: m.Cluster, Want: want.Cluster}
	}
	if want.CAFingerprint != "" && m.CAFingerprint != want.CAFingerprint {
		return nil, &ForeignError{Path: path, Field: "CA (sha256 of ca.crt)", Snapshot: m.CAFingerprint, Want: want.CAFingerprint}
	}
	return m, nil
}
