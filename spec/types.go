// Package spec holds the cluster spec (the one YAML file an operator writes), its strict
// decoding, defaults and validation, and the per-node settings file that etcd-firstboot
// reads on the node. Every other package takes its input from here, so the builder and the
// node agent cannot drift apart.
package spec

// APIVersion and Kind identify a cluster spec. They are read before anything else.
const (
	APIVersion = "etcdbake.dev/v1alpha1"
	Kind       = "Cluster"
)

// Cluster is the whole cluster spec as the operator writes it.
type Cluster struct {
	APIVersion string `yaml:"apiVersion" json:"apiVersion"`
	Kind       string `yaml:"kind" json:"kind"`
	// Name names the cluster; it is part of the initial-cluster token, the certificates'
	// organisation and the IDs derived for disks.
	Name string `yaml:"name" json:"name"`
	// Nodes are the etcd members, one machine each.
	Nodes   []Node  `yaml:"nodes" json:"nodes"`
	Etcd    Etcd    `yaml:"etcd" json:"etcd"`
	Flannel Flannel `yaml:"flannel" json:"flannel"`
	Time    Time    `yaml:"time" json:"time"`
	PKI     PKI     `yaml:"pki" json:"pki"`
	SSH     SSH     `yaml:"ssh" json:"ssh"`
	// Firewall is every node's host firewall (nftables).
	Firewall Firewall `yaml:"firewall,omitempty" json:"firewall,omitempty"`
	// Image tunes the default base of the disk images.
	Image   Image    `yaml:"image,omitempty" json:"image,omitempty"`
	Binary  Binaries `yaml:"binaries" json:"binaries"`
	Rollout Rollout  `yaml:"rollout,omitempty" json:"rollout,omitempty"`
	// Maintenance is what every node does by itself to keep etcd healthy for years:
	// NOSPACE repair, defragmentation one member at a time, the quota warning.
	Maintenance Maintenance `yaml:"maintenance,omitempty" json:"maintenance,omitempty"`
	// Backup schedules the cluster's snapshots on the nodes.
	Backup Backup `yaml:"backup,omitempty" json:"backup,omitempty"`
	// Butane is the path of a Butane fragment (variant fcos or flatcar) merged into every
	// node's Ignition config. Relative paths are relative to the spec file.
	Butane string `yaml:"butane,omitempty" json:"butane,omitempty"`
	// ButaneOverrides lets the Butane fragments replace what etcdbake writes on a node
	// (its units, files and directories, the etcd system account). Default false: such a
	// fragment is refused, naming the entry; drop-ins and new files are always allowed.
	ButaneOverrides bool `yaml:"butaneOverrides,omitempty" json:"butaneOverrides,omitempty"`
}

// Node is one etcd member.
type Node struct {
	// Name is an RFC 1123 label; it is the etcd member name and the hostname.
	Name string `yaml:"name" json:"name"`
	// Address is the node's IP with its prefix length, e.g. 10.88.0.11/24.
	Address string `yaml:"address" json:"address"`
	// Gateway is the default route; required when the nodes are not all in one subnet.
	Gateway string `yaml:"gateway,omitempty" json:"gateway,omitempty"`
	// MAC selects the NIC the static address goes on (and identifies the node for PXE).
	MAC string `yaml:"mac,omitempty" json:"mac,omitempty"`
	// DNS lists resolvers written to the node's resolv.conf.
	DNS []string `yaml:"dns,omitempty" json:"dns,omitempty"`
	// ExtraSANs are added to this node's server certificate (DNS names or IPs).
	ExtraSANs []string `yaml:"extraSANs,omitempty" json:"extraSANs,omitempty"`
	// Butane is a Butane fragment merged into this node's config only.
	Butane string `yaml:"butane,omitempty" json:"butane,omitempty"`
}

// Etcd holds etcd's version, ports and tuning. Zero values take etcd's own defaults.
type Etcd struct {
	Version string `yaml:"version" json:"version"`
	// Token is the initial-cluster-token; default "etcdbake-<name>".
	Token       string `yaml:"token,omitempty" json:"token,omitempty"`
	ClientPort  int    `yaml:"clientPort,omitempty" json:"clientPort,omitempty"`
	PeerPort    int    `yaml:"peerPort,omitempty" json:"peerPort,omitempty"`
	MetricsPort int    `yaml:"metricsPort,omitempty" json:"metricsPort,omitempty"`
	// HeartbeatInterval and ElectionTimeout map to --heartbeat-interval and
	// --election-timeout (etcd takes milliseconds; here they are durations).
	HeartbeatInterval Duration `yaml:"heartbeatInterval,omitempty" json:"heartbeatInterval,omitempty"`
	ElectionTimeout   Duration `yaml:"electionTimeout,omitempty" json:"electionTimeout,omitempty"`
	SnapshotCount     int64    `yaml:"snapshotCount,omitempty" json:"snapshotCount,omitempty"`
	QuotaBackendBytes int64    `yaml:"quotaBackendBytes,omitempty" json:"quotaBackendBytes,omitempty"`
	// AutoCompactionRetention keeps this much history (periodic mode); "0" disables.
	AutoCompactionRetention Duration `yaml:"autoCompactionRetention,omitempty" json:"autoCompactionRetention,omitempty"`
	// ExtraSANs are added to every node's server certificate, e.g. a load-balancer name.
	ExtraSANs []string `yaml:"extraSANs,omitempty" json:"extraSANs,omitempty"`
}

// Flannel holds flanneld's version and the network config it is seeded with.
type Flannel struct {
	Version   string `yaml:"version" json:"version"`
	Network   string `yaml:"network" json:"network"`
	SubnetLen int    `yaml:"subnetLen,omitempty" json:"subnetLen,omitempty"`
	Backend   string `yaml:"backend,omitempty" json:"backend,omitempty"`
	// VNI is the VXLAN network identifier (vxlan backend only); default 1.
	VNI    int    `yaml:"vni,omitempty" json:"vni,omitempty"`
	Prefix string `yaml:"prefix,omitempty" json:"prefix,omitempty"`
	// IPMasq makes flanneld install masquerade rules for traffic leaving the overlay.
	IPMasq *bool `yaml:"ipMasq,omitempty" json:"ipMasq,omitempty"`
	// NFTables makes flanneld keep its rules in nftables tables of its own
	// ("EnableNFTables" in the network config; default true) instead of iptables, which it
	// re-checks every 5 s with one iptables process per rule.
	NFTables *bool `yaml:"nftables,omitempty" json:"nftables,omitempty"`
	// Overwrite lets etcd-firstboot replace an existing, different network config
	// (default false: a conflict is reported, never overwritten).
	Overwrite bool `yaml:"overwrite,omitempty" json:"overwrite,omitempty"`
}

// Time is the time-sync policy: chrony's servers and the gate before etcd starts.
type Time struct {
	Servers     []string `yaml:"servers" json:"servers"`
	MaxSkew     Duration `yaml:"maxSkew,omitempty" json:"maxSkew,omitempty"`
	SyncTimeout Duration `yaml:"syncTimeout,omitempty" json:"syncTimeout,omitempty"`
}

// Rollout governs how a disk-image node takes a new release into its inactive A/B slot.
type Rollout struct {
	// Timeout bounds a new slot's first boot: from early boot until etcd-firstboot has
	// verified the node (health gate, local /readyz, flannel). A boot not verified in
	// time is not blessed: the node reboots and boot counting brings back the previous
	// slot. Default 10m.
	Timeout Duration `yaml:"timeout,omitempty" json:"timeout,omitempty"`
}

// Maintenance tunes the maintenance pass every node runs (etcdbake-maintain.timer runs
// `etcd-firstboot maintain`). Compaction is etcd's own (etcd.autoCompactionRetention).
type Maintenance struct {
	// Interval is how often each node runs a pass; "0" turns the timer off. Default 10m.
	Interval Duration `yaml:"interval,omitempty" json:"interval,omitempty"`
	// A member is defragmented when in use / total is below DefragRatio and more than
	// DefragMinFreeBytes would be reclaimed (etcd's own alert thresholds: 0.5, 100 MiB).
	DefragRatio        float64 `yaml:"defragRatio,omitempty" json:"defragRatio,omitempty"`
	DefragMinFreeBytes int64   `yaml:"defragMinFreeBytes,omitempty" json:"defragMinFreeBytes,omitempty"`
	// DefragBetween is the least time between two members' defragmentations. Default 1m.
	DefragBetween Duration `yaml:"defragBetween,omitempty" json:"defragBetween,omitempty"`
}

// Backup schedules snapshots taken on the nodes: one per period for the cluster, by one
// node under the cluster's lock, verified, kept on that node's data partition.
type Backup struct {
	// Schedule is when (systemd OnCalendar syntax; default every 6 h); "off" turns it off.
	Schedule string `yaml:"schedule,omitempty" json:"schedule,omitempty"`
	// Keep is how many snapshots each node keeps (default 5), and the target too; older
	// ones are removed.
	Keep int `yaml:"keep,omitempty" json:"keep,omitempty"`
	// Target, when set, is an S3-compatible bucket every scheduled snapshot is uploaded to.
	Target *BackupTarget `yaml:"target,omitempty" json:"target,omitempty"`
}

// BackupTarget is an S3-compatible bucket for the scheduled snapshots.
type BackupTarget struct {
	// Endpoint is the service's URL, https://HOST[:PORT].
	Endpoint string `yaml:"endpoint" json:"endpoint"`
	Bucket   string `yaml:"bucket" json:"bucket"`
	// Prefix goes before each object's name, e.g. "prod/".
	Prefix string `yaml:"prefix,omitempty" json:"prefix,omitempty"`
	Region string `yaml:"region,omitempty" json:"region,omitempty"`
	// CredentialsFile is a file on the operator's machine (relative: to the spec file)
	// with AWS_ACCESS_KEY_ID= and AWS_SECRET_ACCESS_KEY= lines. It is baked, mode 0600,
	// into each node's own partition (never the shared root).
	CredentialsFile string `yaml:"credentialsFile" json:"credentialsFile"`
	// CA is the PEM file (relative: to the spec file) of a private CA that signed the
	// endpoint's certificate.
	CA string `yaml:"ca,omitempty" json:"ca,omitempty"`
}

// Image tunes the default base root filesystem (Debian bookworm by mmdebstrap) the disk
// images are made from; `etcdbake image --base FILE` replaces it altogether.
type Image struct {
	// Packages are Debian packages added to the default base (e.g. nfs-common, perl):
	// they change the base's recipe, so a new base is built once and cached.
	Packages []string `yaml:"packages,omitempty" json:"packages,omitempty"`
	// KernelModules are kernel modules the default base keeps although it leaves their
	// kind out (e.g. xfs, nfs, sctp; see the README's "Disk images"), with the modules
	// they need; they change the base's recipe too.
	KernelModules []string `yaml:"kernelModules,omitempty" json:"kernelModules,omitempty"`
}

// PKI sets key algorithm and certificate lifetimes.
type PKI struct {
	// Algorithm is ecdsa-p256 (default), ecdsa-p384, rsa-2048 or rsa-4096.
	Algorithm    string   `yaml:"algorithm,omitempty" json:"algorithm,omitempty"`
	CALifetime   Duration `yaml:"caLifetime,omitempty" json:"caLifetime,omitempty"`
	LeafLifetime Duration `yaml:"leafLifetime,omitempty" json:"leafLifetime,omitempty"`
	Backdate     Duration `yaml:"backdate,omitempty" json:"backdate,omitempty"`
	RenewBefore  Duration `yaml:"renewBefore,omitempty" json:"renewBefore,omitempty"`
	Organization string   `yaml:"organization,omitempty" json:"organization,omitempty"`
}

// SSH configures the operator's login on the nodes: key-only, as User, who becomes root
// with `sudo` (no password); root and password logins are refused.
type SSH struct {
	// User is the login user that receives AuthorizedKeys; default "core".
	User           string   `yaml:"user,omitempty" json:"user,omitempty"`
	AuthorizedKeys []string `yaml:"authorizedKeys,omitempty" json:"authorizedKeys,omitempty"`
	// Sources are the networks (CIDR) the firewall lets reach SSH (port 22). Default:
	// the nodes' subnets; 0.0.0.0/0 and ::/0 mean anywhere.
	Sources []string `yaml:"sources,omitempty" json:"sources,omitempty"`
}

// Firewall is the host firewall every node loads before etcd, flanneld or sshd start: an
// nftables table (inet etcdbake) of its own, next to flanneld's rules. Input is
// dropped unless allowed: loopback, replies, the ICMP networks need, DHCP replies, etcd's
// peer port and the flannel backend's port from the members only, etcd's client port from
// the members and ClientSources, SSH from ssh.sources. Forwarding is allowed for the
// flannel network only. Rules of your own go in *.nft files under
// /etc/etcdbake/firewall.d/ (e.g. from a Butane fragment); they are included in the input
// chain.
type Firewall struct {
	// Enabled turns the firewall on (default true). false leaves every port open.
	Enabled *bool `yaml:"enabled,omitempty" json:"enabled,omitempty"`
	// ClientSources are the networks (CIDR) that may reach etcd's client port besides the
	// members. Default: the nodes' subnets; 0.0.0.0/0 and ::/0 mean anywhere.
	ClientSources []string `yaml:"clientSources,omitempty" json:"clientSources,omitempty"`
}

// Binaries says where etcd, etcdctl and flanneld come from. Sources are tried in order
// until one yields a binary whose sha256 verifies.
type Binaries struct {
	// Sources: "release" (official release tarball + published checksums), "go" (build
	// the pinned version from the Go module proxy), "file" (the local files below).
	// Default: [release, go].
	Sources []string `yaml:"sources,omitempty" json:"sources,omitempty"`
	// Files are local binaries for source "file", keyed by etcd, etcdctl, flanneld.
	Files map[string]LocalBinary `yaml:"files,omitempty" json:"files,omitempty"`
	// EtcdReleaseURL and FlannelReleaseURL override the release download bases (a mirror).
	EtcdReleaseURL    string `yaml:"etcdReleaseURL,omitempty" json:"etcdReleaseURL,omitempty"`
	FlannelReleaseURL string `yaml:"flannelReleaseURL,omitempty" json:"flannelReleaseURL,omitempty"`
}

// LocalBinary is an air-gapped binary with the checksum it must have.
type LocalBinary struct {
	Path   string `yaml:"path" json:"path"`
	SHA256 string `yaml:"sha256" json:"sha256"`
}
