package pxe

import (
	"os"
	"path"
	"path/filepath"
	"testing"

	"github.com/etcdbake/etcdbake/imagebuild/base"
)

// TestInstallerAndImagePickTheSameKernel: from a base holding kernels ...-9 and ...-28
// (both with an initrd), the disk image (base.KernelAndInitrd) and the PXE installer
// (BuildInstaller) both choose ...-28, the newest in numeric order; a bytewise order
// would take ...-9.
func TestInstallerAndImagePickTheSameKernel(t *testing.T) {
	tarPath := writeTar(t, map[string]string{
		"./boot/vmlinuz-6.1.0-9-cloud-amd64":     "kernel 9",
		"./boot/initrd.img-6.1.0-9-cloud-amd64":  "initrd 9",
		"./boot/vmlinuz-6.1.0-28-cloud-amd64":    "kernel 28",
		"./boot/initrd.img-6.1.0-28-cloud-amd64": "initrd 28",
		"./etc/hostname":                         "base",
	})
	const want = "6.1.0-28-cloud-amd64"

	tree, err := base.Read(tarPath)
	if err != nil {
		t.Fatal(err)
	}
	kernel, initrd, err := base.KernelAndInitrd(tree)
	if err != nil {
		t.Fatal(err)
	}
	if path.Base(kernel) != "vmlinuz-"+want || path.Base(initrd) != "initrd.img-"+want {
		t.Errorf("disk image: kernel %s, initrd %s; want the %s pair", kernel, initrd, want)
	}

	bin := filepath.Join(t.TempDir(), "installer")
	if err := os.WriteFile(bin, []byte("\x7fELF installer"), 0o755); err != nil {
		t.Fatal(err)
	}
	in, err := BuildInstaller(tarPath, bin)
	if err != nil {
		t.Fatal(err)
	}
	if in.KernelVersion != want || string(in.Kernel) != "kernel 28" {
		t.Errorf("installer: kernel %s (%q); want %s, the kernel the disk image boots (%s)", in.KernelVersion, in.Kernel, want, kernel)
	}
}
