package base

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	"github.com/etcdbake/etcdbake/imagebuild/fstree"
)

// Stats counts what Read found, including what the Tree cannot hold.
type Stats struct {
	Dirs, Files, Symlinks, Hardlinks int
	// Bytes is the total size of regular files (hard links counted once).
	Bytes int64
	// Devices (character and block), FIFOs and other unsupported entries are skipped;
	// Skipped names them ("dev/null (char device)").
	Devices, FIFOs, Other int
	Skipped               []string
	// XattrFiles counts entries whose extended attributes (file capabilities, ACLs)
	// were dropped, the Tree does not hold them; XattrPaths names them.
	XattrFiles int
	XattrPaths []string
}

// Read reads a base root file system tarball (plain tar or gzip-compressed) into a
// Tree. Device nodes and FIFOs are skipped (see ReadStats).
func Read(tarPath string) (*fstree.Tree, error) {
	t, _, err := ReadStats(tarPath)
	return t, err
}

// ReadContext is Read stopping with ctx's error when ctx is cancelled (a base is a few
// hundred megabytes: reading it takes seconds).
func ReadContext(ctx context.Context, tarPath string) (*fstree.Tree, error) {
	t, _, err := readStats(ctx, tarPath)
	return t, err
}

// ReadStats is Read also returning what was read and skipped.
func ReadStats(tarPath string) (*fstree.Tree, *Stats, error) {
	return readStats(context.Background(), tarPath)
}

func readStats(ctx context.Context, tarPath string) (*fstree.Tree, *Stats, error) {
	f, err := os.Open(tarPath)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	br := bufio.NewReaderSize(ctxReader{ctx, f}, 1<<20)
	magic, _ := br.Peek(4)
	var r io.Reader = br
	switch {
	case len(magic) >= 2 && magic[0] == 0x1f && magic[1] == 0x8b:
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", tarPath, err)
		}
		defer zr.Close()
		r = zr
	case bytes.Equal(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return nil, nil, fmt.Errorf("%s: zstd-compressed tarballs are not supported; decompress it (zstd -d) or use a plain or gzip tarball", tarPath)
	case bytes.HasPrefix(magic, []byte{0xfd, '7', 'z', 'X'}):
		return nil, nil, fmt.Errorf("%s: xz-compressed tarballs are not supported; decompress it (xz -d) or use a plain or gzip tarball", tarPath)
	}
	t, st, err := readBaseTar(r)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", tarPath, err)
	}
	return t, st, nil
}

// ctxReader fails its reads with ctx's error once ctx is cancelled (checked once per
// buffered megabyte, under the bufio.Reader).
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// cleanTarName validates and cleans a member name: no absolute paths, no "..".
func cleanTarName(name string) (string, error) {
	if strings.HasPrefix(name, "/") {
		return "", fmt.Errorf("absolute path %q in tarball", name)
	}
	for _, c := range strings.Split(name, "/") {
		if c == ".." {
			return "", fmt.Errorf("path %q in tarball escapes the root", name)
		}
	}
	if strings.ContainsRune(name, 0) {
		return "", fmt.Errorf("path %q in tarball contains NUL", name)
	}
	return fstree.Clean(name), nil
}

// readBaseTar reads a base tarball into a tree.
//
// It is long because it is one switch over the tar entry types with the checks each
// needs (names, hard links to earlier members, what the tree cannot hold counted in
// Stats); split up, those rules would be scattered.
func readBaseTar(r io.Reader) (*fstree.Tree, *Stats, error) {
	t := fstree.NewTree()
	st := &Stats{}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, nil, err
		}
		if hdr.Typeflag == tar.TypeXGlobalHeader {
			continue
		}
		name, err := cleanTarName(hdr.Name)
		if err != nil {
			return nil, nil, err
		}
		perm := fs.FileMode(hdr.Mode) & fs.ModePerm
		if hdr.Mode&0o4000 != 0 {
			perm |= fs.ModeSetuid
		}
		if hdr.Mode&0o2000 != 0 {
			perm |= fs.ModeSetgid
		}
		if hdr.Mode&0o1000 != 0 {
			perm |= fs.ModeSticky
		}
		e := &fstree.Entry{Path: name, Mode: perm, UID: hdr.Uid, GID: hdr.Gid}
		skip := func(kind string, n *int) {
			*n++
			st.Skipped = append(st.Skipped, fmt.Sprintf("%s (%s)", displayPath(name), kind))
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			e.Mode |= fs.ModeDir
			st.Dirs++
		case tar.TypeReg, tar.TypeRegA, tar.TypeCont, tar.TypeGNUSparse:
			if name == "" {
				return nil, nil, fmt.Errorf("regular file %q at the root", hdr.Name)
			}
			data, err := readData(tr, hdr.Size)
			if err != nil {
				return nil, nil, fmt.Errorf("reading %s: %w", hdr.Name, err)
			}
			e.Data = data
			st.Files++
			st.Bytes += int64(len(data))
		case tar.TypeSymlink:
			if hdr.Linkname == "" {
				return nil, nil, fmt.Errorf("symlink %q has an empty target", hdr.Name)
			}
			e.Mode = fs.ModeSymlink | 0o777
			e.Target = hdr.Linkname
			st.Symlinks++
		case tar.TypeLink:
			target, err := cleanTarName(hdr.Linkname)
			if err != nil {
				return nil, nil, fmt.Errorf("hard link %q: %w", hdr.Name, err)
			}
			te, ok := t.Get(target)
			if !ok || target == name || target == "" {
				return nil, nil, fmt.Errorf("hard link %q to %q: target not found earlier in the tarball", hdr.Name, hdr.Linkname)
			}
			if !te.IsRegular() {
				return nil, nil, fmt.Errorf("hard link %q to %q, which is not a regular file", hdr.Name, hdr.Linkname)
			}
			// The link shares its target's inode: same metadata and content. Data is
			// shared too, so writers that cannot make hard links write a copy.
			e.Mode, e.UID, e.GID = te.Mode, te.UID, te.GID
			e.Data, e.Source = te.Data, te.Source
			if te.Hardlink != "" {
				target = te.Hardlink
			}
			e.Hardlink = target
			st.Hardlinks++
		case tar.TypeChar:
			skip("char device", &st.Devices)
			continue
		case tar.TypeBlock:
			skip("block device", &st.Devices)
			continue
		case tar.TypeFifo:
			skip("fifo", &st.FIFOs)
			continue
		default:
			skip(fmt.Sprintf("tar type %q", hdr.Typeflag), &st.Other)
			continue
		}
		for k := range hdr.PAXRecords {
			if strings.HasPrefix(k, "SCHILY.xattr.") || strings.HasPrefix(k, "LIBARCHIVE.xattr.") {
				st.XattrFiles++
				st.XattrPaths = append(st.XattrPaths, displayPath(name))
				break
			}
		}
		if err := t.Put(e); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", hdr.Name, err)
		}
	}
	return t, st, nil
}

func displayPath(p string) string {
	if p == "" {
		return "/"
	}
	return p
}

// readData reads a member's content without trusting its declared size for allocation.
func readData(r io.Reader, size int64) ([]byte, error) {
	if size <= 0 {
		// A sparse or zero-length member; read whatever there is.
		b, err := io.ReadAll(r)
		if len(b) == 0 {
			return nil, err
		}
		return b, err
	}
	if size <= 64<<20 {
		b := make([]byte, size)
		_, err := io.ReadFull(r, b)
		return b, err
	}
	var buf bytes.Buffer
	buf.Grow(64 << 20)
	_, err := io.Copy(&buf, r)
	return buf.Bytes(), err
}
