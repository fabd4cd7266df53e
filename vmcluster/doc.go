// Package vmcluster boots the nodes of an etcdbake cluster as QEMU virtual machines on
// one machine, for CI tests of your own (and for `etcdbake up` and etcdbake's tests): a
// real etcd + flannel cluster from the same disk images `etcdbake image` writes, that a
// test can reach, break and repair.
//
// # What it starts
//
// StartCluster boots one VM per node image: UEFI (OVMF) on a q35 machine, one vCPU, TCG
// unless KVM was proven to work (ChooseAccel, ProbeKVM), each writing to its own
// copy-on-write overlay of the image so the image stays pristine. Each VM has two NICs:
//
//   - the node's spec MAC on a private Ethernet segment, a Hub in the calling process
//     (one socketpair per VM; nothing reaches a real interface), so the nodes talk over
//     their spec addresses exactly as on a real network;
//   - a user-mode NIC with restrict=on that carries only host forwards from 127.0.0.1 to
//     the guest's etcd client and peer ports (ClusterOptions.ClientPort and PeerPort, the
//     spec's ports): Cluster.Endpoint gives the URL, endpoints.json in the run directory
//     lists them all.
//
// The hub can also answer NTP on the segment (ClusterOptions.TimeServer; the VMs reach no
// public time server), and every VM has a QEMU guest agent channel for running commands
// as root in it (Cluster.Exec). For fault injection a Cluster kills and restarts nodes
// (Kill, Restart, RestartWith with a skewed clock or a wiped disk), cuts a node's link
// (CutLink, RestoreLink) and withholds time from it (Hub().DenyTime).
//
// A cluster that must outlive its process (as under `etcdbake up`) runs in a supervisor:
// Launch starts it, SupervisePlan is the supervisor's body, ReadRunState, ExecIn and
// StopSupervised reach it from other processes.
//
// # The images
//
// Every node's Ignition config needs GuestButane (with the same etcd ports and the user
// NICs' MACs) so that the user-mode NIC is configured and etcd listens on it.
// bake.QEMUImages builds such images for a spec (it is what `etcdbake up` uses), and
// bake.QEMUCluster gives the matching ClusterOptions; see the example.
//
// # What the machine needs
//
// qemu-system-x86_64 able to run -accel tcg (Debian: qemu-system-x86), qemu-img
// (qemu-utils) and OVMF's firmware at /usr/share/OVMF (ovmf). Check and Missing say what
// is absent. No root, no /dev/kvm, no bridge or tap device is needed. Budget about 1 GB
// of host memory and most of a core per booting VM: under TCG a 3-node cluster takes
// minutes to become healthy on a 2-core machine.
//
// # Network isolation
//
// Traffic stays on 127.0.0.1 and on virtual networks inside this machine: the private
// segment exists only as socketpairs between QEMU and the calling process, the user-mode
// NICs have restrict=on (the guest reaches neither the host nor anything beyond it), and
// the forwards listen on 127.0.0.1 only, on ports QEMU chooses (parallel clusters do not
// collide). A guest forward (ClusterOptions.GuestForwards) reaches exactly what its relay
// command connects to (Relay: one unix socket of the caller's). The one exception is a
// node booted by PXE (ClusterOptions.PXE), whose user-mode NIC may reach the host's
// loopback as 10.0.2.2 to fetch its boot files.
package vmcluster
