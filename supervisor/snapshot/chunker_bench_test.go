package snapshot

import (
	"math/rand/v2"
	"testing"
)

// BenchmarkCut is the content-defined chunker's inner loop over random
// data with the default parameters (the largest CPU cost of a backup of
// changed large files).
func BenchmarkCut(b *testing.B) {
	p := ChunkerParams{Min: DefaultChunkMin, Avg: DefaultChunkAvg, Max: DefaultChunkMax}
	data := make([]byte, 64<<20)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	c := NewChunker(nil, p, nil)
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for b.Loop() {
		for rest := data; len(rest) > 0; {
			n := cut(rest, p.Min, p.Avg, p.Max, c.maskS, c.maskL)
			rest = rest[n:]
		}
	}
}
