package rollout

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/etcdbake/etcdbake/spec"
)

// example is the example spec, parsed with defaults applied: the release running now.
func example(t *testing.T) *spec.Cluster {
	t.Helper()
	c, rep := spec.Parse(spec.Example)
	if c == nil || rep.HasErrors() {
		t.Fatalf("example spec: %s", rep.String())
	}
	return c
}

// changed is the example with one change applied, which must leave a valid spec: the
// checks are about specs an operator can actually publish.
func changed(t *testing.T, mutate func(*spec.Cluster)) *spec.Cluster {
	t.Helper()
	c := example(t)
	mutate(c)
	if rep := spec.Validate(c); rep.HasErrors() {
		t.Fatalf("the changed spec is not valid, so the case tests nothing: %s", rep.String())
	}
	return c
}

func violations(t *testing.T, err error) []Violation {
	t.Helper()
	var ce *ChangeError
	if !errors.As(err, &ce) {
		t.Fatalf("error is %T (%v), want *ChangeError", err, err)
	}
	return ce.Violations
}

func TestCheckChangeRefuses(t *testing.T) {
	node := func(name, addr, mac string) spec.Node { return spec.Node{Name: name, Address: addr, MAC: mac} }
	for _, tc := range []struct {
		name   string
		mutate func(*spec.Cluster)
		path   string // the first violation's path
		word   string // in its change or reason
		count  int    // violations in all
	}{
		{"name", func(c *spec.Cluster) { c.Name = "prod" }, "name", "partition GUIDs", 1},
		{"nodes added", func(c *spec.Cluster) {
			c.Nodes = append(c.Nodes, node("etcd-4", "10.88.0.14/24", ""), node("etcd-5", "10.88.0.15/24", ""))
		}, "nodes[3]", "membership changes are not a rollout", 2},
		{"nodes removed", func(c *spec.Cluster) { c.Nodes = c.Nodes[:1] }, "nodes", "membership changes are not a rollout", 2},
		{"node renamed", func(c *spec.Cluster) { c.Nodes[1].Name = "etcd-9" }, "nodes[1].name", "membership changes are not a rollout", 1},
		{"node replaced at the end", func(c *spec.Cluster) {
			c.Nodes = append(c.Nodes[:1], c.Nodes[2], node("etcd-4", "10.88.0.14/24", ""))
		}, "nodes", "removed", 2},
		{"address", func(c *spec.Cluster) { c.Nodes[1].Address = "10.88.0.22/24" }, "nodes[1].address", "peer URL (https://10.88.0.12:2380)", 1},
		{"address prefix length", func(c *spec.Cluster) {
			c.Nodes[1].Address = "10.88.0.12/25"
			for i := range c.Nodes {
				c.Nodes[i].Gateway = "10.88.0.1"
			}
		}, "nodes[0].gateway", "default route", 4},
		{"mac", func(c *spec.Cluster) { c.Nodes[2].MAC = "52:54:00:88:00:99" }, "nodes[2].mac", "NIC", 1},
		{"mac dropped", func(c *spec.Cluster) { c.Nodes[0].MAC = "" }, "nodes[0].mac", "NIC", 1},
		{"gateway", func(c *spec.Cluster) { c.Nodes[2].Gateway = "10.88.0.1" }, "nodes[2].gateway", "keep gateway unset", 1},
		{"token", func(c *spec.Cluster) { c.Etcd.Token = "other" }, "etcd.token", "cluster ID", 1},
		{"clientPort", func(c *spec.Cluster) { c.Etcd.ClientPort = 2479 }, "etcd.clientPort", "endpoint", 1},
		{"peerPort", func(c *spec.Cluster) { c.Etcd.PeerPort = 2480 }, "etcd.peerPort", "peer URL", 1},
		{"flannel network", func(c *spec.Cluster) { c.Flannel.Network = "10.245.0.0/16" }, "flannel.network", "lease", 1},
		{"flannel subnetLen", func(c *spec.Cluster) { c.Flannel.SubnetLen = 25 }, "flannel.subnetLen", "lease", 1},
		{"flannel backend", func(c *spec.Cluster) { c.Flannel.Backend, c.Flannel.VNI = "host-gw", 0 }, "flannel.backend", "lease", 1},
		{"flannel vni", func(c *spec.Cluster) { c.Flannel.VNI = 2 }, "flannel.vni", "VXLAN", 1},
		{"flannel prefix", func(c *spec.Cluster) { c.Flannel.Prefix = "/other/network" }, "flannel.prefix", "collide", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckChange(example(t), changed(t, tc.mutate))
			if err == nil {
				t.Fatal("allowed")
			}
			vs := violations(t, err)
			if len(vs) != tc.count {
				t.Errorf("%d violations, want %d:\n%v", len(vs), tc.count, err)
			}
			if vs[0].Path != tc.path || !strings.Contains(vs[0].String(), tc.word) {
				t.Errorf("first violation %q, want path %s and %q in it", vs[0], tc.path, tc.word)
			}
			if !strings.Contains(err.Error(), "\n  "+tc.path+": ") {
				t.Errorf("the message does not name %s:\n%v", tc.path, err)
			}
		})
	}
}

// TestCheckChangeAllows covers what a release is for: each change alone, then all at once.
func TestCheckChangeAllows(t *testing.T) {
	dur := func(d time.Duration) spec.Duration { return spec.Dur(d) }
	no := false
	allowed := map[string]func(*spec.Cluster){
		"etcd version":        func(c *spec.Cluster) { c.Etcd.Version = "v3.7.3" },
		"flannel version":     func(c *spec.Cluster) { c.Flannel.Version = "v0.28.8" },
		"leaf lifetime":       func(c *spec.Cluster) { c.PKI.LeafLifetime = dur(90 * 24 * time.Hour) },
		"renew before":        func(c *spec.Cluster) { c.PKI.RenewBefore = dur(10 * 24 * time.Hour) },
		"ca lifetime":         func(c *spec.Cluster) { c.PKI.CALifetime = dur(20 * 365 * 24 * time.Hour) },
		"key algorithm":       func(c *spec.Cluster) { c.PKI.Algorithm = "rsa-2048" },
		"organization":        func(c *spec.Cluster) { c.PKI.Organization = "ops" },
		"heartbeat":           func(c *spec.Cluster) { c.Etcd.HeartbeatInterval = dur(200 * time.Millisecond) },
		"election timeout":    func(c *spec.Cluster) { c.Etcd.ElectionTimeout = dur(3 * time.Second) },
		"snapshot count":      func(c *spec.Cluster) { c.Etcd.SnapshotCount = 50000 },
		"quota":               func(c *spec.Cluster) { c.Etcd.QuotaBackendBytes = 4 << 30 },
		"compaction":          func(c *spec.Cluster) { c.Etcd.AutoCompactionRetention = dur(2 * time.Hour) },
		"metrics port":        func(c *spec.Cluster) { c.Etcd.MetricsPort = 9381 },
		"extra SANs":          func(c *spec.Cluster) { c.Etcd.ExtraSANs = []string{"etcd.example.internal"} },
		"node extra SANs":     func(c *spec.Cluster) { c.Nodes[0].ExtraSANs = []string{"etcd-1.example.internal"} },
		"node dns":            func(c *spec.Cluster) { c.Nodes[1].DNS = []string{"10.88.0.1"} },
		"node butane":         func(c *spec.Cluster) { c.Nodes[2].Butane = "/tmp/etcd-3.bu" },
		"node order":          func(c *spec.Cluster) { slices.Reverse(c.Nodes) },
		"mac spelling":        func(c *spec.Cluster) { c.Nodes[0].MAC = strings.ReplaceAll(c.Nodes[0].MAC, ":", "-") },
		"time servers":        func(c *spec.Cluster) { c.Time.Servers = []string{"10.88.0.1"} },
		"max skew":            func(c *spec.Cluster) { c.Time.MaxSkew = dur(time.Second) },
		"ssh keys":            func(c *spec.Cluster) { c.SSH.AuthorizedKeys = []string{"ssh-ed25519 AAAA me@laptop"} },
		"butane path":         func(c *spec.Cluster) { c.Butane = "/tmp/extra.bu" },
		"butane overrides":    func(c *spec.Cluster) { c.Butane, c.ButaneOverrides = "/tmp/extra.bu", true },
		"binary sources":      func(c *spec.Cluster) { c.Binary.Sources = []string{spec.SourceGo} },
		"rollout timeout":     func(c *spec.Cluster) { c.Rollout.Timeout = dur(3 * time.Minute) },
		"flannel ipMasq":      func(c *spec.Cluster) { c.Flannel.IPMasq = &no },
		"flannel nftables":    func(c *spec.Cluster) { c.Flannel.NFTables = &no },
		"flannel overwrite":   func(c *spec.Cluster) { c.Flannel.Overwrite = true },
		"etcd release mirror": func(c *spec.Cluster) { c.Binary.EtcdReleaseURL = "https://mirror.example/etcd" },
	}
	for name, mutate := range allowed {
		t.Run(name, func(t *testing.T) {
			next := changed(t, mutate)
			if err := CheckChange(example(t), next); err != nil {
				t.Fatalf("refused: %v", err)
			}
		})
	}
	t.Run("all at once", func(t *testing.T) {
		next := changed(t, func(c *spec.Cluster) {
			for _, mutate := range allowed {
				mutate(c)
			}
		})
		if err := CheckChange(example(t), next); err != nil {
			t.Fatalf("refused: %v", err)
		}
	})
}

func TestCheckChangeReportsEveryViolationSorted(t *testing.T) {
	next := changed(t, func(c *spec.Cluster) {
		c.Flannel.Prefix = "/other/network"
		c.Etcd.Version = "v3.7.3" // allowed: not reported
		c.Nodes[2].Address = "10.88.0.23/24"
		c.Etcd.Token = "other"
		c.Nodes[0].MAC = "52:54:00:88:00:99"
	})
	err := CheckChange(example(t), next)
	var paths []string
	for _, v := range violations(t, err) {
		paths = append(paths, v.Path)
	}
	want := []string{"etcd.token", "flannel.prefix", "nodes[0].mac", "nodes[2].address"}
	if !slices.Equal(paths, want) {
		t.Fatalf("violations at %v, want %v:\n%v", paths, want, err)
	}
	for _, p := range want {
		if !strings.Contains(err.Error(), "\n  "+p+": ") {
			t.Errorf("the message lacks %s:\n%v", p, err)
		}
	}
}

func TestPathKeySortsIndicesAsNumbers(t *testing.T) {
	paths := []string{"nodes[10].mac", "nodes[2].address", "nodes", "etcd.token", "nodes[2].mac"}
	slices.SortFunc(paths, func(a, b string) int { return strings.Compare(pathKey(a), pathKey(b)) })
	want := []string{"etcd.token", "nodes", "nodes[2].address", "nodes[2].mac", "nodes[10].mac"}
	if !slices.Equal(paths, want) {
		t.Fatalf("sorted %v, want %v", paths, want)
	}
}

func TestCheckChangeNeedsBothSpecs(t *testing.T) {
	if err := CheckChange(nil, example(t)); err == nil {
		t.Fatal("no error without the running spec")
	}
}
