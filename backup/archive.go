package backup

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/google/renameio/v2"

	"github.com/etcdbake/etcdbake/internal/fileutil"
	"github.com/etcdbake/etcdbake/spec"
)

// maxManifest bounds the manifest entry read from a snapshot file.
const maxManifest = 1 << 20

// writeArchive writes the snapshot file path (manifest, then the database db) through a
// temporary file: a crash or an error leaves no file under path.
func writeArchive(path string, m *spec.SnapshotManifest, db string) error {
	mb, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	in, err := os.Open(db)
	if err != nil {
		return err
	}
	defer in.Close()
	t, err := renameio.NewPendingFile(path, renameio.WithPermissions(0o600), renameio.WithStaticPermissions(0o600))
	if err != nil {
		return err
	}
	defer t.Cleanup()
	tw := tar.NewWriter(t)
	mod := m.Taken.UTC().Truncate(time.Second)
	if err := tw.WriteHeader(&tar.Header{Name: spec.SnapshotManifestName, Mode: 0o600, Size: int64(len(mb)), ModTime: mod, Format: tar.FormatPAX}); err != nil {
		return err
	}
	if _, err := tw.Write(mb); err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Name: spec.SnapshotDBName, Mode: 0o600, Size: m.Size, ModTime: mod, Format: tar.FormatPAX}); err != nil {
		return err
	}
	if n, err := io.Copy(tw, in); err != nil {
		return err
	} else if n != m.Size {
		return fmt.Errorf("%s changed while it was archived (%d bytes, expected %d)", db, n, m.Size)
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := t.CloseAtomicallyReplace(); err != nil {
		return err
	}
	fileutil.SyncDir(filepath.Dir(path))
	return nil
}

// ReadManifest reads a snapshot file's manifest only (nothing is verified: see Verify).
func ReadManifest(path string) (*spec.SnapshotManifest, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readManifest(path, tar.NewReader(f))
}

func readManifest(path string, tr *tar.Reader) (*spec.SnapshotManifest, error) {
	h, err := tr.Next()
	if err != nil || h.Name != spec.SnapshotManifestName {
		return nil, corruptf(path, "not an etcdbake snapshot (a tar archive starting with %s): %v", spec.SnapshotManifestName, describe(h, err))
	}
	mb, err := io.ReadAll(io.LimitReader(tr, maxManifest))
	if err != nil {
		return nil, corruptf(path, "reading %s: %v", spec.SnapshotManifestName, err)
	}
	var m spec.SnapshotManifest
	if err := json.Unmarshal(mb, &m); err != nil {
		return nil, corruptf(path, "%s is not a snapshot manifest: %v", spec.SnapshotManifestName, err)
	}
	if m.Format != spec.SnapshotFormat {
		return nil, corruptf(path, "manifest format %d; this etcdbake reads format %d", m.Format, spec.SnapshotFormat)
	}
	return &m, nil
}

func corruptf(path, format string, a ...any) error {
	return fmt.Errorf("%w: %s: %s", errCorrupt, path, fmt.Sprintf(format, a...))
}

// readArchive reads a snapshot file's manifest and writes its database to db, checking
// the database's size and sha256 against the manifest.
func readArchive(path, db string) (*spec.SnapshotManifest, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	m, err := readManifest(path, tr)
	if err != nil {
		return nil, err
	}
	h, err := tr.Next()
	if err != nil || h.Name != spec.SnapshotDBName {
		return nil, corruptf(path, "no %s entry after the manifest: %v", spec.SnapshotDBName, describe(h, err))
	}
	out, err := os.OpenFile(db, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	sum := sha256.New()
	n, err := io.Copy(io.MultiWriter(out, sum), tr)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, corruptf(path, "reading the database: %v (the file is cut short?)", err)
	}
	if n != m.Size {
		return nil, corruptf(path, "the database has %d bytes, the manifest says %d", n, m.Size)
	}
	if got := hex.EncodeToString(sum.Sum(nil)); got != m.SHA256 {
		return nil, corruptf(path, "the database's sha256 is %s, the manifest says %s", got, m.SHA256)
	}
	return m, nil
}

func describe(h *tar.Header, err error) string {
	switch {
	case errors.Is(err, io.EOF):
		return "the archive ends there"
	case err != nil:
		return err.Error()
	default:
		return fmt.Sprintf("found %q", h.Name)
	}
}
