package spec

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Load reads, decodes, defaults and validates the spec at path. The returned report holds
// every problem found (warnings too); err is an *InvalidError when the report has errors,
// or an I/O error. Relative Butane paths are resolved against the spec's directory.
func Load(path string) (*Cluster, Report, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, Report{}, fmt.Errorf("spec file %s does not exist: run `etcdbake init -f %s` to write an example, or pass -f FILE", path, path)
		}
		return nil, Report{}, fmt.Errorf("reading spec: %w", err)
	}
	c, rep := Parse(data)
	if rep.HasErrors() {
		return nil, rep, &InvalidError{Source: path, Report: rep}
	}
	c.resolvePaths(filepath.Dir(path))
	return c, rep, nil
}

func (c *Cluster) resolvePaths(dir string) {
	abs := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(dir, p)
	}
	c.Butane = abs(c.Butane)
	for i := range c.Nodes {
		c.Nodes[i].Butane = abs(c.Nodes[i].Butane)
	}
	for k, f := range c.Binary.Files {
		f.Path = abs(f.Path)
		c.Binary.Files[k] = f
	}
	if t := c.Backup.Target; t != nil {
		t.CredentialsFile, t.CA = abs(t.CredentialsFile), abs(t.CA)
	}
}

// Parse decodes data strictly, applies defaults and validates. The cluster is nil when
// the document could not be decoded at all; otherwise it is returned with defaults
// applied even if the report has errors (callers must check the report).
//
// When the YAML does not parse, or parses into keys the schema does not know, Parse looks
// for the mis-indented line behind it (indent.go) and reports that line with the fix
// ("indent it under pki:") instead of the YAML library's line, which is often the start of
// the enclosing mapping.
func Parse(data []byte) (*Cluster, Report) { return parse(data, true) }

// parse is Parse; diagnose enables the search for mis-indented lines (off when parsing a
// document that search has already repaired).
func parse(data []byte, diagnose bool) (*Cluster, Report) {
	var rep Report
	root, err := decodeRoot(data)
	switch {
	case errors.Is(err, errEmpty):
		rep.Errorf("", "the spec is empty: run `etcdbake init` for an example")
		return nil, rep
	case errors.Is(err, errManyDocs):
		rep.Errorf("", "the file holds more than one YAML document: keep one cluster per file")
		return nil, rep
	case err != nil:
		if diagnose {
			return nil, diagnoseSyntax(data, err)
		}
		rep.Errorf("", "not valid YAML: %v", yamlMsg(err))
		return nil, rep
	}
	if root.Kind != yaml.MappingNode {
		rep.Errorf("", "the spec must be a mapping with apiVersion, kind, name and nodes")
		return nil, rep
	}
	// The version comes first: a spec of another version is not decoded further.
	if v := scalarField(root, "apiVersion"); v != APIVersion {
		if v == "" {
			rep.Errorf("apiVersion", "missing: add `apiVersion: %s`", APIVersion)
		} else {
			rep.Errorf("apiVersion", "%q is not supported: this etcdbake reads %s", v, APIVersion)
		}
	}
	if k := scalarField(root, "kind"); k != Kind {
		rep.Errorf("kind", "must be %q, found %q", Kind, k)
	}
	if rep.HasErrors() {
		rep.attachLines(map[string]int{"apiVersion": root.Line, "kind": root.Line})
		return nil, rep
	}

	sc := newShapeChecker(root)
	sc.check(root, reflect.TypeOf(Cluster{}), "", "")
	if sc.rep.HasErrors() {
		if diagnose && len(sc.suspects) > 0 {
			if r, ok := diagnoseShape(data, sc); ok {
				return nil, r
			}
		}
		sc.rep.attachLines(sc.lines)
		sc.rep.Sort()
		return nil, sc.rep
	}
	var c Cluster
	if err := root.Decode(&c); err != nil {
		// the shape check mirrors the decoder; reaching this is a bug, but say what failed.
		rep.Errorf("", "cannot decode spec: %v", yamlMsg(err))
		return nil, rep
	}
	c.ApplyDefaults()
	rep.Merge(sc.rep) // warnings
	rep.Merge(Validate(&c))
	rep.attachLines(sc.lines)
	rep.Sort()
	return &c, rep
}

var (
	errEmpty    = errors.New("empty document")
	errManyDocs = errors.New("more than one document")
)

// decodeRoot decodes the one YAML document in data and returns its top node. The error is
// errEmpty, errManyDocs or the YAML library's syntax error (also for a syntax error in a
// second document).
func decodeRoot(data []byte) (*yaml.Node, error) {
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errEmpty
		}
		return nil, err
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, errManyDocs
	} else if !errors.Is(err, io.EOF) {
		return nil, err
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	return root, nil
}

func scalarField(m *yaml.Node, key string) string {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key && m.Content[i+1].Kind == yaml.ScalarNode {
			return m.Content[i+1].Value
		}
	}
	return ""
}

var durationType = reflect.TypeOf(Duration{})

// unknownKey is a key the shape check did not find in the schema.
type unknownKey struct {
	path string // where it was found, e.g. time.pki
	key  string
	line int
}

// suspect is a structural error of the shape check, which a mis-indented line can cause:
// an unknown key (unknown is true), a key given twice, a value of the wrong kind.
type suspect struct {
	unknownKey
	unknown bool
	msg     string
}

// shapeChecker walks the YAML tree against the Go type, reporting unknown keys, duplicate
// keys and values of the wrong kind, each with its field path, and recording the line of
// every path for later messages.
type shapeChecker struct {
	root     *yaml.Node
	lines    map[string]int
	rep      Report
	unknown  []unknownKey
	suspects []suspect
}

// structural records a structural error at path, whose key is on line.
func (sc *shapeChecker) structural(path string, line int, format string, args ...any) {
	sc.rep.Errorf(path, format, args...)
	sc.suspects = append(sc.suspects, suspect{unknownKey: unknownKey{path: path, line: line}, msg: fmt.Sprintf(format, args...)})
}

func newShapeChecker(root *yaml.Node) *shapeChecker {
	return &shapeChecker{root: root, lines: map[string]int{}}
}

// check checks n against t. path is the field path (nodes[2].address); tpath is the same
// path in the schema (nodes[].address, binaries.files.*.path).
func (sc *shapeChecker) check(n *yaml.Node, t reflect.Type, path, tpath string) {
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	rep := &sc.rep
	keyLine, ok := sc.lines[path] // the line of the key whose value n is
	if !ok {
		keyLine = n.Line
	}
	sc.lines[path] = n.Line
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if n.Tag == "!!null" {
		return
	}
	switch {
	case t == durationType:
		return // Duration records its own parse errors for validation
	case t.Kind() == reflect.Struct:
		if n.Kind != yaml.MappingNode {
			sc.structural(path, keyLine, "expected a mapping, found a %s", kindName(n.Kind))
			return
		}
		fields := yamlFields(t)
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := join(path, k.Value)
			sc.lines[p] = k.Line
			if seen[k.Value] {
				sc.structural(p, k.Line, "key given twice: keep one")
				continue
			}
			seen[k.Value] = true
			f, ok := fields[k.Value]
			if !ok {
				u := unknownKey{path: p, key: k.Value, line: k.Line}
				sc.unknown = append(sc.unknown, u)
				sc.suspects = append(sc.suspects, suspect{unknownKey: u, unknown: true})
				rep.Errorf(p, "unknown field %q%s", k.Value, sc.advice(k.Value, path, tpath, fields))
				continue
			}
			sc.check(v, f, p, join(tpath, k.Value))
			if i >= 2 {
				sc.checkFollows(n.Content[i-2], n.Content[i-1], fields[n.Content[i-2].Value], k, path)
			}
		}
	case t.Kind() == reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			sc.structural(path, keyLine, "expected a list, found a %s", kindName(n.Kind))
			return
		}
		for i, e := range n.Content {
			sc.check(e, t.Elem(), fmt.Sprintf("%s[%d]", path, i), tpath+"[]")
		}
	case t.Kind() == reflect.Map:
		if n.Kind != yaml.MappingNode {
			sc.structural(path, keyLine, "expected a mapping, found a %s", kindName(n.Kind))
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			p := join(path, n.Content[i].Value)
			sc.lines[p] = n.Content[i].Line
			sc.check(n.Content[i+1], t.Elem(), p, join(tpath, "*"))
		}
	default:
		if n.Kind != yaml.ScalarNode {
			sc.structural(path, keyLine, "expected a single value, found a %s", kindName(n.Kind))
			return
		}
		switch t.Kind() {
		case reflect.Int, reflect.Int64:
			if _, err := strconv.ParseInt(n.Value, 0, 64); err != nil || n.Tag != "!!int" {
				rep.Errorf(path, "%q is not a whole number", n.Value)
			}
		case reflect.Bool:
			if n.Tag != "!!bool" {
				rep.Errorf(path, "%q is not true or false", n.Value)
			}
		case reflect.String:
			if n.Tag != "!!str" && n.Tag != "!!int" && n.Tag != "!!float" && n.Tag != "!!bool" {
				rep.Errorf(path, "expected text, found %s", n.Tag)
			}
		}
	}
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func yamlFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		out[name] = f.Type
	}
	return out
}

// advice is the end of an unknown-field message: a field of the same mapping that differs
// only in case; else the mapping elsewhere in the schema that has this field, closest in
// nesting to where it was found ("move it under pki: (line 49)"); else a field with a small typo;
// else "remove it".
func (sc *shapeChecker) advice(key, parent, tparent string, fields map[string]reflect.Type) string {
	for name := range fields {
		if strings.EqualFold(name, key) {
			return fmt.Sprintf(": did you mean %q?", name)
		}
	}
	if homes := closestHomes(key, tparent); len(homes) > 0 {
		names := make([]string, len(homes))
		for i, h := range homes {
			if h == "" {
				names[i] = "to the top level"
			} else {
				names[i] = "under " + sc.describeHome(h)
			}
		}
		return fmt.Sprintf(" %s: move it %s", where(parent), strings.Join(names, " or "))
	}
	best, bestD := "", 3
	for name := range fields {
		if d := editDistance(strings.ToLower(key), strings.ToLower(name)); d < bestD || (d == bestD && name < best) {
			best, bestD = name, d
		}
	}
	if best != "" {
		return fmt.Sprintf(": did you mean %q?", best)
	}
	return ": remove it (see the spec reference in README.md)"
}

// where names the mapping at path for a message: "at the top level", "in pki".
func where(path string) string {
	if path == "" {
		return "at the top level"
	}
	return "in " + path
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

func yamlMsg(err error) string {
	return strings.TrimPrefix(err.Error(), "yaml: ")
}
