package qemu

import (
	"bytes"
	"context"
	"crypto/tls"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/etcdbake/etcdbake/imagebuild"
	"github.com/etcdbake/etcdbake/imagebuild/base"
	"github.com/etcdbake/etcdbake/vmcluster"
)

// BenchmarkImagesAndBoot prints the image figures the README shows: the example's three
// images (raw and compressed qcow2) with the time per node and their sizes, then a
// 1-node image booted next to the plain base (same layout, no etcdbake on top): launch
// to multi-user.target for both, and to etcd's /readyz.
func BenchmarkImagesAndBoot(b *testing.B) {
	requireQEMU(b)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	for b.Loop() {
		benchImagesAndBoot(ctx, b)
	}
}

// imageFigures are the slowest node's build time and the sizes of the last node's images.
func imageFigures(b *testing.B, imgs []imagebuild.Image) (perNode time.Duration, rawSize, rawAlloc, qcowSize int64) {
	for _, im := range imgs {
		perNode = max(perNode, im.Took)
		for _, f := range im.Files {
			st, err := os.Stat(f)
			if err != nil {
				b.Fatal(err)
			}
			switch {
			case strings.HasSuffix(f, ".raw"):
				rawSize, rawAlloc = st.Size(), st.Sys().(*syscall.Stat_t).Blocks*512
			case strings.HasSuffix(f, ".qcow2"):
				qcowSize = st.Size()
			}
		}
	}
	return perNode, rawSize, rawAlloc, qcowSize
}

// benchImagesAndBoot is one run (a closure inside the b.Loop body makes go1.26.8's
// compiler crash).
func benchImagesAndBoot(ctx context.Context, b *testing.B) {
	dir := b.TempDir()
	start := time.Now()
	bc, imgs := buildClusterImagesAs(ctx, b, dir, exampleSpecForQEMU(b), false, []string{"raw", "qcow2"})
	total := time.Since(start)
	perNode, rawSize, rawAlloc, qcowSize := imageFigures(b, imgs)
	b.ReportMetric(total.Seconds(), "3-images-s")
	b.ReportMetric(perNode.Seconds(), "per-node-raw+qcow2-s")
	b.ReportMetric(float64(rawSize>>20), "raw-MiB")
	b.ReportMetric(float64(rawAlloc>>20), "raw-allocated-MiB")
	b.ReportMetric(float64(qcowSize)/1e6, "qcow2-MB")

	// Side by side: the same images from the base without the lean recipe (every file
	// dpkg unpacks, usrmerge, Perl, apt and every kernel module kept).
	full := base.DefaultRecipe()
	full.DpkgOpts, full.Purge, full.PruneModules = nil, nil, nil
	fullBase, err := base.Build(ctx, full, bc.baseCache, b.Logf)
	if err != nil {
		b.Fatal(err)
	}
	bc.base = fullBase
	start = time.Now()
	fullImgs := bc.bakeImages(ctx, b, bc.c, exampleSpecForQEMU(b), filepath.Join(dir, "full-images"), []string{"raw", "qcow2"})
	fullTotal := time.Since(start)
	_, _, fullAlloc, fullQcow := imageFigures(b, fullImgs)
	b.ReportMetric(fullTotal.Seconds(), "full-base-3-images-s")
	b.ReportMetric(float64(fullAlloc>>20), "full-base-raw-allocated-MiB")
	b.ReportMetric(float64(fullQcow)/1e6, "full-base-qcow2-MB")

	// Per extra node without qcow2 (raw only): build 1 and 3 nodes.
	one := oneNodeQEMUSpec(b)
	t1, _ := timeRawBuild(ctx, b, one)
	t3, imgs3 := timeRawBuild(ctx, b, exampleSpecForQEMU(b))
	b.ReportMetric((t3-t1).Seconds()/2, "extra-node-raw-s")
	var rawNode time.Duration
	for _, im := range imgs3 {
		rawNode = max(rawNode, im.Took)
	}
	b.ReportMetric(rawNode.Seconds(), "per-node-raw-s")

	// Boot: plain base vs a 1-node etcdbake image, one VM each.
	plain := bootPlainBase(ctx, b, filepath.Join(dir, "plain"), map[string]string{"etcd-1": "52:54:00:88:00:11"})
	bc = buildClusterImages(ctx, b, filepath.Join(dir, "one"), one, true)
	cl, err := vmcluster.StartCluster(ctx, bc.options(filepath.Join(dir, "one", "run"), qemuTimeServer))
	if err != nil {
		b.Fatal(err)
	}
	tlsCfg := adminTLS(b, bc.pkiDir)
	ready := waitReadyz(ctx, b, cl, "etcd-1", tlsCfg)
	mu := waitMultiUser(ctx, b, cl)
	cl.Stop()
	b.ReportMetric(plain["etcd-1"].Seconds(), "plain-base-multi-user-s")
	b.ReportMetric(mu["etcd-1"].Seconds(), "image-multi-user-s")
	b.ReportMetric(ready.Seconds(), "image-readyz-s")
	// Issue 17's goals: /readyz within half the plain base's multi-user time (<= 0.5).
	b.ReportMetric(ready.Seconds()/plain["etcd-1"].Seconds(), "readyz/plain-multi-user")
	b.ReportMetric(mu["etcd-1"].Seconds()/plain["etcd-1"].Seconds(), "multi-user/plain-multi-user")
}

// timeRawBuild times building a spec's raw images (end to end: PKI, etcd-firstboot,
// configs, images), after flushing what earlier builds left to write back.
func timeRawBuild(ctx context.Context, b *testing.B, spec []byte) (time.Duration, []imagebuild.Image) {
	// Write-back of the images built before is not this build's cost.
	syscall.Sync()
	t0 := time.Now()
	_, imgs := buildClusterImagesAs(ctx, b, b.TempDir(), spec, false, []string{"raw"})
	return time.Since(t0), imgs
}

// oneNodeQEMUSpec is the example reduced to its first node.
func oneNodeQEMUSpec(t testing.TB) []byte {
	b := exampleSpecForQEMU(t)
	i := bytes.Index(b, []byte("  - name: etcd-2"))
	j := bytes.Index(b, []byte("\netcd:"))
	if i < 0 || j < i {
		t.Fatal("the example spec's node list changed: update oneNodeQEMUSpec")
	}
	return append(append([]byte{}, b[:i]...), b[j+1:]...)
}

// waitReadyz waits until the node answers /readyz and returns the time since launch.
func waitReadyz(ctx context.Context, t testing.TB, cl *vmcluster.Cluster, node string, cfg *tls.Config) time.Duration {
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
	for {
		resp, err := hc.Get(cl.Endpoint(node) + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return time.Since(cl.Started)
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: no /readyz: %v", node, err)
		case <-time.After(time.Second):
		}
	}
}
