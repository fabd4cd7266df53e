package imagebuild

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	cdx "github.com/CycloneDX/cyclonedx-go"
	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/etcdbake/etcdbake/imagebuild/fstree"
	"github.com/etcdbake/etcdbake/internal/fileutil"
	"github.com/etcdbake/etcdbake/internal/testtools"
)

var (
	bomSchemaOnce sync.Once
	bomSchema     *jsonschema.Schema
	bomSchemaErr  error
)

// cdxSchema compiles CycloneDX's own JSON schema of SBOMSpecVersion, with the SPDX
// license list and JSF schemas it refers to, from the cyclonedx-go module (which ships
// them).
func cdxSchema(t *testing.T) *jsonschema.Schema {
	t.Helper()
	bomSchemaOnce.Do(func() {
		dir, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/CycloneDX/cyclonedx-go").Output()
		if err != nil {
			bomSchemaErr = err
			return
		}
		sdir := filepath.Join(strings.TrimSpace(string(dir)), "schema")
		c := jsonschema.NewCompiler()
		// file in the module -> the name the schema refers to it by
		for f, ref := range map[string]string{"bom-" + SBOMSpecVersion.String() + ".schema.json": "", "spdx.schema.json": "", "jsf-0.82.schemax.json": "jsf-0.82.schema.json"} {
			if ref == "" {
				ref = f
			}
			b, err := os.ReadFile(filepath.Join(sdir, f))
			if err != nil {
				bomSchemaErr = err
				return
			}
			doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
			if err != nil {
				bomSchemaErr = err
				return
			}
			if err := c.AddResource("http://cyclonedx.org/schema/"+ref, doc); err != nil {
				bomSchemaErr = err
				return
			}
		}
		bomSchema, bomSchemaErr = c.Compile("http://cyclonedx.org/schema/bom-" + SBOMSpecVersion.String() + ".schema.json")
	})
	if bomSchemaErr != nil {
		t.Fatalf("CycloneDX schema: %v", bomSchemaErr)
	}
	return bomSchema
}

// readSBOM validates an SBOM file against CycloneDX's schema and decodes it.
func readSBOM(t *testing.T, path string) *cdx.BOM {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if err := cdxSchema(t).Validate(doc); err != nil {
		t.Fatalf("%s is not valid CycloneDX %s: %v", path, SBOMSpecVersion, err)
	}
	var bom cdx.BOM
	if err := cdx.NewBOMDecoder(bytes.NewReader(b), cdx.BOMFileFormatJSON).Decode(&bom); err != nil {
		t.Fatal(err)
	}
	if bom.SpecVersion != SBOMSpecVersion {
		t.Errorf("specVersion %s, want %s", bom.SpecVersion, SBOMSpecVersion)
	}
	return &bom
}

func component(bom *cdx.BOM, name string) *cdx.Component {
	for i, c := range *bom.Components {
		if c.Name == name {
			return &(*bom.Components)[i]
		}
	}
	return nil
}

// TestSBOM: each node's <node>.cdx.json is valid CycloneDX; its subject carries the
// image's sha256; the installed Debian packages (not the removed one) have package URLs
// with the distribution; a Go program lists its main module and the modules linked in, as
// its build information says.
func TestSBOM(t *testing.T) {
	gobin := filepath.Join(t.TempDir(), "etcd-firstboot")
	if out, err := exec.Command("go", "build", "-o", gobin, "../cmd/etcd-firstboot").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out := filepath.Join(t.TempDir(), "images")
	o, _ := exampleBuildPKIWith(t, out, map[string]string{"etcd-firstboot": gobin})
	for p, d := range map[string]string{
		DpkgStatus: "Package: openssh-server\nStatus: install ok installed\nArchitecture: amd64\nSource: openssh\nVersion: 1:9.2p1-2+deb12u3\nDescription: secure shell\n more text\n\n" +
			"Package: gone\nStatus: deinstall ok config-files\nVersion: 1.0\nArchitecture: amd64\n\n" +
			"Package: chrony\nStatus: install ok installed\nArchitecture: amd64\nVersion: 4.3-2+deb12u1\n",
		"usr/lib/os-release": "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n",
		"etc/debian_version": "12.8\n",
	} {
		if err := o.Base.Put(&fstree.Entry{Path: p, Mode: 0o644, Data: []byte(d)}); err != nil {
			t.Fatal(err)
		}
	}
	o.Formats = []string{"raw", "qcow2"}
	imgs, err := Build(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	for _, im := range imgs {
		sf := filepath.Join(out, im.Node+SBOMSuffix)
		if !slices.Contains(im.Files, sf) {
			t.Errorf("%s: Build's files %v lack %s", im.Node, im.Files, sf)
		}
		bom := readSBOM(t, sf)
		// The subject is the image: the qcow2's sha256 (the raw disk is not hashed when a
		// compressed format is written).
		qcow2, err := fileutil.SHA256(filepath.Join(out, im.Node+".qcow2"))
		if err != nil {
			t.Fatal(err)
		}
		subj := bom.Metadata.Component
		if subj == nil || subj.Hashes == nil || (*subj.Hashes)[0].Value != qcow2 || subj.Version != ReleaseID(o) || !strings.Contains(subj.Name, im.Node) {
			t.Errorf("%s: subject %+v, want the qcow2's sha256 %s and release %s", im.Node, subj, qcow2, ReleaseID(o))
		}
		var props []string
		for _, p := range *subj.Properties {
			props = append(props, p.Name+"="+p.Value)
		}
		if !slices.Contains(props, "etcdbake:image:"+im.Node+".qcow2=sha256:"+qcow2) || strings.Contains(strings.Join(props, " "), ".raw=") {
			t.Errorf("%s: image properties %v", im.Node, props)
		}
		if c := component(bom, "openssh-server"); c == nil || c.Version != "1:9.2p1-2+deb12u3" || c.PackageURL != "pkg:deb/debian/openssh-server@1:9.2p1-2%2Bdeb12u3?arch=amd64&distro=debian-12" {
			t.Errorf("%s: openssh-server: %+v", im.Node, c)
		}
		if component(bom, "chrony") == nil || component(bom, "gone") != nil {
			t.Errorf("%s: want chrony listed and the removed package not", im.Node)
		}
		if c := component(bom, "debian"); c == nil || c.Type != cdx.ComponentTypeOS || c.Version != "12.8" {
			t.Errorf("%s: the distribution: %+v", im.Node, c)
		}
		fb := component(bom, "etcd-firstboot")
		if fb == nil || !strings.HasPrefix(fb.PackageURL, "pkg:golang/github.com/etcdbake/etcdbake@") || fb.Components == nil {
			t.Fatalf("%s: etcd-firstboot: %+v", im.Node, fb)
		}
		var client string
		for _, d := range *fb.Components {
			if d.Name == "go.etcd.io/etcd/client/v3" {
				client = d.PackageURL
			}
		}
		if want := "pkg:golang/go.etcd.io/etcd/client/v3@" + goModVersion(t, "go.etcd.io/etcd/client/v3"); client != want {
			t.Errorf("%s: etcd-firstboot's etcd client module %q, want %q", im.Node, client, want)
		}
		if c := component(bom, "etcd"); c == nil || c.Components != nil {
			t.Errorf("%s: etcd (a shell script here): %+v, want listed without modules", im.Node, c)
		}
	}
}

func goModVersion(t *testing.T, mod string) string {
	t.Helper()
	v, err := exec.Command("go", "list", "-m", "-f", "{{.Version}}", mod).Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(v))
}

// checkSBOMPackages compares an SBOM's Debian packages with what dpkg-query says the
// root directory (a copy of the base) has installed.
func checkSBOMPackages(t *testing.T, sbom, root string) {
	t.Helper()
	if _, err := exec.LookPath("dpkg-query"); err != nil {
		testtools.Missing(t, "dpkg-query (dpkg)")
	}
	out, err := exec.Command("dpkg-query", "--admindir="+filepath.Join(root, "var/lib/dpkg"), "-W", "-f", "${db:Status-Status} ${Package} ${Version}\n").Output()
	if err != nil {
		t.Fatalf("dpkg-query: %v", err)
	}
	var want []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if s, ok := strings.CutPrefix(l, "installed "); ok {
			want = append(want, s)
		}
	}
	bom := readSBOM(t, sbom)
	var got []string
	for _, c := range *bom.Components {
		if strings.HasPrefix(c.PackageURL, "pkg:deb/") {
			got = append(got, c.Name+" "+c.Version)
		}
	}
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) || len(want) < 100 {
		t.Errorf("the SBOM's %d Debian packages differ from dpkg-query's %d installed ones", len(got), len(want))
	}
	b, _ := json.Marshal(*bom.Components)
	t.Logf("SBOM: %d Debian packages as dpkg-query lists them, %d bytes of components", len(got), len(b))
}
