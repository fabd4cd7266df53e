package disk

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/etcdbake/etcdbake/imagebuild/fstree"
	"github.com/etcdbake/etcdbake/imagebuild/internal/imagetest"
)

// TestWriteExt4Cancelled: a context cancelled mid-write stops the writer at its next
// progress report, and the partial image file is removed.
func TestWriteExt4Cancelled(t *testing.T) {
	tr := sampleTree(t)
	for i := range 2000 {
		if err := tr.Put(&fstree.Entry{Path: fmt.Sprintf("usr/share/filler/%04d", i), Mode: 0o644, Data: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	img := filepath.Join(t.TempDir(), "root.ext4")
	var reports []int64
	_, err := WriteExt4(ctx, img, 64<<20, tr, Ext4Options{Label: "root", UUID: DeriveGUID("test", "root"), Meter: func(done, total int64) {
		reports = append(reports, done)
		cancel()
	}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("WriteExt4 = %v, want context.Canceled", err)
	}
	if len(reports) != 1 {
		t.Errorf("progress reports %v: the writer went on after the cancel", reports)
	}
	if _, err := os.Stat(img); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cancelled WriteExt4 left %s (%v)", img, err)
	}
}

// TestWriteDiskAndQCOW2Cancelled: WriteDisk with a cancelled context writes nothing and
// leaves no file; qemu-img is killed when the context ends, and its output is removed.
func TestWriteDiskAndQCOW2Cancelled(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	raw := filepath.Join(dir, "disk.raw")
	src := filepath.Join(dir, "part.img")
	if err := os.WriteFile(src, diskTestPattern(1<<20, 3), 0o644); err != nil {
		t.Fatal(err)
	}
	parts := []Partition{{Name: "data", Type: TypeLinuxData, Size: 4 << 20, Content: FileContent(src)}}
	if err := WriteDisk(ctx, raw, 8<<20, parts, DeriveGUID("test", "cancel")); !errors.Is(err, context.Canceled) {
		t.Errorf("WriteDisk with a cancelled context = %v", err)
	}
	if _, err := os.Stat(raw); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cancelled WriteDisk left %s", raw)
	}

	imagetest.Tool(t, "qemu-img", "qemu-utils")
	if err := WriteDisk(context.Background(), raw, 8<<20, parts, DeriveGUID("test", "cancel")); err != nil {
		t.Fatal(err)
	}
	q := filepath.Join(dir, "disk.qcow2")
	start := time.Now()
	if err := ConvertQCOW2(ctx, raw, q, QCOW2Zstd, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("ConvertQCOW2 with a cancelled context = %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("cancelled qemu-img took %s", d)
	}
	if _, err := os.Stat(q); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cancelled ConvertQCOW2 left %s", q)
	}
}
