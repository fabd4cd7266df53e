// Package backup takes, verifies and restores etcd snapshots that restore with nothing
// from the old cluster but the spec and the PKI: a snapshot file is a tar archive of a
// manifest (spec.SnapshotManifest) and the database as etcd's Snapshot API streamed it.
//
// Everything about a database is found with etcd's own code: etcdutl's snapshot status
// (bbolt's integrity check, key count, storage version), etcd's MVCC store for the
// HashKV at the snapshot's revision (the hash every member computes for the same
// revision), and etcdutl's restore for the members' data directories.
package backup

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/etcdutl/v3/snapshot"
	"go.etcd.io/etcd/pkg/v3/traceutil"
	"go.etcd.io/etcd/server/v3/lease"
	"go.etcd.io/etcd/server/v3/storage/backend"
	"go.etcd.io/etcd/server/v3/storage/mvcc"
	"go.uber.org/zap"

	"github.com/etcdbake/etcdbake/spec"
)

// dbInfo is what a database file says about itself.
type dbInfo struct {
	Revision        int64
	CompactRevision int64
	HashKV          uint32
	Keys            int
	StorageVersion  string
}

// etcdChecksumOK says whether a database as the Snapshot API streams it (size bytes,
// the last 32 of them etcd's sha256 of the rest) carries a checksum that matches.
// etcd appends the checksum to a database whose size is a multiple of 512.
func etcdChecksumOK(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	size := fi.Size()
	if size < sha256.Size || (size-sha256.Size)%512 != 0 {
		return fmt.Errorf("%d bytes: not a database as etcd's Snapshot API sends it (a multiple of 512 bytes and etcd's sha256)", size)
	}
	h := sha256.New()
	if _, err := io.CopyN(h, f, size-sha256.Size); err != nil {
		return err
	}
	want := make([]byte, sha256.Size)
	if _, err := io.ReadFull(f, want); err != nil {
		return err
	}
	if got := h.Sum(nil); !bytes.Equal(got, want) {
		return fmt.Errorf("etcd's own sha256 at the end of the database does not match its contents (%x, computed %x): the database is damaged", want, got)
	}
	return nil
}

// inspect reads a database file (with etcd's trailing checksum) with etcd's own code:
// bbolt's integrity check, then the MVCC store's current revision and its HashKV. scratch
// is a directory for a working copy (the store writes to the file it opens).
func inspect(path, scratch string) (info dbInfo, err error) {
	if err := etcdChecksumOK(path); err != nil {
		return info, err
	}
	st, err := snapshot.NewV3(zap.NewNop()).Status(path)
	if err != nil {
		return info, fmt.Errorf("the database does not open: %w", err)
	}
	info.Keys, info.StorageVersion = st.TotalKey, st.Version

	err = withHashes(path, scratch, func(hs mvcc.HashStorage) error {
		h, rev, err := hs.HashByRev(0)
		if err != nil {
			return fmt.Errorf("hashing the database's keys: %w", err)
		}
		info.Revision, info.CompactRevision, info.HashKV = rev, h.CompactRevision, h.Hash
		return nil
	})
	return info, err
}

// withHashes opens a working copy of a database (without etcd's trailing checksum: the
// MVCC store writes to the file it opens) in scratch with etcd's MVCC store and hands its
// hash storage to fn.
func withHashes(path, scratch string, fn func(mvcc.HashStorage) error) (err error) {
	work, err := os.MkdirTemp(scratch, ".inspect-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	return withStore(path, filepath.Join(work, "db"), func(s mvcc.KV) error { return fn(s.HashStorage()) })
}

// withStore copies the database path (without etcd's trailing checksum) to dst, which
// must not exist, opens the copy with etcd's backend and MVCC store and hands the store
// to fn; what fn writes is committed to dst.
func withStore(path, dst string, fn func(mvcc.KV) error) (err error) {
	if err := copyPrefix(path, dst, -sha256.Size); err != nil {
		return err
	}
	// etcd's backend and store panic on what they cannot read; bbolt's check has already
	// turned away the damage it knows, and a panic left is an error here.
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("etcd cannot read the database: %v", r)
		}
	}()
	be := backend.NewDefaultBackend(zap.NewNop(), dst)
	defer be.Close()
	s := mvcc.NewStore(zap.NewNop(), be, &lease.FakeLessor{}, mvcc.StoreConfig{})
	defer s.Close()
	if err := fn(s); err != nil {
		return err
	}
	be.ForceCommit()
	return nil
}

// withoutLocks writes to dst the database path without the cluster's reboot lock: the
// keys under spec.RolloutLockPrefix, which a snapshot taken on schedule always holds (the
// snapshot is taken under the lock) and a rollout may too (nodes waiting for it). In a
// restored cluster nobody holds them any more, but their leases live on for their TTL
// (5 minutes for a snapshot, a rollout's timeout for a waiting node) and keep every
// rollout, snapshot and defragmentation of the new cluster waiting.
func withoutLocks(path, dst string) error {
	return withStore(path, dst, func(s mvcc.KV) error {
		txn := s.Write(traceutil.TODO())
		defer txn.End()
		txn.DeleteRange([]byte(spec.RolloutLockPrefix), []byte(clientv3.GetPrefixRangeEnd(spec.RolloutLockPrefix)))
		return nil
	})
}

// copyPrefix copies src to dst, leaving out the last -trim bytes (trim <= 0).
func copyPrefix(src, dst string, trim int64) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.CopyN(out, in, fi.Size()+trim); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// CAFingerprint is the sha256 (hex) of the first certificate in a PEM file: the cluster
// CA a snapshot belongs to.
func CAFingerprint(caFile string) (string, error) {
	b, err := os.ReadFile(caFile)
	if err != nil {
		return "", err
	}
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return "", fmt.Errorf("%s holds no PEM certificate", caFile)
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		if _, err := x509.ParseCertificate(blk.Bytes); err != nil {
			return "", fmt.Errorf("%s: %w", caFile, err)
		}
		s := sha256.Sum256(blk.Bytes)
		return hex.EncodeToString(s[:]), nil
	}
}

// errCorrupt marks a snapshot that is damaged or not a snapshot (as opposed to one that
// belongs elsewhere).
var errCorrupt = errors.New("corrupt snapshot")
