package bake

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/etcdbake/etcdbake/ignition"
	imgbase "github.com/etcdbake/etcdbake/imagebuild/base"
	"github.com/etcdbake/etcdbake/internal/fileutil"
	"github.com/etcdbake/etcdbake/pki"
	"github.com/etcdbake/etcdbake/pxe"
	"github.com/etcdbake/etcdbake/spec"
	"github.com/etcdbake/etcdbake/vmcluster"
)

// The nodes' images for QEMU (`etcdbake up`, the VM tests): the same pipeline as Images,
// plus vmcluster's guest fragment (the user-mode NIC, etcd listening on it) and the hub's
// time host as the only time server, since a VM reaches no public one.

// QEMUOptions say where QEMUImages keeps the images; what they are made from is the
// Sources (Sources.FirstbootVersion goes into the stamp too: a new version makes new
// images).
type QEMUOptions struct {
	// BaseCacheDir holds the default base (built if missing).
	BaseCacheDir string
	// OutDir receives the raw images and the stamp of their inputs (inputs.sha256).
	OutDir string
	// RunDir holds the VMs' disks (vmcluster.ClusterOptions.Dir): new images while disks
	// made over the old ones are kept there is an error (their etcd data would not match).
	RunDir string
	// ReleasesDir, if set, keeps each build as a release (ImageOptions.ReleasesDir).
	ReleasesDir string
	// EtcdData, if set, makes images whose data partitions hold these restored etcd data
	// directories (RestoreData), always new, into OutDir (not the usual images' dir):
	// RunDir must keep no disks.
	EtcdData map[string]string
	Meter    func(step string, done, total int64)
}

// QEMUBuild is what QEMUImages made or found.
type QEMUBuild struct {
	// Images maps each node to its raw image.
	Images map[string]string
	// Base is the base tarball the images were made from.
	Base string
	// TimeServer is the hub's time host on the nodes' segment (see QEMUTimeServer).
	TimeServer netip.Addr
	// Reused says the images in OutDir were already built from the same inputs.
	Reused bool
}

// stampFile, in QEMUOptions.OutDir, is the hash of the inputs the images there were made from.
const stampFile = "inputs.sha256"

// QEMUImages builds the nodes' raw images for QEMU into o.OutDir unless the ones there were
// built from the same inputs (spec, certificates, etcd-firstboot, base, version).
func QEMUImages(ctx context.Context, s Sources, o QEMUOptions) (*QEMUBuild, error) {
	progress := s.progress
	c := s.Cluster
	timeServer, err := QEMUTimeServer(c)
	if err != nil {
		return nil, err
	}
	base, err := Base(ctx, o.BaseCacheDir, c, func(f string, args ...any) {
		progress("base: "+f, args...)
	})
	if err != nil {
		return nil, err
	}
	stamp, err := qemuInputsStamp(s, timeServer, base)
	if err != nil {
		return nil, err
	}
	b := &QEMUBuild{Images: map[string]string{}, Base: base, TimeServer: timeServer}
	for _, n := range c.Nodes {
		b.Images[n.Name] = filepath.Join(o.OutDir, n.Name+".raw")
	}
	stampPath := filepath.Join(o.OutDir, stampFile)
	if kept := vmcluster.KeptDisks(o.RunDir); len(o.EtcdData) > 0 && len(kept) > 0 {
		return nil, fmt.Errorf("%s keeps the disks of %v with their etcd data: a restore boots new disks, and etcdbake never discards data by itself: `etcdbake down --purge` discards them, then restore", o.RunDir, kept)
	}
	if old, err := os.ReadFile(stampPath); err == nil && string(old) == stamp && allExist(b.Images) && len(o.EtcdData) == 0 {
		b.Reused = true
		return b, nil
	}
	// New images: disks made over the old ones would no longer match them.
	var stale []string
	for _, n := range vmcluster.KeptDisks(o.RunDir) {
		if _, ok := b.Images[n]; ok {
			stale = append(stale, n)
		}
	}
	if len(stale) > 0 {
		return nil, fmt.Errorf("the inputs of the VMs' images changed (spec, PKI, etcd-firstboot or base) but %s keeps disks of %v made from the old ones, with their etcd data: `etcdbake down --purge` discards those disks, then run up again", o.RunDir, stale)
	}
	_ = os.Remove(stampPath)
	if _, _, err := Images(ctx, qemuSources(s, timeServer), ImageOptions{
		Base: base, BaseCacheDir: o.BaseCacheDir, OutDir: o.OutDir, ReleasesDir: o.ReleasesDir, Formats: []string{"raw"}, DataSize: 1 << 30,
		EtcdData: o.EtcdData, Meter: o.Meter,
	}); err != nil {
		return nil, err
	}
	if len(o.EtcdData) > 0 {
		return b, nil // restored images are never reused
	}
	if err := fileutil.WriteAtomic(stampPath, []byte(stamp), 0o644); err != nil {
		return nil, err
	}
	return b, nil
}

// qemuSources are the sources of a QEMU node's image: the VMs reach no public time
// server (the hub answers NTP on the segment), and vmcluster's guest fragment is added.
func qemuSources(s Sources, timeServer netip.Addr) Sources {
	vc := *s.Cluster
	vc.Time.Servers = []string{timeServer.String()}
	if f, ok := QEMUTargetForward(s.Cluster); ok {
		t := *vc.Backup.Target
		t.Endpoint = f.GuestURL
		vc.Backup.Target = &t
	}
	vs := s
	vs.Cluster = &vc
	vs.Fragments = append(append([]ignition.Fragment(nil), s.Fragments...), QEMUFragment(s.Cluster))
	vs.Progress = func(f string, args ...any) { s.progress("image: "+f, args...) }
	return vs
}

// QEMURelease builds a release of the spec for a running QEMU cluster (what `etcdbake
// rollout` publishes) into o.ReleasesDir, and returns its directory. The images the VMs'
// disks are made from (o.OutDir) are not touched: the build's own images go to a
// scratch directory that is removed.
func QEMURelease(ctx context.Context, s Sources, o QEMUOptions) (string, error) {
	if o.ReleasesDir == "" {
		return "", fmt.Errorf("QEMURelease: no releases directory")
	}
	timeServer, err := QEMUTimeServer(s.Cluster)
	if err != nil {
		return "", err
	}
	base, err := Base(ctx, o.BaseCacheDir, s.Cluster, func(f string, args ...any) { s.progress("base: "+f, args...) })
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(o.ReleasesDir, 0o755); err != nil {
		return "", err
	}
	scratch, err := os.MkdirTemp(o.ReleasesDir, ".images-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(scratch)
	_, imgs, err := Images(ctx, qemuSources(s, timeServer), ImageOptions{
		Base: base, BaseCacheDir: o.BaseCacheDir, OutDir: scratch, ReleasesDir: o.ReleasesDir, Formats: []string{"raw"}, DataSize: 1 << 30,
		Meter: o.Meter,
	})
	if err != nil {
		return "", err
	}
	if len(imgs) == 0 || imgs[0].Release == "" {
		return "", fmt.Errorf("QEMURelease: the build kept no release")
	}
	return imgs[0].Release, nil
}

// QEMUFragment is vmcluster's guest configuration for the spec's nodes, as a fragment
// for every node's Ignition config: etcd listens on the spec's client and peer ports,
// which QEMUCluster forwards.
func QEMUFragment(c *spec.Cluster) ignition.Fragment {
	var userMACs []string
	for _, n := range c.Nodes {
		userMACs = append(userMACs, vmcluster.UserMAC(n.MAC))
	}
	return ignition.Fragment{Source: vmcluster.GuestButaneSource, Data: vmcluster.GuestButane(c.Etcd.ClientPort, c.Etcd.PeerPort, userMACs...)}
}

// QEMUTimeServer is where the hub answers NTP on the nodes' segment: the highest host
// address of the first node's prefix that no node uses.
func QEMUTimeServer(c *spec.Cluster) (netip.Addr, error) {
	var used []netip.Addr
	for _, n := range c.Nodes {
		used = append(used, n.IP())
	}
	a, err := vmcluster.FreeHostAddr(c.Nodes[0].Prefix(), used...)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("nodes[0].address %s: %w", c.Nodes[0].Address, err)
	}
	return a, nil
}

// QEMUCluster describes the VMs of the spec's nodes booting the given images (node ->
// image, e.g. QEMUBuild.Images), with their disks, consoles and sockets in dir: the spec's
// MACs on the private segment and forwards to the spec's etcd ports. The caller sets the
// rest (time server, memory, accelerator, KeepDisks).
func QEMUCluster(c *spec.Cluster, images map[string]string, dir string) vmcluster.ClusterOptions {
	macs := map[string]string{}
	for _, n := range c.Nodes {
		macs[n.Name] = n.MAC
	}
	// Nodes reboot in place: an A/B slot's boot that fails verification reboots into the
	// previous slot, as on a real machine.
	return vmcluster.ClusterOptions{Images: images, MACs: macs, Dir: dir, ClientPort: c.Etcd.ClientPort, PeerPort: c.Etcd.PeerPort, RebootInPlace: true}
}

// QEMUAccel resolves an accelerator choice (tcg, kvm or auto; see vmcluster.ChooseAccel)
// with the base's kernel as the probe's test boot and the result kept in the base cache
// directory (kvm-probe.json) for the current host boot.
func QEMUAccel(ctx context.Context, want, base, baseCacheDir string, log func(format string, args ...any)) (string, error) {
	return vmcluster.ChooseAccel(ctx, want, vmcluster.AccelOptions{
		Record: filepath.Join(baseCacheDir, "kvm-probe.json"),
		Log:    log,
		Kernel: func() (string, func(), error) {
			tree, err := imgbase.Read(base)
			if err != nil {
				return "", nil, err
			}
			kernel, _, err := imgbase.KernelAndInitrd(tree)
			if err != nil {
				return "", nil, err
			}
			data, err := tree.ReadFile(kernel)
			if err != nil {
				return "", nil, err
			}
			tmp, err := os.CreateTemp("", "etcdbake-kvm-probe-*")
			if err != nil {
				return "", nil, err
			}
			cleanup := func() { os.Remove(tmp.Name()) }
			_, err = tmp.Write(data)
			if cerr := tmp.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				cleanup()
				return "", nil, err
			}
			return tmp.Name(), cleanup, nil
		},
	})
}

// qemuInputsStamp hashes everything the QEMU images are made from.
func qemuInputsStamp(o Sources, timeServer netip.Addr, base string) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "etcdbake %s\ntime %s\nbase %s\n", o.FirstbootVersion, timeServer, base)
	h.Write(o.SpecBytes)
	fb, err := fileutil.SHA256(o.Firstboot)
	if err != nil {
		return "", err
	}
	fmt.Fprintf(h, "etcd-firstboot %s\n", fb)
	// The certificates (not the keys): re-issued certificates mean new images. The
	// release server's certificate is not on any node.
	serveCrt, _ := pki.ServeCertPath(o.PKIDir)
	err = filepath.WalkDir(o.PKIDir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".crt") || p == serveCrt {
			return err
		}
		s, err := fileutil.SHA256(p)
		fmt.Fprintf(h, "%s %s\n", strings.TrimPrefix(p, o.PKIDir), s)
		return err
	})
	return fmt.Sprintf("%x\n", h.Sum(nil)), err
}

func allExist(m map[string]string) bool {
	for _, p := range m {
		if _, err := os.Stat(p); err != nil {
			return false
		}
	}
	return true
}

// QEMUReleaseAddr is where the VMs of `etcdbake up` reach the release server: QEMU's
// user-mode guestfwd relays it to `up`'s supervisor (ClusterOptions.GuestForwards), whose
// server certificate from the cluster CA names this address.
const QEMUReleaseAddr = "10.0.2.100:8443"

// QEMUBackupTargetHost is where the VMs of `etcdbake up` reach a backup target that runs
// on this machine's loopback (backup.target.endpoint http[s]://127.0.0.1:PORT, e.g. a
// local MinIO or SeaweedFS): a guest forward relays 10.0.2.101:PORT to 127.0.0.1:PORT and
// the nodes' configs name 10.0.2.101 (with https, the server's certificate must name
// that address too).
const QEMUBackupTargetHost = "10.0.2.101"

// TargetForward is a backup target on this machine's loopback as the VMs reach it.
type TargetForward struct {
	Guest    string // 10.0.2.101:PORT, the guest forward's address
	Host     string // 127.0.0.1:PORT, where it relays to
	GuestURL string // the endpoint in the nodes' configs
}

// QEMUTargetForward says whether the spec's backup target is on this machine's loopback
// (127.0.0.0/8, ::1 or localhost), and if so how the VMs of `up` reach it.
func QEMUTargetForward(c *spec.Cluster) (TargetForward, bool) {
	if c.Backup.Target == nil {
		return TargetForward{}, false
	}
	u, err := url.Parse(c.Backup.Target.Endpoint)
	if err != nil || u.Port() == "" {
		return TargetForward{}, false
	}
	host := u.Hostname()
	if host == "localhost" {
		host = "127.0.0.1"
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.IsLoopback() {
		return TargetForward{}, false
	}
	guest := net.JoinHostPort(QEMUBackupTargetHost, u.Port())
	return TargetForward{Guest: guest, Host: net.JoinHostPort(ip.String(), u.Port()), GuestURL: u.Scheme + "://" + guest}, true
}

// QEMUReleaseURL is the URL a VM of `etcdbake up` stages release id from.
func QEMUReleaseURL(id string) string {
	return "https://" + QEMUReleaseAddr + pxe.ReleasePrefix + id
}
