package vmcluster

import (
	"slices"
	"strings"
	"testing"
)

// TestForwardsToGuestPorts: each VM's user-mode NIC forwards 127.0.0.1 to the guest's
// etcd client and peer ports given in ClusterOptions (the spec's), whatever they are, and
// GuestButane makes etcd listen on the same ports; options without the ports are refused.
func TestForwardsToGuestPorts(t *testing.T) {
	o := ClusterOptions{Images: map[string]string{"etcd-1": "etcd-1.raw"}, MACs: map[string]string{"etcd-1": "52:54:00:88:00:11"},
		Dir: t.TempDir(), ClientPort: 12379, PeerPort: 12380}
	c, err := newCluster(o)
	if err != nil {
		t.Fatal(err)
	}
	n := c.nodes["etcd-1"]
	args := c.qemuArgs(n, &VM{Name: "etcd-1", Console: "con", qmpPath: "qmp", qgaPath: "qga"})
	var user string // the user-mode NIC's -netdev
	for _, a := range args {
		if strings.HasPrefix(a, "user,") {
			user = a
		}
	}
	t.Logf("user-mode NIC: %s", user)
	for _, want := range []string{"hostfwd=tcp:127.0.0.1:0-:12379", "hostfwd=tcp:127.0.0.1:0-:12380", "restrict=on"} {
		if !strings.Contains(user, want) {
			t.Errorf("the user-mode NIC lacks %s", want)
		}
	}
	if strings.Contains(user, ":2379") || strings.Contains(user, ":2380") {
		t.Errorf("a forward still goes to etcd's default ports: %s", user)
	}
	bu := string(GuestButane(12379, 12380, UserMAC("52:54:00:88:00:11")))
	for _, want := range []string{"ETCD_LISTEN_CLIENT_URLS=https://0.0.0.0:12379\n", "ETCD_LISTEN_PEER_URLS=https://0.0.0.0:12380\n", "MACAddress=52:54:00:99:00:11\n"} {
		if !strings.Contains(bu, want) {
			t.Errorf("GuestButane lacks %q", strings.TrimSpace(want))
		}
	}
	for _, bad := range []struct{ client, peer int }{{0, 12380}, {12379, 0}, {2379, 2379}, {70000, 2380}} {
		o.ClientPort, o.PeerPort = bad.client, bad.peer
		if _, err := newCluster(o); err == nil || !strings.Contains(err.Error(), "ClusterOptions.") {
			t.Errorf("ports %d/%d: %v, want an error naming the field", bad.client, bad.peer, err)
		}
	}
}

// TestRebootInPlace: with RebootInPlace a guest reboot resets the VM (no -no-reboot);
// without it the reboot ends QEMU.
func TestRebootInPlace(t *testing.T) {
	for _, inPlace := range []bool{false, true} {
		o := ClusterOptions{Images: map[string]string{"etcd-1": "etcd-1.raw"}, MACs: map[string]string{"etcd-1": "52:54:00:88:00:11"},
			Dir: t.TempDir(), ClientPort: 12379, PeerPort: 12380, RebootInPlace: inPlace}
		c, err := newCluster(o)
		if err != nil {
			t.Fatal(err)
		}
		args := c.qemuArgs(c.nodes["etcd-1"], &VM{Name: "etcd-1", Console: "con", qmpPath: "qmp", qgaPath: "qga"})
		if got := slices.Contains(args, "-no-reboot"); got == inPlace {
			t.Errorf("RebootInPlace %v: -no-reboot given: %v", inPlace, got)
		}
	}
}
