package spec

import "time"

// DefragRecordKey holds the cluster's last defragmentation (a DefragRecord), written by
// the node that did it: the next member waits a while after it.
const DefragRecordKey = "/etcdbake/maintenance/defrag"

// DefragRecord says which member was defragmented when, and what it gained.
type DefragRecord struct {
	Node   string    `json:"node"`
	At     time.Time `json:"at"`
	Before int64     `json:"before"`
	After  int64     `json:"after"`
	InUse  int64     `json:"inUse"`
	// Leader says the member led before it handed leadership away for this.
	Leader bool `json:"wasLeader,omitempty"`
}
