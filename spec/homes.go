package spec

import (
	"fmt"
	"reflect"
	"sort"
	"strings"
	"sync"

	"gopkg.in/yaml.v3"
)

// fieldHomes maps every field name of the schema to the mappings that have it, as schema
// paths: "" (the top level), "pki", "nodes[]" (each item of nodes), "binaries.files.*"
// (each entry of binaries.files).
var fieldHomes = sync.OnceValue(func() map[string][]string {
	homes := map[string][]string{}
	var walk func(t reflect.Type, tpath string)
	walk = func(t reflect.Type, tpath string) {
		for t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		switch {
		case t == durationType:
		case t.Kind() == reflect.Struct:
			fields := yamlFields(t)
			names := make([]string, 0, len(fields))
			for name := range fields {
				names = append(names, name)
			}
			sort.Strings(names)
			for _, name := range names {
				homes[name] = append(homes[name], tpath)
				walk(fields[name], join(tpath, name))
			}
		case t.Kind() == reflect.Slice:
			walk(t.Elem(), tpath+"[]")
		case t.Kind() == reflect.Map:
			walk(t.Elem(), join(tpath, "*"))
		}
	}
	walk(reflect.TypeOf(Cluster{}), "")
	return homes
})

// closestHomes returns the schema paths of the mappings that have field key, other than
// tparent (where it was found), keeping those closest in nesting to tparent: the longest
// common ancestry first, then the smallest difference in depth. Ties are all returned.
func closestHomes(key, tparent string) []string {
	var best []string
	bestCommon, bestDiff := -1, 0
	for _, h := range fieldHomes()[key] {
		if h == tparent {
			continue
		}
		common, diff := commonSegments(h, tparent), abs(depth(h)-depth(tparent))
		switch {
		case common > bestCommon || (common == bestCommon && diff < bestDiff):
			best, bestCommon, bestDiff = []string{h}, common, diff
		case common == bestCommon && diff == bestDiff:
			best = append(best, h)
		}
	}
	return best
}

func segments(tpath string) []string {
	if tpath == "" {
		return nil
	}
	return strings.Split(tpath, ".")
}

func depth(tpath string) int { return len(segments(tpath)) }

func commonSegments(a, b string) int {
	sa, sb := segments(a), segments(b)
	n := 0
	for n < len(sa) && n < len(sb) && sa[n] == sb[n] {
		n++
	}
	return n
}

func abs(n int) int {
	if n < 0 {
		return -n
	}
	return n
}

// describeHome names a schema path for a message, with the line where the document
// has it: "pki: (line 49)", "an item of nodes: (line 11)", "the top level".
func (sc *shapeChecker) describeHome(tpath string) string {
	if tpath == "" {
		return "the top level"
	}
	name, line := tpath, 0
	var kind string
	switch {
	case strings.HasSuffix(tpath, "[]"):
		name, kind = strings.TrimSuffix(tpath, "[]"), "an item of "
	case strings.HasSuffix(tpath, ".*"):
		name, kind = strings.TrimSuffix(tpath, ".*"), "an entry of "
	}
	if n := lookupKey(sc.root, name); n != nil {
		line = n.Line
	}
	s := kind + name + ":"
	if line > 0 {
		s += fmt.Sprintf(" (line %d)", line)
	}
	return s
}

// lookupKey finds the key node of a plain dotted path (no list items or map entries) in
// the document, or nil.
func lookupKey(root *yaml.Node, path string) *yaml.Node {
	n, key := root, (*yaml.Node)(nil)
	for _, seg := range segments(path) {
		if n == nil || n.Kind != yaml.MappingNode || strings.ContainsAny(seg, "[*") {
			return nil
		}
		var next *yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == seg {
				key, next = n.Content[i], n.Content[i+1]
				break
			}
		}
		if next == nil {
			return nil
		}
		n = next
	}
	return key
}

// checkFollows warns about a key that may have been dedented out of the mapping just above
// it, where it would be valid too, so the document parses without error: k (in the
// mapping at path) follows the value of key prev on the very next line, and that value
// (or the last item of that list) is a mapping whose type has field k but does not set it.
// Example: a node's `butane:` dedented to the top level after the last node.
func (sc *shapeChecker) checkFollows(prev, prevVal *yaml.Node, prevType reflect.Type, k *yaml.Node, path string) {
	if prevType == nil || k.Line != lastLine(prevVal)+1 {
		return
	}
	target, tpath := prevVal, join(path, prev.Value)
	t := prevType
	if t.Kind() == reflect.Slice {
		if prevVal.Kind != yaml.SequenceNode || len(prevVal.Content) == 0 {
			return
		}
		target, t = prevVal.Content[len(prevVal.Content)-1], t.Elem()
		tpath = fmt.Sprintf("%s[%d]", tpath, len(prevVal.Content)-1)
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct || t == durationType || target.Kind != yaml.MappingNode || len(target.Content) < 2 {
		return
	}
	if _, ok := yamlFields(t)[k.Value]; !ok || hasKey(target, k.Value) {
		return
	}
	last := target.Content[len(target.Content)-2]
	sc.rep.Warnf(join(path, k.Value), "%q is set %s, on the line right after %s, which takes %q too: if it is meant for %s, indent it to %s like %q on line %d",
		k.Value, where(path), tpath, k.Value, tpath, spaces(last.Column-1), last.Value, last.Line)
}

// lastLine is the last line that n's tree starts a node on.
func lastLine(n *yaml.Node) int {
	l := n.Line
	if n.Kind == yaml.AliasNode {
		return l
	}
	for _, c := range n.Content {
		l = max(l, lastLine(c))
	}
	return l
}

// hasKey reports whether mapping m has key.
func hasKey(m *yaml.Node, key string) bool {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return true
		}
	}
	return false
}
