package spec

import "time"

// NodeRecordPrefix is where each node's etcd-firstboot publishes, in etcd, what it runs:
// its A/B slot, the release, the boot's state and any fallback (key prefix + node name).
// `etcdbake status` reads these records from the workstation.
const NodeRecordPrefix = "/etcdbake/nodes/"

// NodeRecord is one node's published record.
type NodeRecord struct {
	Node    string `json:"node"`
	Slot    string `json:"slot"`
	Release string `json:"release"`
	Entry   string `json:"entry"`
	// State is the boot's assessment (good, indeterminate, bad, clean, unknown), as
	// systemd-bless-boot names it.
	State string `json:"state"`
	// Verify is this boot's verify-boot result, when the boot was on trial.
	Verify string `json:"verify,omitempty"`
	// Fallback says that the node fell back by itself from a newer slot, and why.
	Fallback string    `json:"fallback,omitempty"`
	Updated  time.Time `json:"updated"`
}

// NodeRecordKey is the etcd key of a node's record.
func NodeRecordKey(node string) string { return NodeRecordPrefix + node }
