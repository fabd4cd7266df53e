package imagebuild

import (
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"

	"github.com/etcdbake/etcdbake/imagebuild/fstree"
	"github.com/etcdbake/etcdbake/spec"
)

// etcdDataRel is etcd's data directory relative to /var, the data partition's root.
const etcdDataRel = "lib/etcd"

// dataContent is the content of a node's data partition (/var) as the image ships it: the
// image's /var as systemd-tmpfiles would copy it from the factory copy, so the first boot
// neither formats the partition nor copies /var. With a dataDir (a directory made by
// backup.Restore) the partition holds a restored member:
// etcd's data directory is filled from it and owned, as the image's own /var/lib/etcd
// is, by the etcd user. Files are read from dataDir when the file system is written, not
// held in memory.
func dataContent(node *fstree.Tree, dataDir string) (*fstree.Tree, error) {
	if filepath.Clean(spec.EtcdDataDir) != "/var/"+etcdDataRel {
		return nil, fmt.Errorf("etcd's data directory %s is not /var/%s", spec.EtcdDataDir, etcdDataRel)
	}
	t := node.Subtree(factoryVar)
	// Hard links inside the copy point at paths of the whole tree: each becomes a copy.
	for _, e := range t.All() {
		if e.Hardlink != "" {
			d, ok := node.Get(e.Hardlink)
			if !ok {
				return nil, fmt.Errorf("/var/%s: a hard link to %s, which the image lacks", e.Path, e.Hardlink)
			}
			d = node.DataOf(d)
			e.Hardlink, e.Data, e.Source = "", d.Data, d.Source
		}
	}
	if _, ok := t.Get(""); !ok {
		if err := t.Put(&fstree.Entry{Path: "", Mode: fs.ModeDir | 0o755}); err != nil {
			return nil, err
		}
	}
	if dataDir == "" {
		return t, nil
	}
	top, ok := t.Get(etcdDataRel)
	if !ok || !top.IsDir() {
		return nil, fmt.Errorf("the image has no directory %s: it runs no etcd", spec.EtcdDataDir)
	}
	uid, gid := top.UID, top.GID
	err := filepath.WalkDir(dataDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dataDir, p)
		if err != nil || rel == "." {
			return err
		}
		e := &fstree.Entry{Path: path.Join(etcdDataRel, filepath.ToSlash(rel)), UID: uid, GID: gid}
		switch {
		case d.IsDir():
			e.Mode = fs.ModeDir | 0o700
		case d.Type().IsRegular():
			e.Mode, e.Source = 0o600, p
		default:
			return fmt.Errorf("%s: neither a file nor a directory; a restored data directory holds only those", p)
		}
		return t.Put(e)
	})
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(dataDir, "member", "snap", "db")); err != nil {
		return nil, fmt.Errorf("%s holds no etcd member (member/snap/db): %w", dataDir, err)
	}
	return t, nil
}
