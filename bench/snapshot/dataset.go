package snapshot

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
)

// The data set: half of the bytes in a few large files, half in many small
// ones; within each half, every other file is compressible (log-like text)
// and the rest random. Everything follows from the seed, so every run and
// every machine backs up the same bytes.

const (
	largeFiles   = 4
	smallMin     = 1 << 10  // smallest small file
	smallMax     = 96 << 10 // largest small file (mean ~48 KiB: ~11,000 files per GiB)
	filesPerDir  = 200
	datasetSeed  = 20261123
	changeSeed   = 7
	changeFactor = 100 // 1/changeFactor of the bytes change: 1%
)

// fileSpec is one file of the data set.
type fileSpec struct {
	rel          string
	size         int64
	compressible bool
}

// dataset is the list of files for a total size.
func dataset(total int64) []fileSpec {
	rng := rand.New(rand.NewPCG(datasetSeed, 1))
	var files []fileSpec
	large := total / 2 / largeFiles
	for i := 0; i < largeFiles; i++ {
		files = append(files, fileSpec{rel: fmt.Sprintf("large/file-%02d.bin", i), size: large, compressible: i%2 == 0})
	}
	var small int64
	for i := 0; small < total-large*largeFiles; i++ {
		size := smallMin + rng.Int64N(smallMax-smallMin)
		files = append(files, fileSpec{rel: fmt.Sprintf("small/d%03d/f%05d", i/filesPerDir, i), size: size, compressible: i%2 == 0})
		small += size
	}
	return files
}

// words make compressible content that zstd shrinks about 3-4x, like logs.
var words = []string{"INFO", "WARN", "DEBUG", "user", "session", "request", "GET", "POST", "/api/v1/items", "/login",
	"status=200", "status=404", "latency_ms=", "db", "query", "SELECT", "UPDATE", "commit", "rollback", "cache",
	"hit", "miss", "shard", "replica", "primary", "backup", "snapshot", "restore", "tenant", "order", "invoice", "id="}

// fill writes size bytes of content into w's buffer from rng.
func fill(buf []byte, rng *rand.Rand, compressible bool) {
	if !compressible {
		for i := 0; i+8 <= len(buf); i += 8 {
			v := rng.Uint64()
			for j := 0; j < 8; j++ {
				buf[i+j] = byte(v >> (8 * j))
			}
		}
		for i := len(buf) &^ 7; i < len(buf); i++ {
			buf[i] = byte(rng.Uint32())
		}
		return
	}
	i := 0
	for i < len(buf) {
		var w string
		if rng.IntN(4) == 0 {
			w = fmt.Sprint(rng.IntN(100000))
		} else {
			w = words[rng.IntN(len(words))]
		}
		i += copy(buf[i:], w)
		if i < len(buf) {
			if rng.IntN(12) == 0 {
				buf[i] = '\n'
			} else {
				buf[i] = ' '
			}
			i++
		}
	}
}

// writeDataset creates the data set under dir. When dir already holds a
// complete one (a marker file names the size), it is kept: generating a
// GiB takes a while and the bytes are the same anyway.
func writeDataset(dir string, total int64) ([]fileSpec, error) {
	files := dataset(total)
	marker := filepath.Join(dir, ".complete")
	want := fmt.Sprintf("seed=%d size=%d files=%d\n", datasetSeed, total, len(files))
	if b, err := os.ReadFile(marker); err == nil && string(b) == want {
		return files, nil
	}
	if err := os.RemoveAll(dir); err != nil {
		return nil, err
	}
	buf := make([]byte, 0, 1<<20)
	for i, f := range files {
		p := filepath.Join(dir, f.rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return nil, err
		}
		out, err := os.Create(p)
		if err != nil {
			return nil, err
		}
		rng := rand.New(rand.NewPCG(datasetSeed, uint64(i)+2))
		for left := f.size; left > 0; {
			n := min(left, int64(cap(buf)))
			buf = buf[:n]
			fill(buf, rng, f.compressible)
			if _, err := out.Write(buf); err != nil {
				out.Close()
				return nil, err
			}
			left -= n
		}
		if err := out.Close(); err != nil {
			return nil, err
		}
	}
	return files, os.WriteFile(marker, []byte(want), 0o644)
}

// change is one overwrite made by the 1% change, with the bytes it
// replaced so it can be undone.
type change struct {
	path string
	off  int64
	old  []byte
}

// changeDataset changes 1% of the bytes: half as one contiguous region in
// each large file (a database page range, a log segment), half as whole
// small files rewritten. New content is of the file's kind, so compression
// treats it as it treated the old. It returns what to undo and how many
// bytes changed.
func changeDataset(dir string, files []fileSpec, total int64) ([]change, int64, error) {
	rng := rand.New(rand.NewPCG(changeSeed, 1))
	budget := total / changeFactor
	var changes []change
	var changed int64
	overwrite := func(f fileSpec, off, n int64) error {
		p := filepath.Join(dir, f.rel)
		h, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			return err
		}
		defer h.Close()
		old := make([]byte, n)
		if _, err := h.ReadAt(old, off); err != nil {
			return err
		}
		buf := make([]byte, n)
		fill(buf, rng, f.compressible)
		if _, err := h.WriteAt(buf, off); err != nil {
			return err
		}
		changes = append(changes, change{path: p, off: off, old: old})
		changed += n
		return nil
	}
	region := budget / 2 / largeFiles
	for _, f := range files[:largeFiles] {
		off := rng.Int64N(f.size - region)
		if err := overwrite(f, off, region); err != nil {
			return nil, 0, err
		}
	}
	small := files[largeFiles:]
	picked := map[int]bool{}
	for changed < budget && len(picked) < len(small) {
		i := rng.IntN(len(small))
		if picked[i] {
			continue
		}
		picked[i] = true
		if err := overwrite(small[i], 0, small[i].size); err != nil {
			return nil, 0, err
		}
	}
	return changes, changed, nil
}

// undo puts the changed bytes back (the changes never overlap).
func undo(changes []change) error {
	for _, c := range changes {
		h, err := os.OpenFile(c.path, os.O_RDWR, 0)
		if err != nil {
			return err
		}
		_, err = h.WriteAt(c.old, c.off)
		h.Close()
		if err != nil {
			return err
		}
	}
	return nil
}
