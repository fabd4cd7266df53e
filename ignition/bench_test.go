package ignition

import "testing"

// BenchmarkRender3Nodes renders and validates (with Ignition's parser) the example's
// three node configs, binaries by URL.
func BenchmarkRender3Nodes(b *testing.B) {
	c := exampleCluster(b)
	in := testInput(b, c)
	b.ResetTimer()
	for b.Loop() {
		if _, err := Render(in); err != nil {
			b.Fatal(err)
		}
	}
}
