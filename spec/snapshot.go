package spec

import "time"

// A snapshot file is a tar archive of two entries, in this order: SnapshotManifestName
// (a SnapshotManifest as JSON) and SnapshotDBName (the database exactly as etcd's Snapshot
// API streamed it, with the sha256 etcd appends). `tar xf FILE db` gives what `etcdutl
// snapshot restore` takes.
const (
	SnapshotManifestName = "manifest.json"
	SnapshotDBName       = "db"
	// SnapshotFormat is the version of the layout above and of SnapshotManifest.
	SnapshotFormat = 1
	// SnapshotExt ends the names etcdbake gives snapshot files.
	SnapshotExt = ".snapshot.tar"
)

// SnapshotManifest says what a snapshot holds, so that it can be verified and restored
// with nothing from the old cluster but the spec and the PKI.
type SnapshotManifest struct {
	Format int `json:"format"`
	// Cluster is the spec's cluster name; ClusterID etcd's cluster ID (hex).
	Cluster   string `json:"cluster"`
	ClusterID string `json:"clusterID"`
	// CAFingerprint is the sha256 of the cluster CA's certificate (DER, hex): a restore
	// with another PKI is refused.
	CAFingerprint string           `json:"caFingerprint"`
	Members       []SnapshotMember `json:"members"`
	// Revision is the newest revision in the database; HashKV etcd's HashKV of the keys
	// up to it, computed by the member that served the snapshot and again from the file.
	Revision        int64  `json:"revision"`
	CompactRevision int64  `json:"compactRevision"`
	HashKV          uint32 `json:"hashKV"`
	Keys            int    `json:"keys"`
	// From is the member that served the snapshot, EtcdVersion its server version and
	// StorageVersion the database's storage version.
	From           string `json:"from"`
	EtcdVersion    string `json:"etcdVersion"`
	StorageVersion string `json:"storageVersion,omitempty"`
	// SHA256 and Size are of the database entry.
	SHA256 string    `json:"sha256"`
	Size   int64     `json:"size"`
	Taken  time.Time `json:"taken"`
	// SpecSHA256 is the sha256 of the spec file the snapshot was taken with ("" on nodes,
	// which hold no spec file).
	SpecSHA256 string `json:"specSHA256,omitempty"`
	// By says what took it (`etcdbake snapshot save`, or the schedule on a node).
	By string `json:"by"`
}

// SnapshotMember is one member of the cluster when the snapshot was taken.
type SnapshotMember struct {
	Name     string   `json:"name"`
	ID       string   `json:"id"`
	PeerURLs []string `json:"peerURLs"`
	Learner  bool     `json:"learner,omitempty"`
}

// SnapshotFileName is the name etcdbake gives a snapshot of cluster taken at t, on the
// workstation and on the nodes: names sort by time.
func SnapshotFileName(cluster string, t time.Time) string {
	return cluster + "-" + t.UTC().Format("20060102T150405Z") + SnapshotExt
}

// Scheduled snapshots (spec backup): one node takes each, writes it to its
// NodeSnapshotDir and records it at SnapshotRecordKey; every node that takes snapshots
// lists what it keeps at SnapshotNodeKey(node).
const (
	NodeSnapshotDir       = StateDir + "/snapshots"
	SnapshotRecordKey     = "/etcdbake/snapshots/last"
	snapshotNodeKeyPrefix = "/etcdbake/snapshots/nodes/"
)

// SnapshotNodeKey holds the NodeSnapshots of node.
func SnapshotNodeKey(node string) string { return snapshotNodeKeyPrefix + node }

// SnapshotRecord is one snapshot a node keeps.
type SnapshotRecord struct {
	Node     string    `json:"node"`
	File     string    `json:"file"` // the path on Node
	Taken    time.Time `json:"taken"`
	Revision int64     `json:"revision"`
	Size     int64     `json:"size"`
	SHA256   string    `json:"sha256"`
	// NextDue is when the schedule runs next (the node's timer; zero when unknown): a
	// newest snapshot a whole period past it is overdue.
	NextDue time.Time `json:"nextDue,omitzero"`
	// Object is the snapshot's key in the backup target; UploadError why the upload failed.
	Object      string `json:"object,omitempty"`
	UploadError string `json:"uploadError,omitempty"`
}

// NodeSnapshots lists the snapshots a node keeps, newest first.
type NodeSnapshots struct {
	Node      string           `json:"node"`
	Updated   time.Time        `json:"updated"`
	Snapshots []SnapshotRecord `json:"snapshots"`
}
