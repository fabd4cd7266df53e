package vmcluster_test

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"os"
	"time"

	"github.com/etcdbake/etcdbake/bake"
	"github.com/etcdbake/etcdbake/binaries"
	"github.com/etcdbake/etcdbake/imagebuild/base"
	"github.com/etcdbake/etcdbake/pki"
	"github.com/etcdbake/etcdbake/spec"
	"github.com/etcdbake/etcdbake/status"
	"github.com/etcdbake/etcdbake/vmcluster"
)

// A CI test of your own: build the spec's QEMU images (as `etcdbake up` does), boot them,
// talk to etcd through the forwarded client ports, then cut a node off and bring it back.
// (Not run here: it needs QEMU and takes minutes under TCG.)
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	if err := vmcluster.Check(); err != nil {
		log.Fatal(err) // e.g. "cannot run VMs: missing qemu-img (apt-get install qemu-utils)"
	}
	specPath := "cluster.yaml"
	c, _, err := spec.Load(specPath)
	if err != nil {
		log.Fatal(err)
	}
	specBytes, _ := os.ReadFile(specPath)
	if _, err := pki.Ensure(c, "out/pki", time.Now()); err != nil {
		log.Fatal(err)
	}
	binCache, _ := binaries.DefaultCacheDir()
	baseCache, _ := base.DefaultCacheDir()
	built, err := bake.QEMUImages(ctx, bake.Sources{
		Cluster: c, SpecBytes: specBytes, PKIDir: "out/pki", Cache: &binaries.Cache{Dir: binCache},
		Firstboot: "bin/etcd-firstboot", FirstbootVersion: "ci",
	}, bake.QEMUOptions{BaseCacheDir: baseCache, OutDir: "out/qemu/images", RunDir: "out/run"})
	if err != nil {
		log.Fatal(err)
	}

	o := bake.QEMUCluster(c, built.Images, "out/run") // spec MACs and etcd ports
	o.TimeServer = built.TimeServer                   // the hub answers NTP there
	cl, err := vmcluster.StartCluster(ctx, o)
	if err != nil {
		log.Fatal(err)
	}
	defer cl.Stop()

	ca, _ := pki.CAPath("out/pki", "ca")
	crt, key := pki.ClientCertPath("out/pki", "admin")
	tlsCfg, err := status.TLSConfig(ca, crt, key)
	if err != nil {
		log.Fatal(err)
	}
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsCfg}}
	first := cl.Nodes()[0]
	for { // wait until the first node's etcd is ready (https://127.0.0.1:<forwarded port>)
		if resp, err := hc.Get(cl.Endpoint(first) + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		time.Sleep(2 * time.Second)
	}

	// Faults: partition a node, restart another with its hardware clock an hour ahead.
	if err := cl.CutLink(first); err != nil {
		log.Fatal(err)
	}
	if err := cl.RestoreLink(first); err != nil {
		log.Fatal(err)
	}
	if err := cl.RestartWith(ctx, cl.Nodes()[1], vmcluster.RestartOptions{ClockOffset: time.Hour}); err != nil {
		log.Fatal(err)
	}
	res, err := cl.Exec(ctx, first, "systemctl", "is-active", "etcd")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Print(res.Stdout)
}
