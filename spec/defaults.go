package spec

import "time"

// Defaults. The etcd values are etcd's own defaults; the rest are etcdbake's choices.
const (
	DefaultClientPort        = 2379
	DefaultPeerPort          = 2380
	DefaultMetricsPort       = 2381
	DefaultHeartbeat         = 100 * time.Millisecond
	DefaultElection          = 1000 * time.Millisecond
	DefaultSnapshotCount     = 10000
	DefaultQuotaBackendBytes = 2 << 30 // etcd's default, 2 GiB
	// DefaultAutoCompactionRetention turns etcd's periodic compaction on (etcd's own
	// default is off; with no kube-apiserver compacting, the history would grow until
	// NOSPACE): an hour of history stays for watchers to resume from.
	DefaultAutoCompactionRetention = time.Hour
	DefaultSubnetLen               = 24
	DefaultBackend                 = "vxlan"
	DefaultVNI                     = 1
	DefaultPrefix                  = "/coreos.com/network"
	DefaultMaxSkew                 = 500 * time.Millisecond
	DefaultSyncTimeout             = 2 * time.Minute
	DefaultAlgorithm               = "ecdsa-p256"
	DefaultCALifetime              = 10 * 365 * 24 * time.Hour
	DefaultLeafLifetime            = 365 * 24 * time.Hour
	DefaultBackdate                = time.Hour
	DefaultRenewBefore             = 30 * 24 * time.Hour
	DefaultSSHUser                 = "core"
	DefaultRolloutTimeout          = 10 * time.Minute
	// MinRolloutTimeout is the shortest verification bound: a node under emulation needs
	// about a minute from boot to a verified member.
	MinRolloutTimeout = 30 * time.Second
	// Maintenance: a pass every 10 min on each node; defragmentation at etcd's alert
	// thresholds (in use below half the file and more than 100 MiB reclaimable), at
	// least a minute between members; the quota warning at 80%.
	DefaultMaintenanceInterval = 10 * time.Minute
	MinMaintenanceInterval     = time.Minute
	DefaultDefragRatio         = 0.5
	DefaultDefragMinFreeBytes  = 100 << 20
	DefaultDefragBetween       = time.Minute
	QuotaWarnRatio             = 0.8
	// Scheduled snapshots: every 6 h at a fixed time of day (the same on every node, so
	// one takes it), 5 kept; "off" turns them off.
	DefaultBackupSchedule = "*-*-* 00/6:00:00"
	BackupOff             = "off"
	DefaultBackupKeep     = 5
)

// DefaultSources is the order binaries are looked for when the spec names none: the
// official release first (users with internet), then a build from the Go module proxy
// (machines that reach only the proxy).
var DefaultSources = []string{SourceRelease, SourceGo}

// Binary sources.
const (
	SourceRelease = "release"
	SourceGo      = "go"
	SourceFile    = "file"
)

// ApplyDefaults fills every field the operator left out. It is the only place defaults
// are set; validation never changes the spec.
func (c *Cluster) ApplyDefaults() {
	e := &c.Etcd
	if e.Token == "" {
		e.Token = "etcdbake-" + c.Name
	}
	setInt(&e.ClientPort, DefaultClientPort)
	setInt(&e.PeerPort, DefaultPeerPort)
	setInt(&e.MetricsPort, DefaultMetricsPort)
	setDur(&e.HeartbeatInterval, DefaultHeartbeat)
	setDur(&e.ElectionTimeout, DefaultElection)
	if e.SnapshotCount == 0 {
		e.SnapshotCount = DefaultSnapshotCount
	}
	if e.QuotaBackendBytes == 0 {
		e.QuotaBackendBytes = DefaultQuotaBackendBytes
	}
	setDur(&e.AutoCompactionRetention, DefaultAutoCompactionRetention)

	f := &c.Flannel
	setInt(&f.SubnetLen, DefaultSubnetLen)
	if f.Backend == "" {
		f.Backend = DefaultBackend
	}
	if f.Backend == "vxlan" {
		setInt(&f.VNI, DefaultVNI)
	}
	if f.Prefix == "" {
		f.Prefix = DefaultPrefix
	}
	if f.IPMasq == nil {
		t := true
		f.IPMasq = &t
	}
	if f.NFTables == nil {
		t := true
		f.NFTables = &t
	}

	setDur(&c.Time.MaxSkew, DefaultMaxSkew)
	setDur(&c.Time.SyncTimeout, DefaultSyncTimeout)
	setDur(&c.Rollout.Timeout, DefaultRolloutTimeout)

	m := &c.Maintenance
	setDur(&m.Interval, DefaultMaintenanceInterval)
	if m.DefragRatio == 0 {
		m.DefragRatio = DefaultDefragRatio
	}
	if m.DefragMinFreeBytes == 0 {
		m.DefragMinFreeBytes = DefaultDefragMinFreeBytes
	}
	setDur(&m.DefragBetween, DefaultDefragBetween)

	if c.Backup.Schedule == "" {
		c.Backup.Schedule = DefaultBackupSchedule
	}
	setInt(&c.Backup.Keep, DefaultBackupKeep)

	p := &c.PKI
	if p.Algorithm == "" {
		p.Algorithm = DefaultAlgorithm
	}
	setDur(&p.CALifetime, DefaultCALifetime)
	setDur(&p.LeafLifetime, DefaultLeafLifetime)
	setDur(&p.Backdate, DefaultBackdate)
	setDur(&p.RenewBefore, DefaultRenewBefore)
	if p.Organization == "" {
		p.Organization = "etcdbake " + c.Name
	}

	if c.SSH.User == "" {
		c.SSH.User = DefaultSSHUser
	}
	if c.Firewall.Enabled == nil {
		on := true
		c.Firewall.Enabled = &on
	}
	if len(c.Firewall.ClientSources) == 0 {
		c.Firewall.ClientSources = c.nodeSubnets()
	}
	if len(c.SSH.Sources) == 0 {
		c.SSH.Sources = c.nodeSubnets()
	}
	if len(c.Binary.Sources) == 0 {
		c.Binary.Sources = append([]string(nil), DefaultSources...)
	}
}

func setInt(p *int, v int) {
	if *p == 0 {
		*p = v
	}
}

func setDur(p *Duration, v time.Duration) {
	if p.IsZero() {
		*p = Dur(v)
	}
}
