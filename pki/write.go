package pki

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/etcdbake/etcdbake/internal/fileutil"
)

// Modes of the files and directories Ensure creates.
const (
	certMode fs.FileMode = 0o644
	keyMode  fs.FileMode = 0o600
	dirMode  fs.FileMode = 0o700

	ioWorkers = 16
)

type pendingFile struct {
	path string
	data []byte
	mode fs.FileMode
	tmp  string
}

// writer stages files and writes them in two phases: every file goes to a temporary
// file in its target directory first; only when all of them are written and synced are
// they renamed into place. A failure in the first phase removes the temporary files and
// any directory the writer created, so the PKI directory is left as it was.
type writer struct {
	root   string // the PKI directory: it and everything below is created 0700
	files  []*pendingFile
	chmods []string // existing key files whose mode is tightened to keyMode
}

func (w *writer) add(path string, data []byte, mode fs.FileMode) {
	w.files = append(w.files, &pendingFile{path: path, data: data, mode: mode})
}

func (w *writer) commit() (err error) {
	var created []string // directories made by this commit, parents first
	defer func() {
		if err == nil {
			return
		}
		for _, f := range w.files {
			if f.tmp != "" {
				os.Remove(f.tmp)
			}
		}
		for _, d := range slices.Backward(created) {
			os.Remove(d) // only succeeds if empty, which it is unless someone else wrote there
		}
	}()

	dirs := map[string]bool{}
	for _, f := range w.files {
		d := filepath.Dir(f.path)
		if !dirs[d] {
			dirs[d] = true
			if err := w.mkdirs(d, &created); err != nil {
				return err
			}
		}
	}
	// Each temporary file is synced before it is renamed; syncs wait on the disk, so
	// several run at once.
	if err := parallel(len(w.files), ioWorkers, func(i int) error { return writeTemp(w.files[i]) }); err != nil {
		return err
	}
	for i, f := range w.files {
		if err := os.Rename(f.tmp, f.path); err != nil {
			var done []string
			for _, g := range w.files[:i] {
				done = append(done, g.path)
			}
			// The files already renamed are complete; the rest keep their old content.
			return fmt.Errorf("installing %s: %w (already replaced: %s)", f.path, err, strings.Join(done, ", "))
		}
		f.tmp = ""
	}
	for d := range dirs {
		fileutil.SyncDir(d)
	}
	for _, p := range w.chmods {
		if err := os.Chmod(p, keyMode); err != nil {
			return fmt.Errorf("restricting %s to mode 0600: %w", p, err)
		}
	}
	return nil
}

// mkdirs creates d and its missing parents, recording what it created. The PKI
// directory and its subdirectories hold keys and get dirMode; parents above it (such as
// out/) are ordinary 0755 directories.
func (w *writer) mkdirs(d string, created *[]string) error {
	fi, err := os.Stat(d)
	if err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("%s exists and is not a directory", d)
		}
		return nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if parent := filepath.Dir(d); parent != d {
		if err := w.mkdirs(parent, created); err != nil {
			return err
		}
	}
	mode := fs.FileMode(0o755)
	if rel, err := filepath.Rel(w.root, d); err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		mode = dirMode
	}
	if err := os.Mkdir(d, mode); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil
		}
		return err
	}
	*created = append(*created, d)
	return nil
}

func writeTemp(f *pendingFile) error {
	t, err := os.CreateTemp(filepath.Dir(f.path), "."+filepath.Base(f.path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", f.path, err)
	}
	f.tmp = t.Name()
	err = t.Chmod(f.mode)
	if err == nil {
		_, err = t.Write(f.data)
	}
	if err == nil {
		err = t.Sync()
	}
	if cerr := t.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", f.path, err)
	}
	return nil
}
