package snapshot

// Fuzz targets for every decoder of stored bytes: the repository config,
// the object envelope (index, tree, manifest), pack trailers and whole
// packs. A repository is read from storage nobody vouches for, so no input
// may panic, hang or allocate without bound; and what decodes must survive
// a round trip. The seed corpus in testdata/fuzz/ holds real objects of a
// plain and an encrypted repository; `go test` runs it, `go test
// -fuzz=FuzzX` explores from it. LIFEBOAT_WRITE_FUZZ_CORPUS=1 rewrites it.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// fuzzKey is the key of the encrypted fuzz repository; its salt is fixed so
// the encrypted seeds stay valid.
var fuzzKey = []byte("fuzz key")

// fuzzRepos opens a plain and an encrypted repository with fixed
// parameters (small chunks, 1 MiB packs) in fresh file stores.
func fuzzRepos(t testing.TB) (plain, enc *Repository) {
	t.Helper()
	open := func(key []byte) *Repository {
		cfg := RepoConfig{Format: "lifeboat-repo", Version: FormatVersion, ID: "fuzz", Created: time.Unix(0, 0).UTC(),
			Chunker: ChunkerParams{Min: 16 << 10, Avg: 64 << 10, Max: 256 << 10}, Hash: "blake3", Compression: "zstd", PackSize: 1 << 20}
		if key != nil {
			cfg.Encryption = &EncryptionInfo{Cipher: "aes-256-gcm", KDF: KDFParams{Name: "scrypt", Salt: bytes.Repeat([]byte{7}, 32), N: 1 << 10, R: 8, P: 1}}
			k, err := deriveKeys(key, &cfg.Encryption.KDF)
			if err != nil {
				t.Fatal(err)
			}
			cfg.Encryption.KeyCheck = k.keyCheck()
		}
		s := fileStore(t)
		b, _ := json.Marshal(cfg)
		s.Put(context.Background(), configKey, bytes.NewReader(b), int64(len(b)))
		r, err := Open(context.Background(), s, Options{Key: key})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	return open(nil), open(fuzzKey)
}

func FuzzDecodeConfig(f *testing.F) {
	f.Add([]byte(`{"format":"lifeboat-repo","version":1,"id":"x","chunker":{"min":131072,"avg":524288,"max":2097152},"hash":"blake3","compression":"zstd","pack_size":16777216}`))
	f.Add([]byte(`{"format":"lifeboat-repo","version":1,"chunker":{"min":64,"avg":64,"max":64},"pack_size":1048576,"encryption":{"cipher":"aes-256-gcm","kdf":{"name":"scrypt","salt":"AAAAAAAAAAAAAAAAAAAAAA==","n":2,"r":1,"p":1}}}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		cfg, err := decodeConfig(b)
		if err != nil {
			return
		}
		// What decodes is within the bounds Open relies on.
		c := cfg.Chunker
		if c.Min < 64 || c.Avg < c.Min || c.Max < c.Avg || c.Max > 64<<20 || cfg.PackSize < 1<<20 || cfg.PackSize > 1<<30 {
			t.Fatalf("out-of-bounds config accepted: %+v", cfg)
		}
		again, _ := json.Marshal(cfg)
		cfg2, err := decodeConfig(again)
		if err != nil || !reflect.DeepEqual(cfg, cfg2) {
			t.Fatalf("config does not survive a round trip: %v", err)
		}
	})
}

// fuzzEnvelope decodes b as every kind of envelope object in r and
// re-encodes what decodes.
func fuzzEnvelope(t *testing.T, r *Repository, b []byte) {
	var idx indexFile
	if r.decodeObject("index", b, &idx) == nil {
		roundTrip(t, r, "index", &idx, new(indexFile))
	}
	if checked, err := r.decodeIndex("index", b); err == nil {
		for _, p := range checked.Packs {
			_ = packKey(p.ID) // the ids an index hands on are safe to use
		}
	}
	var m Manifest
	if r.decodeObject("manifest", b, &m) == nil {
		roundTrip(t, r, "manifest", &m, new(Manifest))
	}
	var tr Tree
	if r.decodeObject("tree", b, &tr) == nil {
		_ = r.checkTree(&tr) // refuses or accepts, never panics
		roundTrip(t, r, "tree", &tr, new(Tree))
	}
}

func roundTrip[T any](t *testing.T, r *Repository, kind string, v *T, into *T) {
	b, err := r.encodeObject(kind, v)
	if err != nil {
		t.Fatalf("re-encode %s: %v", kind, err)
	}
	if err := r.decodeObject(kind, b, into); err != nil {
		t.Fatalf("%s does not survive a round trip: %v", kind, err)
	}
}

func FuzzEnvelope(f *testing.F) {
	plain, enc := fuzzRepos(f)
	f.Add([]byte("LBO1\x01"))
	f.Add([]byte("LBO1\x03" + strings.Repeat("\x00", 40)))
	for _, r := range []*Repository{plain, enc} {
		for _, v := range []struct {
			kind string
			v    any
		}{
			{"index", &indexFile{Version: 1, Packs: []indexPack{{ID: "00112233445566778899aabbccddeeff", Size: 100, Blobs: []indexBlob{{Length: 91, Raw: 200, Flags: 1}}}}}},
			{"manifest", &Manifest{Version: 1, ID: "abcd", TreeKey: "trees/abcd", Meta: map[string]string{"gtid": "0-1-2"}}},
			{"tree", &Tree{Version: 1, Entries: []Entry{{Path: ".", Kind: KindDir}, {Path: "a", Kind: KindFile, Size: 1, Chunks: []ChunkID{{1}}}}}},
		} {
			b, err := r.encodeObject(v.kind, v.v)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fuzzEnvelope(t, plain, b)
		fuzzEnvelope(t, enc, b)
	})
}

// FuzzPack feeds whole packs: footer, trailer (plain and sealed) and the
// blob check verify runs on every blob.
func FuzzPack(f *testing.F) {
	plain, enc := fuzzRepos(f)
	for _, r := range []*Repository{plain, enc} {
		f.Add(fuzzPackBytes(f, r, [][]byte{[]byte("hello"), bytes.Repeat([]byte("z"), 5000)}))
		f.Add(fuzzPackBytes(f, r, nil))
	}
	f.Add([]byte("\x00\x00\x00\x00LBPK\x01"))
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, r := range []*Repository{plain, enc} {
			entries, err := r.parsePack(b)
			if err != nil {
				continue
			}
			var off int64
			var buf []byte
			for _, e := range entries {
				if off+int64(e.Length) > int64(len(b)) {
					t.Fatalf("accepted entries run past the pack: %d+%d > %d", off, e.Length, len(b))
				}
				// A tampered blob may declare any raw size; the check must
				// fail cleanly rather than trust it.
				if e.Raw <= 64<<20 {
					r.openBlob(&buf, e.ID, BlobRef{Offset: off, Length: e.Length, Raw: e.Raw, Flags: e.Flags}, b[off:off+int64(e.Length)])
				}
				off += int64(e.Length)
			}
		}
	})
}

// FuzzPackTrailer feeds the trailer alone (what ReadPackTrailer decodes
// after its ranged GET of the footer).
func FuzzPackTrailer(f *testing.F) {
	plain, enc := fuzzRepos(f)
	for _, r := range []*Repository{plain, enc} {
		t, err := r.encodeTrailer([]packEntry{{ID: ChunkID{1}, Length: 10, Raw: 20, Flags: blobFlagZstd}, {ID: ChunkID{2}, Length: 5, Raw: 5}})
		if err != nil {
			f.Fatal(err)
		}
		f.Add(t[:len(t)-packFooterSize])
	}
	f.Add([]byte{0, 0, 0, 0})
	f.Add([]byte{1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, r := range []*Repository{plain, enc} {
			entries, err := r.decodeTrailer(b)
			if err != nil {
				continue
			}
			enc, err := r.encodeTrailer(entries)
			if err != nil {
				t.Fatal(err)
			}
			again, err := r.decodeTrailer(enc[:len(enc)-packFooterSize])
			if err != nil || !reflect.DeepEqual(again, entries) {
				t.Fatalf("trailer does not survive a round trip: %v", err)
			}
		}
	})
}

// fuzzPackBytes builds a real pack of the given blobs, as the packer does.
func fuzzPackBytes(t testing.TB, r *Repository, blobs [][]byte) []byte {
	var data []byte
	var entries []packEntry
	for _, b := range blobs {
		id := r.hash.sum(b)
		stored, flags := b, uint8(0)
		if z := r.zenc.EncodeAll(b, nil); len(z) < len(b) {
			stored, flags = z, blobFlagZstd
		}
		if r.keys != nil {
			var err error
			if stored, err = r.keys.sealChunk(nil, id, stored); err != nil {
				t.Fatal(err)
			}
		}
		data = append(data, stored...)
		entries = append(entries, packEntry{ID: id, Length: len(stored), Raw: len(b), Flags: flags})
	}
	tr, err := r.encodeTrailer(entries)
	if err != nil {
		t.Fatal(err)
	}
	return append(data, tr...)
}

// TestWriteFuzzCorpus regenerates testdata/fuzz from real objects of a
// real backup when LIFEBOAT_WRITE_FUZZ_CORPUS=1.
func TestWriteFuzzCorpus(t *testing.T) {
	if os.Getenv("LIFEBOAT_WRITE_FUZZ_CORPUS") != "1" {
		t.Skip("set LIFEBOAT_WRITE_FUZZ_CORPUS=1 to rewrite testdata/fuzz")
	}
	plain, enc := fuzzRepos(t)
	write := func(target, name string, b []byte) {
		dir := filepath.Join("testdata", "fuzz", target)
		os.MkdirAll(dir, 0o755)
		content := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for name, r := range map[string]*Repository{"plain": plain, "encrypted": enc} {
		ctx := context.Background()
		cb, _ := r.getAll(ctx, configKey, 1<<20)
		write("FuzzDecodeConfig", name, cb)
		src := t.TempDir()
		os.WriteFile(filepath.Join(src, "text"), bytes.Repeat([]byte("compressible "), 20000), 0o644)
		os.WriteFile(filepath.Join(src, "bin"), []byte("\x00\x01\x02 binary"), 0o600)
		os.Symlink("text", filepath.Join(src, "link"))
		m, err := r.Backup(ctx, BackupRequest{Dir: src, Meta: map[string]string{"k": "v"}, Tags: []string{"t"},
			Streams: []StreamSource{{Name: "s", Reader: strings.NewReader("stream")}}})
		if err != nil {
			t.Fatal(err)
		}
		mb, _ := r.getAll(ctx, m.Key, 1<<20)
		write("FuzzEnvelope", name+"-manifest", mb)
		tb, _ := r.getAll(ctx, m.TreeKey, 1<<20)
		write("FuzzEnvelope", name+"-tree", tb)
		for i, k := range objectKeys(t, r.Store(), indexPrefix) {
			ib, _ := r.getAll(ctx, k, 1<<20)
			write("FuzzEnvelope", fmt.Sprintf("%s-index-%d", name, i), ib)
		}
		for i, k := range objectKeys(t, r.Store(), packPrefix) {
			pb, _ := r.getAll(ctx, k, 1<<22)
			write("FuzzPack", fmt.Sprintf("%s-%d", name, i), pb)
			entries, err := r.parsePack(pb)
			if err != nil {
				t.Fatal(err)
			}
			var total int
			for _, e := range entries {
				total += e.Length
			}
			write("FuzzPackTrailer", fmt.Sprintf("%s-%d", name, i), pb[total:len(pb)-packFooterSize])
		}
	}
}
