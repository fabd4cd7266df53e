package ignition

import (
	"bytes"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/etcdbake/etcdbake/spec"
)

// This file computes the bytes of every text file placed on a node. Nothing here writes;
// the renderer puts the bytes into the Ignition config and tests compare them with golden
// files.

// Node paths of the files below (see also the constants in package spec).
const (
	EtcdEnvPath      = "/etc/etcd/etcd.env"
	EtcdctlEnvPath   = "/etc/etcd/etcdctl.env"
	EtcdctlWrapper   = "/usr/local/bin/etcdctl"
	FlannelEnvPath   = "/etc/flannel/flanneld.env"
	ChronyConfDebian = "/etc/chrony/chrony.conf"
	ChronyConfFCOS   = "/etc/chrony.conf"
	HostnamePath     = "/etc/hostname"
	HostsPath        = "/etc/hosts"
	NetworkdPath     = "/etc/systemd/network/10-etcdbake.network"
	NMKeyfilePath    = "/etc/NetworkManager/system-connections/etcdbake.nmconnection"
	SysctlPath       = "/etc/sysctl.d/90-etcdbake.conf"
	ModulesPath      = "/etc/modules-load.d/etcdbake.conf"
)

// Unit names.
const (
	EtcdUnit      = "etcd.service"
	FirstbootUnit = "etcd-firstboot.service"
	ReadyUnit     = "etcd-ready.service"
	FlannelUnit   = "flanneld.service"
	MaintainUnit  = "etcdbake-maintain.service"
	MaintainTimer = "etcdbake-maintain.timer"
	SnapshotUnit  = "etcdbake-snapshot.service"
	SnapshotTimer = "etcdbake-snapshot.timer"
	PrefetchUnit  = "etcdbake-prefetch.service"
)

func bin(name string) string { return spec.BinDir + "/" + name }

type envFile struct{ b bytes.Buffer }

func (e *envFile) comment(s string)  { fmt.Fprintf(&e.b, "# %s\n", s) }
func (e *envFile) set(k, v string)   { fmt.Fprintf(&e.b, "%s=%s\n", k, v) }
func (e *envFile) blank()            { e.b.WriteByte('\n') }
func (e *envFile) bytes() []byte     { return e.b.Bytes() }
func ms(d spec.Duration) string      { return fmt.Sprint(d.D.Milliseconds()) }
func joinURLs(urls ...string) string { return strings.Join(urls, ",") }
func header(what string) string {
	return "# " + what + "\n# Written by etcdbake from the cluster spec; edit the spec, not this file.\n"
}

// EtcdEnv is etcd's configuration as ETCD_* variables (etcd reads each flag from the
// variable of the same name). The initial cluster state is not here: etcd-firstboot
// decides it on every boot and writes it to spec.BootstrapEnv, which etcd.service requires.
func EtcdEnv(c *spec.Cluster, n spec.Node) []byte {
	nc := c.NodeConfigFor(n)
	var e envFile
	e.b.WriteString(header("etcd member " + n.Name + " of cluster " + c.Name))
	e.set("ETCD_NAME", n.Name)
	e.set("ETCD_DATA_DIR", spec.EtcdDataDir)
	e.set("ETCD_LISTEN_CLIENT_URLS", joinURLs(nc.ClientURL, nc.LocalClientURL))
	e.set("ETCD_ADVERTISE_CLIENT_URLS", nc.ClientURL)
	e.set("ETCD_LISTEN_PEER_URLS", nc.PeerURL)
	e.set("ETCD_INITIAL_ADVERTISE_PEER_URLS", nc.PeerURL)
	e.set("ETCD_INITIAL_CLUSTER", c.InitialCluster())
	e.set("ETCD_INITIAL_CLUSTER_TOKEN", c.Etcd.Token)
	e.set("ETCD_LISTEN_METRICS_URLS", c.MetricsURL())
	e.blank()
	e.comment("Client port: mutual TLS with the client/server CA (CIS etcd 2.1-2.3).")
	e.set("ETCD_CERT_FILE", nc.ServerCert)
	e.set("ETCD_KEY_FILE", keyOf(nc.ServerCert))
	e.set("ETCD_TRUSTED_CA_FILE", nc.CA)
	e.set("ETCD_CLIENT_CERT_AUTH", "true")
	e.set("ETCD_AUTO_TLS", "false")
	e.comment("Peer port: mutual TLS with the separate peer CA, so a client certificate is never a peer (CIS etcd 2.4-2.7).")
	e.set("ETCD_PEER_CERT_FILE", nc.PeerCert)
	e.set("ETCD_PEER_KEY_FILE", keyOf(nc.PeerCert))
	e.set("ETCD_PEER_TRUSTED_CA_FILE", nc.PeerCA)
	e.set("ETCD_PEER_CLIENT_CERT_AUTH", "true")
	e.set("ETCD_PEER_AUTO_TLS", "false")
	e.comment("TLS 1.3 only: every client etcdbake configures (etcd, etcdctl, flanneld, kube-apiserver) is Go and speaks it.")
	e.set("ETCD_TLS_MIN_VERSION", "TLS1.3")
	e.blank()
	e.comment("Tuning (etcd.* in the spec).")
	e.set("ETCD_HEARTBEAT_INTERVAL", ms(c.Etcd.HeartbeatInterval))
	e.set("ETCD_ELECTION_TIMEOUT", ms(c.Etcd.ElectionTimeout))
	e.set("ETCD_SNAPSHOT_COUNT", fmt.Sprint(c.Etcd.SnapshotCount))
	e.set("ETCD_QUOTA_BACKEND_BYTES", fmt.Sprint(c.Etcd.QuotaBackendBytes))
	if r := c.Etcd.AutoCompactionRetention; !r.IsZero() && r.D > 0 {
		e.set("ETCD_AUTO_COMPACTION_MODE", "periodic")
		e.set("ETCD_AUTO_COMPACTION_RETENTION", r.D.String())
	}
	e.set("ETCD_STRICT_RECONFIG_CHECK", "true")
	return e.bytes()
}

func keyOf(certPath string) string { return strings.TrimSuffix(certPath, ".crt") + ".key" }

// EtcdctlEnv lets root on the node run etcdctl against the local member with the node's
// etcd-firstboot client certificate.
func EtcdctlEnv(c *spec.Cluster, n spec.Node) []byte {
	nc := c.NodeConfigFor(n)
	var e envFile
	e.b.WriteString(header("etcdctl settings for " + EtcdctlWrapper))
	e.set("ETCDCTL_ENDPOINTS", nc.LocalClientURL)
	e.set("ETCDCTL_CACERT", nc.CA)
	e.set("ETCDCTL_CERT", nc.ClientCert)
	e.set("ETCDCTL_KEY", nc.ClientKey)
	return e.bytes()
}

// EtcdctlWrapperScript runs the real etcdctl with EtcdctlEnv loaded.
func EtcdctlWrapperScript() []byte {
	return []byte(`#!/bin/sh
# etcdctl against this node's member, with this node's client certificate.
# Written by etcdbake. Needs root (the key is readable by root only).
set -a
. ` + EtcdctlEnvPath + `
set +a
exec ` + bin("etcdctl") + ` "$@"
`)
}

// FlannelEnv configures flanneld (it reads each flag from FLANNELD_<FLAG>).
func FlannelEnv(c *spec.Cluster, n spec.Node) []byte {
	var e envFile
	e.b.WriteString(header("flanneld on " + n.Name))
	// The local member first: flanneld reaches it even while the node's links settle.
	eps := []string{c.ClientURL(n)}
	for _, o := range c.Nodes {
		if o.Name != n.Name {
			eps = append(eps, c.ClientURL(o))
		}
	}
	e.set("FLANNELD_ETCD_ENDPOINTS", joinURLs(eps...))
	e.set("FLANNELD_ETCD_PREFIX", c.Flannel.Prefix)
	e.set("FLANNELD_ETCD_CAFILE", spec.FlannelPKIDir+"/ca.crt")
	e.set("FLANNELD_ETCD_CERTFILE", spec.FlannelPKIDir+"/flanneld.crt")
	e.set("FLANNELD_ETCD_KEYFILE", spec.FlannelPKIDir+"/flanneld.key")
	e.set("FLANNELD_IFACE", n.IP().String())
	e.set("FLANNELD_IP_MASQ", fmt.Sprint(*c.Flannel.IPMasq))
	e.set("FLANNELD_SUBNET_FILE", spec.FlannelRunDir+"/subnet.env")
	return e.bytes()
}

// ChronyConf points chrony at the spec's servers. It steps the clock during the first
// updates only; afterwards it slews, so a running etcd never sees time jump. The step
// threshold is a fifth of time.maxSkew (100 ms by default): a boot clock that is off by
// less than a second (a real-time clock keeps whole seconds) is stepped at the first
// update, so etcd-firstboot's time gate passes then instead of waiting while chrony slews
// (with "makestep 1.0" a -0.94 s offset kept the gate waiting 7 s of a TCG boot).
func ChronyConf(c *spec.Cluster) []byte {
	var b bytes.Buffer
	b.WriteString(header("chrony: time.servers from the spec"))
	for _, s := range c.Time.Servers {
		if host, port, err := net.SplitHostPort(s); err == nil {
			fmt.Fprintf(&b, "server %s port %s iburst\n", host, port)
		} else {
			fmt.Fprintf(&b, "server %s iburst\n", s)
		}
	}
	step := c.Time.MaxSkew.D / 5
	fmt.Fprintf(&b, "driftfile /var/lib/chrony/chrony.drift\nmakestep %s 3\nrtcsync\nlogdir /var/log/chrony\n",
		strconv.FormatFloat(step.Seconds(), 'f', -1, 64))
	return b.Bytes()
}

// NetworkdUnit is the node's static address for systemd-networkd (Flatcar, Debian images).
func NetworkdUnit(n spec.Node) []byte {
	var b bytes.Buffer
	b.WriteString(header("static network of " + n.Name))
	b.WriteString("[Match]\n")
	if n.MAC != "" {
		fmt.Fprintf(&b, "MACAddress=%s\n", strings.ToLower(n.MAC))
	} else {
		b.WriteString("Name=en* eth*\n")
	}
	fmt.Fprintf(&b, "\n[Network]\nAddress=%s\n", n.Address)
	if n.Gateway != "" {
		fmt.Fprintf(&b, "Gateway=%s\n", n.Gateway)
	}
	for _, d := range n.DNS {
		fmt.Fprintf(&b, "DNS=%s\n", d)
	}
	b.WriteString("LinkLocalAddressing=no\nIPv6AcceptRA=no\n")
	return b.Bytes()
}

// NMKeyfile is the same static address for NetworkManager (Fedora CoreOS).
func NMKeyfile(n spec.Node) []byte {
	var b bytes.Buffer
	b.WriteString(header("static network of " + n.Name))
	b.WriteString("[connection]\nid=etcdbake\ntype=ethernet\nautoconnect=true\n")
	if n.MAC != "" {
		fmt.Fprintf(&b, "\n[ethernet]\nmac-address=%s\n", strings.ToUpper(n.MAC))
	}
	fmt.Fprintf(&b, "\n[ipv4]\nmethod=manual\naddress1=%s", n.Address)
	if n.Gateway != "" {
		fmt.Fprintf(&b, ",%s", n.Gateway)
	}
	b.WriteByte('\n')
	if len(n.DNS) > 0 {
		fmt.Fprintf(&b, "dns=%s;\n", strings.Join(n.DNS, ";"))
	}
	b.WriteString("\n[ipv6]\nmethod=disabled\n")
	return b.Bytes()
}

// Hosts names loopback and every member (the same file on every node), so each node
// resolves its own name (sudo asks) and the others' without DNS.
func Hosts(c *spec.Cluster) []byte {
	var b strings.Builder
	b.WriteString(header("local names: loopback and the cluster's members"))
	b.WriteString("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
	for _, n := range c.Nodes {
		fmt.Fprintf(&b, "%s\t%s\n", n.IP(), n.Name)
	}
	return []byte(b.String())
}

// Sysctl enables forwarding for the overlay and lets bridged traffic see iptables.
func Sysctl() []byte {
	return []byte(header("kernel settings flanneld needs") +
		"net.ipv4.ip_forward = 1\nnet.bridge.bridge-nf-call-iptables = 1\n")
}

// Modules are loaded at boot, before flanneld (vxlan device, bridge netfilter check).
func Modules(c *spec.Cluster) []byte {
	mods := "br_netfilter\n"
	switch c.Flannel.Backend {
	case "vxlan":
		mods += "vxlan\n"
	case "wireguard":
		mods += "wireguard\n"
	case "ipip":
		mods += "ipip\n"
	}
	return []byte(header("kernel modules flanneld needs") + mods)
}

// hardening is the sandbox shared by the services that need no privileges beyond their
// own files.
const hardening = `NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
SystemCallArchitectures=native
SystemCallFilter=@system-service
UMask=0077
`

// bootFirst gives a unit of the etcd chain (chrony, etcd-firstboot, etcd, its health gate,
// flanneld) ten times the CPU share of the rest of the boot while the machine boots
// (StartupCPUWeight applies only during boot and shutdown): on a busy or slow CPU the
// cluster comes up first and the rest of the boot waits. Nothing is reordered and no
// gate is skipped.
const bootFirst = "StartupCPUWeight=1000\n"

// earlyChain takes a unit of etcd's chain off basic.target: with the default dependencies
// it would wait for sysinit.target, and so for the journal's flush to /var, the tmpfiles
// run and utmp, none of which it uses (issue 17: about 6 s of a first boot with three VMs
// on two cores). What it needs is the local file systems (/var, /node), the firewall,
// sysctl and the kernel modules; each unit adds its own network and time-gate ordering.
// StateDirectory/RuntimeDirectory/ReadWritePaths still order it after the mounts they
// name, and it stops before them and the network at shutdown.
const earlyChain = `DefaultDependencies=no
After=local-fs.target systemd-sysctl.service systemd-modules-load.service ` + FirewallUnit + `
Conflicts=shutdown.target
Before=shutdown.target
`

// privateTmp gives a unit of the chain a /tmp of its own. PrivateTmp= would do it but
// also order the unit after systemd-tmpfiles-setup.service, which earlyChain avoids;
// /var/tmp is closed instead (ProtectSystem=strict alone would leave it readable).
const privateTmp = "TemporaryFileSystem=/tmp:mode=1777\nInaccessiblePaths=-/var/tmp\n"

// BootLaterUnits are the services of the OS that nothing in etcd's chain waits for but
// that start while it runs: logins, D-Bus, SSH, the consoles, utmp and the QEMU guest
// agent (names from Debian, Fedora CoreOS and Flatcar; a drop-in for a unit an OS lacks
// does nothing). BootLaterDropin gives each the lowest CPU share during boot.
var BootLaterUnits = []string{
	"dbus.service", "dbus-broker.service", "systemd-logind.service", "systemd-user-sessions.service",
	"getty@.service", "serial-getty@.service", "ssh.service", "sshd.service",
	"systemd-update-utmp.service", "systemd-update-utmp-runlevel.service", "qemu-guest-agent.service",
}

// BootLaterDropin is the drop-in of BootLaterUnits (SSHKeygenUnit, etcdbake's own, has the
// same line). bootFirst alone gave etcd's chain ten times the share of each of them, but
// they start together (six at once when etcd starts), so etcd still ran at about half
// speed: under TCG its start took 7 s on a reboot against 1.1 s once the boot was over
// (issue 17). At a hundredth of the chain's share they run when it waits (for the peers,
// the network or a timer), and at full speed once the boot is over; nothing is reordered.
func BootLaterDropin() []byte {
	return []byte(header("an OS service etcd's chain does not wait for: the lowest CPU share during boot") +
		"[Service]\nStartupCPUWeight=10\n")
}

// ChronyDropin is the drop-in giving chrony (chrony.service on Debian, chronyd.service on
// Fedora CoreOS / Flatcar) the etcd chain's share of the CPU during boot.
func ChronyDropin() []byte {
	return []byte(header("chrony: the time gate waits for it; it starts early and comes first during boot") +
		"[Unit]\n" + earlyChain + "\n[Service]\n" + bootFirst + "PrivateTmp=no\n" + privateTmp)
}

// PrefetchService reads the programs of etcd's chain into the page cache as soon as the
// root is mounted, while the boot still waits for devices, the network and the peers.
// Started cold, each program is paged in by faults at its start on the chain: 4.1 s for
// etcd-firstboot under TCG, 0.3 s once cached (issue 17). Nothing is ordered after it,
// so it never delays the chain; a program it has not reached yet is read as before.
func PrefetchService() []byte {
	return []byte(`[Unit]
Description=etcdbake: read etcd's chain's programs into the page cache early in the boot
DefaultDependencies=no
After=systemd-remount-fs.service
Conflicts=shutdown.target

[Service]
Type=oneshot
# Once per boot: without it, a later transaction that pulls in sysinit.target (seen on the
# first boot) would read them again.
RemainAfterExit=yes
# In the order the chain starts them.
ExecStart=cat ` + bin("etcd-firstboot") + ` ` + bin("etcd") + ` ` + bin("flanneld") + `
StandardOutput=null
` + bootFirst + `ProtectSystem=strict
ProtectHome=yes
PrivateNetwork=yes
NoNewPrivileges=yes

[Install]
WantedBy=sysinit.target
`)
}

// EtcdService is etcd's unit: it starts only after etcd-firstboot has decided how.
func EtcdService(c *spec.Cluster) []byte {
	return []byte(`[Unit]
Description=etcd member of cluster ` + c.Name + `
Documentation=https://etcd.io/docs/
# etcd-firstboot checks the clock and certificates and decides new/existing/restart.
Requires=` + FirstbootUnit + `
After=` + FirstbootUnit + ` network-online.target
Wants=network-online.target
` + earlyChain + `
[Service]
Type=notify
User=etcd
Group=etcd
EnvironmentFile=` + EtcdEnvPath + `
# Written by etcd-firstboot on every boot; without it etcd does not start.
EnvironmentFile=` + spec.BootstrapEnv + `
ExecStart=` + bin("etcd") + `
Restart=always
RestartSec=5s
TimeoutStartSec=0
LimitNOFILE=65536
IOSchedulingClass=best-effort
IOSchedulingPriority=0
` + bootFirst + `CapabilityBoundingSet=
AmbientCapabilities=
# The data directory, made (0700, etcd's) if a wiped /var lacks it: etcd may start
# before tmpfiles has run.
StateDirectory=` + strings.TrimPrefix(spec.EtcdDataDir, "/var/lib/") + `
StateDirectoryMode=0700
` + privateTmp + hardening + `
[Install]
WantedBy=multi-user.target
`)
}

// FirstbootService runs etcd-firstboot's time gate and bootstrap decision before etcd.
// It retries forever: a clock fixed later heals the node without anyone logging in.
func FirstbootService(c *spec.Cluster) []byte {
	return []byte(`[Unit]
Description=etcd-firstboot: time gate and bootstrap decision for etcd
Documentation=file://` + spec.NodeConfigPath + `
# The time gate asks the NTP servers itself: chrony is started, not waited for (its
# start took 1.5 s of the chain, and it steps the clock only later anyway).
Wants=network-online.target chrony.service chronyd.service
# A refusal fails the start jobs of etcd, the health gate and flanneld ("dependency
# failed"). systemd's automatic restart is a restart job, which pulls in what the unit
# wants, so a retry queues them again and they start once it succeeds (this replaces an
# ExecStartPost=systemctl start that cost each boot 0.8 s on the chain).
Wants=` + FlannelUnit + `
After=network-online.target
Before=` + EtcdUnit + `
StartLimitIntervalSec=0
` + earlyChain + `
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=` + bin("etcd-firstboot") + ` prepare --config ` + spec.NodeConfigPath + `
Restart=on-failure
RestartSec=15s
TimeoutStartSec=` + fmt.Sprint(int((c.Time.SyncTimeout.D+2*time.Minute)/time.Second)) + `s
RuntimeDirectory=etcdbake
RuntimeDirectoryPreserve=yes
StateDirectory=etcdbake
` + bootFirst + `NoNewPrivileges=yes
ProtectHome=yes
` + privateTmp + `ProtectKernelModules=yes
ProtectControlGroups=yes

[Install]
WantedBy=multi-user.target
`)
}

// ReadyService waits until the local member is ready and the cluster has quorum, promotes
// a learner, seeds flannel's config, and then lets flanneld start.
func ReadyService(c *spec.Cluster) []byte {
	return []byte(`[Unit]
Description=etcd-firstboot: health gate (local readiness and quorum) and flannel seeding
Requires=` + EtcdUnit + `
After=` + EtcdUnit + `
# A failed attempt fails flanneld's start job; the retry (a restart job) queues it again
# (see etcd-firstboot.service).
Wants=` + FlannelUnit + `
Before=` + FlannelUnit + `
StartLimitIntervalSec=0
` + earlyChain + `
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=` + bin("etcd-firstboot") + ` ready --config ` + spec.NodeConfigPath + `
Restart=on-failure
RestartSec=10s
TimeoutStartSec=10min
` + bootFirst + `NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
` + privateTmp + `ReadWritePaths=` + spec.RunDir + ` ` + spec.StateDir + ` ` + spec.EtcdDataDir + `

[Install]
WantedBy=multi-user.target
`)
}

// FlannelService runs flanneld once etcd is healthy.
func FlannelService(c *spec.Cluster) []byte {
	return []byte(`[Unit]
Description=flannel overlay network (` + c.Flannel.Backend + `, ` + c.Flannel.Network + `)
Documentation=https://github.com/flannel-io/flannel
Requires=` + ReadyUnit + `
After=` + ReadyUnit + ` network-online.target systemd-modules-load.service
Wants=network-online.target
` + earlyChain + `
[Service]
Type=notify
EnvironmentFile=` + FlannelEnvPath + `
ExecStart=` + bin("flanneld") + `
Restart=always
RestartSec=5s
RuntimeDirectory=flannel
RuntimeDirectoryPreserve=yes
` + bootFirst + `CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW CAP_NET_BIND_SERVICE
NoNewPrivileges=yes
ProtectSystem=full
ProtectHome=yes
` + privateTmp + `ProtectKernelModules=yes
ProtectControlGroups=yes
ProtectClock=yes
RestrictRealtime=yes
LockPersonality=yes

[Install]
WantedBy=multi-user.target
`)
}

// MaintainService is one maintenance pass (`etcd-firstboot maintain`): NOSPACE repair,
// defragmentation of this node's member under the cluster's lock, the quota warning.
// Started by MaintainTimer only once this node passed its health gate (Requisite: a timer
// never starts the gate itself). A pass that fails (a peer down) leaves the unit failed
// until the next pass succeeds: `systemctl --failed` shows it.
func MaintainService(c *spec.Cluster) []byte {
	return []byte(`[Unit]
Description=etcdbake: maintenance pass (NOSPACE repair, defragmentation one member at a time, quota warning)
Documentation=file://` + spec.NodeConfigPath + `
Requisite=` + ReadyUnit + `
After=` + ReadyUnit + `

[Service]
Type=oneshot
ExecStart=` + bin("etcd-firstboot") + ` maintain --config ` + spec.NodeConfigPath + `
# Defragmentation copies the database: it yields to etcd's own work.
CPUWeight=20
IOWeight=20
TimeoutStartSec=30min
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
`)
}

// MaintainTimerUnit runs MaintainService every maintenance.interval on every node, the
// first pass 5 min after boot; the random delay keeps the nodes from all asking at once
// (the cluster's lock serializes what they do anyway).
func MaintainTimerUnit(c *spec.Cluster) []byte {
	iv := c.Maintenance.Interval.D
	return []byte(`[Unit]
Description=etcdbake: maintenance pass every ` + spec.FormatDuration(iv) + ` (spec maintenance.interval)

[Timer]
OnBootSec=5min
OnUnitActiveSec=` + fmt.Sprint(int(iv/time.Second)) + `s
RandomizedDelaySec=` + fmt.Sprint(int(iv/time.Second/5)) + `s

[Install]
WantedBy=timers.target
`)
}

// SnapshotService is one run of the snapshot schedule (`etcd-firstboot snapshot`): unless
// another node took this period's, a verified snapshot under the cluster's lock into the
// data partition, recorded in etcd, backup.keep kept. Only once the health gate passed.
func SnapshotService(c *spec.Cluster) []byte {
	return []byte(`[Unit]
Description=etcdbake: scheduled snapshot of cluster ` + c.Name + ` (one node per period, under the cluster's lock)
Documentation=file://` + spec.NodeConfigPath + `
Requisite=` + ReadyUnit + `
After=` + ReadyUnit + `

[Service]
Type=oneshot
ExecStart=` + bin("etcd-firstboot") + ` snapshot --config ` + spec.NodeConfigPath + `
CPUWeight=20
IOWeight=20
TimeoutStartSec=1h
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths=` + spec.StateDir + `
ProtectHome=yes
PrivateTmp=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
UMask=0077
`)
}

// SnapshotTimerUnit runs SnapshotService at backup.schedule on every node at the same
// times (no random delay, within a second): the first node to take the lock takes the
// period's snapshot and records when the timer runs next; the others see that and skip.
func SnapshotTimerUnit(c *spec.Cluster) []byte {
	return []byte(`[Unit]
Description=etcdbake: scheduled snapshots (spec backup.schedule)

[Timer]
OnCalendar=` + c.Backup.Schedule + `
AccuracySec=1s

[Install]
WantedBy=timers.target
`)
}
