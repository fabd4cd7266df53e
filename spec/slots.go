package spec

import "fmt"

// The A/B slot contract between the disk images (imagebuild writes them) and the node
// (etcd-firstboot reads the boot state, stages and arms a slot). The disk holds two
// slots, each a root and a node partition, named by RootLabel and NodeLabel; each slot's
// kernel and initrd are on the ESP under SlotKernelDir; systemd-boot entries are named by
// EntryName, and the entry's kernel command line names the slot, its node partition and
// its release (CmdlineSlot, CmdlineNode, CmdlineRelease).

// Slots are the two system slots, in the order of their partitions.
var Slots = []string{"a", "b"}

// Kernel command line keys that tell the booted system its slot.
const (
	CmdlineSlot    = "etcdbake.slot"
	CmdlineNode    = "etcdbake.node"
	CmdlineRelease = "etcdbake.release"
)

// RootLabel is the GPT name of a slot's root partition.
func RootLabel(slot string) string { return "root-" + slot }

// NodeLabel is the GPT name of a slot's node partition.
func NodeLabel(slot string) string { return "node-" + slot }

// EntryName is the systemd-boot entry (file name without ".conf" and without a boot
// counter) that boots slot for rollout generation gen. systemd-boot sorts entries by
// name, newest first; generation 0 is the fresh image's.
func EntryName(gen int, slot string) string { return fmt.Sprintf("etcdbake-%06d-%s", gen, slot) }

// SlotKernelDir is where a slot's kernel and initrd live on the ESP ("linux", "initrd").
func SlotKernelDir(slot string) string { return "etcdbake/" + slot }

// OtherSlot is the slot that is not slot.
func OtherSlot(slot string) string {
	if slot == "a" {
		return "b"
	}
	return "a"
}
