package snapshot

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lifeboat/lifeboat/supervisor/storage"
)

// damagedRepo is a file-store repository with three snapshots, for
// damaging by hand.
func damagedRepo(t *testing.T, key []byte) (*Repository, string, []*Manifest) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "store")
	s, err := openFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	r := smallRepo(t, s, key)
	var ms []*Manifest
	for range 3 {
		m, err := r.Backup(context.Background(), BackupRequest{Dir: snapshotDir(t, map[string][]byte{"f": randBytes(2 << 20), "g": []byte("small")}), Parent: "none"})
		if err != nil {
			t.Fatal(err)
		}
		ms = append(ms, m)
	}
	return r, dir, ms
}

func TestVerifyIntactRepository(t *testing.T) {
	for name, open := range backends(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			r := smallRepo(t, open(t), []byte("k"))
			for range 2 {
				if _, err := r.Backup(ctx, BackupRequest{Dir: snapshotDir(t, map[string][]byte{"f": randBytes(3 << 20)}),
					Streams: []StreamSource{{Name: "s", Reader: strings.NewReader(strings.Repeat("stream ", 100000))}}}); err != nil {
					t.Fatal(err)
				}
			}
			rep := mustVerify(t, r)
			if rep.Snapshots != 2 || rep.Indexes != 2 || rep.Packs < 6 || rep.PacksRead != rep.Packs || rep.BlobsRead != rep.Blobs || len(rep.Notes) != 0 {
				t.Errorf("report %+v", rep)
			}
			// Structure only reads no pack; a sample reads some.
			rep, err := Verify(ctx, r, VerifyOptions{})
			if err != nil || !rep.OK() || rep.PacksRead != 0 || rep.BytesRead != 0 {
				t.Errorf("structure only: %+v %v", rep, err)
			}
			rep, err = Verify(ctx, r, VerifyOptions{ReadDataPercent: 10})
			if err != nil || !rep.OK() || rep.PacksRead < 1 || rep.PacksRead >= rep.Packs {
				t.Errorf("10%% sample: read %d of %d packs, %v", rep.PacksRead, rep.Packs, err)
			}
			if _, err := Verify(ctx, r, VerifyOptions{ReadDataPercent: 101}); err == nil {
				t.Error("101% accepted")
			}
		})
	}
}

func TestVerifyReportsEveryProblem(t *testing.T) {
	for _, encrypted := range []bool{false, true} {
		name := "plain"
		var key []byte
		if encrypted {
			name, key = "encrypted", []byte("verify key")
		}
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			r, dir, ms := damagedRepo(t, key)
			packs, _ := filepath.Glob(filepath.Join(dir, "packs/*/*"))
			if len(packs) < 6 {
				t.Fatalf("%d packs", len(packs))
			}
			// A flipped byte in the first blob of one pack: found only by
			// reading data, and named as a failed blob check.
			flip := packs[0]
			b, _ := os.ReadFile(flip)
			b[3] ^= 0x01
			os.WriteFile(flip, b, 0o600)
			// A truncated pack: its size no longer matches the index.
			trunc := packs[1]
			b, _ = os.ReadFile(trunc)
			os.WriteFile(trunc, b[:len(b)-100], 0o600)
			// A pack gone.
			gone := packs[2]
			os.Remove(gone)
			// A manifest overwritten with garbage.
			os.WriteFile(filepath.Join(dir, filepath.FromSlash(ms[1].Key)), []byte("LBO1\x01garbage"), 0o600)

			rep, err := Verify(ctx, r, VerifyOptions{})
			if err != nil {
				t.Fatal(err)
			}
			text := problems(rep)
			for _, want := range []string{
				filepath.Base(trunc) + ": stored size",
				filepath.Base(gone) + ": listed in",
				ms[1].Key + ": manifest",
			} {
				if !strings.Contains(text, want) {
					t.Errorf("structure check misses %q in:\n%s", want, text)
				}
			}
			if strings.Contains(text, filepath.Base(flip)) {
				t.Errorf("structure check read data:\n%s", text)
			}
			rep, err = Verify(ctx, r, VerifyOptions{ReadDataPercent: 100})
			if err != nil {
				t.Fatal(err)
			}
			text = problems(rep)
			t.Logf("problems:\n%s", text)
			for _, want := range []string{
				filepath.Base(flip) + ": 1 of",
				"fail their check",
				filepath.Base(trunc) + ": pack: corrupt or tampered data",
			} {
				if !strings.Contains(text, want) {
					t.Errorf("read-data check misses %q in:\n%s", want, text)
				}
			}
			if err := rep.Err(); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "problems, the first") {
				t.Errorf("Err: %v", err)
			}
			if rep.ProblemsAll < 5 {
				t.Errorf("%d problems:\n%s", rep.ProblemsAll, text)
			}
			rep, _ = Verify(ctx, r, VerifyOptions{ReadDataPercent: 100, MaxProblems: 2})
			if len(rep.Problems) != 2 || rep.ProblemsAll < 5 {
				t.Errorf("MaxProblems 2: %d listed of %d", len(rep.Problems), rep.ProblemsAll)
			}
		})
	}
}

func problems(rep *VerifyReport) string {
	var lines []string
	for _, p := range rep.Problems {
		lines = append(lines, p.String())
	}
	return strings.Join(lines, "\n")
}

func TestVerifyFindsHostileAndTamperedObjects(t *testing.T) {
	ctx := context.Background()
	r, dir, ms := damagedRepo(t, []byte("k"))
	// A committed snapshot whose tree writes outside the target.
	hostile := writeHostile(t, r, []Entry{{Path: ".", Kind: KindDir}, {Path: "../x", Kind: KindSymlink, Target: "/"}})
	// A tree replaced by another snapshot's (hash mismatch).
	tb, _ := os.ReadFile(filepath.Join(dir, filepath.FromSlash(ms[0].TreeKey)))
	os.WriteFile(filepath.Join(dir, filepath.FromSlash(ms[2].TreeKey)), tb, 0o600)
	// The index object of ms[1]'s packs with a flipped byte (fails
	// authentication), so ms[1]'s chunks are in no index.
	tree1, err := r.ReadTree(ctx, ms[1])
	if err != nil {
		t.Fatal(err)
	}
	var idxKey string
	for _, k := range objectKeys(t, r.Store(), indexPrefix) {
		f, err := r.readIndex(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range f.Packs {
			for _, b := range p.Blobs {
				if b.ID == tree1.Entries[1].Chunks[0] {
					idxKey = k
				}
			}
		}
	}
	idxPath := filepath.Join(dir, filepath.FromSlash(idxKey))
	ib, _ := os.ReadFile(idxPath)
	ib[len(ib)-1] ^= 0x80
	os.WriteFile(idxPath, ib, 0o600)
	// The config damaged.
	cfgPath := filepath.Join(dir, "config")
	cb, _ := os.ReadFile(cfgPath)
	os.WriteFile(cfgPath, cb[:10], 0o600)

	rep, err := Verify(ctx, r, VerifyOptions{ReadDataPercent: 100})
	if err != nil {
		t.Fatal(err)
	}
	text := problems(rep)
	t.Logf("problems:\n%s", text)
	for _, want := range []string{
		hostile.Key + ": tree",
		"snapshot refused",
		ms[2].Key + ": snapshot " + ms[2].ID + ": tree: corrupt or tampered data: hash mismatch",
		idxKey + ": index: corrupt",
		"config: repository config: corrupt",
		ms[1].Key + ": snapshot " + ms[1].ID + " references",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("verify misses %q in:\n%s", want, text)
		}
	}
}

func openFileStore(dir string) (*storage.File, error) { return storage.OpenFile(dir) }

func TestRepairIndexFromPackTrailers(t *testing.T) {
	for _, key := range [][]byte{nil, []byte("repair key")} {
		t.Run(fmt.Sprintf("encrypted=%t", key != nil), func(t *testing.T) {
			ctx := context.Background()
			s := fileStore(t)
			r := smallRepo(t, s, key)
			contents := map[string]map[string][]byte{}
			for i := range 3 {
				files := map[string][]byte{fmt.Sprintf("f%d", i): randBytes(2 << 20)}
				m, err := r.Backup(ctx, BackupRequest{Dir: snapshotDir(t, files)})
				if err != nil {
					t.Fatal(err)
				}
				contents[m.ID] = files
			}
			idx := objectKeys(t, s, indexPrefix)
			// One index object lost, one damaged, and a stray non-pack.
			s.Delete(ctx, idx[0])
			b, _ := r.getAll(ctx, idx[1], 1<<20)
			b[len(b)-1] ^= 1
			s.Put(ctx, idx[1], bytes.NewReader(b), int64(len(b)))
			s.Put(ctx, packPrefix+"ff/ffffffffffffffffffffffffffffffff", strings.NewReader("not a pack"), 10)

			// A damaged index object does not make the repository
			// unreadable; verify through the normal Open names it.
			ro, err := Open(ctx, s, Options{Key: key})
			if err != nil {
				t.Fatalf("open with a damaged index: %v", err)
			}
			if rep, err := Verify(ctx, ro, VerifyOptions{}); err != nil || rep.OK() || !strings.Contains(fmt.Sprintf("%+v", rep.Problems), idx[1]) {
				t.Fatalf("verify after a plain open does not name the damaged index %s: %+v %v", idx[1], rep.Problems, err)
			}
			rr, err := Open(ctx, s, Options{Key: key})
			if err != nil {
				t.Fatal(err)
			}
			rep, err := Verify(ctx, rr, VerifyOptions{})
			if err != nil || rep.OK() {
				t.Fatalf("verify before repair: %v %v", rep.Problems, err)
			}
			res, err := RepairIndex(ctx, rr)
			if err != nil {
				t.Fatal(err)
			}
			if res.PacksIndexed < 4 || fmt.Sprint(res.IndexesDeleted) != "["+idx[1]+"]" || len(res.BadPacks) != 1 {
				t.Fatalf("repair: %+v", res)
			}
			r2, err := Open(ctx, s, Options{Key: key})
			if err != nil {
				t.Fatal(err)
			}
			rep, err = Verify(ctx, r2, VerifyOptions{ReadDataPercent: 100})
			if err != nil {
				t.Fatal(err)
			}
			// Only the stray object remains a problem.
			if rep.ProblemsAll != 1 || !strings.Contains(problems(rep), "ffffffff") {
				t.Fatalf("after repair: %v", rep.Problems)
			}
			for id, files := range contents {
				restoresTo(t, r2, id, files)
			}
		})
	}
}

// BenchmarkVerifyReadData measures a full read-data verify and a prune
// that deletes half the data, on the file store (64 MiB of random data in
// default-sized chunks and packs).
func BenchmarkVerifyReadData(b *testing.B) {
	ctx := context.Background()
	s := fileStore(b)
	r, err := Open(ctx, s, Options{Create: true})
	if err != nil {
		b.Fatal(err)
	}
	m, err := r.Backup(ctx, BackupRequest{Dir: snapshotDir(b, map[string][]byte{"a": randBytes(32 << 20), "b": randBytes(32 << 20)})})
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(m.Stats.StoredBytes)
	b.ResetTimer()
	for range b.N {
		rep, err := Verify(ctx, r, VerifyOptions{ReadDataPercent: 100})
		if err != nil || !rep.OK() {
			b.Fatal(err, rep.Problems)
		}
	}
}

func BenchmarkPrune(b *testing.B) {
	ctx := context.Background()
	for range b.N {
		b.StopTimer()
		s := fileStore(b)
		r, err := Open(ctx, s, Options{Create: true})
		if err != nil {
			b.Fatal(err)
		}
		for range 2 {
			if _, err := r.Backup(ctx, BackupRequest{Dir: snapshotDir(b, map[string][]byte{"a": randBytes(32 << 20)}), Parent: "none"}); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
		res, err := Prune(ctx, r, KeepPolicy{Last: 1}, PruneOptions{Grace: -1})
		if err != nil || res.BytesDeleted < 30<<20 {
			b.Fatal(err, res)
		}
	}
}

// TestMalformedPackIDs: an index naming a pack "a" and a stray object under
// packs/ are damage to report, never a slice out of range (a panic in a
// restore worker would take PID 1 down).
func TestMalformedPackIDs(t *testing.T) {
	ctx := context.Background()
	s := fileStore(t)
	r := smallRepo(t, s, nil)
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "f"), randBytes(100<<10), 0o644)
	if _, err := r.Backup(ctx, BackupRequest{Dir: src}); err != nil {
		t.Fatal(err)
	}
	b, err := r.encodeObject("index", &indexFile{Version: 1, Packs: []indexPack{{ID: "a", Size: 1}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put(ctx, indexPrefix+"short", bytes.NewReader(b), int64(len(b))); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(ctx, packPrefix+"x", bytes.NewReader([]byte("stray")), 5); err != nil {
		t.Fatal(err)
	}
	rep, err := Verify(ctx, r, VerifyOptions{ReadDataPercent: 100})
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK() || !strings.Contains(fmt.Sprint(rep.Problems), "pack id") {
		t.Errorf("verify did not report the malformed index: %+v", rep.Problems)
	}
	r2, err := Open(ctx, s, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r2.Restore(ctx, RestoreRequest{Target: t.TempDir()}); err != nil {
		t.Errorf("restore beside a malformed index object: %v", err)
	}
}
