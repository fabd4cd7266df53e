package spec

import "time"

// A rollout in etcd: the operator (`etcdbake rollout`, admin certificate) publishes the
// desired release; each node's agent (etcd-firstboot rollout) stages it into its inactive
// slot, takes the reboot lock, reboots into it and, once verified, releases the lock. A
// node whose new slot failed falls back by itself and sets the halt key, which stops
// every other node until the operator publishes another release or resumes.
const (
	RolloutPrefix     = "/etcdbake/rollout/"
	RolloutDesiredKey = RolloutPrefix + "desired"
	RolloutHaltKey    = RolloutPrefix + "halt"
	RolloutLockPrefix = RolloutPrefix + "lock/"
	RolloutProbe      = RolloutPrefix + "probe/"
)

// RolloutDesired is the release the nodes are to run.
type RolloutDesired struct {
	// Generation grows with every publication (also of an older release): it names the
	// boot entries, newest first.
	Generation int       `json:"generation"`
	Release    string    `json:"release"`
	URL        string    `json:"url"` // the release server: https://HOST:PORT/v1/releases/<id>
	Published  time.Time `json:"published"`
}

// RolloutHalt stops a rollout: a node's new slot failed and it fell back.
type RolloutHalt struct {
	Node       string    `json:"node"`
	Release    string    `json:"release"`
	Generation int       `json:"generation"`
	Reason     string    `json:"reason"`
	At         time.Time `json:"at"`
}
