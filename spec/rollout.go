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

// RolloutNodesPrefix is where each node's agent publishes where it is in the rollout
// (prefix + node name): what `etcdbake rollout status` shows.
const RolloutNodesPrefix = RolloutPrefix + "nodes/"

// RolloutNodeKey is the etcd key of a node's rollout state.
func RolloutNodeKey(node string) string { return RolloutNodesPrefix + node }

// A node's states in a rollout, in the order they happen.
const (
	RolloutStaging    = "staging"          // downloading the release into the inactive slot
	RolloutWaiting    = "waiting for lock" // staged; waiting for the reboot lock and the gate
	RolloutRebooting  = "rebooting"        // holds the lock; armed the new slot and reboots
	RolloutVerifying  = "verifying"        // runs the new slot; verify-boot has not passed yet
	RolloutDone       = "done"             // runs the desired release, verified
	RolloutRolledBack = "rolled back"      // the new slot failed; runs the previous one
	RolloutHalted     = "halted"           // not started: the rollout is halted
)

// RolloutNode is one node's published rollout state.
type RolloutNode struct {
	Node       string `json:"node"`
	Generation int    `json:"generation"`
	Release    string `json:"release"` // the desired release this state is about
	Staged     string `json:"staged,omitempty"`
	State      string `json:"state"`
	// Error is the last error of the agent (it retries), or why the node rolled back.
	Error    string    `json:"error,omitempty"`
	Progress string    `json:"progress,omitempty"`
	Updated  time.Time `json:"updated"`
}
