package imagebuild

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/etcdbake/etcdbake/imagebuild/base"
	"github.com/etcdbake/etcdbake/imagebuild/disk"
	"github.com/etcdbake/etcdbake/imagebuild/fstree"
)

// BenchmarkRootExt4 writes the real default base as ext4 with go-diskfs and with
// e2fsprogs' `mkfs.ext4 -d` from the same tree extracted to disk, and reports both.
func BenchmarkRootExt4(b *testing.B) {
	basePath, tree := realBase(b)
	dir := b.TempDir()
	extracted := filepath.Join(dir, "tree")
	os.MkdirAll(extracted, 0o755)
	if out, err := exec.Command("tar", "-xf", basePath, "-C", extracted, "--numeric-owner").CombinedOutput(); err != nil {
		b.Fatalf("tar: %v\n%s", err, out)
	}
	// The extracted tree on disk first: mkfs.ext4 reads it from the page cache, as
	// go-diskfs reads the tree from memory; neither competes with its write-back.
	if out, err := exec.Command("sync").CombinedOutput(); err != nil {
		b.Fatalf("sync: %v %s", err, out)
	}
	size := ext4Size(tree)
	var ours, native time.Duration
	for b.Loop() {
		img := filepath.Join(dir, "go.ext4")
		t0 := time.Now()
		if _, err := disk.WriteExt4(context.Background(), img, size, tree, disk.Ext4Options{Label: "root", UUID: disk.DeriveGUID("bench", "root"), Time: time.Unix(base.DefaultSourceDateEpoch, 0)}); err != nil {
			b.Fatal(err)
		}
		ours += time.Since(t0)
		os.Remove(img)
		exec.Command("sync").Run()
		img = filepath.Join(dir, "mkfs.ext4")
		f, _ := os.Create(img)
		f.Truncate(size)
		f.Close()
		t0 = time.Now()
		if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", extracted, img).CombinedOutput(); err != nil {
			b.Fatalf("mkfs.ext4 -d: %v\n%s", err, out)
		}
		native += time.Since(t0)
		os.Remove(img)
	}
	n := float64(b.N)
	b.ReportMetric(ours.Seconds()/n, "go-diskfs-s")
	b.ReportMetric(native.Seconds()/n, "mkfs.ext4-d-s")
	b.ReportMetric(ours.Seconds()/native.Seconds(), "ratio")
	b.ReportMetric(float64(size>>20), "root-MiB")
}

// BenchmarkExtraNode builds the example's raw images from the real default base for its
// first node alone and for all three: the difference per node is what one more node costs
// (its config applied, the split, its node partition, ESP and disk with the shared root).
func BenchmarkExtraNode(b *testing.B) {
	_, baseTree := realBase(b)
	// One build first: the base's file contents and the page cache warm up on it.
	warm := exampleBuild(b, filepath.Join(b.TempDir(), "images"))
	warm.Base, warm.Nodes = baseTree, warm.Nodes[:1]
	if _, err := Build(context.Background(), warm); err != nil {
		b.Fatal(err)
	}
	var one, three, node time.Duration
	for b.Loop() {
		for _, n := range []int{1, 3} {
			o := exampleBuild(b, filepath.Join(b.TempDir(), "images"))
			o.Base, o.Nodes = baseTree, o.Nodes[:n]
			t0 := time.Now()
			imgs, err := Build(context.Background(), o)
			if err != nil {
				b.Fatal(err)
			}
			if n == 1 {
				one += time.Since(t0)
				continue
			}
			three += time.Since(t0)
			for _, im := range imgs {
				node = max(node, im.Took)
			}
		}
	}
	n := float64(b.N)
	b.ReportMetric(one.Seconds()/n, "1-node-s")
	b.ReportMetric(three.Seconds()/n, "3-nodes-s")
	b.ReportMetric((three-one).Seconds()/n/2, "extra-node-s")
	b.ReportMetric(node.Seconds(), "slowest-node-own-s")
}

// realBase builds (or reuses) the default base and reads it.
func realBase(b *testing.B) (string, *fstree.Tree) {
	cache, err := base.DefaultCacheDir()
	if err != nil {
		b.Fatal(err)
	}
	basePath, err := base.Build(context.Background(), base.DefaultRecipe(), cache, b.Logf)
	if err != nil {
		b.Fatal(err)
	}
	tree, err := base.Read(basePath)
	if err != nil {
		b.Fatal(err)
	}
	return basePath, tree
}
