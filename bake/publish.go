package bake

import (
	"crypto/sha512"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/etcdbake/etcdbake/ignition"
	"github.com/etcdbake/etcdbake/internal/fileutil"
)

// Published is one binary laid out for --binaries-url: the nodes download URL and check
// it against SHA512; Path is the file to publish there.
type Published struct {
	Name, URL, Path, SHA512 string
	Size                    int64
}

// PublishBinaries lays out the four binaries the configs name under dir (OUT/binaries),
// as the files baseURL/<name> the nodes download, ready to publish as they are. Each is
// hard-linked from where it is (the verified cache, etcd-firstboot's path) or copied when
// it cannot be, checked against the sha512 the configs carry, and only then renamed into
// place, so dir never holds a partial file or one the nodes would reject. A file already
// there with the right sha512 is kept.
func PublishBinaries(dir, baseURL string, bins map[string]ignition.Binary) ([]Published, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating %s: %w", dir, err)
	}
	var out []Published
	for _, name := range ignition.BinaryNames {
		b, ok := bins[name]
		if !ok {
			return nil, fmt.Errorf("binary %s is missing: run `etcdbake fetch`", name)
		}
		p, err := publishOne(dir, b)
		if err != nil {
			return nil, fmt.Errorf("publishing %s into %s: %w", name, dir, err)
		}
		p.URL = strings.TrimRight(baseURL, "/") + "/" + name
		out = append(out, p)
	}
	fileutil.SyncDir(dir)
	return out, nil
}

func publishOne(dir string, b ignition.Binary) (Published, error) {
	dst := filepath.Join(dir, b.Name)
	p := Published{Name: b.Name, Path: dst, SHA512: b.SHA512}
	if sum, size, err := fileutil.Digest(dst, sha512.New()); err == nil && sum == b.SHA512 {
		p.Size = size
		return p, nil
	}
	tmp := filepath.Join(dir, "."+b.Name+".tmp")
	os.Remove(tmp) // left by an interrupted run
	if err := os.Link(b.Path, tmp); err != nil {
		if err := copyFile(b.Path, tmp); err != nil {
			os.Remove(tmp)
			return p, err
		}
	}
	sum, size, err := fileutil.Digest(tmp, sha512.New())
	if err == nil && sum != b.SHA512 {
		err = fmt.Errorf("%s has sha512 %s, but the configs expect %s: it changed since the configs were rendered; run the command again", b.Path, sum, b.SHA512)
	}
	if err != nil {
		os.Remove(tmp)
		return p, err
	}
	if err := os.Rename(tmp, dst); err != nil {
		os.Remove(tmp)
		return p, err
	}
	p.Size = size
	return p, nil
}

// copyFile copies src to a new file dst (mode 0755), synced.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if err == nil {
		err = out.Sync()
	}
	return errors.Join(err, out.Close())
}
