package fstree

import (
	"fmt"
	"path"
	"strings"
)

// Resolve resolves p in the tree as the kernel would with the tree as the root:
// symlinks in every component but the last are followed (the last too with followLast),
// absolute targets are taken relative to the tree's root and ".." never leaves it.
// Components that do not exist are kept as written. The result is a clean tree path.
func (t *Tree) Resolve(p string, followLast bool) (string, error) {
	rest := strings.Split(strings.TrimLeft(p, "/"), "/")
	cur := ""
	hops := 0
	for len(rest) > 0 {
		c := rest[0]
		rest = rest[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if d := path.Dir(cur); d != "." {
				cur = d
			} else {
				cur = ""
			}
			continue
		}
		next := c
		if cur != "" {
			next = cur + "/" + c
		}
		e, ok := t.entries[next]
		if !ok {
			cur = next
			continue
		}
		last := !hasComponent(rest)
		if e.IsSymlink() && (!last || followLast) {
			hops++
			if hops > 40 {
				return "", fmt.Errorf("/%s: too many levels of symbolic links", Clean(p))
			}
			if strings.HasPrefix(e.Target, "/") {
				cur = ""
			}
			rest = append(strings.Split(e.Target, "/"), rest...)
			continue
		}
		if !last && !e.IsDir() {
			return "", fmt.Errorf("/%s: /%s is not a directory", Clean(p), next)
		}
		cur = next
	}
	return cur, nil
}

// hasComponent reports whether rest names anything beyond "" and "." (a trailing slash
// or "/." does not make the previous component a non-final one for symlink purposes).
func hasComponent(rest []string) bool {
	for _, c := range rest {
		if c != "" && c != "." {
			return true
		}
	}
	return false
}

// Follow returns the entry at p, following symbolic links in every component
// including the last (at most 40 of them, like Linux). Absolute link targets are taken
// relative to the tree's root, and ".." never leaves it.
func (t *Tree) Follow(p string) (*Entry, bool) {
	e, _, ok := t.ResolveEntry(p, true)
	return e, ok
}

// ResolveEntry resolves p in t (see Resolve); with
// followLast false a final symlink is returned itself. It returns the entry and its real
// path.
func (t *Tree) ResolveEntry(p string, followLast bool) (*Entry, string, bool) {
	rp, err := t.Resolve(p, followLast)
	if err != nil {
		return nil, "", false
	}
	e, ok := t.entries[rp]
	return e, rp, ok
}
