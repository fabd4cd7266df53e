package pxe

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"time"

	"github.com/cavaliergopher/cpio"

	"github.com/etcdbake/etcdbake/internal/kernelver"
)

// Installer is what a blank machine boots to install its disk image: the base's kernel and
// its initramfs-tools initrd with the etcdbake installer appended.
type Installer struct {
	KernelVersion string
	Kernel        []byte
	Initrd        []byte
}

// InstallerScript is /scripts/etcdbake in the installer's initrd. initramfs-tools' /init
// sources /scripts/${BOOT} (boot=etcdbake on the kernel command line) once udev has loaded
// the drivers, and calls its mountroot: it configures the network (ip=dhcp on the NIC
// named by BOOTIF=) and hands over to the installer, which never returns (it reboots into
// the installed disk, or powers off after an error).
const InstallerScript = `# etcdbake installer: sourced by initramfs-tools' /init (boot=etcdbake).
mount_top() { :; }
mount_premount() { :; }
mount_bottom() { :; }
mountroot()
{
	configure_networking
	exec /usr/bin/etcdbake-installer
}
`

// InstallerBinaryPath is where the installer binary lands in the initrd.
const InstallerBinaryPath = "usr/bin/etcdbake-installer"

// BuildInstaller reads the kernel and initrd from a base root filesystem tarball
// (/boot/vmlinuz-V and /boot/initrd.img-V, made by initramfs-tools as on Debian and
// Ubuntu; the newest V with both, in kernelver's numeric order, as for the disk image) and appends an uncompressed cpio archive with the installer binary (static) and
// its boot script to the initrd; the kernel unpacks both archives, the later one on top.
func BuildInstaller(baseTar, installerBin string) (*Installer, error) {
	bin, err := os.ReadFile(installerBin)
	if err != nil {
		return nil, fmt.Errorf("installer binary: %w (run `make build`, which puts etcdbake-installer next to etcdbake, or pass --installer PATH)", err)
	}
	f, err := os.Open(baseTar)
	if err != nil {
		return nil, fmt.Errorf("base: %w", err)
	}
	defer f.Close()
	kernels, initrds := map[string][]byte{}, map[string][]byte{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("base %s: %w", baseTar, err)
		}
		name := path.Clean("/" + h.Name)
		if path.Dir(name) != "/boot" || h.Typeflag != tar.TypeReg {
			continue
		}
		base := path.Base(name)
		var into map[string][]byte
		switch {
		case strings.HasPrefix(base, "vmlinuz-"):
			into, base = kernels, strings.TrimPrefix(base, "vmlinuz-")
		case strings.HasPrefix(base, "initrd.img-"):
			into, base = initrds, strings.TrimPrefix(base, "initrd.img-")
		default:
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			return nil, fmt.Errorf("base %s: %s: %w", baseTar, h.Name, err)
		}
		into[base] = b
	}
	// The newest kernel with an initrd, in the order the disk image uses (base.KernelAndInitrd).
	versions := make([]string, 0, len(kernels))
	for v := range kernels {
		versions = append(versions, v)
	}
	version, ok := kernelver.Newest(versions, func(v string) bool { return initrds[v] != nil })
	if !ok {
		return nil, fmt.Errorf("base %s has no /boot/vmlinuz-V with a matching /boot/initrd.img-V: the installer boots the base's kernel and its initramfs-tools initrd", baseTar)
	}
	extra, err := installerArchive(bin)
	if err != nil {
		return nil, err
	}
	// The kernel finds an uncompressed archive only at a 4-byte aligned offset, and skips
	// zero bytes between archives.
	initrd := bytes.Clone(initrds[version])
	for len(initrd)%4 != 0 {
		initrd = append(initrd, 0)
	}
	initrd = append(initrd, extra...)
	return &Installer{KernelVersion: version, Kernel: kernels[version], Initrd: initrd}, nil
}

// installerArchive is the cpio (newc) archive appended to the initrd.
func installerArchive(bin []byte) ([]byte, error) {
	var buf bytes.Buffer
	w := cpio.NewWriter(&buf)
	epoch := time.Unix(0, 0)
	for _, e := range []struct {
		name string
		mode cpio.FileMode
		data []byte
	}{
		{"scripts", cpio.TypeDir | 0o755, nil},
		{"scripts/etcdbake", cpio.TypeReg | 0o644, []byte(InstallerScript)},
		{"usr", cpio.TypeDir | 0o755, nil},
		{"usr/bin", cpio.TypeDir | 0o755, nil},
		{InstallerBinaryPath, cpio.TypeReg | 0o755, bin},
	} {
		if err := w.WriteHeader(&cpio.Header{Name: e.name, Mode: e.mode, Size: int64(len(e.data)), ModTime: epoch, Links: 1}); err != nil {
			return nil, err
		}
		if _, err := w.Write(e.data); err != nil {
			return nil, err
		}
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
