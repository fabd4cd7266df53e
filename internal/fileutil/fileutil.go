// Package fileutil is the one home of the small file operations every part of etcdbake
// needs: atomic writes, directory fsync, a cancellable exclusive lock, file digests.
// It depends on the standard library and renameio only, so the node programs
// (etcd-firstboot, the installer) may use it as well as the builders.
package fileutil

import (
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"

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

// Lock takes an exclusive flock on path (created if missing), polling so that ctx can
// end the wait. onWait, if not nil, is called once when another process holds the lock.
// The returned function releases it.
func Lock(ctx context.Context, path string, onWait func()) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	for waited := false; ; {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN); _ = f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		if !waited && onWait != nil {
			onWait()
		}
		waited = true
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// SHA256 returns the hex sha256 of a file's contents.
func SHA256(path string) (string, error) { return digest(path, sha256.New()) }

// SHA512 returns the hex sha512 of a file's contents.
func SHA512(path string) (string, error) { return digest(path, sha512.New()) }

func digest(path string, h hash.Hash) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("reading %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
