package pxe

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/cavaliergopher/cpio"
)

func writeTar(t *testing.T, files map[string]string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "base.tar")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(f)
	for name, body := range files {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(body))
	}
	tw.Close()
	f.Close()
	return p
}

// TestBuildInstaller: the base's newest kernel with its initrd, and the installer archive
// appended at a 4-byte boundary, readable by a cpio reader, with the script and binary.
func TestBuildInstaller(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "installer")
	os.WriteFile(bin, []byte("\x7fELF installer"), 0o755)
	base := writeTar(t, map[string]string{
		"./boot/vmlinuz-6.1.0-1-amd64":    "old kernel",
		"./boot/initrd.img-6.1.0-1-amd64": "old initrd",
		"./boot/vmlinuz-6.1.0-9-amd64":    "kernel",
		"./boot/initrd.img-6.1.0-9-amd64": "initrd!", // 7 bytes: needs padding
		"./boot/vmlinuz-6.2.0-1-amd64":    "kernel without an initrd",
		"./etc/hostname":                  "base",
	})
	in, err := BuildInstaller(base, bin)
	if err != nil {
		t.Fatal(err)
	}
	if in.KernelVersion != "6.1.0-9-amd64" || string(in.Kernel) != "kernel" || !bytes.HasPrefix(in.Initrd, []byte("initrd!\x00")) {
		t.Fatalf("kernel %s %q initrd %q", in.KernelVersion, in.Kernel, in.Initrd[:8])
	}
	r := cpio.NewReader(bytes.NewReader(in.Initrd[8:]))
	got := map[string]string{}
	for {
		h, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(r)
		got[h.Name] = string(b)
		if h.Name == InstallerBinaryPath && h.Mode.Perm() != 0o755 {
			t.Errorf("installer mode %v", h.Mode)
		}
	}
	if got["scripts/etcdbake"] != InstallerScript || got[InstallerBinaryPath] != "\x7fELF installer" {
		t.Errorf("appended archive: %q", got)
	}
	if _, err := BuildInstaller(writeTar(t, map[string]string{"./boot/vmlinuz-1": "k"}), bin); err == nil || !strings.Contains(err.Error(), "initrd.img") {
		t.Errorf("base without an initrd: %v", err)
	}
	if _, err := BuildInstaller(base, "/nonexistent"); err == nil || !strings.Contains(err.Error(), "make build") {
		t.Errorf("missing installer binary: %v", err)
	}
}

// TestInstallFromServer: the iPXE script a node gets names its image and checksum; the
// installer code streams that image from the server onto a disk (a file here, with old
// data in it) and reports; a wrong checksum leaves the disk without partition tables.
func TestInstallFromServer(t *testing.T) {
	img, whole := sparseImage(t)
	s, err := New(Options{Cluster: "demo", URL: "http://placeholder",
		Nodes:     []Node{{Name: "etcd-1", MAC: "52:54:00:88:00:11", Image: img}},
		Installer: &Installer{KernelVersion: "6.1", Kernel: []byte("k"), Initrd: []byte("i")}, KernelArgs: "console=ttyS0"})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s)
	defer ts.Close()
	s.o.URL = ts.URL

	code, _, script := get(t, ts.URL+"/ipxe?mac=52-54-00-88-00-11")
	m := regexp.MustCompile(`(?m)^kernel (\S+) (.*)$`).FindStringSubmatch(script)
	if code != 200 || m == nil || m[1] != ts.URL+"/installer/vmlinuz" || !strings.Contains(script, "initrd --name initrd.img "+ts.URL+"/installer/initrd.img\nboot\n") {
		t.Fatalf("script: %d\n%s", code, script)
	}
	for _, want := range []string{"boot=etcdbake", "ip=dhcp", "BOOTIF=01-${mac:hexhyp}", "console=ttyS0"} {
		if !strings.Contains(m[2], want) {
			t.Errorf("kernel arguments lack %q: %s", want, m[2])
		}
	}
	if code, _, k := get(t, ts.URL+"/installer/vmlinuz"); code != 200 || k != "k" {
		t.Errorf("installer kernel: %d %q", code, k)
	}
	o, err := ParseCmdline("BOOT_IMAGE=x " + m[2])
	if err != nil {
		t.Fatal(err)
	}
	install := func(o InstallOptions) ([]byte, error) {
		disk := filepath.Join(t.TempDir(), "disk")
		os.WriteFile(disk, bytes.Repeat([]byte{0xaa}, len(whole)+4096), 0o644)
		o.Disk = disk
		_, err := Install(context.Background(), o, t.Logf)
		ReportResult(context.Background(), o.Report, err)
		b, _ := os.ReadFile(disk)
		return b, err
	}
	got, err := install(o)
	if err != nil || !bytes.Equal(got[:len(whole)], whole) {
		t.Fatalf("install: %v (image equal: %v)", err, bytes.Equal(got[:len(whole)], whole))
	}
	st := s.Status()[0]
	if st.Fetched["ipxe"].Count != 1 || st.Fetched["image"].Count != 1 || st.Fetched["installed"].Count != 1 {
		t.Errorf("status: %+v", st)
	}

	bad := o
	bad.SHA256 = strings.Repeat("ab", 32)
	got, err = install(bad)
	if err == nil || !strings.Contains(err.Error(), "corrupted") {
		t.Fatalf("install with a wrong checksum: %v", err)
	}
	if !bytes.Equal(got[:1<<20], make([]byte, 1<<20)) {
		t.Error("a failed install left the primary partition table in place")
	}
	// The backup GPT (the image's last 33 sectors, where the primary header points; data in
	// the test image) too: firmware would restore the table from it.
	if tail := got[len(whole)-33*512 : len(whole)]; !bytes.Equal(tail, make([]byte, len(tail))) {
		t.Error("a failed install left the backup partition table in place")
	}
	if tail := whole[len(whole)-33*512:]; bytes.Equal(tail, make([]byte, len(tail))) {
		t.Fatal("the control failed: the test image's last 33 sectors (its backup GPT's place) are zero already")
	}
	if st := s.Status()[0]; len(st.Fetched) != 4 {
		t.Errorf("the failed install was not reported: %+v", st.Fetched)
	}
	if _, err := ParseCmdline("quiet boot=etcdbake"); err == nil {
		t.Error("a command line without etcdbake.image was accepted")
	}
}
