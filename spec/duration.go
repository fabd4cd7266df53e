package spec

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Duration is a duration written as text in the spec: Go's syntax ("250ms", "1h30m") plus
// whole days ("30d") and years of 365 days ("10y"). A value that does not parse is kept
// as written so validation can report it with its field path instead of stopping the
// decoder at the first one.
type Duration struct {
	Raw string
	D   time.Duration
	Err error
}

// Dur returns a parsed Duration for d (used for defaults and in tests).
func Dur(d time.Duration) Duration { return Duration{Raw: FormatDuration(d), D: d} }

// IsZero reports whether the field was left out.
func (d Duration) IsZero() bool { return d.Raw == "" && d.D == 0 && d.Err == nil }

// ParseDuration parses the spec's duration syntax.
func ParseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	for _, u := range []struct {
		suffix string
		unit   time.Duration
	}{{"d", 24 * time.Hour}, {"y", 365 * 24 * time.Hour}} {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			v, err := strconv.ParseUint(n, 10, 32)
			if err != nil {
				return 0, fmt.Errorf("%q is not a duration: use a whole number before %q, or Go syntax such as 8760h", s, u.suffix)
			}
			return time.Duration(v) * u.unit, nil
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration: write e.g. 500ms, 2m, 720h, 30d or 10y", s)
	}
	if d < 0 {
		return 0, fmt.Errorf("%q is negative: durations must be zero or more", s)
	}
	return d, nil
}

// FormatDuration writes d in the shortest spec syntax that reads back exactly.
func FormatDuration(d time.Duration) string {
	const day = 24 * time.Hour
	switch {
	case d == 0:
		return "0s"
	case d%(365*day) == 0:
		return fmt.Sprintf("%dy", d/(365*day))
	case d%day == 0:
		return fmt.Sprintf("%dd", d/day)
	}
	return d.String()
}

func (d *Duration) set(s string) {
	d.Raw = s
	d.D, d.Err = ParseDuration(s)
}

// UnmarshalYAML accepts a string (or a bare number of seconds is refused with a hint).
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		d.Raw, d.Err = "", fmt.Errorf("expected a duration such as 500ms or 30d, found a %s", kindName(n.Kind))
		return nil
	}
	if n.Tag == "!!int" || n.Tag == "!!float" {
		d.Raw, d.Err = n.Value, fmt.Errorf("%q has no unit: write e.g. %ss or %sms", n.Value, n.Value, n.Value)
		return nil
	}
	d.set(n.Value)
	return nil
}

// MarshalYAML writes the duration as text.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// MarshalJSON writes the duration as text.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// UnmarshalJSON reads the text form (node.json is written by etcdbake, so errors are real).
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	d.set(s)
	return d.Err
}

func (d Duration) String() string {
	if d.Raw != "" {
		return d.Raw
	}
	return FormatDuration(d.D)
}

func kindName(k yaml.Kind) string {
	switch k {
	case yaml.MappingNode:
		return "mapping"
	case yaml.SequenceNode:
		return "list"
	case yaml.AliasNode:
		return "alias"
	}
	return "scalar"
}
