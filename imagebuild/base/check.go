package base

import (
	"errors"
	"fmt"
	"strings"

	"github.com/etcdbake/etcdbake/imagebuild/fstree"
	"github.com/etcdbake/etcdbake/internal/kernelver"
)

// Problem is one thing a base lacks.
type Problem struct {
	What    string // e.g. "chronyd (usr/sbin/chronyd)"
	Purpose string // what the image needs it for
	Package string // the Debian package providing it
}

// CheckError lists everything a base lacks.
type CheckError struct {
	Problems []Problem
}

func (e *CheckError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "the base root filesystem lacks %d required item(s):", len(e.Problems))
	for _, p := range e.Problems {
		fmt.Fprintf(&b, "\n  - %s: %s (Debian package %s)", p.What, p.Purpose, p.Package)
	}
	return b.String()
}

// baseRequirement is a file the base must hold, at one of several paths.
type baseRequirement struct {
	name    string
	paths   []string
	purpose string
	pkg     string
}

var baseRequirements = []baseRequirement{
	{"systemd", []string{"usr/lib/systemd/systemd", "lib/systemd/systemd"}, "the service manager run as PID 1", "systemd"},
	{"init", []string{"sbin/init", "usr/sbin/init"}, "the program the kernel starts (a link to systemd)", "systemd-sysv"},
	{"chronyd", []string{"usr/sbin/chronyd"}, "keeps the node's clock in sync (etcd leases and TLS need sane time)", "chrony"},
	{"iptables", []string{"usr/sbin/iptables", "sbin/iptables"}, "flanneld runs it at every start to clear its iptables rules, and keeps its rules there with flannel.nftables: false", "iptables"},
	{"mkfs.ext4", []string{"sbin/mkfs.ext4", "usr/sbin/mkfs.ext4"}, "formats the writable /var partition on first boot (x-systemd.makefs)", "e2fsprogs"},
	{"systemd-boot EFI binary", []string{"usr/lib/systemd/boot/efi/systemd-bootx64.efi"}, "the UEFI boot loader copied to the ESP as EFI/BOOT/BOOTX64.EFI", "systemd-boot-efi"},
	{"systemd-bless-boot", []string{"usr/lib/systemd/systemd-bless-boot", "lib/systemd/systemd-bless-boot"}, "blesses a verified boot of a new A/B slot (systemd-boot's boot counting)", "systemd-boot"},
	{"nft", []string{"usr/sbin/nft", "sbin/nft"}, "loads the host firewall (etcdbake-firewall.service)", "nftables"},
	{"sshd", []string{"usr/sbin/sshd", "sbin/sshd"}, "key-only SSH logins (ssh.authorizedKeys)", "openssh-server"},
	{"ssh-keygen", []string{"usr/bin/ssh-keygen", "bin/ssh-keygen"}, "makes the SSH host keys at first boot", "openssh-client"},
	{"sudo", []string{"usr/bin/sudo", "bin/sudo"}, "lets the SSH user become root (root logins are refused)", "sudo"},
	{"passwd database", []string{"etc/passwd"}, "user accounts", "base-passwd"},
	{"group database", []string{"etc/group"}, "groups", "base-passwd"},
}

// runtimeRequirements are what CheckFull adds: what a booted node needs to bring up
// its network (the cloud kernel has virtio_net, vxlan, overlay and netfilter as modules).
var runtimeRequirements = []baseRequirement{
	{"ip", []string{"usr/bin/ip", "bin/ip", "usr/sbin/ip", "sbin/ip"}, "network configuration", "iproute2"},
	{"udevadm", []string{"usr/bin/udevadm", "bin/udevadm"}, "device manager that loads the virtio network driver and other modules", "udev"},
	{"modprobe", []string{"usr/sbin/modprobe", "sbin/modprobe", "usr/bin/kmod", "bin/kmod"}, "loads kernel modules (virtio_net, vxlan, overlay, netfilter are modules)", "kmod"},
}

// Check checks that t is a usable base: a kernel with its matching initrd, systemd
// as init, chronyd, iptables, mkfs.ext4, systemd-boot's EFI binary and the user and group
// databases. Paths are looked up following symbolic links, so merged-/usr trees
// (sbin -> usr/sbin) pass. The one error returned (a *CheckError) names everything
// missing, what it is for and the Debian package providing it.
func Check(t *fstree.Tree) error {
	return checkBase(t, false)
}

// CheckFull is Check plus what a booted node needs at run time: the kernel's
// modules directory (usr/lib/modules/VERSION), ip, udevadm and modprobe.
func CheckFull(t *fstree.Tree) error {
	return checkBase(t, true)
}

func checkBase(t *fstree.Tree, full bool) error {
	var problems []Problem
	if kernel, _, err := KernelAndInitrd(t); err != nil {
		var ke *kernelError
		if !errors.As(err, &ke) {
			return err
		}
		problems = append(problems, ke.problems...)
	} else if full {
		ver := strings.TrimPrefix(kernel, "boot/vmlinuz-")
		if !hasDir(t, "usr/lib/modules/"+ver) && !hasDir(t, "lib/modules/"+ver) {
			problems = append(problems, Problem{
				What:    fmt.Sprintf("kernel modules (usr/lib/modules/%s)", ver),
				Purpose: "drivers the kernel loads at boot (virtio_net, vxlan, overlay, netfilter)",
				Package: "linux-image-cloud-amd64",
			})
		}
	}
	reqs := baseRequirements
	if full {
		reqs = append(append([]baseRequirement(nil), baseRequirements...), runtimeRequirements...)
	}
	for _, req := range reqs {
		found := false
		for _, p := range req.paths {
			if e, ok := t.Follow(p); ok && e.IsRegular() {
				found = true
				break
			}
		}
		if !found {
			problems = append(problems, Problem{
				What:    fmt.Sprintf("%s (%s)", req.name, strings.Join(req.paths, " or ")),
				Purpose: req.purpose,
				Package: req.pkg,
			})
		}
	}
	if len(problems) > 0 {
		return &CheckError{Problems: problems}
	}
	return nil
}

func hasDir(t *fstree.Tree, p string) bool {
	e, ok := t.Follow(p)
	return ok && e.IsDir()
}

type kernelError struct{ problems []Problem }

func (e *kernelError) Error() string { return (&CheckError{e.problems}).Error() }

// KernelAndInitrd returns the tree paths of the newest kernel boot/vmlinuz-VERSION that
// has a matching boot/initrd.img-VERSION (both regular files, possibly reached through
// symbolic links). "Newest" is kernelver's numeric order, the one the PXE installer
// uses too, so the installer boots the kernel the disk image boots.
func KernelAndInitrd(t *fstree.Tree) (kernel, initrd string, err error) {
	var versions []string
	boot, bootPath, ok := t.ResolveEntry("boot", true)
	if ok && boot.IsDir() {
		prefix := "boot/vmlinuz-"
		if bootPath != "boot" {
			prefix = bootPath + "/vmlinuz-"
		}
		for p := range t.All() {
			v, ok := strings.CutPrefix(p, prefix)
			if !ok || v == "" || strings.Contains(v, "/") {
				continue
			}
			if e, ok := t.Follow("boot/vmlinuz-" + v); ok && e.IsRegular() {
				versions = append(versions, v)
			}
		}
	}
	kernelver.SortNewestFirst(versions)
	for _, v := range versions {
		if e, ok := t.Follow("boot/initrd.img-" + v); ok && e.IsRegular() {
			return "boot/vmlinuz-" + v, "boot/initrd.img-" + v, nil
		}
	}
	if len(versions) == 0 {
		return "", "", &kernelError{[]Problem{
			{What: "Linux kernel (boot/vmlinuz-*)", Purpose: "the kernel systemd-boot starts", Package: "linux-image-cloud-amd64"},
			{What: "initrd (boot/initrd.img-* matching the kernel)", Purpose: "the initramfs that finds and mounts the root partition", Package: "initramfs-tools, a dependency of linux-image-cloud-amd64"},
		}}
	}
	var want []string
	for _, v := range versions {
		want = append(want, "boot/initrd.img-"+v)
	}
	return "", "", &kernelError{[]Problem{{
		What:    fmt.Sprintf("initrd matching the kernel (%s)", strings.Join(want, " or ")),
		Purpose: "the initramfs that finds and mounts the root partition",
		Package: "initramfs-tools; run update-initramfs -c -k VERSION in the base",
	}}}
}
