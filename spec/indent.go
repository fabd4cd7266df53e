package spec

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"regexp"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// Mis-indented lines. The YAML library reports a broken indentation at the start of the
// enclosing mapping ("line 2: did not find expected key") and a key dedented out of its
// mapping often still parses, into a mapping that does not have it. Neither names the line
// to fix. The search below finds it by repair: it re-indents one line (alone, or with the
// lines nested under it) to each indentation the document uses, and keeps the repair after
// which the document parses and the moved key is a field of the mapping it lands in, with
// the fewest problems left. The repaired document gives the path, the parent mapping and a
// sibling key for the message ("indent it under pki: (line 49), to 2 spaces like
// "caLifetime" on line 51"). Repairs are only used for messages; Parse never accepts a
// document it had to repair.

const (
	// diagnoseMaxBytes and diagnoseMaxLines bound the documents searched: a spec is a few
	// hundred lines; larger input gets the YAML library's message with our line number.
	diagnoseMaxBytes = 128 << 10
	diagnoseMaxLines = 5000
	// repairBudget bounds the bytes of YAML parsed per diagnosis: thousands of parses of
	// a spec, about 0.1 s.
	repairBudget = 4 << 20
	// maxRepairs is the most mis-indented lines reported in one document.
	maxRepairs = 8
)

// srcLines is a document split at "\n" (a "\r" before it stays on the line).
type srcLines []string

func splitLines(data []byte) srcLines { return strings.Split(string(data), "\n") }

func (s srcLines) bytes() []byte { return []byte(strings.Join(s, "\n")) }

// prefix is the document's first n lines.
func (s srcLines) prefix(n int) []byte {
	if n <= 0 {
		return nil
	}
	return []byte(strings.Join(s[:n], "\n") + "\n")
}

// indentOf returns the width of line's leading blanks in bytes, whether they hold a tab,
// and whether the line has content (it is neither blank nor only a comment).
func indentOf(line string) (width int, tab, content bool) {
	for width < len(line) && (line[width] == ' ' || line[width] == '\t') {
		tab = tab || line[width] == '\t'
		width++
	}
	rest := strings.TrimRight(line[width:], "\r")
	return width, tab, rest != "" && rest[0] != '#'
}

// isItem reports whether the line's content starts a list item ("- ").
func isItem(line string) bool {
	w, _, _ := indentOf(line)
	rest := line[w:]
	return rest == "-" || strings.HasPrefix(rest, "- ") || strings.HasPrefix(rest, "-\t")
}

// syntaxOK reports whether every document in data parses.
func syntaxOK(data []byte) bool {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var n yaml.Node
		err := dec.Decode(&n)
		if errors.Is(err, io.EOF) {
			return true
		}
		if err != nil {
			return false
		}
	}
}

// repairer holds the budget of one diagnosis.
type repairer struct {
	left int // bytes it may still parse
}

// ok is syntaxOK, charged to the budget.
func (rp *repairer) ok(data []byte) bool {
	rp.left -= len(data) + 1
	return syntaxOK(data)
}

// brokenLine returns the line (1-based) at which the document stops parsing: the lines
// before it parse, every longer prefix does not. 0 when the whole document parses.
func (rp *repairer) brokenLine(s srcLines) int {
	n, data := len(s), s.bytes()
	if rp.ok(data) {
		return 0
	}
	if n <= 400 && len(data) <= 32<<10 {
		for j := n - 1; j > 0; j-- {
			if rp.ok(s.prefix(j)) {
				return j + 1
			}
		}
		return 1
	}
	// Long documents: bisect (exact unless a flow collection or quoted text spans lines).
	lo, hi := 0, n
	for hi-lo > 1 {
		mid := (lo + hi) / 2
		if rp.ok(s.prefix(mid)) {
			lo = mid
		} else {
			hi = mid
		}
	}
	return hi
}

// prevContent returns the last line with content before line (1-based), or 0.
func (s srcLines) prevContent(line int) int {
	for j := line - 1; j >= 1; j-- {
		if j <= len(s) {
			if _, _, c := indentOf(s[j-1]); c {
				return j
			}
		}
	}
	return 0
}

// columns returns the indentations the document uses (line starts, and the content after
// "- " of list items), nearest to from first, at most 10.
func (s srcLines) columns(from int) []int {
	seen := map[int]bool{0: true}
	for _, l := range s {
		w, tab, content := indentOf(l)
		if !content || tab {
			continue
		}
		seen[w] = true
		for rest := l[w:]; strings.HasPrefix(rest, "- "); {
			k := len(rest) - len(strings.TrimLeft(rest[1:], " ")) + w
			w, rest = k, l[k:]
			seen[w] = true
		}
	}
	cols := make([]int, 0, len(seen))
	for c := range seen {
		cols = append(cols, c)
	}
	sort.Slice(cols, func(i, j int) bool {
		di, dj := abs(cols[i]-from), abs(cols[j]-from)
		if di != dj {
			return di < dj
		}
		return cols[i] < cols[j]
	})
	return cols[:min(len(cols), 10)]
}

// shift re-indents line (1-based) to width to; with subtree, the lines nested under it
// (more indented, up to the next line with content that is not) move by the same amount.
func (s srcLines) shift(line, to int, subtree bool) (srcLines, bool) {
	i := line - 1
	w, tab, _ := indentOf(s[i])
	if subtree && tab {
		return nil, false
	}
	out := append(srcLines(nil), s...)
	out[i] = strings.Repeat(" ", to) + s[i][w:]
	if !subtree {
		return out, true
	}
	delta, moved := to-w, false
	for j := i + 1; j < len(s); j++ {
		wj, tabj, content := indentOf(s[j])
		if !content {
			continue
		}
		if wj <= w {
			break
		}
		if tabj || wj+delta < 0 {
			return nil, false
		}
		out[j] = strings.Repeat(" ", wj+delta) + s[j][wj:]
		moved = true
	}
	return out, moved
}

// repair is one re-indented line and what the document looks like after it.
type repair struct {
	line, from, to int
	tab, subtree   bool
	next           srcLines
	broken         int  // the line where next stops parsing; 0 when it all parses
	unknown        bool // the moved key is not a field where it lands
	errs           int  // shape errors of next (of its parsing part)
	root           *yaml.Node
	sc             *shapeChecker
}

// better orders repairs: the one that parses furthest, then the one that puts the key
// where it is a field, then the fewest shape errors, then the line alone before its
// subtree, then the smallest move.
func (r *repair) better(o *repair) bool {
	rb, ob := r.broken, o.broken
	if rb == 0 {
		rb = 1 << 30
	}
	if ob == 0 {
		ob = 1 << 30
	}
	switch {
	case rb != ob:
		return rb > ob
	case r.unknown != o.unknown:
		return !r.unknown
	case r.errs != o.errs:
		return r.errs < o.errs
	case r.subtree != o.subtree:
		return !r.subtree
	}
	return abs(r.to-r.from) < abs(o.to-o.from)
}

// try evaluates re-indenting line to width to. mustPass is the line the document has to
// parse beyond (0: it must parse whole).
func (rp *repairer) try(s srcLines, line, to int, subtree bool, mustPass int) *repair {
	next, ok := s.shift(line, to, subtree)
	if !ok || rp.left <= 0 {
		return nil
	}
	r := &repair{line: line, to: to, subtree: subtree, next: next}
	r.from, r.tab, _ = indentOf(s[line-1])
	data := next.bytes()
	if !rp.ok(data) {
		if mustPass == 0 || !rp.ok(next.prefix(mustPass)) {
			return nil
		}
		r.broken = rp.brokenLine(next)
		data = next.prefix(r.broken - 1)
	}
	rp.left -= len(data)
	root, err := decodeRoot(data)
	if err != nil || root.Kind != yaml.MappingNode {
		return nil
	}
	sc := newShapeChecker(root)
	sc.check(root, reflect.TypeOf(Cluster{}), "", "")
	for _, u := range sc.unknown {
		if u.line == line {
			// The key lands in a mapping that does not have it either: for a document
			// with syntax errors, that can still be the best repair (the key is then
			// reported as unknown too); not for one that parses.
			if mustPass == 0 {
				return nil
			}
			r.unknown = true
		}
	}
	if _, ok := findSubject(root, next, line); !ok {
		return nil
	}
	r.errs, r.root, r.sc = len(sc.rep.Errors()), root, sc
	return r
}

// best returns the best repair of any of lines, or nil.
func (rp *repairer) best(s srcLines, lines []int, mustPass int, accept func(*repair) bool) *repair {
	var best *repair
	for _, line := range lines {
		if line < 1 || line > len(s) {
			continue
		}
		from, tab, content := indentOf(s[line-1])
		if !content {
			continue
		}
		for _, to := range s.columns(from) {
			if to == from && !tab {
				continue
			}
			for _, subtree := range []bool{false, true} {
				r := rp.try(s, line, to, subtree, mustPass)
				if r != nil && accept(r) && (best == nil || r.better(best)) {
					best = r
				}
			}
		}
	}
	return best
}

// subject is what a repaired line holds, for the message.
type subject struct {
	name        string // "\"subnetLen\"" or "the list item"
	path        string // its field path in the repaired document
	parent      string // the path of the mapping or list it is in
	parentLine  int
	sibling     string // another key or item of the same parent, nearest first
	siblingLine int
}

// findSubject finds the key or list item that starts line in the repaired document.
func findSubject(root *yaml.Node, s srcLines, line int) (subject, bool) {
	item := isItem(s[line-1])
	var found subject
	var ok bool
	var walk func(n *yaml.Node, path string, pline int)
	walk = func(n *yaml.Node, path string, pline int) {
		switch {
		case ok:
		case n.Kind == yaml.MappingNode:
			for i := 0; i+1 < len(n.Content) && !ok; i += 2 {
				k := n.Content[i]
				p := join(path, k.Value)
				if !item && k.Line == line {
					found, ok = subject{name: fmt.Sprintf("%q", k.Value), path: p, parent: path, parentLine: pline}, true
					for j := 0; j+1 < len(n.Content); j += 2 {
						if o := n.Content[j]; j != i && o.Line != line && (found.siblingLine == 0 || abs(o.Line-line) < abs(found.siblingLine-line)) {
							found.sibling, found.siblingLine = fmt.Sprintf("%q", o.Value), o.Line
						}
					}
					return
				}
				walk(n.Content[i+1], p, k.Line)
			}
		case n.Kind == yaml.SequenceNode:
			for i, e := range n.Content {
				p := fmt.Sprintf("%s[%d]", path, i)
				if item && e.Line == line {
					found, ok = subject{name: "the list item", path: p, parent: path, parentLine: pline}, true
					for j, o := range n.Content {
						if j != i && o.Line != line && (found.siblingLine == 0 || abs(o.Line-line) < abs(found.siblingLine-line)) {
							found.sibling, found.siblingLine = "the item", o.Line
						}
					}
					return
				}
				walk(e, p, e.Line)
			}
		}
	}
	walk(root, "", 0)
	return found, ok
}

// advice says how to re-indent: "indent it under pki: (line 49), to 2 spaces like
// "caLifetime" on line 51", "dedent it to the top level (no indentation)".
func (r *repair) advice(sub subject) string {
	like := ""
	if sub.siblingLine > 0 {
		like = fmt.Sprintf(" like %s on line %d", sub.sibling, sub.siblingLine)
	}
	if sub.parent == "" && !strings.HasPrefix(sub.path, "[") {
		if r.to == 0 {
			if r.tab {
				return "remove the indentation: it belongs at the top level"
			}
			return "dedent it to the top level (no indentation)"
		}
	}
	parent := "the top level"
	if sub.parent != "" {
		parent = sub.parent + ":"
		if strings.HasSuffix(sub.parent, "]") {
			parent = "the list item " + sub.parent
		}
		if sub.parentLine > 0 {
			parent += fmt.Sprintf(" (line %d)", sub.parentLine)
		}
	}
	switch {
	case r.tab:
		return fmt.Sprintf("indent it with %s instead, under %s%s", spaces(r.to), parent, like)
	case r.to > r.from:
		return fmt.Sprintf("indent it under %s, to %s%s", parent, spaces(r.to), like)
	default:
		return fmt.Sprintf("dedent it to %s, under %s%s", spaces(r.to), parent, like)
	}
}

func spaces(n int) string {
	if n == 1 {
		return "1 space"
	}
	return fmt.Sprintf("%d spaces", n)
}

// tooBig reports whether data is beyond what the repair search takes on.
func tooBig(data []byte) bool {
	return len(data) > diagnoseMaxBytes || bytes.Count(data, []byte("\n")) > diagnoseMaxLines
}

// diagnoseSyntax reports a document that does not parse: at the mis-indented line with
// the fix when a repair is found (then the repaired document's other problems follow),
// else the YAML library's message at the line where parsing stops.
func diagnoseSyntax(data []byte, yerr error) Report {
	var rep Report
	msg := yamlMsg(yerr)
	if tooBig(data) {
		rep.Errorf("", "not valid YAML: %s", msg)
		return rep
	}
	s := splitLines(data)
	rp := &repairer{left: repairBudget}
	broken := rp.brokenLine(s)
	for range maxRepairs {
		if broken == 0 {
			break
		}
		prev := s.prevContent(broken)
		lines := []int{broken, prev}
		for j := prev + 1; j < broken; j++ {
			if _, tab, c := indentOf(s[j-1]); tab && c {
				lines = append(lines, j)
			}
		}
		r := rp.best(s, lines, broken, func(*repair) bool { return true })
		if r == nil {
			break
		}
		sub, _ := findSubject(r.root, r.next, r.line)
		if r.tab {
			rep.errorAt(sub.path, r.line, "not valid YAML: tabs are not allowed in YAML indentation, line %d: %s", r.line, r.advice(sub))
		} else {
			rep.errorAt(sub.path, r.line, "not valid YAML: %s is indented %s: %s", sub.name, spaces(r.from), r.advice(sub))
		}
		s, broken = r.next, r.broken
	}
	switch {
	case broken == 0 && len(rep.Problems) > 0:
		// Every mis-indented line was found: add what else is wrong with the document.
		_, rest := parse(s.bytes(), true)
		rep.Merge(rest)
		rep.Sort()
		return rep
	case broken == 0: // the parser and the line search disagree; not seen
		rep.Errorf("", "not valid YAML: %s", msg)
		return rep
	case len(rep.Problems) > 0:
		// The line where the repaired document breaks has its own message.
		if _, err := decodeRoot(s.bytes()); err != nil {
			msg = yamlMsg(err)
		}
	}
	line := broken
	if line > len(s) {
		line = len(s)
	}
	for j := max(s.prevContent(broken), 1); j <= line; j++ {
		if _, tab, c := indentOf(s[j-1]); tab && (c || j == line) {
			fix := "indent with spaces"
			if !c {
				fix = "the line holds only blanks: make it empty"
			}
			rep.errorAt("", j, "not valid YAML: tabs are not allowed in YAML indentation, line %d: %s", j, fix)
			rep.Sort()
			return rep
		}
	}
	msg = yamlLineRE.ReplaceAllString(msg, "")
	if q := unclosedQuote(s[line-1]); q != 0 {
		rep.errorAt("", line, "not valid YAML: the value quoted with %c on this line has no closing %c", q, q)
		return rep
	}
	if strings.Contains(msg, "indent") || strings.Contains(msg, "expected key") || strings.Contains(msg, "mapping values are not allowed") || strings.Contains(msg, "'-' indicator") {
		if prev := s.prevContent(line); prev > 0 {
			msg += fmt.Sprintf(" (check the indentation of this line and of line %d above it)", prev)
		}
	}
	rep.errorAt("", line, "not valid YAML: %s", msg)
	rep.Sort()
	return rep
}

var yamlLineRE = regexp.MustCompile(`^line \d+: `)

// diagnoseShape looks for the re-indentation that makes an unknown key known or a
// structural error go away (a key given twice, a value of the wrong kind). When it finds
// one, the report has each re-indented key at its line with the fix, then what else is
// wrong with the repaired document; ok is false when no such line is found.
func diagnoseShape(data []byte, sc *shapeChecker) (Report, bool) {
	if tooBig(data) {
		return Report{}, false
	}
	var rep Report
	s := splitLines(data)
	rp := &repairer{left: repairBudget}
	suspects, errs := sc.suspects, len(sc.rep.Errors())
	for range maxRepairs {
		var r *repair
		var u suspect
		for _, u = range suspects {
			r = rp.best(s, []int{u.line}, 0, func(r *repair) bool { return r.errs < errs })
			if r != nil {
				break
			}
		}
		if r == nil {
			break
		}
		sub, _ := findSubject(r.root, r.next, r.line)
		if u.unknown {
			rep.errorAt(u.path, u.line, "unknown field %q %s: %s", u.key, where(parentPath(u.path)), r.advice(sub))
		} else {
			rep.errorAt(u.path, u.line, "%s; %s", u.msg, r.advice(sub))
		}
		s, suspects, errs = r.next, r.sc.suspects, r.errs
	}
	if len(rep.Problems) == 0 {
		return Report{}, false
	}
	_, rest := parse(s.bytes(), false)
	rep.Merge(rest)
	rep.Sort()
	return rep, true
}

// unclosedQuote returns the quote character of a quoted value that starts on line and
// does not end there, or 0.
func unclosedQuote(line string) byte {
	var open byte
	prev := byte(':') // the line start may start a value
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case open == '"' && c == '\\':
			i++
		case open != 0 && c == open:
			if open == '\'' && i+1 < len(line) && line[i+1] == '\'' {
				i++
				continue
			}
			open = 0
		case open != 0:
		case c == '#' && (i == 0 || line[i-1] == ' ' || line[i-1] == '\t'):
			return 0
		case (c == '"' || c == '\'') && strings.IndexByte(":-[{,", prev) >= 0:
			open = c
		}
		if c != ' ' && c != '\t' {
			prev = c
		}
	}
	return open
}
