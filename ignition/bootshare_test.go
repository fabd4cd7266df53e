package ignition

import (
	"slices"
	"strings"
	"testing"

	"github.com/coreos/go-systemd/v22/unit"
)

// TestBootLaterUnitsAreOffTheChain checks the CPU shares during boot (issue 17): every
// unit of etcd's chain has bootFirst's share, every unit in BootLaterUnits gets the drop-in
// with the lowest share, and no unit of the chain waits for (After=) or pulls in
// (Requires=, Wants=, BindsTo=) one of them, so slowing them never slows the chain.
func TestBootLaterUnitsAreOffTheChain(t *testing.T) {
	c := exampleCluster(t)
	configs, err := Render(testInput(t, c))
	if err != nil {
		t.Fatal(err)
	}
	cfg := parseRendered(t, configs[c.Nodes[0].Name])
	chain := []string{FirewallUnit, PrefetchUnit, FirstbootUnit, EtcdUnit, ReadyUnit, FlannelUnit, "chrony.service", "chronyd.service"}
	later := map[string]string{} // unit -> its boot-later drop-in
	texts := map[string][]string{}
	for _, u := range cfg.Systemd.Units {
		if u.Contents != nil {
			texts[u.Name] = append(texts[u.Name], *u.Contents)
		}
		for _, d := range u.Dropins {
			if d.Contents == nil {
				continue
			}
			texts[u.Name] = append(texts[u.Name], *d.Contents)
			if d.Name == "10-etcdbake-boot-later.conf" {
				later[u.Name] = *d.Contents
			}
		}
	}
	weight := func(name string) string {
		w := ""
		for _, text := range texts[name] {
			opts, err := unit.DeserializeOptions(strings.NewReader(text))
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			for _, o := range opts {
				if o.Section == "Service" && o.Name == "StartupCPUWeight" {
					w = o.Value
				}
			}
		}
		return w
	}
	for _, name := range BootLaterUnits {
		if _, ok := later[name]; !ok {
			t.Errorf("%s: no boot-later drop-in", name)
		}
		if w := weight(name); w != "10" {
			t.Errorf("%s: StartupCPUWeight %q, want 10", name, w)
		}
	}
	if w := weight(SSHKeygenUnit); w != "10" {
		t.Errorf("%s: StartupCPUWeight %q, want 10", SSHKeygenUnit, w)
	}
	for _, name := range chain {
		if len(texts[name]) == 0 {
			t.Errorf("%s: not in the config", name)
			continue
		}
		if w := weight(name); w != "1000" {
			t.Errorf("%s: StartupCPUWeight %q, want bootFirst's 1000", name, w)
		}
		for _, text := range texts[name] {
			opts, _ := unit.DeserializeOptions(strings.NewReader(text))
			for _, o := range opts {
				if o.Section != "Unit" || !slices.Contains([]string{"After", "Requires", "Wants", "BindsTo", "Requisite"}, o.Name) {
					continue
				}
				for _, dep := range strings.Fields(o.Value) {
					if slices.Contains(BootLaterUnits, dep) || dep == SSHKeygenUnit {
						t.Errorf("%s: %s=%s, a unit with the boot-later share: the chain would wait for it", name, o.Name, dep)
					}
				}
			}
		}
	}
}
