package spec

import "testing"

func TestExampleIsValid(t *testing.T) {
	c, rep := Parse(Example)
	if c == nil || rep.HasErrors() || len(rep.Problems) != 0 {
		t.Fatalf("built-in example has problems:\n%s", rep.String())
	}
	if len(c.Nodes) != 3 || c.Etcd.Version != "v3.6.16" || c.Flannel.Version != "v0.28.7" {
		t.Fatalf("example pins changed: %d nodes, etcd %s, flannel %s", len(c.Nodes), c.Etcd.Version, c.Flannel.Version)
	}
	if got := c.InitialCluster(); got != "etcd-1=https://10.88.0.11:2380,etcd-2=https://10.88.0.12:2380,etcd-3=https://10.88.0.13:2380" {
		t.Fatalf("initial cluster = %s", got)
	}
	if got := string(c.FlannelNetworkConfig()); got != `{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1},"EnableNFTables":true}` {
		t.Fatalf("flannel config = %s", got)
	}
	// flannel.nftables: false is the config clusters were seeded with before the field
	// existed, byte for byte, so such a cluster's config is "present", not a conflict.
	no := false
	c.Flannel.NFTables = &no
	if got := string(c.FlannelNetworkConfig()); got != `{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1}}` {
		t.Fatalf("flannel config with nftables: false = %s", got)
	}
}

func BenchmarkParseExample(b *testing.B) {
	for b.Loop() {
		if _, rep := Parse(Example); rep.HasErrors() {
			b.Fatal(rep.String())
		}
	}
}
