package spec

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"
)

var (
	labelRe      = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	versionRe    = regexp.MustCompile(`^v(\d+)\.(\d+)\.(\d+)$`)
	debPackageRe = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]+$`)
	// kernelModuleRe is a module name as modprobe takes it (base.Recipe.KeepModules).
	kernelModuleRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`)
	dnsNameRe      = regexp.MustCompile(`^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$`)
)

// Backends lists the flannel backends etcdbake configures.
var Backends = []string{"vxlan", "host-gw", "wireguard", "ipip"}

// Algorithms lists the key algorithms the pki package issues.
var Algorithms = []string{"ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-4096"}

// MaxRecommendedMembers is etcd's advice for the largest voting membership.
const MaxRecommendedMembers = 7

// Validate checks a defaulted spec and returns every problem found. It does not change c.
func Validate(c *Cluster) Report {
	var r Report
	if !labelRe.MatchString(c.Name) {
		r.Errorf("name", "%q is not a valid cluster name: use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit", c.Name)
	}
	validateNodes(c, &r)
	validateEtcd(c, &r)
	validateFlannel(c, &r)
	validateTime(c, &r)
	validateRollout(c, &r)
	validateMaintenance(c, &r)
	validateBackup(c, &r)
	validatePKI(c, &r)
	validateBinaries(c, &r)
	validateFirewall(c, &r)
	for i, pkg := range c.Image.Packages {
		if !debPackageRe.MatchString(pkg) {
			r.Errorf(fmt.Sprintf("image.packages[%d]", i), "%q is not a Debian package name (lowercase letters, digits, '+', '-', '.'; e.g. nfs-common)", pkg)
		}
	}
	for i, m := range c.Image.KernelModules {
		if !kernelModuleRe.MatchString(m) {
			r.Errorf(fmt.Sprintf("image.kernelModules[%d]", i), "%q is not a kernel module name (letters, digits, '_' and '-', as modprobe takes it; e.g. xfs)", m)
		}
	}
	for i, k := range c.SSH.AuthorizedKeys {
		if !strings.HasPrefix(k, "ssh-") && !strings.HasPrefix(k, "ecdsa-") && !strings.HasPrefix(k, "sk-") {
			r.Errorf(fmt.Sprintf("ssh.authorizedKeys[%d]", i), "does not look like an OpenSSH public key (it should start with ssh-ed25519, ssh-rsa or ecdsa-...): paste the .pub file's line")
		}
	}
	if c.SSH.User != "" && !labelRe.MatchString(c.SSH.User) {
		r.Errorf("ssh.user", "%q is not a valid user name: use lowercase letters, digits and '-'", c.SSH.User)
	}
	if c.SSH.User == EtcdUser {
		r.Errorf("ssh.user", "%q is etcdbake's system account, which runs etcd and has no login: use another user, e.g. %s", c.SSH.User, DefaultSSHUser)
	}
	validateButane(c, &r)
	return r
}

// validateButane checks the fragment fields themselves; the fragments' contents are
// checked by ignition.CheckFragments.
func validateButane(c *Cluster, r *Report) {
	any := c.Butane != ""
	for _, n := range c.Nodes {
		any = any || n.Butane != ""
	}
	if c.ButaneOverrides && !any {
		r.Warnf("butaneOverrides", "no Butane fragment is named (butane, nodes[].butane), so it has no effect")
	}
}

func validateNodes(c *Cluster, r *Report) {
	n := len(c.Nodes)
	switch {
	case n == 0:
		r.Errorf("nodes", "no nodes: list 3 (or 5, 7) nodes with name and address")
	case n == 1:
		r.Warnf("nodes", "a single member has no fault tolerance: use 3 nodes for production")
	case n%2 == 0:
		r.Errorf("nodes", "%d members is an even count: etcd needs a majority (%d of %d) for quorum, so %d members tolerate no more failures than %d (%d) while adding one more machine that can fail and slowing writes; use %d or %d nodes",
			n, n/2+1, n, n, n-1, (n-1)/2, n-1, n+1)
	}
	if n > MaxRecommendedMembers && n%2 == 1 {
		r.Warnf("nodes", "%d members is more than etcd's recommended maximum of %d: every write is replicated to a majority, so more members make writes slower without a useful gain in tolerance; run at most 7 voting members", n, MaxRecommendedMembers)
	}

	names := map[string]int{}
	addrs := map[netip.Addr]int{}
	macs := map[string]int{}
	var prefixes []netip.Prefix
	sameSubnet := true
	for i, node := range c.Nodes {
		p := fmt.Sprintf("nodes[%d]", i)
		switch {
		case node.Name == "":
			r.Errorf(p+".name", "missing: give each node a name (it becomes the etcd member name and hostname)")
		case strings.ContainsAny(node.Name, "=,"):
			r.Errorf(p+".name", "%q contains '=' or ',', which break etcd's --initial-cluster list (name=url,name=url): use letters, digits and '-'", node.Name)
		case !labelRe.MatchString(node.Name):
			r.Errorf(p+".name", "%q is not an RFC 1123 label: use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit", node.Name)
		}
		if j, dup := names[node.Name]; dup && node.Name != "" {
			r.Errorf(p+".name", "%q is also the name of nodes[%d]: node names must be unique", node.Name, j)
		} else {
			names[node.Name] = i
		}

		pfx, ok := validateAddress(node.Address, p+".address", r)
		if ok {
			if j, dup := addrs[pfx.Addr()]; dup {
				r.Errorf(p+".address", "%s is also the address of nodes[%d]: node addresses must be unique", pfx.Addr(), j)
			} else {
				addrs[pfx.Addr()] = i
			}
			if len(prefixes) > 0 && prefixes[0].Masked() != pfx.Masked() {
				sameSubnet = false
			}
			prefixes = append(prefixes, pfx)
		}
		if node.Gateway != "" {
			gw, err := netip.ParseAddr(node.Gateway)
			switch {
			case err != nil:
				r.Errorf(p+".gateway", "%q is not an IP address", node.Gateway)
			case ok && !pfx.Masked().Contains(gw):
				r.Errorf(p+".gateway", "%s is outside the node's subnet %s: the gateway must be reachable on the link", gw, pfx.Masked())
			case ok && gw == pfx.Addr():
				r.Errorf(p+".gateway", "%s is the node's own address", gw)
			}
		}
		if node.MAC != "" {
			hw, err := net.ParseMAC(node.MAC)
			if err != nil || len(hw) != 6 {
				r.Errorf(p+".mac", "%q is not a MAC address: write six hex pairs, e.g. 52:54:00:12:34:56", node.MAC)
			} else if j, dup := macs[hw.String()]; dup {
				r.Errorf(p+".mac", "%s is also the MAC of nodes[%d]", hw, j)
			} else {
				macs[hw.String()] = i
			}
		}
		for k, d := range node.DNS {
			if _, err := netip.ParseAddr(d); err != nil {
				r.Errorf(fmt.Sprintf("%s.dns[%d]", p, k), "%q is not an IP address: resolvers are given by address", d)
			}
		}
		for k, s := range node.ExtraSANs {
			validateSAN(s, fmt.Sprintf("%s.extraSANs[%d]", p, k), r)
		}
	}
	if !sameSubnet {
		for i, node := range c.Nodes {
			if node.Gateway == "" {
				r.Errorf(fmt.Sprintf("nodes[%d].gateway", i), "the nodes are not all in one subnet, so this node needs a gateway to reach the others: add `gateway:` or put all nodes in one subnet")
			}
		}
	}
}

// validateAddress checks a node address (IP/prefix) and returns it when usable.
func validateAddress(s, path string, r *Report) (netip.Prefix, bool) {
	if s == "" {
		r.Errorf(path, "missing: give the node's IP with its prefix length, e.g. 10.88.0.11/24")
		return netip.Prefix{}, false
	}
	pfx, err := netip.ParsePrefix(s)
	if err != nil {
		if _, aerr := netip.ParseAddr(s); aerr == nil {
			r.Errorf(path, "%q has no prefix length: write it as %s/24 (or the subnet's real length)", s, s)
		} else {
			r.Errorf(path, "%q is not an IP with a prefix length such as 10.88.0.11/24", s)
		}
		return netip.Prefix{}, false
	}
	a := pfx.Addr()
	switch {
	case a.IsLoopback():
		r.Errorf(path, "%s is a loopback address: other nodes cannot reach it; use the node's network address", a)
	case a.IsUnspecified():
		r.Errorf(path, "%s is the unspecified address: give the node's real address", a)
	case a.IsMulticast():
		r.Errorf(path, "%s is a multicast address: give the node's unicast address", a)
	case a.IsLinkLocalUnicast():
		r.Errorf(path, "%s is a link-local address, which changes with the link: give a stable address", a)
	case a.Is4() && pfx.Bits() < 31 && (a == pfx.Masked().Addr() || a == lastAddr(pfx)):
		r.Errorf(path, "%s is the network or broadcast address of %s: pick a host address", a, pfx.Masked())
	default:
		return pfx, true
	}
	return netip.Prefix{}, false
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func validateSAN(s, path string, r *Report) {
	if _, err := netip.ParseAddr(s); err == nil {
		return
	}
	if len(s) > 253 || !dnsNameRe.MatchString(s) {
		r.Errorf(path, "%q is neither an IP address nor a lowercase DNS name", s)
	}
}

func validateEtcd(c *Cluster, r *Report) {
	e := c.Etcd
	validateVersion(e.Version, "etcd.version", 3, 5, "etcd", r)
	if e.Token == "" || strings.ContainsAny(e.Token, " \t\n") {
		r.Errorf("etcd.token", "%q is not a usable initial-cluster token: use a word without spaces", e.Token)
	}
	ports := map[int]string{}
	for _, pp := range []struct {
		name string
		v    int
	}{{"etcd.clientPort", e.ClientPort}, {"etcd.peerPort", e.PeerPort}, {"etcd.metricsPort", e.MetricsPort}} {
		if pp.v < 1 || pp.v > 65535 {
			r.Errorf(pp.name, "%d is not a TCP port (1-65535)", pp.v)
			continue
		}
		if other, dup := ports[pp.v]; dup {
			r.Errorf(pp.name, "port %d is already used by %s: each listener needs its own port", pp.v, other)
		}
		ports[pp.v] = pp.name
	}
	hb, okHB := durationOK(e.HeartbeatInterval, "etcd.heartbeatInterval", r)
	el, okEl := durationOK(e.ElectionTimeout, "etcd.electionTimeout", r)
	if okHB && (hb < 10*time.Millisecond || hb%time.Millisecond != 0) {
		r.Errorf("etcd.heartbeatInterval", "%s: use a whole number of milliseconds, at least 10ms (etcd's default is 100ms)", hb)
		okHB = false
	}
	if okEl && el%time.Millisecond != 0 {
		r.Errorf("etcd.electionTimeout", "%s: use a whole number of milliseconds", el)
		okEl = false
	}
	if okEl && el > 50*time.Second {
		r.Errorf("etcd.electionTimeout", "%s is above etcd's limit of 50s", el)
	}
	if okHB && okEl && el < 5*hb {
		r.Errorf("etcd.electionTimeout", "%s is less than 5 x heartbeatInterval (%s): etcd refuses to start; use about 10 x the heartbeat (e.g. %s)", el, hb, 10*hb)
	}
	if e.SnapshotCount < 1 {
		r.Errorf("etcd.snapshotCount", "%d: must be at least 1 (etcd's default is 10000)", e.SnapshotCount)
	}
	switch {
	case e.QuotaBackendBytes < 0:
		r.Errorf("etcd.quotaBackendBytes", "%d is negative: give a size in bytes (default 2147483648)", e.QuotaBackendBytes)
	case e.QuotaBackendBytes > 8<<30:
		r.Warnf("etcd.quotaBackendBytes", "%d bytes is above etcd's suggested maximum of 8 GiB: large databases make snapshots and defragmentation slow", e.QuotaBackendBytes)
	}
	if !e.AutoCompactionRetention.IsZero() {
		durationOK(e.AutoCompactionRetention, "etcd.autoCompactionRetention", r)
	}
	for k, s := range e.ExtraSANs {
		validateSAN(s, fmt.Sprintf("etcd.extraSANs[%d]", k), r)
	}
}

func validateVersion(v, path string, major, minMinor int, what string, r *Report) {
	m := versionRe.FindStringSubmatch(v)
	if m == nil {
		r.Errorf(path, "%q is not a release version: write it as vMAJOR.MINOR.PATCH, e.g. the example's pin", v)
		return
	}
	var maj, mnr int
	fmt.Sscan(m[1], &maj)
	fmt.Sscan(m[2], &mnr)
	if maj != major || mnr < minMinor {
		r.Errorf(path, "%s %s is not supported: etcdbake needs %s v%d.%d or newer in the v%d line", what, v, what, major, minMinor, major)
	}
}

func durationOK(d Duration, path string, r *Report) (time.Duration, bool) {
	if d.Err != nil {
		r.Errorf(path, "%v", d.Err)
		return 0, false
	}
	return d.D, true
}

func validateFlannel(c *Cluster, r *Report) {
	f := c.Flannel
	validateVersion(f.Version, "flannel.version", 0, 18, "flannel", r)
	if !slices.Contains(Backends, f.Backend) {
		r.Errorf("flannel.backend", "unknown backend %q: use one of %s", f.Backend, strings.Join(Backends, ", "))
	}
	if f.Backend == "vxlan" && (f.VNI < 1 || f.VNI > 1<<24-1) {
		r.Errorf("flannel.vni", "%d is not a VXLAN network identifier (1-16777215)", f.VNI)
	}
	if f.Backend != "vxlan" && f.VNI != 0 {
		r.Errorf("flannel.vni", "only the vxlan backend takes a VNI: remove it or use backend vxlan")
	}
	if !strings.HasPrefix(f.Prefix, "/") || strings.HasSuffix(f.Prefix, "/") || strings.ContainsAny(f.Prefix, " \t") {
		r.Errorf("flannel.prefix", "%q must be an etcd key path starting with '/' and not ending with '/', e.g. %s", f.Prefix, DefaultPrefix)
	}
	if f.Network == "" {
		r.Errorf("flannel.network", "missing: give the overlay network as a CIDR, e.g. 10.244.0.0/16")
		return
	}
	netw, err := netip.ParsePrefix(f.Network)
	if err != nil || !netw.Addr().Is4() {
		r.Errorf("flannel.network", "%q is not an IPv4 CIDR such as 10.244.0.0/16", f.Network)
		return
	}
	if netw.Masked() != netw {
		r.Errorf("flannel.network", "%s has host bits set: write the network address, %s", netw, netw.Masked())
		return
	}
	for i, node := range c.Nodes {
		if pfx, err := netip.ParsePrefix(node.Address); err == nil && netw.Overlaps(pfx.Masked()) {
			r.Errorf("flannel.network", "%s overlaps the node network %s of nodes[%d]: pick an overlay range that is not used on the hosts' links", netw, pfx.Masked(), i)
			break
		}
	}
	sl := f.SubnetLen
	switch {
	case sl <= netw.Bits() || sl > 30:
		r.Errorf("flannel.subnetLen", "/%d must be longer than the network's /%d and at most /30", sl, netw.Bits())
	default:
		// flannel never hands out the first subnet of the range (it holds the network
		// address), so 2^(subnetLen-bits) - 1 subnets are available.
		avail := (1 << min(sl-netw.Bits(), 30)) - 1
		if avail < len(c.Nodes) {
			r.Errorf("flannel.subnetLen", "/%d inside %s gives %d node subnet(s) but there are %d nodes: use a shorter subnetLen or a larger network", sl, netw, avail, len(c.Nodes))
		}
	}
}

func validateTime(c *Cluster, r *Report) {
	t := c.Time
	if len(t.Servers) == 0 {
		r.Warnf("time.servers", "no NTP servers: chrony cannot synchronise, so the time gate can only compare clocks with the peers; list your NTP servers")
	}
	for i, s := range t.Servers {
		if s == "" || strings.ContainsAny(s, " \t/") {
			r.Errorf(fmt.Sprintf("time.servers[%d]", i), "%q is not a host name or address", s)
		}
	}
	if d, ok := durationOK(t.MaxSkew, "time.maxSkew", r); ok && d == 0 {
		r.Errorf("time.maxSkew", "must be above 0 (e.g. 500ms): clocks are never exactly equal")
	}
	if d, ok := durationOK(t.SyncTimeout, "time.syncTimeout", r); ok && d == 0 {
		r.Errorf("time.syncTimeout", "must be above 0 (e.g. 2m): it bounds the wait for clock sync")
	}
}

func validateRollout(c *Cluster, r *Report) {
	if d, ok := durationOK(c.Rollout.Timeout, "rollout.timeout", r); ok && d < MinRolloutTimeout {
		r.Errorf("rollout.timeout", "%s is too short to boot and verify a node: use at least %s (default %s)", d, MinRolloutTimeout, DefaultRolloutTimeout)
	}
}

func validateMaintenance(c *Cluster, r *Report) {
	m := c.Maintenance
	if d, ok := durationOK(m.Interval, "maintenance.interval", r); ok && d != 0 && d < MinMaintenanceInterval {
		r.Errorf("maintenance.interval", "%s is shorter than a pass may take: use at least %s, or \"0\" to turn the timer off (default %s)", d, MinMaintenanceInterval, DefaultMaintenanceInterval)
	} else if ok && d == 0 {
		r.Warnf("maintenance.interval", "0 turns self-maintenance off: nothing repairs NOSPACE or defragments the members; run etcd-firstboot maintain yourself")
	}
	if m.DefragRatio <= 0 || m.DefragRatio >= 1 {
		r.Errorf("maintenance.defragRatio", "%g is not a ratio of in use to total between 0 and 1 (default %g)", m.DefragRatio, DefaultDefragRatio)
	}
	if m.DefragMinFreeBytes < 0 {
		r.Errorf("maintenance.defragMinFreeBytes", "%d is below 0 (default %d, 100 MiB)", m.DefragMinFreeBytes, DefaultDefragMinFreeBytes)
	}
	if d, ok := durationOK(m.DefragBetween, "maintenance.defragBetween", r); ok && d < 0 {
		r.Errorf("maintenance.defragBetween", "%s is below 0 (default %s)", d, DefaultDefragBetween)
	}
}

func validateBackup(c *Cluster, r *Report) {
	b := c.Backup
	if strings.ContainsAny(b.Schedule, "\n\r\\%") || strings.TrimSpace(b.Schedule) != b.Schedule {
		r.Errorf("backup.schedule", "%q is not a systemd calendar expression on one line (e.g. %q, \"daily\"; %q turns snapshots off)", b.Schedule, DefaultBackupSchedule, BackupOff)
	}
	if b.Keep < 1 {
		r.Errorf("backup.keep", "%d: keep at least 1 snapshot (default %d)", b.Keep, DefaultBackupKeep)
	}
	t := b.Target
	if t == nil {
		return
	}
	if b.Schedule == BackupOff {
		r.Warnf("backup.target", "backup.schedule is off, so nothing is uploaded to the target")
	}
	if u, err := url.Parse(t.Endpoint); err != nil || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
		r.Errorf("backup.target.endpoint", "%q is not https://HOST[:PORT]", t.Endpoint)
	} else if u.Scheme == "http" {
		r.Warnf("backup.target.endpoint", "plain http: the snapshots (every key of the cluster) and the request signatures cross the network unencrypted; use https")
	} else if u.Scheme != "https" {
		r.Errorf("backup.target.endpoint", "%q is not https://HOST[:PORT]", t.Endpoint)
	}
	if !bucketRe.MatchString(t.Bucket) {
		r.Errorf("backup.target.bucket", "%q is not an S3 bucket name (3-63 lowercase letters, digits, dots and hyphens)", t.Bucket)
	}
	if strings.HasPrefix(t.Prefix, "/") || strings.Contains(t.Prefix, "//") {
		r.Errorf("backup.target.prefix", "%q: no leading slash and no empty path segment (e.g. \"prod/\")", t.Prefix)
	}
	if t.CredentialsFile == "" {
		r.Errorf("backup.target.credentialsFile", "required: a file with AWS_ACCESS_KEY_ID= and AWS_SECRET_ACCESS_KEY= lines (its content is baked into each node's own partition)")
	}
}

var bucketRe = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$`)

// S3 credentials file: KEY=value lines (the AWS tools' environment), # comments.
const (
	S3AccessKeyVar = "AWS_ACCESS_KEY_ID"
	S3SecretKeyVar = "AWS_SECRET_ACCESS_KEY"
)

// ParseS3Credentials reads the access and secret key from an S3 credentials file's
// content (backup.target.credentialsFile); name is the file's name, for the errors.
func ParseS3Credentials(name string, b []byte) (access, secret string, err error) {
	for n, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return "", "", fmt.Errorf("%s:%d: not KEY=value", name, n+1)
		}
		v = strings.Trim(strings.TrimSpace(v), `"'`)
		switch strings.TrimSpace(k) {
		case S3AccessKeyVar:
			access = v
		case S3SecretKeyVar:
			secret = v
		}
	}
	if access == "" || secret == "" {
		return "", "", fmt.Errorf("%s: needs %s=... and %s=... lines", name, S3AccessKeyVar, S3SecretKeyVar)
	}
	return access, secret, nil
}

func validatePKI(c *Cluster, r *Report) {
	p := c.PKI
	if !slices.Contains(Algorithms, p.Algorithm) {
		r.Errorf("pki.algorithm", "unknown algorithm %q: use one of %s", p.Algorithm, strings.Join(Algorithms, ", "))
	}
	ca, okCA := durationOK(p.CALifetime, "pki.caLifetime", r)
	leaf, okLeaf := durationOK(p.LeafLifetime, "pki.leafLifetime", r)
	bd, okBD := durationOK(p.Backdate, "pki.backdate", r)
	renew, okRenew := durationOK(p.RenewBefore, "pki.renewBefore", r)
	if okCA && ca < 24*time.Hour {
		r.Errorf("pki.caLifetime", "%s is too short for a CA: use years, e.g. 10y", p.CALifetime)
	}
	if okLeaf && leaf < time.Hour {
		r.Errorf("pki.leafLifetime", "%s is too short: use at least 1h (default 1y)", p.LeafLifetime)
	}
	if okCA && okLeaf && leaf > ca {
		r.Errorf("pki.leafLifetime", "%s is longer than the CA's lifetime %s: a certificate cannot outlive its CA; shorten it or lengthen pki.caLifetime", p.LeafLifetime, p.CALifetime)
	}
	if okBD && bd > 24*time.Hour {
		r.Errorf("pki.backdate", "%s: backdating is for small clock differences, keep it at most 24h", p.Backdate)
	}
	if okRenew && okLeaf && renew >= leaf {
		r.Errorf("pki.renewBefore", "%s is not shorter than leafLifetime %s: every run would re-issue every certificate", p.RenewBefore, p.LeafLifetime)
	}
}

func validateBinaries(c *Cluster, r *Report) {
	b := c.Binary
	seen := map[string]bool{}
	for i, s := range b.Sources {
		path := fmt.Sprintf("binaries.sources[%d]", i)
		switch {
		case s != SourceRelease && s != SourceGo && s != SourceFile:
			r.Errorf(path, "unknown source %q: use release, go or file", s)
		case seen[s]:
			r.Errorf(path, "%q is listed twice", s)
		}
		seen[s] = true
	}
	known := []string{"etcd", "etcdctl", "flanneld"}
	for name, f := range b.Files {
		path := "binaries.files." + name
		if !slices.Contains(known, name) {
			r.Errorf(path, "unknown binary %q: use etcd, etcdctl or flanneld", name)
		}
		if f.Path == "" {
			r.Errorf(path+".path", "missing: give the local file's path")
		}
		if len(f.SHA256) != 64 || strings.Trim(strings.ToLower(f.SHA256), "0123456789abcdef") != "" {
			r.Errorf(path+".sha256", "must be the file's sha256 as 64 hex digits (run sha256sum on it)")
		}
	}
	if seen[SourceFile] {
		for _, name := range known {
			if _, ok := b.Files[name]; !ok && len(b.Sources) == 1 {
				r.Errorf("binaries.files", "source \"file\" is the only source but %s has no entry: add binaries.files.%s with path and sha256", name, name)
			}
		}
	} else if len(b.Files) > 0 {
		r.Warnf("binaries.files", "files are listed but \"file\" is not in binaries.sources, so they are not used")
	}
	for _, u := range []struct{ path, v string }{{"binaries.etcdReleaseURL", b.EtcdReleaseURL}, {"binaries.flannelReleaseURL", b.FlannelReleaseURL}} {
		if u.v != "" && !strings.HasPrefix(u.v, "https://") && !strings.HasPrefix(u.v, "http://") {
			r.Errorf(u.path, "%q must be an http(s) URL", u.v)
		}
	}
}

// IsLabel reports whether s is an RFC 1123 label (1-63 lowercase letters, digits and
// '-', starting and ending with a letter or digit), as node names are: also safe as one
// path element.
func IsLabel(s string) bool { return labelRe.MatchString(s) }
