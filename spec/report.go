package spec

import (
	"fmt"
	"sort"
	"strings"
)

// Severity of a Problem.
type Severity int

const (
	// Error makes the spec unusable; nothing is written.
	Error Severity = iota
	// Warning is printed but does not stop the build.
	Warning
)

func (s Severity) String() string {
	if s == Warning {
		return "warning"
	}
	return "error"
}

// Problem is one finding about the spec, tied to a field path such as nodes[2].address.
type Problem struct {
	Path     string   `json:"path"`
	Line     int      `json:"line,omitempty"`
	Severity Severity `json:"-"`
	Message  string   `json:"message"`
}

func (p Problem) String() string {
	loc := p.Path
	if loc == "" {
		loc = "(spec)"
	}
	if p.Line > 0 {
		loc = fmt.Sprintf("%s (line %d)", loc, p.Line)
	}
	return fmt.Sprintf("%s: %s: %s", p.Severity, loc, p.Message)
}

// Report collects every problem found; validation never stops at the first one.
type Report struct {
	Problems []Problem
}

func (r *Report) add(sev Severity, path, format string, args ...any) {
	r.Problems = append(r.Problems, Problem{Path: path, Severity: sev, Message: fmt.Sprintf(format, args...)})
}

// Errorf records an error at path.
func (r *Report) Errorf(path, format string, args ...any) { r.add(Error, path, format, args...) }

// errorAt records an error at path on a known source line.
func (r *Report) errorAt(path string, line int, format string, args ...any) {
	r.Problems = append(r.Problems, Problem{Path: path, Line: line, Severity: Error, Message: fmt.Sprintf(format, args...)})
}

// Warnf records a warning at path.
func (r *Report) Warnf(path, format string, args ...any) { r.add(Warning, path, format, args...) }

// Merge appends the problems of o.
func (r *Report) Merge(o Report) { r.Problems = append(r.Problems, o.Problems...) }

// HasErrors reports whether any problem is an error.
func (r Report) HasErrors() bool {
	for _, p := range r.Problems {
		if p.Severity == Error {
			return true
		}
	}
	return false
}

// Errors returns only the error entries.
func (r Report) Errors() []Problem {
	var out []Problem
	for _, p := range r.Problems {
		if p.Severity == Error {
			out = append(out, p)
		}
	}
	return out
}

// attachLines fills in source lines for problems whose path (or a parent path) is known.
func (r *Report) attachLines(lines map[string]int) {
	for i := range r.Problems {
		p := &r.Problems[i]
		for path := p.Path; path != "" && p.Line == 0; path = parentPath(path) {
			p.Line = lines[path]
		}
	}
}

func parentPath(p string) string {
	i := strings.LastIndexAny(p, ".[")
	if i <= 0 {
		return ""
	}
	return p[:i]
}

// Sort orders problems by source line, then path, keeping errors before warnings on ties.
func (r *Report) Sort() {
	sort.SliceStable(r.Problems, func(i, j int) bool {
		a, b := r.Problems[i], r.Problems[j]
		if a.Line != b.Line {
			if a.Line == 0 || b.Line == 0 {
				return b.Line == 0
			}
			return a.Line < b.Line
		}
		return a.Path < b.Path
	})
}

func (r Report) String() string {
	var b strings.Builder
	for _, p := range r.Problems {
		b.WriteString(p.String())
		b.WriteByte('\n')
	}
	return b.String()
}

// InvalidError is returned when a spec has errors; it carries the whole report.
type InvalidError struct {
	Source string
	Report Report
}

func (e *InvalidError) Error() string {
	n := len(e.Report.Errors())
	return fmt.Sprintf("%s: %d problem(s) in the cluster spec:\n%s", e.Source, n, strings.TrimRight(e.Report.String(), "\n"))
}
