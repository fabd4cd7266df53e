package imagebuild

import (
	"crypto/sha256"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strings"

	"github.com/etcdbake/etcdbake/imagebuild/fstree"
	"github.com/etcdbake/etcdbake/spec"
)

// NodeMount is where each node's own partition is mounted (read-only).
const NodeMount = "node"

// nodeOnly are paths that Split keeps in each node's own tree even when every node has
// the same file.
var nodeOnly = map[string]bool{strings.TrimPrefix(spec.S3CredentialsPath, "/"): true}

// fingerprint identifies an entry's type, metadata and content.
func fingerprint(t *fstree.Tree, e *fstree.Entry) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "%o %d %d %q|", e.Mode, e.UID, e.GID, e.Target)
	if e.IsRegular() {
		b, err := t.Contents(e)
		if err != nil {
			return "", err
		}
		h.Write(b)
	}
	return fmt.Sprintf("%x", h.Sum(nil)), nil
}

// sharesContent says, without reading contents, that two entries are the same: equal
// metadata and the same content source (the same local file, or the same bytes in
// memory, as entries cloned from one base share them).
func sharesContent(a, b *fstree.Entry) bool {
	if a.Mode != b.Mode || a.UID != b.UID || a.GID != b.GID || a.Target != b.Target || a.Hardlink != b.Hardlink || a.Source != b.Source || len(a.Data) != len(b.Data) {
		return false
	}
	return len(a.Data) == 0 || &a.Data[0] == &b.Data[0]
}

// Split divides per-node trees into one shared root and one small tree per node: a path
// whose entry is identical on every node stays in the root; a file or link that differs
// (or exists on some nodes only) moves to the node's own tree, and the root gets a
// symlink to it under /node. Directories always stay in the root. Nothing is listed by
// hand: the split is computed from the node trees.
//
// Secrets the spec gives every node alike (the backup target's keys, nodeOnly) still go to
// each node's own tree: the shared root is in every release any node can fetch.
//
// systemd loads units before local file systems are mounted, so a unit or drop-in that
// differs between nodes cannot be reached through /node; that is an error.
//
// It is long because it is one pass over every path deciding root or node, with the
// state of that pass (the first node's entry and fingerprint).
func Split(nodes map[string]*fstree.Tree) (*fstree.Tree, map[string]*fstree.Tree, []string, error) {
	names := make([]string, 0, len(nodes))
	for n := range nodes {
		names = append(names, n)
	}
	sort.Strings(names)
	if len(names) == 0 {
		return nil, nil, nil, fmt.Errorf("no nodes")
	}
	all := map[string]bool{}
	for _, n := range names {
		for _, p := range nodes[n].Paths() {
			all[p] = true
		}
	}
	paths := make([]string, 0, len(all))
	for p := range all {
		paths = append(paths, p)
	}
	sort.Strings(paths)

	root := fstree.NewTree()
	own := map[string]*fstree.Tree{}
	for _, n := range names {
		own[n] = fstree.NewTree()
	}
	var perNode []string
	for _, p := range paths {
		var first *fstree.Entry
		var firstFP string
		same, isDir := true, false
		for i, n := range names {
			e, ok := nodes[n].Get(p)
			if !ok {
				same = false
				continue
			}
			if e.IsDir() {
				isDir = true
			}
			if i == 0 {
				first = e
				continue
			}
			if first == nil || !same || sharesContent(first, e) {
				continue
			}
			// Contents of different origin: compare by hash.
			if firstFP == "" {
				fp, err := fingerprint(nodes[names[0]], first)
				if err != nil {
					return nil, nil, nil, err
				}
				firstFP = fp
			}
			fp, err := fingerprint(nodes[n], e)
			if err != nil {
				return nil, nil, nil, err
			}
			if fp != firstFP {
				same = false
			}
		}
		if p == "" {
			continue
		}
		if nodeOnly[p] && !isDir {
			same = false
		}
		if same || isDir {
			// Directories are kept whole in the root (with the first node's metadata).
			for _, n := range names {
				if e, ok := nodes[n].Get(p); ok {
					if isDir && !e.IsDir() {
						return nil, nil, nil, fmt.Errorf("%s is a directory on some nodes and not on others", p)
					}
					c := *e
					if err := root.Put(&c); err != nil {
						return nil, nil, nil, err
					}
					break
				}
			}
			continue
		}
		if strings.HasPrefix(p, "etc/systemd/system/") || strings.HasPrefix(p, "usr/lib/systemd/system/") || strings.HasPrefix(p, "lib/systemd/system/") {
			return nil, nil, nil, fmt.Errorf("systemd unit file %s differs between nodes: units load before /%s is mounted, so they must be identical (put node settings in a file the unit reads)", p, NodeMount)
		}
		perNode = append(perNode, p)
		if err := root.Put(&fstree.Entry{Path: p, Mode: fs.ModeSymlink | 0o777, Target: "/" + path.Join(NodeMount, p)}); err != nil {
			return nil, nil, nil, err
		}
		for _, n := range names {
			if e, ok := nodes[n].Get(p); ok {
				c := *e
				if err := own[n].Put(&c); err != nil {
					return nil, nil, nil, err
				}
			}
		}
	}
	// Parent directories of per-node files keep their modes from the node's tree.
	for _, n := range names {
		for _, p := range own[n].Paths() {
			if e, _ := own[n].Get(p); e.IsDir() {
				if src, ok := nodes[n].Get(p); ok && src.IsDir() {
					c := *src
					own[n].Set(&c)
				}
			}
		}
	}
	return root, own, perNode, nil
}
