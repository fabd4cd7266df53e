package qemu

import (
	"context"
	"path/filepath"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/etcdbake/etcdbake/imagebuild"
)

// multiUserRe is systemd's status line when multi-user.target is reached (printed on the
// serial console: the images boot with console=ttyS0 and without "quiet").
var multiUserRe = regexp.MustCompile(`Reached target.*Multi-User System`)

// bootPlainBase builds images from the default base with an empty Ignition config (the
// same disk layout, read-only root and kernel command line as etcdbake's images, nothing
// of etcdbake's on top), boots one VM per MAC at once as a cluster does, and returns how
// long each took from launch to multi-user.target: the yardstick for B0's overhead.
func bootPlainBase(ctx context.Context, t *testing.T, dir string, macs map[string]string) map[string]time.Duration {
	t.Helper()
	baseCache, err := imagebuild.DefaultBaseCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	basePath, err := imagebuild.BuildBase(ctx, imagebuild.DefaultBaseRecipe(), baseCache, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	base, err := imagebuild.ReadBase(basePath)
	if err != nil {
		t.Fatal(err)
	}
	var nodes []imagebuild.NodeInput
	for n := range macs {
		nodes = append(nodes, imagebuild.NodeInput{Name: n, Config: []byte(`{"ignition":{"version":"3.4.0"}}`)})
	}
	out := filepath.Join(dir, "plain-images")
	imgs, err := imagebuild.Build(imagebuild.BuildOptions{Cluster: "plain", Nodes: nodes, Base: base, OutDir: out, Formats: []string{"raw"}, DataSize: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	images := map[string]string{}
	for _, im := range imgs {
		images[im.Node] = im.Files[0]
	}
	cl, err := StartCluster(ctx, ClusterOptions{Images: images, MACs: macs, Dir: filepath.Join(dir, "plain-run"), MemoryMiB: 768})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Stop()
	return waitMultiUser(ctx, t, cl)
}

// waitMultiUser waits for every node's console to show multi-user.target and returns the
// time from launch for each.
func waitMultiUser(ctx context.Context, t *testing.T, cl *Cluster) map[string]time.Duration {
	t.Helper()
	var mu sync.Mutex
	var wg sync.WaitGroup
	at := map[string]time.Duration{}
	for _, n := range cl.Nodes() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := cl.VM(n).WaitConsole(ctx, multiUserRe); err != nil {
				t.Errorf("%s: %v", n, err)
				return
			}
			mu.Lock()
			at[n] = time.Since(cl.Started)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return at
}
