package bake

import (
	"slices"
	"strings"
	"testing"

	"github.com/etcdbake/etcdbake/imagebuild/base"
	"github.com/etcdbake/etcdbake/spec"
)

// TestRecipeAddsSpecPackages: image.packages go into the default recipe (a different base,
// cached under its own hash); without them the recipe is the default one.
func TestRecipeAddsSpecPackages(t *testing.T) {
	c, rep := spec.Parse(append(append([]byte(nil), spec.Example...), "image:\n  packages: [nfs-common, perl]\n  kernelModules: [xfs]\n"...))
	if rep.HasErrors() {
		t.Fatal(rep.String())
	}
	r := Recipe(c)
	if !slices.Contains(r.Include, "nfs-common") || !slices.Contains(r.Include, "perl") || r.Hash() == base.DefaultRecipe().Hash() {
		t.Errorf("recipe with image.packages: include %v, hash %s (default %s)", r.Include, r.Hash(), base.DefaultRecipe().Hash())
	}
	if !slices.Equal(r.KeepModules, []string{"xfs"}) || !slices.Contains(r.PruneModules, "fs/xfs") {
		t.Errorf("recipe with image.kernelModules: keep %v, prune %v", r.KeepModules, r.PruneModules)
	}
	if Recipe(nil).Hash() != base.DefaultRecipe().Hash() {
		t.Error("Recipe(nil) is not the default recipe")
	}
	plain, _ := spec.Parse(spec.Example)
	if Recipe(plain).Hash() != base.DefaultRecipe().Hash() {
		t.Error("a spec without image.packages does not give the default recipe")
	}
	_, rep = spec.Parse(append(append([]byte(nil), spec.Example...), "image:\n  packages: [\"Bad Name\"]\n"...))
	if errs := rep.Errors(); len(errs) != 1 || errs[0].Path != "image.packages[0]" {
		t.Errorf("a bad package name: %s", rep.String())
	}
	_, rep = spec.Parse(append(append([]byte(nil), spec.Example...), "image:\n  kernelModules: [xfs, \"fs/nfs\"]\n"...))
	if errs := rep.Errors(); len(errs) != 1 || errs[0].Path != "image.kernelModules[1]" || !strings.Contains(errs[0].Message, "kernel module name") {
		t.Errorf("a bad module name: %s", rep.String())
	}
}
