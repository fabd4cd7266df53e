package imagebuild

import (
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/etcdbake/etcdbake/imagebuild/base"
	"github.com/etcdbake/etcdbake/imagebuild/fstree"
	"github.com/etcdbake/etcdbake/spec"
)

// A/B system slots. The disk holds two slots, each a root partition and a node partition
// (root-a/node-a, root-b/node-b), with the slot's kernel and initrd on the ESP under
// /etcdbake/<slot>/; the data partition is shared. A fresh image fills slot A and leaves
// slot B empty (a hole). systemd-boot picks the entry to boot: entries are named by a
// rollout generation and a slot (EntryName), the newest name first, and an entry with a
// boot counter (etcdbake-000007-b+1.conf) must prove itself: etcdbake-verify-boot.service
// runs before boot-complete.target, and only when it passes does systemd-bless-boot drop
// the counter. A boot that is not verified within the rollout timeout reboots, and the
// entry, its tries used up, sorts last: the previous slot boots by itself.

// Slots are the two system slots (spec.Slots).
var Slots = spec.Slots

// SlotA is the slot a fresh image boots.
const SlotA = "a"

// The slot contract's names, from spec (one home for the image and the node).
var (
	RootLabel     = spec.RootLabel
	NodeLabel     = spec.NodeLabel
	EntryName     = spec.EntryName
	SlotKernelDir = spec.SlotKernelDir
)

// Paths of the A/B machinery in the root.
const (
	// ESPMount is where the booted system mounts the ESP (an automount: the FAT is
	// mounted only while in use, so a power loss rarely finds it dirty). systemd-bless-boot
	// looks for the ESP here.
	ESPMount = "efi"
	// NodeGenerator writes node.mount for the booted slot's node partition, named on the
	// kernel command line (etcdbake.node=PARTUUID): the root is shared by both slots, so
	// fstab cannot name it.
	NodeGenerator = "usr/lib/systemd/system-generators/etcdbake-node-generator"
	VerifyUnit    = "etcdbake-verify-boot.service"
	DeadlineUnit  = "etcdbake-boot-deadline.service"
	RolloutUnit   = "etcdbake-rollout.service"
	// bootCountVar exists in efivarfs only on a boot of an entry with a boot counter.
	bootCountVar = "/sys/firmware/efi/efivars/LoaderBootCountPath-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"
)

// Kernel command line words that tell the booted system its slot (spec's).
const (
	CmdlineSlot    = spec.CmdlineSlot
	CmdlineNode    = spec.CmdlineNode
	CmdlineRelease = spec.CmdlineRelease
)

// nodeGeneratorScript mounts the node partition the kernel command line names. The
// PARTUUID is checked to be hex digits and dashes before it goes into a unit.
// ETCDBAKE_PROC_CMDLINE lets the tests run it on a command line of their own.
const nodeGeneratorScript = `#!/bin/sh
# etcdbake: mount this slot's node partition at /node (etcdbake.node=PARTUUID on the
# kernel command line). The root is shared by both A/B slots, so fstab cannot name it.
out="$1"
node=
for w in $(cat "${ETCDBAKE_PROC_CMDLINE:-/proc/cmdline}"); do
	case "$w" in ` + CmdlineNode + `=*) node="${w#` + CmdlineNode + `=}" ;; esac
done
case "$node" in
"" | *[!0-9a-fA-F-]*) exit 0 ;;
esac
cat > "$out/node.mount" <<EOF
# Written by etcdbake-node-generator
[Unit]
Description=etcdbake node settings (this slot's node partition)
Before=local-fs.target

[Mount]
What=/dev/disk/by-partuuid/$node
Where=/node
Type=ext4
Options=ro,nodev,nosuid,noexec
EOF
mkdir -p "$out/local-fs.target.requires"
ln -sf ../node.mount "$out/local-fs.target.requires/node.mount"
`

// SlotOptions configure the A/B machinery in the root.
type SlotOptions struct {
	// VerifyTimeout bounds the verification of a new slot's boot (spec rollout.timeout).
	VerifyTimeout time.Duration
	// Firstboot is etcd-firstboot's path and NodeConfig the --config it is given.
	Firstboot, NodeConfig string
}

// SlotSystem adds what the A/B slots need to a node's tree: the ESP mount point, the node
// partition's generator, the verify gate and the boot deadline. It is the same on every
// node, so it lands in the shared root.
func SlotSystem(t *fstree.Tree, o SlotOptions) error {
	if o.VerifyTimeout <= 0 {
		return fmt.Errorf("slots: the verify timeout must be above 0")
	}
	if err := t.Put(&fstree.Entry{Path: ESPMount, Mode: fs.ModeDir | 0o700}); err != nil {
		return err
	}
	secs := int(o.VerifyTimeout.Round(time.Second) / time.Second)
	verify := `[Unit]
Description=etcdbake: verify this boot of a new A/B slot before it is blessed
Documentation=man:systemd-bless-boot.service(8)
# Pulled in only on a boot-counted boot (a new slot on trial), through
# boot-complete.target, which systemd-bless-boot.service requires.
Before=boot-complete.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=` + o.Firstboot + ` verify-boot --config ` + o.NodeConfig + `
# rollout.timeout: not verified in time, the boot is not blessed and the node reboots;
# the entry's tries are used up, so the previous slot boots.
TimeoutStartSec=` + fmt.Sprint(secs) + `
ExecStopPost=/bin/sh -c '[ "$$SERVICE_RESULT" = success ] || /lib/systemd/systemd-bless-boot bad'
FailureAction=reboot

[Install]
RequiredBy=boot-complete.target
`
	// The deadline covers a trial boot that never gets to run the gate (emergency mode
	// after a failed mount, a unit stuck before basic.target).
	deadline := `[Unit]
Description=etcdbake: reboot a new A/B slot that was not blessed in time
DefaultDependencies=no
IgnoreOnIsolate=yes
ConditionPathExists=` + bootCountVar + `
Conflicts=shutdown.target
Before=shutdown.target

[Service]
ExecStart=/bin/sh -c 'sleep ` + fmt.Sprint(secs+120) + `; systemctl is-active --quiet systemd-bless-boot.service || systemctl reboot'

[Install]
WantedBy=sysinit.target
`
	// The rollout agent follows `etcdbake rollout` once this node passed its health gate.
	agent := `[Unit]
Description=etcdbake: rollout agent (stages releases into the inactive A/B slot, reboots under the cluster's lock)
After=etcd-ready.service
Requires=etcd-ready.service

[Service]
ExecStart=` + o.Firstboot + ` rollout --config ` + o.NodeConfig + ` --timeout ` + fmt.Sprint(secs) + `s
Restart=on-failure
RestartSec=10s
# Staging a release (TLS, hashing, hundreds of MiB of disk I/O) yields to etcd.
CPUWeight=20
IOWeight=20
# The agent asks for the reboot itself; it stops with everything else.
KillMode=mixed
TimeoutStopSec=20s

[Install]
WantedBy=multi-user.target
`
	files := []struct {
		path string
		mode fs.FileMode
		data string
	}{
		{NodeGenerator, 0o755, nodeGeneratorScript},
		{"usr/lib/systemd/system/" + VerifyUnit, 0o644, verify},
		{"usr/lib/systemd/system/" + DeadlineUnit, 0o644, deadline},
		{"usr/lib/systemd/system/" + RolloutUnit, 0o644, agent},
	}
	for _, f := range files {
		if err := t.Put(&fstree.Entry{Path: f.path, Mode: f.mode, Data: []byte(f.data)}); err != nil {
			return err
		}
	}
	for link, unit := range map[string]string{
		"etc/systemd/system/boot-complete.target.requires/" + VerifyUnit: VerifyUnit,
		"etc/systemd/system/sysinit.target.wants/" + DeadlineUnit:        DeadlineUnit,
		"etc/systemd/system/multi-user.target.wants/" + RolloutUnit:      RolloutUnit,
	} {
		if err := t.Put(&fstree.Entry{Path: link, Mode: fs.ModeSymlink | 0o777, Target: "/usr/lib/systemd/system/" + unit}); err != nil {
			return err
		}
	}
	return nil
}

// SlotCmdline is the kernel command line of slot's entry on a node.
func SlotCmdline(slot, rootPARTUUID, nodePARTUUID, release, hostname, machineID string) string {
	return strings.Join([]string{
		"root=PARTUUID=" + strings.ToLower(rootPARTUUID), "ro", "rootfstype=ext4",
		CmdlineSlot + "=" + slot, CmdlineNode + "=" + strings.ToLower(nodePARTUUID), CmdlineRelease + "=" + release,
		// initramfs-tools reboots after 30 s instead of waiting at its shell when it cannot
		// mount the root (a trial boot then falls back).
		"panic=30",
		"console=ttyS0,115200", "systemd.hostname=" + hostname, "systemd.machine_id=" + machineID,
	}, " ")
}

// bootFiles are the kernel and initrd a slot boots, kept on the ESP (the slot's
// directory) and in the release.
type bootFiles struct {
	kernel        string // its path in the base ("boot/vmlinuz-V"), recorded in manifests
	linux, initrd []byte
}

// takeBootFiles takes the newest kernel and its initrd out of the shared root, with the
// links to them ("vmlinuz", "initrd.img", their ".old" twins, at / or in boot/). Nothing
// on a node reads them from its root: the firmware loads them from the ESP and an A/B
// update brings its own in the release, so a root copy stored the same ~30 MB twice
// in every image.
func takeBootFiles(root *fstree.Tree) (bootFiles, error) {
	kernel, initrd, err := base.KernelAndInitrd(root)
	if err != nil {
		return bootFiles{}, err
	}
	b := bootFiles{kernel: kernel}
	var real []string
	for _, f := range []struct {
		path string
		into *[]byte
	}{{kernel, &b.linux}, {initrd, &b.initrd}} {
		p, err := root.Resolve(f.path, true)
		if err != nil {
			return bootFiles{}, err
		}
		e, _ := root.Get(p)
		if *f.into, err = root.Contents(e); err != nil {
			return bootFiles{}, err
		}
		real = append(real, p)
	}
	for _, dir := range []string{"", "boot"} {
		for _, name := range []string{"vmlinuz", "vmlinuz.old", "initrd.img", "initrd.img.old"} {
			p := path.Join(dir, name)
			if e, ok := root.Get(p); ok && e.IsSymlink() {
				if to, err := root.Resolve(p, true); err == nil && slices.Contains(real, to) {
					root.Remove(p)
				}
			}
		}
	}
	for _, p := range real {
		root.Remove(p)
	}
	return b, nil
}
