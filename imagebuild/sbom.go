package imagebuild

import (
	"bufio"
	"bytes"
	"debug/buildinfo"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strings"
	"time"

	cdx "github.com/CycloneDX/cyclonedx-go"
	"github.com/package-url/packageurl-go"

	"github.com/etcdbake/etcdbake/imagebuild/disk"
	"github.com/etcdbake/etcdbake/imagebuild/fstree"
	"github.com/etcdbake/etcdbake/internal/fileutil"
	"github.com/etcdbake/etcdbake/spec"
)

// SBOMSuffix ends the name of a node image's SBOM (CycloneDX 1.6 JSON), written next to
// the image: <node>.cdx.json.
const SBOMSuffix = ".cdx.json"

// SBOMSpecVersion is the CycloneDX version of the SBOMs: the one Trivy and Grype read.
const SBOMSpecVersion = cdx.SpecVersion1_6

// DpkgStatus is where the base records its Debian packages; the image keeps it, so
// scanners that look inside the image find them too.
const DpkgStatus = "var/lib/dpkg/status"

// sbomParts are the components every node of a build shares (the same root and
// binaries): the distribution, its packages, the kernel and the Go programs.
type sbomParts struct {
	components []cdx.Component
}

// debPackage is one installed package from the dpkg status file.
type debPackage struct {
	Name, Version, Arch, Source string
}

// parseDpkgStatus reads the installed packages of a dpkg status file, sorted by name.
func parseDpkgStatus(b []byte) ([]debPackage, error) {
	var out []debPackage
	var cur debPackage
	var installed bool
	flush := func() {
		if cur.Name != "" && installed {
			out = append(out, cur)
		}
		cur, installed = debPackage{}, false
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			flush()
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			continue // a continuation line (descriptions, conffiles)
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("dpkg status: line %q is not a field", line)
		}
		v = strings.TrimSpace(v)
		switch k {
		case "Package":
			cur.Name = v
		case "Version":
			cur.Version = v
		case "Architecture":
			cur.Arch = v
		case "Source":
			cur.Source = v
		case "Status":
			installed = strings.HasSuffix(v, " installed")
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	flush()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// osRelease reads the ID and VERSION_ID of the tree's os-release, and Debian's point
// release (etc/debian_version, e.g. 12.8) when there is one.
func osRelease(t *fstree.Tree) (id, version string) {
	for _, p := range []string{"etc/os-release", "usr/lib/os-release"} {
		e, ok := t.Follow(p)
		if !ok {
			continue
		}
		b, err := t.ReadFile(e.Path)
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			k, v, _ := strings.Cut(l, "=")
			v = strings.Trim(v, `"`)
			switch k {
			case "ID":
				id = v
			case "VERSION_ID":
				version = v
			}
		}
		break
	}
	if b, err := t.ReadFile("etc/debian_version"); err == nil && id == "debian" {
		if v := strings.TrimSpace(string(b)); v != "" && v[0] >= '0' && v[0] <= '9' {
			version = v
		}
	}
	return id, version
}

// makeSBOMParts reads the shared root: dpkg's status, os-release, the kernel's version and
// the build information of every Go program in spec.BinDir.
func makeSBOMParts(root *fstree.Tree, kernel string, bins []BinaryRecord) (sbomParts, error) {
	var comps []cdx.Component
	osID, osVersion := osRelease(root)
	major, _, _ := strings.Cut(osVersion, ".")
	if osID != "" {
		comps = append(comps, cdx.Component{BOMRef: "os:" + osID, Type: cdx.ComponentTypeOS, Name: osID, Version: osVersion})
	}
	if kernel != "" {
		comps = append(comps, cdx.Component{BOMRef: "kernel:linux", Type: cdx.ComponentTypeOS, Name: "linux", Version: kernel,
			Description: "the kernel every slot boots (its Debian package is listed too)"})
	}
	// The image's /var starts as the root's factory copy (ReadOnlyRoot).
	st, err := root.ReadFile(path.Join(factoryVar, strings.TrimPrefix(DpkgStatus, "var/")))
	if err != nil {
		st, err = root.ReadFile(DpkgStatus)
	}
	if err == nil {
		pkgs, err := parseDpkgStatus(st)
		if err != nil {
			return sbomParts{}, err
		}
		for _, p := range pkgs {
			q := packageurl.Qualifiers{{Key: "arch", Value: p.Arch}}
			if osID != "" && major != "" {
				q = append(q, packageurl.Qualifier{Key: "distro", Value: osID + "-" + major})
			}
			purl := packageurl.NewPackageURL(packageurl.TypeDebian, osIDOr(osID, "debian"), p.Name, p.Version, q, "").ToString()
			c := cdx.Component{BOMRef: purl, Type: cdx.ComponentTypeLibrary, Name: p.Name, Version: p.Version, PackageURL: purl}
			if p.Source != "" {
				c.Properties = &[]cdx.Property{{Name: "etcdbake:deb:source", Value: p.Source}}
			}
			comps = append(comps, c)
		}
	}
	for _, b := range sortedBinaries(bins) {
		c, err := goComponent(root, b)
		if err != nil {
			return sbomParts{}, err
		}
		comps = append(comps, c)
	}
	return sbomParts{components: comps}, nil
}

func osIDOr(id, def string) string {
	if id == "" {
		return def
	}
	return id
}

// goComponent describes one baked program: its file's sha256 and, for a Go program, its
// main module and every module linked in, read from its build information.
func goComponent(root *fstree.Tree, b BinaryRecord) (cdx.Component, error) {
	ref := "binary:" + b.Name
	c := cdx.Component{BOMRef: ref, Type: cdx.ComponentTypeApplication, Name: b.Name, Version: b.Version,
		Hashes:     &[]cdx.Hash{{Algorithm: cdx.HashAlgoSHA256, Value: b.SHA256}},
		Properties: &[]cdx.Property{{Name: "etcdbake:path", Value: spec.BinDir + "/" + b.Name}, {Name: "etcdbake:source", Value: b.Source}}}
	bi, err := readBuildInfo(root, strings.TrimPrefix(spec.BinDir, "/")+"/"+b.Name)
	if errors.Is(err, errNotInTree) {
		return c, fmt.Errorf("SBOM: %s: %w", b.Name, err)
	}
	if err != nil {
		*c.Properties = append(*c.Properties, cdx.Property{Name: "etcdbake:buildinfo", Value: "none: not a Go program, or built without module information"})
		return c, nil
	}
	*c.Properties = append(*c.Properties, cdx.Property{Name: "etcdbake:go", Value: bi.GoVersion})
	if v := bi.Main.Version; bi.Main.Path != "" {
		if v == "" || v == "(devel)" {
			v = b.Version
		}
		c.PackageURL = goPURL(bi.Main.Path, v)
	}
	var deps []cdx.Component
	for _, d := range bi.Deps {
		m := d
		if d.Replace != nil {
			m = d.Replace
		}
		purl := goPURL(m.Path, m.Version)
		dc := cdx.Component{BOMRef: ref + ":" + purl, Type: cdx.ComponentTypeLibrary, Name: m.Path, Version: m.Version, PackageURL: purl}
		if m.Sum != "" {
			dc.Properties = &[]cdx.Property{{Name: "etcdbake:go:sum", Value: m.Sum}}
		}
		deps = append(deps, dc)
	}
	if len(deps) > 0 {
		c.Components = &deps
	}
	return c, nil
}

var errNotInTree = errors.New("not a regular file in the image")

// readBuildInfo reads a program's Go build information. A program held as a local file
// (the binaries are) is read there, only the parts buildinfo needs, not loaded whole.
func readBuildInfo(root *fstree.Tree, p string) (*debug.BuildInfo, error) {
	e, ok := root.Get(p)
	if !ok || !e.IsRegular() {
		return nil, errNotInTree
	}
	if e = root.DataOf(e); e.Source != "" {
		return buildinfo.ReadFile(e.Source)
	}
	return buildinfo.Read(bytes.NewReader(e.Data))
}

// goPURL is a Go module's package URL: the path's last element is the name, the rest
// the namespace (pkg:golang/go.etcd.io/etcd/client/v3@v3.6.16).
func goPURL(mod, version string) string {
	ns, name := path.Split(mod)
	return packageurl.NewPackageURL(packageurl.TypeGolang, strings.TrimSuffix(ns, "/"), name, version, nil, "").ToString()
}

// digested are the image files whose sha256 the SBOM records: the compressed ones (qcow2),
// which are what gets shipped. A raw disk is not hashed: that reads the whole disk,
// gigabytes of it, on every build (`etcdbake up` builds raw only); its release ID, a
// digest of everything that went into it, identifies it.
func digested(images []string) []string {
	var out []string
	for _, f := range images {
		if !strings.HasSuffix(f, ".raw") {
			out = append(out, f)
		}
	}
	return out
}

// writeSBOM writes a node's SBOM: the shared parts under a root component that is the
// node's image, with the sha256 of its image files (see digested).
func writeSBOM(path string, parts sbomParts, cluster, node, release string, images []string, when time.Time) error {
	var hashes []cdx.Hash
	var props []cdx.Property
	for _, f := range digested(images) {
		sum, err := fileutil.SHA256(f)
		if err != nil {
			return err
		}
		if len(hashes) == 0 {
			hashes = append(hashes, cdx.Hash{Algorithm: cdx.HashAlgoSHA256, Value: sum})
		}
		props = append(props, cdx.Property{Name: "etcdbake:image:" + filepath.Base(f), Value: "sha256:" + sum})
	}
	props = append(props, cdx.Property{Name: "etcdbake:cluster", Value: cluster}, cdx.Property{Name: "etcdbake:node", Value: node})
	bom := cdx.NewBOM()
	// The same image gives the same serial number.
	serial := []string{cluster, node, "sbom", release}
	for _, h := range hashes {
		serial = append(serial, h.Value)
	}
	bom.SerialNumber = "urn:uuid:" + strings.ToLower(disk.DeriveGUID(serial...))
	bom.Metadata = &cdx.Metadata{
		Timestamp: when.UTC().Format(time.RFC3339),
		Tools:     &cdx.ToolsChoice{Components: &[]cdx.Component{{Type: cdx.ComponentTypeApplication, Name: "etcdbake"}}},
		Component: &cdx.Component{BOMRef: "image:" + node, Type: cdx.ComponentTypeOS, Name: "etcdbake-" + cluster + "-" + node, Version: release,
			Description: "disk image of etcd member " + node + " (cluster " + cluster + ", release " + release + ")", Properties: &props},
	}
	if len(hashes) > 0 {
		bom.Metadata.Component.Hashes = &hashes
	}
	comps := append([]cdx.Component(nil), parts.components...)
	bom.Components = &comps
	var buf bytes.Buffer
	enc := cdx.NewBOMEncoder(&buf, cdx.BOMFileFormatJSON)
	enc.SetPretty(true)
	if err := enc.EncodeVersion(bom, SBOMSpecVersion); err != nil {
		return fmt.Errorf("encoding the SBOM: %w", err)
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}
