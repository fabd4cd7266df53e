package main

import (
	"strings"

	"github.com/spf13/cobra"
)

// examples are the Examples sections of the help, keyed by command path, in one place so
// that they read alike; addExamples puts them on the tree. Every line is a real command
// line or a "#" comment: TestEveryCommandHasExamples parses each one against its command
// (one command per line, no quotes, no shell operators).
var examples = map[string]string{
	"etcdbake init": `
# Write the commented 3-node example to cluster.yaml, then edit its addresses
etcdbake init
etcdbake init lab/cluster.yaml
etcdbake init -f cluster.yaml --force`,

	"etcdbake validate": `
etcdbake validate
etcdbake validate lab/cluster.yaml`,

	"etcdbake pki": `
# Create the CAs and every certificate under out/pki; a second run re-issues only what drifted
etcdbake pki
etcdbake pki lab/cluster.yaml --out lab/out`,

	"etcdbake pki check": `
etcdbake pki check
etcdbake pki check lab/cluster.yaml --out lab/out -o json`,

	"etcdbake ignition": `
# The nodes download the binaries from a web server (etcdbake serve is one)
etcdbake ignition --binaries-url http://10.88.0.1:8080/binaries
# Or carry them inside the configs
etcdbake ignition lab/cluster.yaml --inline-binaries
# With an etcd-firstboot of your own (checked: static linux/amd64, etcdbake's version)
etcdbake ignition --binaries-url http://10.88.0.1:8080/binaries --firstboot bin/etcd-firstboot`,

	"etcdbake version": `
# etcdbake --version prints the same
etcdbake version`,

	"etcdbake kubeadm": `
etcdbake kubeadm
etcdbake kubeadm lab/cluster.yaml --pki-target /etc/kubernetes/pki`,

	"etcdbake status": `
etcdbake status
etcdbake status -o json
etcdbake status --endpoints https://10.88.0.11:2379,https://10.88.0.12:2379 --timeout 2s`,

	"etcdbake rollout": `
# Publish the newest release built by etcdbake image; the nodes fetch it from etcdbake serve
etcdbake rollout --url https://10.88.0.1:8443
etcdbake rollout --release 0123456789ab --url https://10.88.0.1:8443 --wait --timeout 30m
# Under etcdbake up no URL is needed
etcdbake rollout --wait`,

	"etcdbake rollout status": `
etcdbake rollout status
etcdbake rollout status -o json`,

	"etcdbake rollout resume": `
# After a node fell back and halted the rollout, let the other nodes go on
etcdbake rollout resume`,

	"etcdbake snapshot save": `
# To out/snapshots/CLUSTER-TIME.snapshot.tar
etcdbake snapshot save
etcdbake snapshot save /backups/etcd-demo.snapshot.tar -o json`,

	"etcdbake snapshot verify": `
etcdbake snapshot verify out/snapshots/etcd-demo-20261203T211500Z.snapshot.tar
etcdbake snapshot verify /backups/etcd-demo.snapshot.tar -f lab/cluster.yaml --out lab/out -o json`,

	"etcdbake snapshot list": `
etcdbake snapshot list
etcdbake snapshot list --out lab/out -o json`,

	"etcdbake snapshot fetch": `
# The newest snapshot of the cluster in backup.target, verified, to out/snapshots
etcdbake snapshot fetch
# A named object, written somewhere else (then: etcdbake restore FILE)
etcdbake snapshot fetch prod/etcd-demo-20261203T180000Z.snapshot.tar --file /backups/etcd-demo.snapshot.tar`,

	"etcdbake restore": `
# Images with every member's data restored, to out/restore/images; install them with
# etcdbake serve --listen 10.88.0.1:8080 --images out/restore/images
etcdbake restore out/snapshots/etcd-demo-20261203T211500Z.snapshot.tar
etcdbake restore /backups/etcd-demo.snapshot.tar --format qcow2 --images-out /srv/restored`,

	"etcdbake fetch": `
etcdbake fetch
etcdbake fetch lab/cluster.yaml --cache /srv/etcdbake-cache`,

	"etcdbake base": `
etcdbake base`,

	"etcdbake image": `
# raw and qcow2 images of every node in out/images
etcdbake image
etcdbake image lab/cluster.yaml --format qcow2 --data-size 8GiB
etcdbake image --base /srv/rootfs.tar --format raw --data-size 512MiB`,

	"etcdbake build": `
etcdbake build --binaries-url http://10.88.0.1:8080/binaries
etcdbake build lab/cluster.yaml --inline-binaries --format raw --data-size 4GiB`,

	"etcdbake up": `
etcdbake up
etcdbake up lab/cluster.yaml --out lab/out --memory 1024 --timeout 20m
etcdbake up --no-wait --accel kvm
# After losing the disks (and etcdbake down --purge): new disks with every member's data from a snapshot
etcdbake up --restore out/snapshots/etcd-demo-20261203T211500Z.snapshot.tar`,

	"etcdbake down": `
etcdbake down
# Also discard the VMs' disks and their etcd data
etcdbake down --purge`,

	"etcdbake exec": `
etcdbake exec etcd-1 -- journalctl -u etcd-firstboot -b
etcdbake exec etcd-2 --timeout 10s -- systemctl status etcd`,

	"etcdbake serve": `
# Install etcdbake's disk images (build them first: etcdbake image --format raw)
etcdbake serve --listen 10.88.0.1:8080

# Also serve releases (A/B slot upgrades) to the nodes over mutual TLS
etcdbake serve --listen 10.88.0.1:8080 --release-listen 10.88.0.1:8443

# Boot Fedora CoreOS live images with each node's Ignition config
etcdbake serve --listen 10.88.0.1:8080 --fcos-kernel http://10.88.0.1/fcos/kernel --fcos-initramfs http://10.88.0.1/fcos/initramfs.img --fcos-rootfs http://10.88.0.1/fcos/rootfs.img`,

	"etcdbake serve status": `
etcdbake serve status
etcdbake serve status --out lab/out -o json`,
}

// addExamples sets the Examples section of every command that has one, indented as
// cobra's help indents its other sections.
func addExamples(root *cobra.Command) {
	walk(root, func(c *cobra.Command) {
		ex, ok := examples[c.CommandPath()]
		if !ok {
			return
		}
		lines := strings.Split(strings.TrimSpace(ex), "\n")
		for i, l := range lines {
			lines[i] = "  " + l
		}
		c.Example = strings.Join(lines, "\n")
	})
}
