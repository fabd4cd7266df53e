package spec

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"time"
)

// Paths on a node. The ignition package writes them; etcd-firstboot and the units read them.
const (
	NodeConfigPath  = "/etc/etcdbake/node.json"
	EtcdPKIDir      = "/etc/etcd/pki"
	FirstbootPKIDir = "/etc/etcdbake/pki"
	FlannelPKIDir   = "/etc/flannel/pki"
	EtcdDataDir     = "/var/lib/etcd"
	// StateDir holds etcd-firstboot's marker and last decisions. It is off etcd's data
	// directory so that a wiped data dir is recognised as a replacement, not a new cluster.
	StateDir = "/var/lib/etcdbake"
	// RunDir holds the bootstrap environment for etcd.service and the readiness status.
	RunDir        = "/run/etcdbake"
	BootstrapEnv  = RunDir + "/etcd-bootstrap.env"
	BinDir        = "/opt/etcdbake/bin"
	FlannelRunDir = "/run/flannel"
)

// EtcdUser is the system account (and its group) that runs etcd and owns its data and keys.
const EtcdUser = "etcd"

// NodeConfig is everything etcd-firstboot needs on one node, baked in as JSON at
// NodeConfigPath. It is derived from the cluster spec by NodeConfigFor.
type NodeConfig struct {
	Cluster string `json:"cluster"`
	Name    string `json:"name"`
	Token   string `json:"token"`
	DataDir string `json:"dataDir"`
	// StateDir keeps the bootstrap marker (see the constant of the same name).
	StateDir  string `json:"stateDir"`
	ClientURL string `json:"clientURL"`
	PeerURL   string `json:"peerURL"`
	// LocalClientURL reaches this node's etcd over loopback.
	LocalClientURL string `json:"localClientURL"`
	Peers          []Peer `json:"peers"`

	// Certificates and keys on the node.
	CA         string `json:"ca"`
	PeerCA     string `json:"peerCA"`
	ServerCert string `json:"serverCert"`
	PeerCert   string `json:"peerCert"`
	PeerKey    string `json:"peerKey"` // etcd's peer key: the bootstrap rendezvous uses the peer identity
	ClientCert string `json:"clientCert"`
	ClientKey  string `json:"clientKey"`

	BootstrapEnv string `json:"bootstrapEnv"`
	RunDir       string `json:"runDir"`

	Flannel  NodeFlannel  `json:"flannel"`
	Time     NodeTime     `json:"time"`
	Timeouts NodeTimeouts `json:"timeouts"`
	// Maintenance tunes `etcd-firstboot maintain`.
	Maintenance NodeMaintenance `json:"maintenance"`
	// Backup is where and how many scheduled snapshots this node keeps.
	Backup NodeBackup `json:"backup"`
}

// NodeBackup configures `etcd-firstboot snapshot`.
type NodeBackup struct {
	Dir  string `json:"dir"`
	Keep int    `json:"keep"`
	// Schedule is backup.schedule (the timer's OnCalendar): each snapshot records when it
	// elapses next, so the other nodes know this period's snapshot is taken.
	Schedule string `json:"schedule,omitempty"`
	// Target is the S3-compatible bucket snapshots are uploaded to (nil: none).
	Target *NodeBackupTarget `json:"target,omitempty"`
}

// NodeBackupTarget is spec backup.target on the node: the credentials and the CA are
// files on the node (S3CredentialsPath, S3CAPath).
type NodeBackupTarget struct {
	Endpoint        string `json:"endpoint"`
	Bucket          string `json:"bucket"`
	Prefix          string `json:"prefix,omitempty"`
	Region          string `json:"region,omitempty"`
	CredentialsFile string `json:"credentialsFile"`
	CAFile          string `json:"caFile,omitempty"`
}

// Paths of the backup target's files on a node. The credentials are in each node's own
// partition on disk images (imagebuild.Split keeps them out of the shared root).
const (
	S3CredentialsPath = "/etc/etcdbake/backup/s3-credentials"
	S3CAPath          = "/etc/etcdbake/backup/s3-ca.crt"
)

// NodeMaintenance tunes the maintenance passes; zero values take etcd-firstboot's
// defaults (etcd's alert thresholds).
type NodeMaintenance struct {
	// QuotaBytes is etcd's quota (etcd.quotaBackendBytes).
	QuotaBytes int64 `json:"quotaBytes"`
	// The spec's maintenance.defragRatio, defragMinFreeBytes and defragBetween.
	DefragRatio   float64  `json:"defragRatio,omitempty"`
	DefragMinFree int64    `json:"defragMinFree,omitempty"`
	DefragBetween Duration `json:"defragBetween,omitempty"`
}

// NodeTimeouts bound etcd-firstboot's waits. Zero values take the defaults below.
type NodeTimeouts struct {
	// Dial bounds each connection attempt and etcd request (default 3s).
	Dial Duration `json:"dial"`
	// Ready bounds the health gate, including learner promotion (default 10m).
	Ready Duration `json:"ready"`
	// Retry is the pause between attempts while waiting (default 1s).
	Retry Duration `json:"retry"`
	// Rendezvous bounds one attempt of the bootstrap rendezvous (default 30s).
	Rendezvous Duration `json:"rendezvous,omitempty"`
}

// Default etcd-firstboot timeouts.
const (
	DefaultDialTimeout  = 3 * time.Second
	DefaultReadyTimeout = 10 * time.Minute
	DefaultRetryEvery   = time.Second
)

// Peer is one member of the static member list.
type Peer struct {
	Name      string `json:"name"`
	PeerURL   string `json:"peerURL"`
	ClientURL string `json:"clientURL"`
}

// NodeFlannel is flannel's network config as etcd-firstboot seeds it.
type NodeFlannel struct {
	Key       string          `json:"key"`
	Config    json.RawMessage `json:"config"`
	Overwrite bool            `json:"overwrite"`
}

// NodeTime is the time-gate policy.
type NodeTime struct {
	Servers     []string `json:"servers"`
	MaxSkew     Duration `json:"maxSkew"`
	SyncTimeout Duration `json:"syncTimeout"`
}

// NodeConfigFor derives a node's settings from the spec.
func (c *Cluster) NodeConfigFor(n Node) NodeConfig {
	peers := make([]Peer, len(c.Nodes))
	for i, p := range c.Nodes {
		peers[i] = Peer{Name: p.Name, PeerURL: c.PeerURL(p), ClientURL: c.ClientURL(p)}
	}
	return NodeConfig{
		Cluster:        c.Name,
		Name:           n.Name,
		Token:          c.Etcd.Token,
		DataDir:        EtcdDataDir,
		StateDir:       StateDir,
		ClientURL:      c.ClientURL(n),
		PeerURL:        c.PeerURL(n),
		LocalClientURL: fmt.Sprintf("https://127.0.0.1:%d", c.Etcd.ClientPort),
		Peers:          peers,
		CA:             EtcdPKIDir + "/ca.crt",
		PeerCA:         EtcdPKIDir + "/peer-ca.crt",
		ServerCert:     EtcdPKIDir + "/server.crt",
		PeerCert:       EtcdPKIDir + "/peer.crt",
		PeerKey:        EtcdPKIDir + "/peer.key",
		ClientCert:     FirstbootPKIDir + "/firstboot.crt",
		ClientKey:      FirstbootPKIDir + "/firstboot.key",
		BootstrapEnv:   BootstrapEnv,
		RunDir:         RunDir,
		Flannel: NodeFlannel{
			Key:       c.Flannel.Prefix + "/config",
			Config:    c.FlannelNetworkConfig(),
			Overwrite: c.Flannel.Overwrite,
		},
		Time: NodeTime{
			Servers:     append([]string{}, c.Time.Servers...),
			MaxSkew:     c.Time.MaxSkew,
			SyncTimeout: c.Time.SyncTimeout,
		},
		Timeouts: NodeTimeouts{Dial: Dur(DefaultDialTimeout), Ready: Dur(DefaultReadyTimeout), Retry: Dur(DefaultRetryEvery)},
		Maintenance: NodeMaintenance{
			QuotaBytes:    c.Etcd.QuotaBackendBytes,
			DefragRatio:   c.Maintenance.DefragRatio,
			DefragMinFree: c.Maintenance.DefragMinFreeBytes,
			DefragBetween: c.Maintenance.DefragBetween,
		},
		Backup: NodeBackup{Dir: NodeSnapshotDir, Keep: c.Backup.Keep, Schedule: c.Backup.Schedule, Target: c.Backup.nodeTarget()},
	}
}

// LoadNodeConfig reads the node settings file.
func LoadNodeConfig(path string) (*NodeConfig, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading node config: %w", err)
	}
	nc, err := LoadNodeConfigBytes(b)
	if err != nil {
		return nil, fmt.Errorf("node config %s: %w", path, err)
	}
	return nc, nil
}

// LoadNodeConfigBytes decodes a node settings file.
func LoadNodeConfigBytes(b []byte) (*NodeConfig, error) {
	var nc NodeConfig
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&nc); err != nil {
		return nil, fmt.Errorf("not a valid node config (rebuild it with the same etcdbake as etcd-firstboot): %w", err)
	}
	if nc.Name == "" || len(nc.Peers) == 0 {
		return nil, fmt.Errorf("no node name or no peers: rebuild it with etcdbake")
	}
	return &nc, nil
}

func (b Backup) nodeTarget() *NodeBackupTarget {
	t := b.Target
	if t == nil {
		return nil
	}
	nt := &NodeBackupTarget{Endpoint: t.Endpoint, Bucket: t.Bucket, Prefix: t.Prefix, Region: t.Region, CredentialsFile: S3CredentialsPath}
	if t.CA != "" {
		nt.CAFile = S3CAPath
	}
	return nt
}
