package qemu

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/etcdbake/etcdbake/imagebuild"
	"github.com/etcdbake/etcdbake/imagebuild/base"
	"github.com/etcdbake/etcdbake/imagebuild/fstree"
	"github.com/etcdbake/etcdbake/spec"
	"github.com/etcdbake/etcdbake/vmcluster"
)

// bootPlainBase builds images from the default base with an empty Ignition config (the
// same disk layout, read-only root and kernel command line as etcdbake's images, nothing
// of etcdbake's on top), boots one VM per MAC at once as a cluster does, and returns how
// long each took from launch to multi-user.target: the yardstick for B0's overhead.
func bootPlainBase(ctx context.Context, t testing.TB, dir string, macs map[string]string) map[string]time.Duration {
	t.Helper()
	base := defaultBaseTree(ctx, t)
	var nodes []imagebuild.NodeInput
	for n := range macs {
		nodes = append(nodes, imagebuild.NodeInput{Name: n, Config: []byte(`{"ignition":{"version":"3.4.0"}}`)})
	}
	out := filepath.Join(dir, "plain-images")
	imgs, err := imagebuild.Build(ctx, imagebuild.BuildOptions{Cluster: "plain", Nodes: nodes, Base: base, OutDir: out, Formats: []string{"raw"}, DataSize: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	images := map[string]string{}
	for _, im := range imgs {
		images[im.Node] = im.Files[0]
	}
	cl, err := vmcluster.StartCluster(ctx, vmcluster.ClusterOptions{Images: images, MACs: macs, Dir: filepath.Join(dir, "plain-run"), MemoryMiB: 768,
		// No etcd on the plain base: the forwards go to its default ports, unused.
		ClientPort: spec.DefaultClientPort, PeerPort: spec.DefaultPeerPort})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Stop()
	return waitMultiUser(ctx, t, cl)
}

// defaultBaseTree builds (or reuses) the default base and reads it.
func defaultBaseTree(ctx context.Context, t testing.TB) *fstree.Tree {
	t.Helper()
	cache, err := base.DefaultCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	path, err := base.Build(ctx, base.DefaultRecipe(), cache, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	tree, err := base.Read(path)
	if err != nil {
		t.Fatal(err)
	}
	return tree
}

// waitMultiUser waits until every node has reached multi-user.target and returns, per
// node, the time from launch to that moment. The guest reports when it got there on its
// own monotonic clock (systemd's ActiveEnterTimestampMonotonic against /proc/uptime), so
// neither the guest's wall clock nor polling delays enter the figure.
func waitMultiUser(ctx context.Context, t testing.TB, cl *vmcluster.Cluster) map[string]time.Duration {
	t.Helper()
	var mu sync.Mutex
	var wg sync.WaitGroup
	at := map[string]time.Duration{}
	for _, n := range cl.Nodes() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			deadline := time.Now().Add(10 * time.Minute)
			for {
				d, err := multiUserAt(ctx, cl, n)
				if err == nil {
					mu.Lock()
					at[n] = d
					mu.Unlock()
					return
				}
				if time.Now().After(deadline) {
					t.Errorf("%s: multi-user.target not reached within 10 minutes: %v", n, err)
					return
				}
				select {
				case <-ctx.Done():
					t.Errorf("%s: multi-user.target not reached: %v", n, err)
					return
				case <-time.After(2 * time.Second):
				}
			}
		}()
	}
	wg.Wait()
	return at
}

// multiUserAt asks the guest when it reached multi-user.target.
func multiUserAt(ctx context.Context, cl *vmcluster.Cluster, node string) (time.Duration, error) {
	res, err := cl.Exec(ctx, node, "/bin/sh", "-c", "cat /proc/uptime; systemctl show -p ActiveEnterTimestampMonotonic --value multi-user.target")
	asked := time.Now()
	if err != nil {
		return 0, err
	}
	f := strings.Fields(res.Stdout)
	if len(f) != 3 {
		return 0, fmt.Errorf("unexpected answer %q", res.Stdout)
	}
	uptime, err1 := strconv.ParseFloat(f[0], 64)
	mono, err2 := strconv.ParseInt(f[2], 10, 64)
	if err1 != nil || err2 != nil || mono == 0 {
		return 0, fmt.Errorf("not reached yet (%q)", res.Stdout)
	}
	booted := asked.Add(-time.Duration(uptime * float64(time.Second)))
	return booted.Add(time.Duration(mono) * time.Microsecond).Sub(cl.Started), nil
}
