package ignapply

import (
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strings"

	"github.com/coreos/ignition/v2/config/v3_4/types"

	"github.com/etcdbake/etcdbake/imagebuild/fstree"
)

// ---- systemd -------------------------------------------------------------------------

const (
	ignUnitDir    = "etc/systemd/system"
	ignPresetPath = "etc/systemd/system-preset/20-ignition.preset"
)

// ignUnitSearch is systemd 252's search path on Debian 12, without the runtime and
// generator directories (empty in an image).
var ignUnitSearch = []string{"etc/systemd/system", "usr/local/lib/systemd/system", "lib/systemd/system", "usr/lib/systemd/system"}

// writeUnitFile writes a unit or drop-in (a new root-owned 0644 file, renamed into place).
func (a *ignApplier) writeUnitFile(p string, contents string) error {
	rp, err := a.t.Resolve(p, false)
	if err != nil {
		return err
	}
	return a.newFile(rp, []byte(contents), "")
}

type ignPreset struct {
	unit      string
	enabled   bool
	instance  bool
	instances []string
}

// units is the systemd section: unit files, drop-ins and masks, the preset lines, then
// the enablement symlinks of the enabled units.
func (a *ignApplier) units(units []types.Unit) error {
	presets, err := a.writeUnits(units)
	if err != nil {
		return err
	}
	if err := a.applyPresets(presets); err != nil {
		return err
	}
	done := map[string]bool{}
	for _, u := range units {
		if u.Enabled == nil || !*u.Enabled || done[u.Name] {
			continue
		}
		done[u.Name] = true
		if err := a.enableUnit(u.Name, map[string]bool{}); err != nil {
			return err
		}
	}
	return nil
}

// writeUnits writes the units and drop-ins, masks and unmasks, and returns the preset
// lines to write, keyed by unit and state (instances of one template share a line).
func (a *ignApplier) writeUnits(units []types.Unit) (map[string]*ignPreset, error) {
	presets := map[string]*ignPreset{}
	for _, u := range units {
		for _, d := range u.Dropins {
			if d.Contents == nil {
				continue
			}
			if err := a.writeUnitFile(ignUnitDir+"/"+u.Name+".d/"+d.Name, *d.Contents); err != nil {
				return nil, fmt.Errorf("unit %s: drop-in %s: %w", u.Name, d.Name, err)
			}
		}
		if u.Contents != nil && *u.Contents != "" {
			if err := a.writeUnitFile(ignUnitDir+"/"+u.Name, *u.Contents); err != nil {
				return nil, fmt.Errorf("unit %s: %w", u.Name, err)
			}
		}
		if u.Enabled != nil {
			id := "disabled"
			if *u.Enabled {
				id = "enabled"
			}
			if strings.Contains(u.Name, "@") {
				tmpl, inst, err := ignInstance(u.Name)
				if err != nil {
					return nil, fmt.Errorf("unit %s: %w", u.Name, err)
				}
				key := tmpl + "-" + id
				if p, ok := presets[key]; ok {
					p.instances = append(p.instances, inst)
				} else {
					presets[key] = &ignPreset{unit: tmpl, enabled: *u.Enabled, instance: true, instances: []string{inst}}
				}
			} else {
				presets[u.Name+"-"+id] = &ignPreset{unit: u.Name, enabled: *u.Enabled}
			}
		}
		if u.Mask != nil {
			p, err := a.t.Resolve(ignUnitDir+"/"+u.Name, false)
			if err != nil {
				return nil, fmt.Errorf("unit %s: %w", u.Name, err)
			}
			if *u.Mask {
				if err := a.mkdirAll(path.Dir(p)); err != nil {
					return nil, fmt.Errorf("unit %s: %w", u.Name, err)
				}
				a.remove(p)
				if err := a.t.Put(&fstree.Entry{Path: p, Mode: fs.ModeSymlink | 0o777, Target: "/dev/null"}); err != nil {
					return nil, err
				}
			} else if e, ok := a.t.Lookup(p); ok && e.IsSymlink() && e.Target == "/dev/null" {
				a.remove(p)
			}
		}
	}
	return presets, nil
}

// applyPresets appends the preset lines, sorted by unit and state, and disables what a
// "disable" line names.
func (a *ignApplier) applyPresets(presets map[string]*ignPreset) error {
	keys := make([]string, 0, len(presets))
	for k := range presets {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		p := presets[k]
		line := p.unit
		if p.instance {
			line += " " + strings.Join(p.instances, " ")
		}
		if p.enabled {
			if err := a.appendPreset("enable " + line); err != nil {
				return err
			}
			continue
		}
		if p.instance {
			// Ignition asks systemctl about "name@.service inst", which fails, so it
			// writes nothing; the instances' symlinks still go.
			for _, inst := range p.instances {
				if err := a.disableUnit(ignInstanceName(p.unit, inst)); err != nil {
					return err
				}
			}
			continue
		}
		on, err := a.isEnabled(p.unit)
		if err != nil {
			return err
		}
		if !on {
			continue
		}
		if err := a.disableUnit(p.unit); err != nil {
			return err
		}
		if err := a.appendPreset("disable " + line); err != nil {
			return err
		}
	}
	return nil
}

// ignInstance splits echo@bar.service into echo@.service and bar, as Ignition does.
func ignInstance(name string) (string, string, error) {
	at := strings.Index(name, "@")
	dot := strings.LastIndex(name, ".")
	if at < 0 || dot < 0 || dot < at {
		return "", "", fmt.Errorf("invalid instantiated unit name %q", name)
	}
	return name[:at+1] + name[dot:], name[at+1 : dot], nil
}

func ignInstanceName(tmpl, inst string) string {
	at := strings.Index(tmpl, "@")
	return tmpl[:at+1] + inst + tmpl[at+1:]
}

func (a *ignApplier) appendPreset(line string) error {
	p, err := a.t.Resolve(ignPresetPath, false)
	if err != nil {
		return err
	}
	if e, ok := a.follow(p); ok {
		if !e.IsRegular() {
			return fmt.Errorf("/%s is not a regular file", ignPresetPath)
		}
		old, err := a.content(e)
		if err != nil {
			return err
		}
		a.setContent(e, append(append([]byte(nil), old...), line+"\n"...))
		return nil
	}
	if p, err = a.t.Resolve(p, true); err != nil {
		return err
	}
	return a.newFile(p, []byte(line+"\n"), "")
}

// ignUnit is a unit file found on the search path.
type ignUnit struct {
	path   string // as systemd names it, e.g. lib/systemd/system/chrony.service
	data   []byte
	masked bool
}

// findUnit looks name up as systemctl does; an instance falls back to its template.
func (a *ignApplier) findUnit(name string) (ignUnit, bool, error) {
	names := []string{name}
	if strings.Contains(name, "@") {
		if tmpl, inst, err := ignInstance(name); err == nil && inst != "" {
			names = append(names, tmpl)
		}
	}
	for _, n := range names {
		for _, dir := range ignUnitSearch {
			sp := dir + "/" + n
			rp, err := a.t.Resolve(sp, false)
			if err != nil {
				continue
			}
			e, ok := a.t.Lookup(rp)
			if !ok {
				continue
			}
			if e.IsSymlink() {
				if e.Target == "/dev/null" {
					return ignUnit{path: sp, masked: true}, true, nil
				}
				if e, ok = a.follow(rp); !ok {
					continue
				}
			}
			if !e.IsRegular() {
				continue
			}
			b, err := a.content(e)
			if err != nil {
				return ignUnit{}, false, err
			}
			return ignUnit{path: sp, data: b}, true, nil
		}
	}
	return ignUnit{}, false, nil
}

// ignInstall is a unit's [Install] section.
type ignInstall struct {
	wantedBy, requiredBy, upheldBy, alias, also []string
	defaultInstance                             string
}

func ignParseInstall(data []byte) ignInstall {
	var in ignInstall
	section := ""
	lines := strings.Split(string(data), "\n")
	for k := 0; k < len(lines); k++ {
		line := strings.TrimSpace(lines[k])
		for strings.HasSuffix(line, "\\") && k+1 < len(lines) {
			k++
			next := strings.TrimSpace(lines[k])
			if strings.HasPrefix(next, "#") || strings.HasPrefix(next, ";") {
				continue
			}
			line = strings.TrimSuffix(line, "\\") + " " + next
		}
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		if line[0] == '[' {
			section = strings.Trim(line, "[]")
			continue
		}
		if section != "Install" {
			continue
		}
		key, val, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		key, val = strings.TrimSpace(key), strings.TrimSpace(val)
		var list *[]string
		switch key {
		case "WantedBy":
			list = &in.wantedBy
		case "RequiredBy":
			list = &in.requiredBy
		case "UpheldBy":
			list = &in.upheldBy
		case "Alias":
			list = &in.alias
		case "Also":
			list = &in.also
		case "DefaultInstance":
			in.defaultInstance = val
			continue
		default:
			continue
		}
		if val == "" {
			*list = nil
			continue
		}
		*list = append(*list, strings.Fields(val)...)
	}
	return in
}

// ignSpecifiers expands the specifiers systemctl expands in [Install] for unit name.
func ignSpecifiers(s, name string) string {
	if !strings.Contains(s, "%") {
		return s
	}
	prefix, inst := strings.TrimSuffix(name, path.Ext(name)), ""
	if at := strings.Index(name, "@"); at >= 0 {
		prefix = name[:at]
		inst = strings.TrimSuffix(name[at+1:], path.Ext(name))
	}
	var b strings.Builder
	for k := 0; k < len(s); k++ {
		if s[k] != '%' || k+1 == len(s) {
			b.WriteByte(s[k])
			continue
		}
		k++
		switch s[k] {
		case 'n':
			b.WriteString(name)
		case 'N':
			b.WriteString(strings.TrimSuffix(name, path.Ext(name)))
		case 'p':
			b.WriteString(prefix)
		case 'i', 'I':
			b.WriteString(inst)
		case '%':
			b.WriteByte('%')
		default:
			b.WriteByte('%')
			b.WriteByte(s[k])
		}
	}
	return b.String()
}

// enableUnit creates the symlinks `systemctl enable name` would.
func (a *ignApplier) enableUnit(name string, visited map[string]bool) error {
	if visited[name] {
		return nil
	}
	visited[name] = true
	u, ok, err := a.findUnit(name)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("unit %s is enabled but there is no unit file for it in the image (/etc/systemd/system, /usr/local/lib/systemd/system, /lib/systemd/system, /usr/lib/systemd/system)", name)
	}
	if u.masked {
		return fmt.Errorf("unit %s is enabled but masked (/%s -> /dev/null)", name, u.path)
	}
	in := ignParseInstall(u.data)
	link := name
	if tmpl, inst, err := ignInstance(name); err == nil && inst == "" && tmpl == name {
		if in.defaultInstance == "" {
			return nil // a template without DefaultInstance: systemctl enables nothing
		}
		link = ignInstanceName(name, in.defaultInstance)
	}
	target := "/" + u.path
	for _, dep := range []struct {
		list   []string
		suffix string
	}{{in.wantedBy, ".wants"}, {in.requiredBy, ".requires"}, {in.upheldBy, ".upholds"}} {
		for _, t := range dep.list {
			t = ignSpecifiers(t, link)
			if err := a.symlink(ignUnitDir+"/"+t+dep.suffix+"/"+link, target, true); err != nil {
				return fmt.Errorf("enabling %s: %w", name, err)
			}
		}
	}
	for _, al := range in.alias {
		al = ignSpecifiers(al, link)
		if al == link {
			continue
		}
		if err := a.symlink(ignUnitDir+"/"+al, target, false); err != nil {
			return fmt.Errorf("enabling %s: %w", name, err)
		}
	}
	for _, also := range in.also {
		if err := a.enableUnit(ignSpecifiers(also, link), visited); err != nil {
			return err
		}
	}
	return nil
}

func (a *ignApplier) symlink(p, target string, force bool) error {
	rp, err := a.t.Resolve(p, false)
	if err != nil {
		return err
	}
	if e, ok := a.t.Lookup(rp); ok {
		switch {
		case e.IsSymlink() && e.Target == target:
			return nil
		case e.IsSymlink() && force:
		case e.IsSymlink():
			if x, ok := a.follow(rp); ok {
				if y, ok := a.follow(target); ok && x == y {
					return nil
				}
			}
			return fmt.Errorf("/%s already exists and points to %s, not %s", rp, e.Target, target)
		default:
			return fmt.Errorf("/%s already exists and is not a symlink", rp)
		}
		a.remove(rp)
	}
	if err := a.mkdirAll(path.Dir(rp)); err != nil {
		return err
	}
	return a.t.Put(&fstree.Entry{Path: rp, Mode: fs.ModeSymlink | 0o777, Target: target})
}

// enablementLinks lists the symlinks under etc/systemd/system that `systemctl disable`
// removes for the units in names: those named after one of them or pointing to one,
// except mask links.
func (a *ignApplier) enablementLinks(names map[string]bool) []string {
	dir, err := a.t.Resolve(ignUnitDir, true)
	if err != nil {
		return nil
	}
	var out []string
	for _, q := range a.t.Paths() {
		if !strings.HasPrefix(q, dir+"/") {
			continue
		}
		e, _ := a.t.Lookup(q)
		if !e.IsSymlink() || e.Target == "/dev/null" {
			continue
		}
		if names[path.Base(q)] || names[path.Base(e.Target)] {
			out = append(out, q)
		}
	}
	return out
}

// isEnabled answers as `systemctl is-enabled` succeeds: enabled, static or indirect.
func (a *ignApplier) isEnabled(name string) (bool, error) {
	u, ok, err := a.findUnit(name)
	if err != nil || !ok || u.masked {
		return false, err
	}
	if len(a.enablementLinks(map[string]bool{name: true})) > 0 {
		return true, nil
	}
	in := ignParseInstall(u.data)
	return len(in.wantedBy)+len(in.requiredBy)+len(in.upheldBy)+len(in.alias) == 0, nil
}

// disableUnit removes the symlinks `systemctl disable name` would (Also= included).
func (a *ignApplier) disableUnit(name string) error {
	names := map[string]bool{}
	var walk func(string) error
	walk = func(n string) error {
		if names[n] {
			return nil
		}
		names[n] = true
		u, ok, err := a.findUnit(n)
		if err != nil || !ok || u.masked {
			return err
		}
		for _, also := range ignParseInstall(u.data).also {
			if err := walk(ignSpecifiers(also, n)); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk(name); err != nil {
		return err
	}
	for _, q := range a.enablementLinks(names) {
		a.remove(q)
	}
	return nil
}
