package ignition

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/etcdbake/etcdbake/spec"
)

// Node paths and units of the host firewall and of SSH.
const (
	FirewallUnit    = "etcdbake-firewall.service"
	SSHDConfigPath  = "/etc/ssh/sshd_config.d/10-etcdbake.conf"
	SSHKeygenUnit   = "etcdbake-ssh-hostkeys.service"
	SSHKeygenScript = "/usr/local/libexec/etcdbake-ssh-hostkeys"
	SudoersPath     = "/etc/sudoers.d/etcdbake"
)

// sshdUnits are the names of the SSH daemon's units on Debian (ssh) and on Fedora CoreOS /
// Flatcar (sshd, socket-activated on Flatcar).
const sshdUnits = "ssh.service ssh.socket sshd.service sshd.socket"

// familyAddrs splits addresses or networks into IPv4 and IPv6 nftables set elements.
func familyAddrs(list []string) (v4, v6 []string) {
	for _, s := range list {
		if p, err := netip.ParsePrefix(s); err == nil {
			if p.Addr().Is4() {
				v4 = append(v4, p.String())
			} else {
				v6 = append(v6, p.String())
			}
			continue
		}
		if a, err := netip.ParseAddr(s); err == nil {
			if a.Is4() {
				v4 = append(v4, a.String())
			} else {
				v6 = append(v6, a.String())
			}
		}
	}
	return v4, v6
}

func nftSet(items []string) string {
	if len(items) == 1 {
		return items[0]
	}
	return "{ " + strings.Join(items, ", ") + " }"
}

func ports(ps ...int) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = strconv.Itoa(p)
	}
	return nftSet(s)
}

// allowFrom writes one accept rule per address family for the given sources; match is the
// rest of the rule ("tcp dport 2380"). 0.0.0.0/0 and ::/0 drop the address match.
func allowFrom(b *strings.Builder, sources []string, match, comment string) {
	v4, v6 := familyAddrs(sources)
	for _, f := range []struct {
		key, family, anywhere string
		items                 []string
	}{{"ip saddr", "ipv4", "0.0.0.0/0", v4}, {"ip6 saddr", "ipv6", "::/0", v6}} {
		if len(f.items) == 0 {
			continue
		}
		sel := f.key + " " + nftSet(f.items)
		if slices.Contains(f.items, f.anywhere) {
			sel = "meta nfproto " + f.family
		}
		fmt.Fprintf(b, "\t\t%s %s accept comment %q\n", sel, match, comment)
	}
}

// Firewall is every node's nftables ruleset (the same on every node): a table of its own,
// replaced as a whole each time it is loaded, that drops what the cluster does not need.
func Firewall(c *spec.Cluster) []byte {
	var members []string
	for _, n := range c.Nodes {
		members = append(members, n.IP().String())
	}
	var b strings.Builder
	b.WriteString(header("host firewall (nftables), loaded by " + FirewallUnit))
	fmt.Fprintf(&b, "# Rules of your own: *.nft files in %s, included in the input chain;\n# `systemctl reload %s` applies a change.\n", spec.FirewallDropInDir, FirewallUnit)
	fmt.Fprintf(&b, "table inet %s {}\ndelete table inet %s\ntable inet %s {\n", spec.FirewallTable, spec.FirewallTable, spec.FirewallTable)
	b.WriteString("\tchain input {\n\t\ttype filter hook input priority filter; policy drop;\n")
	b.WriteString("\t\tiif lo accept\n\t\tct state established,related accept\n\t\tct state invalid drop\n")
	b.WriteString("\t\ticmp type { echo-request, destination-unreachable, time-exceeded, parameter-problem } accept\n")
	b.WriteString("\t\ticmpv6 type { echo-request, destination-unreachable, packet-too-big, time-exceeded, parameter-problem, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert } accept\n")
	b.WriteString("\t\tudp sport 67 udp dport 68 accept comment \"DHCP replies\"\n")
	b.WriteString("\t\tip6 saddr fe80::/10 udp sport 547 udp dport 546 accept comment \"DHCPv6 replies\"\n")
	allowFrom(&b, members, "tcp dport "+ports(c.Etcd.PeerPort, c.Etcd.ClientPort), "etcd peers and clients: the members")
	allowFrom(&b, c.Firewall.ClientSources, "tcp dport "+strconv.Itoa(c.Etcd.ClientPort), "etcd clients: firewall.clientSources")
	udp, proto := c.FlannelBackendPorts()
	if len(udp) > 0 {
		allowFrom(&b, members, "udp dport "+ports(udp...), "flannel "+c.Flannel.Backend+": the members")
	}
	if proto != "" {
		allowFrom(&b, members, "meta l4proto "+proto, "flannel "+c.Flannel.Backend+": the members")
	}
	b.WriteString("\t\tiifname \"flannel*\" accept comment \"the flannel overlay\"\n")
	allowFrom(&b, c.SSH.Sources, "tcp dport "+strconv.Itoa(spec.SSHPort), "ssh: ssh.sources")
	fmt.Fprintf(&b, "\t\tinclude %q\n", spec.FirewallDropInDir+"/*.nft")
	b.WriteString("\t\tcounter comment \"dropped\"\n\t}\n")
	b.WriteString("\tchain forward {\n\t\ttype filter hook forward priority filter; policy drop;\n")
	b.WriteString("\t\tct state established,related accept\n")
	fam := "ip"
	if p, err := netip.ParsePrefix(c.Flannel.Network); err == nil && p.Addr().Is6() {
		fam = "ip6"
	}
	fmt.Fprintf(&b, "\t\t%s saddr %s accept comment \"the flannel network\"\n", fam, c.Flannel.Network)
	fmt.Fprintf(&b, "\t\t%s daddr %s accept comment \"the flannel network\"\n", fam, c.Flannel.Network)
	b.WriteString("\t\tcounter comment \"dropped\"\n\t}\n}\n")
	return []byte(b.String())
}

// FirewallService loads Firewall before sysinit.target, so every regular service (etcd's
// chain, sshd, anything a fragment adds) starts behind it, while the network comes up in
// parallel.
func FirewallService() []byte {
	return []byte(`[Unit]
Description=etcdbake host firewall (nftables table inet ` + spec.FirewallTable + `)
Documentation=file://` + spec.FirewallPath + `
DefaultDependencies=no
Before=sysinit.target ` + FirstbootUnit + ` ` + EtcdUnit + ` ` + FlannelUnit + ` ` + sshdUnits + ` shutdown.target
Conflicts=shutdown.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=nft -f ` + spec.FirewallPath + `
ExecReload=nft -f ` + spec.FirewallPath + `
ExecStop=nft delete table inet ` + spec.FirewallTable + `
` + bootFirst + `# No PrivateTmp: it would order the firewall after /var and tmpfiles, late in the boot.
ProtectHome=yes
ProtectSystem=strict

[Install]
WantedBy=sysinit.target
`)
}

// SSHDConfig makes sshd key-only: the host keys from the data partition, no passwords, no
// root, and only the spec's user.
func SSHDConfig(c *spec.Cluster) []byte {
	return []byte(header("sshd: key-only logins as "+c.SSH.User+" (sudo for root)") +
		"HostKey " + spec.SSHHostKeyDir + "/ssh_host_ed25519_key\n" +
		"HostKey " + spec.SSHHostKeyDir + "/ssh_host_ecdsa_key\n" +
		"PermitRootLogin no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n" +
		"PermitEmptyPasswords no\nAuthenticationMethods publickey\nAllowUsers " + c.SSH.User + "\n" +
		"# Ignition writes the spec's keys to authorized_keys.d/ignition (Fedora CoreOS and\n# Flatcar read it by their own configuration; Debian's sshd needs this line).\n" +
		"AuthorizedKeysFile .ssh/authorized_keys .ssh/authorized_keys.d/ignition\n" +
		"X11Forwarding no\n")
}

// Sudoers lets the spec's user become root without a password (it has none).
func Sudoers(c *spec.Cluster) []byte {
	return []byte(header("the SSH user becomes root with sudo") + c.SSH.User + " ALL=(ALL) NOPASSWD: ALL\n")
}

// SSHHostKeysScript makes the host keys once, on the data partition, and prints their
// fingerprints (to the console too: compare them with what your ssh client shows).
func SSHHostKeysScript() []byte {
	d := spec.SSHHostKeyDir
	return []byte(`#!/bin/sh
# Written by etcdbake: SSH host keys, made at the first boot on the data partition and kept
# across A/B updates, so clients see the same key after every update.
set -eu
umask 077
mkdir -p ` + d + `
for t in ed25519 ecdsa; do
  k=` + d + `/ssh_host_${t}_key
  if [ ! -s "$k" ] || [ ! -s "$k.pub" ]; then
    rm -f "$k" "$k.pub"
    ssh-keygen -q -t "$t" -N "" -C "root@$(hostname)" -f "$k.new"
    mv "$k.new.pub" "$k.pub"
    mv "$k.new" "$k"
  fi
  echo "etcdbake: ssh host key $(ssh-keygen -l -f "$k.pub")"
done
`)
}

// SSHKeygenService runs SSHHostKeysScript before sshd.
func SSHKeygenService() []byte {
	return []byte(`[Unit]
Description=etcdbake: SSH host keys on the data partition
Documentation=file://` + SSHKeygenScript + `
After=local-fs.target
Before=` + sshdUnits + `

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=` + SSHKeygenScript + `
StandardOutput=journal+console
# Like the OS services in BootLaterUnits: the lowest CPU share while etcd's chain boots.
StartupCPUWeight=10

[Install]
WantedBy=multi-user.target
`)
}
