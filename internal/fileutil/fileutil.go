// Package fileutil is the one home of the small file operations every part of etcdbake
// needs: atomic writes, directory fsync, a cancellable exclusive lock, file digests.
// It depends on the standard library and renameio only, so the node programs
// (etcd-firstboot, the installer) may use it as well as the builders.
package fileutil

import (
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"

	"github.com/google/renameio/v2"
)

// WriteAtomic writes data to path through a temporary file in the same directory,
// fsyncs it, renames it into place and fsyncs the directory: a reader sees the old
// contents or the new, never a part, and a crash leaves no temporary file behind
// under the final name.
// The file gets exactly mode (not the old file's permissions).
func WriteAtomic(path string, data []byte, mode os.FileMode) error {
	t, err := renameio.NewPendingFile(path, renameio.WithPermissions(mode), renameio.WithStaticPermissions(mode))
	if err != nil {
		return err
	}
	defer t.Cleanup()
	if _, err := t.Write(data); err != nil {
		return err
	}
	if err := t.CloseAtomicallyReplace(); err != nil {
		return err
	}
	SyncDir(filepath.Dir(path))
	return nil
}

// SyncDir makes the renames and creations in dir durable. Failure is not reported: some
// filesystems cannot sync a directory, and the data itself was already synced.
func SyncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
}

// SyncFile flushes a file's contents to stable storage.
func SyncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// SHA256 returns the hex sha256 of a file's contents.
func SHA256(path string) (string, error) {
	sum, _, err := Digest(path, sha256.New())
	return sum, err
}

// SHA512 returns the hex sha512 of a file's contents.
func SHA512(path string) (string, error) {
	sum, _, err := Digest(path, sha512.New())
	return sum, err
}

// Digest feeds a file's contents to h and returns the hex sum and the bytes read (the
// size of what was hashed, not of a later stat).
func Digest(path string, h hash.Hash) (sum string, n int64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	if n, err = io.Copy(h, f); err != nil {
		return "", 0, fmt.Errorf("reading %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}
