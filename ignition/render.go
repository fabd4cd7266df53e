// Package ignition renders one Ignition config (spec 3.4.0) per node from the cluster spec
// and its PKI, with the user's Butane fragments merged in. Every config is checked with
// Ignition's own parser and validator before it is returned: a failure that a fragment
// causes is the user's (*FragmentError, naming the fragment and the Ignition path), any
// other is a bug in etcdbake and is reported as one. CheckFragments checks the fragments
// alone, before any output.
package ignition

import (
	"bytes"
	"compress/gzip"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path"
	"sort"
	"strings"
	"sync"

	v34 "github.com/coreos/ignition/v2/config/v3_4"
	"github.com/coreos/ignition/v2/config/v3_4/types"

	"github.com/etcdbake/etcdbake/pki"
	"github.com/etcdbake/etcdbake/spec"
)

// Version is the Ignition spec version of the rendered configs (Fedora CoreOS and Flatcar
// both accept it).
const Version = "3.4.0"

// BinaryNames are the programs every node gets, in spec.BinDir.
var BinaryNames = []string{"etcd", "etcdctl", "flanneld", "etcd-firstboot"}

// Binary is one program to place on the node.
type Binary struct {
	Name    string
	Version string
	// Path is the local file; it is read only when binaries are inlined.
	Path   string
	SHA512 string // hex
}

// Options choose how binaries reach the node.
type Options struct {
	// BinariesURL is the base URL the node fetches <BinariesURL>/<name> from; each file
	// is verified with its sha512 by Ignition.
	BinariesURL string
	// Inline embeds the binaries as gzip data URLs instead.
	Inline bool
}

// Input is everything a node config is made from.
type Input struct {
	Cluster  *spec.Cluster
	PKI      *pki.Set
	Binaries map[string]Binary
	Options  Options
	// Fragments are Butane fragments (already read) merged into every node, then the
	// per-node ones from PerNode[node name] (see SpecFragments). Run CheckFragments first:
	// it reports their warnings and every problem, before any output; Render refuses the
	// same problems but reports only the first.
	Fragments []Fragment
	PerNode   map[string][]Fragment

	// inlined holds each binary's data URL when Options.Inline: Render compresses every
	// binary once (in parallel) for all nodes instead of once per node.
	inlined map[string]string
}

// ErrNoBinarySource says neither a URL nor inlining was chosen.
var ErrNoBinarySource = errors.New("binaries need a source on the node: pass --binaries-url URL (the nodes download <URL>/<name>, verified by sha512) or --inline-binaries")

// Render returns each node's config as JSON, keyed by node name. A fragment that cannot
// be used is a *FragmentError; an invalid config of etcdbake's own making is reported as a
// bug.
func Render(in Input) (map[string][]byte, error) {
	if err := in.check(); err != nil {
		return nil, err
	}
	o, err := ownedBy(in.Cluster)
	if err != nil {
		return nil, errBug(err)
	}
	all, err := translateAll(in.Fragments, o, in.Cluster.ButaneOverrides)
	if err != nil {
		return nil, err
	}
	if in.Options.Inline {
		if in.inlined, err = inlineAll(in.Binaries); err != nil {
			return nil, err
		}
	}
	out := make(map[string][]byte, len(in.Cluster.Nodes))
	for _, n := range in.Cluster.Nodes {
		per, err := translateAll(in.PerNode[n.Name], o, in.Cluster.ButaneOverrides)
		if err != nil {
			return nil, err
		}
		b, err := renderNode(in, n, append(append([]translated(nil), all...), per...), o)
		if err != nil {
			return nil, nodeErr(n, err)
		}
		out[n.Name] = b
	}
	return out, nil
}

// nodeErr names the node in an error, unless the error is a fragment's (it names the
// node itself when the node matters).
func nodeErr(n spec.Node, err error) error {
	var fe *FragmentError
	if errors.As(err, &fe) {
		return err
	}
	return fmt.Errorf("node %s: %w", n.Name, err)
}

func (in Input) check() error {
	if in.Options.BinariesURL == "" && !in.Options.Inline {
		return ErrNoBinarySource
	}
	if in.Options.BinariesURL != "" {
		u, err := url.Parse(in.Options.BinariesURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("--binaries-url %q is not an http(s) URL such as http://10.88.0.1:8080/binaries", in.Options.BinariesURL)
		}
	}
	for _, name := range BinaryNames {
		b, ok := in.Binaries[name]
		if !ok || len(b.SHA512) != 128 {
			return fmt.Errorf("binary %s is missing or has no sha512: run `etcdbake fetch` (etcd-firstboot: `make build`)", name)
		}
	}
	for _, n := range in.Cluster.Nodes {
		if _, ok := in.PKI.Nodes[n.Name]; !ok {
			return fmt.Errorf("no certificates for node %s: run `etcdbake pki`", n.Name)
		}
	}
	return nil
}

// RenderNode builds, merges, validates and encodes one node's config.
func RenderNode(in Input, n spec.Node) ([]byte, error) {
	o, err := ownedBy(in.Cluster)
	if err != nil {
		return nil, errBug(err)
	}
	frags, err := translateAll(append(append([]Fragment(nil), in.Fragments...), in.PerNode[n.Name]...), o, in.Cluster.ButaneOverrides)
	if err != nil {
		return nil, err
	}
	return renderNode(in, n, frags, o)
}

func renderNode(in Input, n spec.Node, frags []translated, o owned) ([]byte, error) {
	base, err := baseConfig(in, n)
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(merge(base, frags))
	if err != nil {
		return nil, fmt.Errorf("encoding Ignition config: %w", err)
	}
	if err := Check(b); err != nil {
		return nil, blame(base, frags, n.Name, o, err)
	}
	return b, nil
}

// Check parses and validates a config with Ignition's own config package (spec 3.4.0).
func Check(b []byte) error {
	_, rep, err := v34.Parse(b)
	if err != nil {
		if len(rep.Entries) > 0 {
			return fmt.Errorf("%w:\n%s", err, rep.String())
		}
		return err
	}
	if rep.IsFatal() {
		return errors.New(rep.String())
	}
	return nil
}

func ptr[T any](v T) *T { return &v }

type builder struct {
	cfg types.Config
}

func (b *builder) file(path string, mode int, owner string, data []byte) {
	f := types.File{
		Node: types.Node{Path: path, Overwrite: ptr(true)},
		FileEmbedded1: types.FileEmbedded1{
			Mode:     ptr(mode),
			Contents: types.Resource{Source: ptr(dataURL(data))},
		},
	}
	if owner != "" {
		f.User = types.NodeUser{Name: ptr(owner)}
		f.Group = types.NodeGroup{Name: ptr(owner)}
	}
	b.cfg.Storage.Files = append(b.cfg.Storage.Files, f)
}

func (b *builder) dir(path string, mode int, owner string) {
	d := types.Directory{Node: types.Node{Path: path}, DirectoryEmbedded1: types.DirectoryEmbedded1{Mode: ptr(mode)}}
	if owner != "" {
		d.User = types.NodeUser{Name: ptr(owner)}
		d.Group = types.NodeGroup{Name: ptr(owner)}
	}
	b.cfg.Storage.Directories = append(b.cfg.Storage.Directories, d)
}

func (b *builder) unit(name string, contents []byte, enabled bool) {
	u := types.Unit{Name: name, Contents: ptr(string(contents))}
	if enabled {
		u.Enabled = ptr(true)
	}
	b.cfg.Systemd.Units = append(b.cfg.Systemd.Units, u)
}

// dropin adds a drop-in to a unit etcdbake does not own (the distribution's).
func (b *builder) dropin(unit, name string, contents []byte) {
	b.cfg.Systemd.Units = append(b.cfg.Systemd.Units, types.Unit{Name: unit, Dropins: []types.Dropin{{Name: name, Contents: ptr(string(contents))}}})
}

// dataURL encodes small text files readably (percent-encoding) as Butane does.
func dataURL(data []byte) string {
	return "data:," + url.PathEscape(string(data))
}

func baseConfig(in Input, n spec.Node) (types.Config, error) {
	c := in.Cluster
	certs := in.PKI.Nodes[n.Name]
	b := &builder{cfg: types.Config{Ignition: types.Ignition{Version: Version}}}

	// The etcd system account owns the data dir and etcd's keys.
	b.cfg.Passwd.Groups = []types.PasswdGroup{{Name: spec.EtcdUser, System: ptr(true)}}
	b.cfg.Passwd.Users = []types.PasswdUser{{
		Name: spec.EtcdUser, System: ptr(true), PrimaryGroup: ptr(spec.EtcdUser), NoCreateHome: ptr(true),
		HomeDir: ptr(spec.EtcdDataDir), Shell: ptr("/usr/sbin/nologin"), Gecos: ptr("etcd member"),
	}}
	if len(c.SSH.AuthorizedKeys) > 0 {
		u := types.PasswdUser{Name: c.SSH.User}
		for _, k := range c.SSH.AuthorizedKeys {
			u.SSHAuthorizedKeys = append(u.SSHAuthorizedKeys, types.SSHAuthorizedKey(k))
		}
		b.cfg.Passwd.Users = append(b.cfg.Passwd.Users, u)
	}

	b.dir(spec.EtcdDataDir, 0o700, "etcd")
	b.dir("/etc/etcd", 0o755, "")
	b.dir(spec.EtcdPKIDir, 0o700, "etcd")
	b.dir(spec.FirstbootPKIDir, 0o700, "")
	b.dir(spec.FlannelPKIDir, 0o700, "")

	// Certificates: etcd's own keys belong to etcd; the client keys of etcd-firstboot and
	// flanneld are root's. Only this node's keys are here, and no CA key.
	b.file(spec.EtcdPKIDir+"/ca.crt", 0o644, "", in.PKI.CA)
	b.file(spec.EtcdPKIDir+"/peer-ca.crt", 0o644, "", in.PKI.PeerCA)
	b.file(spec.EtcdPKIDir+"/server.crt", 0o600, "etcd", certs.Server.Cert)
	b.file(spec.EtcdPKIDir+"/server.key", 0o600, "etcd", certs.Server.Key)
	b.file(spec.EtcdPKIDir+"/peer.crt", 0o600, "etcd", certs.Peer.Cert)
	b.file(spec.EtcdPKIDir+"/peer.key", 0o600, "etcd", certs.Peer.Key)
	b.file(spec.FirstbootPKIDir+"/firstboot.crt", 0o600, "", certs.Firstboot.Cert)
	b.file(spec.FirstbootPKIDir+"/firstboot.key", 0o600, "", certs.Firstboot.Key)
	b.file(spec.FlannelPKIDir+"/ca.crt", 0o644, "", in.PKI.CA)
	b.file(spec.FlannelPKIDir+"/flanneld.crt", 0o600, "", certs.Flanneld.Cert)
	b.file(spec.FlannelPKIDir+"/flanneld.key", 0o600, "", certs.Flanneld.Key)

	nodeJSON, err := json.MarshalIndent(c.NodeConfigFor(n), "", "  ")
	if err != nil {
		return types.Config{}, fmt.Errorf("encoding node config: %w", err)
	}
	b.file(spec.NodeConfigPath, 0o644, "", append(nodeJSON, '\n'))
	b.file(EtcdEnvPath, 0o644, "", EtcdEnv(c, n))
	b.file(EtcdctlEnvPath, 0o644, "", EtcdctlEnv(c, n))
	b.file(EtcdctlWrapper, 0o755, "", EtcdctlWrapperScript())
	b.file(FlannelEnvPath, 0o644, "", FlannelEnv(c, n))
	b.file(ChronyConfDebian, 0o644, "", ChronyConf(c))
	b.file(ChronyConfFCOS, 0o644, "", ChronyConf(c))
	b.file(HostnamePath, 0o644, "", []byte(n.Name+"\n"))
	b.file(HostsPath, 0o644, "", Hosts(c))
	b.file(NetworkdPath, 0o644, "", NetworkdUnit(n))
	b.file(NMKeyfilePath, 0o600, "", NMKeyfile(n))
	b.file(SysctlPath, 0o644, "", Sysctl())
	b.file(ModulesPath, 0o644, "", Modules(c))
	if c.FirewallOn() {
		b.dir(spec.FirewallDropInDir, 0o755, "")
		b.file(spec.FirewallPath, 0o644, "", Firewall(c))
		b.unit(FirewallUnit, FirewallService(), true)
	}
	// Key-only SSH; the host keys are made on the node's data partition at first boot.
	b.file(SSHDConfigPath, 0o644, "", SSHDConfig(c))
	b.file(SSHKeygenScript, 0o755, "", SSHHostKeysScript())
	b.unit(SSHKeygenUnit, SSHKeygenService(), true)
	if len(c.SSH.AuthorizedKeys) > 0 {
		b.file(SudoersPath, 0o440, "", Sudoers(c))
	}

	if t := c.Backup.Target; t != nil {
		// The backup target's keys: root's only, in this node's config (its own partition
		// on disk images).
		creds, err := os.ReadFile(t.CredentialsFile)
		if err != nil {
			return types.Config{}, fmt.Errorf("backup.target.credentialsFile: %w", err)
		}
		if _, _, err := spec.ParseS3Credentials(t.CredentialsFile, creds); err != nil {
			return types.Config{}, fmt.Errorf("backup.target.credentialsFile: %w", err)
		}
		b.dir(path.Dir(spec.S3CredentialsPath), 0o700, "")
		b.file(spec.S3CredentialsPath, 0o600, "", creds)
		if t.CA != "" {
			ca, err := os.ReadFile(t.CA)
			if err != nil {
				return types.Config{}, fmt.Errorf("backup.target.ca: %w", err)
			}
			b.file(spec.S3CAPath, 0o644, "", ca)
		}
	}

	names := append([]string(nil), BinaryNames...)
	sort.Strings(names)
	for _, name := range names {
		f, err := binaryFile(in.Binaries[name], in.Options, in.inlined[name])
		if err != nil {
			return types.Config{}, err
		}
		b.cfg.Storage.Files = append(b.cfg.Storage.Files, f)
	}

	for _, u := range []string{"chrony.service", "chronyd.service"} {
		b.dropin(u, "10-etcdbake.conf", ChronyDropin())
	}
	for _, u := range BootLaterUnits {
		b.dropin(u, "10-etcdbake-boot-later.conf", BootLaterDropin())
	}
	b.unit(PrefetchUnit, PrefetchService(), true)
	b.unit(FirstbootUnit, FirstbootService(c), true)
	b.unit(EtcdUnit, EtcdService(c), true)
	b.unit(ReadyUnit, ReadyService(c), true)
	b.unit(FlannelUnit, FlannelService(c), true)
	if c.Maintenance.Interval.D > 0 {
		b.unit(MaintainUnit, MaintainService(c), false)
		b.unit(MaintainTimer, MaintainTimerUnit(c), true)
	}
	if c.Backup.Schedule != spec.BackupOff {
		b.unit(SnapshotUnit, SnapshotService(c), false)
		b.unit(SnapshotTimer, SnapshotTimerUnit(c), true)
	}
	return b.cfg, nil
}

// binaryFile is the config's entry of one binary; dataURL, when not empty, is its inlined
// content made by inlineAll.
func binaryFile(bin Binary, o Options, dataURL string) (types.File, error) {
	f := types.File{
		Node: types.Node{Path: spec.BinDir + "/" + bin.Name, Overwrite: ptr(true)},
		FileEmbedded1: types.FileEmbedded1{
			Mode: ptr(0o755),
			Contents: types.Resource{
				Verification: types.Verification{Hash: ptr("sha512-" + bin.SHA512)},
			},
		},
	}
	if !o.Inline {
		f.Contents.Source = ptr(strings.TrimRight(o.BinariesURL, "/") + "/" + bin.Name)
		return f, nil
	}
	if dataURL == "" {
		var err error
		if dataURL, err = inline(bin); err != nil {
			return f, err
		}
	}
	f.Contents.Source = ptr(dataURL)
	f.Contents.Compression = ptr("gzip")
	return f, nil
}

// inline is the binary as a gzip data URL.
func inline(bin Binary) (string, error) {
	src, err := os.Open(bin.Path)
	if err != nil {
		return "", fmt.Errorf("inlining %s: %w", bin.Name, err)
	}
	defer src.Close()
	var gz bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&gz, gzip.BestCompression)
	if _, err := io.Copy(zw, src); err != nil {
		return "", fmt.Errorf("inlining %s: %w", bin.Name, err)
	}
	if err := zw.Close(); err != nil {
		return "", fmt.Errorf("inlining %s: %w", bin.Name, err)
	}
	return "data:;base64," + base64.StdEncoding.EncodeToString(gz.Bytes()), nil
}

// inlineAll makes every binary's data URL, the binaries in parallel.
func inlineAll(bins map[string]Binary) (map[string]string, error) {
	out := make(map[string]string, len(bins))
	var mu sync.Mutex
	var wg sync.WaitGroup
	var errs []error
	for name, bin := range bins {
		wg.Add(1)
		go func() {
			defer wg.Done()
			u, err := inline(bin)
			mu.Lock()
			defer mu.Unlock()
			out[name] = u
			if err != nil {
				errs = append(errs, err)
			}
		}()
	}
	wg.Wait()
	return out, errors.Join(errs...)
}

// LocalBinary describes a program from a local file (e.g. etcd-firstboot built here).
func LocalBinary(name, path string) (Binary, error) {
	f, err := os.Open(path)
	if err != nil {
		return Binary{}, fmt.Errorf("binary %s: %w", name, err)
	}
	defer f.Close()
	h := sha512.New()
	if _, err := io.Copy(h, f); err != nil {
		return Binary{}, fmt.Errorf("binary %s: %w", name, err)
	}
	return Binary{Name: name, Path: path, SHA512: hex.EncodeToString(h.Sum(nil))}, nil
}
