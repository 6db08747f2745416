package snapshot

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lifeboat/lifeboat/supervisor/storage"
)

// smallRepo creates a repository with small chunks and 1 MiB packs, so a
// few MiB of test data spread over many packs, and opens it.
func smallRepo(t testing.TB, s storage.Store, key []byte) *Repository {
	t.Helper()
	ctx := context.Background()
	cfg := RepoConfig{Format: "lifeboat-repo", Version: FormatVersion, ID: randomID(16), Created: time.Now().UTC(),
		Chunker: ChunkerParams{Min: 16 << 10, Avg: 64 << 10, Max: 256 << 10}, Hash: "blake3", Compression: "zstd", PackSize: 1 << 20}
	if key != nil {
		cfg.Encryption = &EncryptionInfo{Cipher: "aes-256-gcm", KDF: KDFParams{Name: "scrypt", Salt: randBytes(32), N: 1 << 10, R: 8, P: 1}}
		k, err := deriveKeys(key, &cfg.Encryption.KDF)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Encryption.KeyCheck = k.keyCheck()
	}
	b, _ := json.Marshal(cfg)
	if err := s.PutIfAbsent(ctx, configKey, bytes.NewReader(b), int64(len(b))); err != nil {
		t.Fatal(err)
	}
	r, err := Open(ctx, s, Options{Key: key, Concurrency: 4})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func fileStore(t testing.TB) storage.Store {
	t.Helper()
	s, err := storage.OpenFile(filepath.Join(t.TempDir(), "store"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// objectKeys lists the store's object keys under prefix.
func objectKeys(t testing.TB, s storage.Store, prefix string) []string {
	t.Helper()
	var out []string
	if err := s.List(context.Background(), prefix, func(o storage.ObjectInfo) error {
		out = append(out, o.Key)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// mustVerify runs a full verify (all data) and fails on any problem.
func mustVerify(t testing.TB, r *Repository) *VerifyReport {
	t.Helper()
	rep, err := Verify(context.Background(), r, VerifyOptions{ReadDataPercent: 100})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() {
		t.Fatalf("verify found %d problems: %v", rep.ProblemsAll, rep.Problems)
	}
	return rep
}

// snapshotDir writes files into a fresh directory and returns it.
func snapshotDir(t testing.TB, files map[string][]byte) string {
	t.Helper()
	dir := t.TempDir()
	for name, data := range files {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// restoresTo restores snapshot id and compares it with want.
func restoresTo(t testing.TB, r *Repository, id string, want map[string][]byte) {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "r")
	if _, err := r.Restore(context.Background(), RestoreRequest{Snapshot: id, Target: dst}); err != nil {
		t.Fatalf("restore %s: %v", id, err)
	}
	for name, data := range want {
		got, err := os.ReadFile(filepath.Join(dst, name))
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("restore %s: %s differs (%v)", id, name, err)
		}
	}
}

func TestPruneForgetsAndCollects(t *testing.T) {
	for name, open := range backends(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			s := open(t)
			r := smallRepo(t, s, []byte("prune key"))
			shared := randBytes(1 << 20)
			var ids []string
			var contents []map[string][]byte
			for i := range 4 {
				files := map[string][]byte{"shared": shared, fmt.Sprintf("own-%d", i): randBytes(3 << 20)}
				m, err := r.Backup(ctx, BackupRequest{Dir: snapshotDir(t, files), Parent: "none"})
				if err != nil {
					t.Fatal(err)
				}
				ids = append(ids, m.ID)
				contents = append(contents, files)
			}
			packsBefore := objectKeys(t, s, packPrefix)
			if len(objectKeys(t, s, indexPrefix)) != 4 {
				t.Fatalf("want one index object per backup")
			}

			// A dry run changes nothing and predicts the real run.
			before := objectKeys(t, s, "")
			dry, err := Prune(ctx, r, KeepPolicy{Last: 2}, PruneOptions{DryRun: true, Grace: -1})
			if err != nil {
				t.Fatal(err)
			}
			if after := objectKeys(t, s, ""); strings.Join(after, " ") != strings.Join(before, " ") {
				t.Fatalf("dry run changed the store:\n%v\n%v", before, after)
			}
			res, err := Prune(ctx, r, KeepPolicy{Last: 2}, PruneOptions{Grace: -1})
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(dry.Forgotten, dry.PacksDeleted, dry.BytesDeleted, dry.TreesDeleted) !=
				fmt.Sprint(res.Forgotten, res.PacksDeleted, res.BytesDeleted, res.TreesDeleted) {
				t.Errorf("dry run predicted %+v, real run did %+v", dry, res)
			}
			sort.Strings(res.Forgotten)
			want := []string{ids[0], ids[1]}
			sort.Strings(want)
			if fmt.Sprint(res.Forgotten) != fmt.Sprint(want) || res.Kept != 2 {
				t.Fatalf("forgot %v, want %v", res.Forgotten, want)
			}
			// Each forgotten snapshot owned 3 MiB of random data. The
			// first one's packs may all hold some chunk of the shared
			// file too (files are chunked side by side into the same
			// packs), but the second one's held nothing else: its shared
			// file was deduplicated, so its 3 MiB filled at least 3 packs
			// of 1 MiB that all go.
			if res.PacksDeleted < 3 || res.BytesDeleted < 3<<20 || res.TreesDeleted != 2 {
				t.Errorf("deleted %d packs (%d bytes), %d trees", res.PacksDeleted, res.BytesDeleted, res.TreesDeleted)
			}
			if n := len(objectKeys(t, s, packPrefix)); n != len(packsBefore)-res.PacksDeleted {
				t.Errorf("%d packs left of %d, deleted %d", n, len(packsBefore), res.PacksDeleted)
			}
			if idx := objectKeys(t, s, indexPrefix); len(idx) != 1 {
				t.Errorf("index not compacted: %v", idx)
			}
			if list, _ := r.Snapshots(ctx); len(list) != 2 {
				t.Fatalf("%d snapshots left", len(list))
			}
			// Reopened from the store alone: valid, everything kept restores.
			r2, err := Open(ctx, s, Options{Key: []byte("prune key")})
			if err != nil {
				t.Fatal(err)
			}
			rep := mustVerify(t, r2)
			if len(rep.Notes) != 0 {
				t.Errorf("garbage left after prune: %v", rep.Notes)
			}
			for i := 2; i < 4; i++ {
				restoresTo(t, r2, ids[i], contents[i])
			}
			// Nothing more to do a second time.
			again, err := Prune(ctx, r2, KeepPolicy{Last: 2}, PruneOptions{Grace: -1})
			if err != nil || again.PacksDeleted != 0 || len(again.Forgotten) != 0 || again.IndexesWritten != 0 {
				t.Errorf("second prune: %+v, %v", again, err)
			}
		})
	}
}

func TestPruneEmptyPolicyOnlyCollectsGarbage(t *testing.T) {
	ctx := context.Background()
	s := fileStore(t)
	r := smallRepo(t, s, nil)
	files := map[string][]byte{"a": randBytes(2 << 20)}
	m, err := r.Backup(ctx, BackupRequest{Dir: snapshotDir(t, files)})
	if err != nil {
		t.Fatal(err)
	}
	// A failed backup leaves packs no index lists (as a crashed one does).
	_, err = r.Backup(ctx, BackupRequest{Streams: []StreamSource{{Name: "db", Command: []string{"sh", "-c", "head -c 3000000 /dev/urandom; exit 1"}}}})
	if err == nil {
		t.Fatal("failing stream committed")
	}
	rep := mustVerify(t, r)
	if len(rep.Notes) == 0 || !strings.Contains(rep.Notes[0], "in no index") {
		t.Errorf("verify does not note the unindexed packs: %v", rep.Notes)
	}
	// Within the grace period they stay.
	res, err := Prune(ctx, r, KeepPolicy{}, PruneOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.PacksInGrace == 0 || res.PacksDeleted != 0 || len(res.Forgotten) != 0 {
		t.Fatalf("default grace: %+v", res)
	}
	res, err = Prune(ctx, r, KeepPolicy{}, PruneOptions{Grace: -1})
	if err != nil {
		t.Fatal(err)
	}
	if res.PacksDeleted == 0 || res.PacksInGrace != 0 {
		t.Fatalf("no grace: %+v", res)
	}
	if rep := mustVerify(t, r); len(rep.Notes) != 0 {
		t.Errorf("garbage left: %v", rep.Notes)
	}
	restoresTo(t, r, m.ID, files)
}

func TestLeasesExcludePruneAndBackup(t *testing.T) {
	ctx := context.Background()
	s := fileStore(t)
	r := smallRepo(t, s, nil)
	files := map[string][]byte{"a": randBytes(1 << 20)}
	if _, err := r.Backup(ctx, BackupRequest{Dir: snapshotDir(t, files)}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Backup(ctx, BackupRequest{Dir: snapshotDir(t, map[string][]byte{"b": randBytes(1 << 20)})}); err != nil {
		t.Fatal(err)
	}
	before := objectKeys(t, s, "")

	// A running backup (its lease) keeps prune from deleting anything.
	h, err := r.backupLease(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Prune(ctx, r, KeepPolicy{Last: 1}, PruneOptions{Grace: -1})
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "backup lease") {
		t.Fatalf("prune during a backup: %v", err)
	}
	h.release()
	if got := objectKeys(t, s, ""); strings.Join(got, " ") != strings.Join(before, " ") {
		t.Fatalf("a refused prune changed the store:\n%v\n%v", before, got)
	}

	// A running prune keeps backups out.
	p, err := r.pruneLease(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.Backup(ctx, BackupRequest{Dir: snapshotDir(t, files)})
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "a prune is running") {
		t.Fatalf("backup during a prune: %v", err)
	}
	// And other prunes.
	if _, err := Prune(ctx, r, KeepPolicy{Last: 1}, PruneOptions{Grace: -1}); !errors.Is(err, ErrLocked) {
		t.Fatalf("second prune: %v", err)
	}
	p.release()
	if leases, _ := r.Leases(ctx); len(leases) != 0 {
		t.Fatalf("leases left: %v", leases)
	}
	if _, err := Prune(ctx, r, KeepPolicy{Last: 1}, PruneOptions{Grace: -1}); err != nil {
		t.Fatal(err)
	}
}

func TestLeaseExpiresAndIsLost(t *testing.T) {
	ctx := context.Background()
	s := fileStore(t)
	r := smallRepo(t, s, nil)
	defer func(d time.Duration) { leaseTTL = d }(leaseTTL)
	leaseTTL = 300 * time.Millisecond

	h, err := r.takeLease(ctx, LeaseBackup)
	if err != nil {
		t.Fatal(err)
	}
	// Refreshed: the object is rewritten with a later expiry again and
	// again, and the lease stays held meanwhile.
	readExpiry := func() time.Time {
		b, err := r.getAll(ctx, h.key, 1<<16)
		if err != nil {
			t.Fatal(err)
		}
		var l Lease
		json.Unmarshal(b, &l)
		return l.Expires
	}
	first := readExpiry()
	waitFor(t, 5*time.Second, func() bool {
		if err := h.check(); err != nil {
			t.Fatal(err)
		}
		return readExpiry().After(first.Add(leaseTTL))
	})
	if l, err := r.Leases(ctx); err != nil || len(l) != 1 {
		t.Fatalf("live lease not listed: %v %v", l, err)
	}
	// A writer that cannot refresh loses it: stop refreshing by hand.
	close(h.stop)
	h.wg.Wait()
	waitFor(t, 2*time.Second, func() bool { return errors.Is(h.check(), ErrLeaseLost) })
	h.once.Do(func() {}) // never released: as if the writer crashed
	// Once expired by both clocks it no longer counts, and prune removes it.
	waitFor(t, 5*time.Second, func() bool {
		live, expired, err := r.listLeases(ctx)
		return err == nil && len(live) == 0 && len(expired) == 1
	})
	res, err := Prune(ctx, r, KeepPolicy{}, PruneOptions{})
	if err != nil || res.LeasesDeleted != 1 || len(objectKeys(t, s, locksPrefix)) != 0 {
		t.Fatalf("expired lease not collected: %+v %v", res, err)
	}
}

// TestPruneRefusesDamagedIndex: the packs only a damaged index object
// lists look unindexed, and prune deletes unindexed packs; so prune must
// refuse instead of skipping the object (as a backup's index load does).
func TestPruneRefusesDamagedIndex(t *testing.T) {
	ctx := context.Background()
	s := fileStore(t)
	r := smallRepo(t, s, nil)
	if _, err := r.Backup(ctx, BackupRequest{Dir: snapshotDir(t, map[string][]byte{"a": randBytes(1 << 20)})}); err != nil {
		t.Fatal(err)
	}
	idx := objectKeys(t, s, indexPrefix)
	b, _ := r.getAll(ctx, idx[0], 1<<20)
	b[len(b)-1] ^= 1
	s.Put(ctx, idx[0], bytes.NewReader(b), int64(len(b)))
	packs := objectKeys(t, s, packPrefix)

	_, err := Prune(ctx, r, KeepPolicy{Last: 1}, PruneOptions{Grace: -1})
	if err == nil || !strings.Contains(err.Error(), "run lifeboat verify before pruning") {
		t.Fatalf("prune with a damaged index: %v", err)
	}
	if after := objectKeys(t, s, packPrefix); len(after) != len(packs) {
		t.Fatalf("prune deleted packs: %d before, %d after", len(packs), len(after))
	}
}

// TestLeaseLapseIsFinal: a lease that went unrefreshed long enough for
// others to count it expired stays lost when a refresh succeeds again
// afterwards (a prune may have deleted packs its backup reuses meanwhile).
func TestLeaseLapseIsFinal(t *testing.T) {
	ctx := context.Background()
	r := smallRepo(t, fileStore(t), nil)
	defer func(d time.Duration) { leaseTTL = d }(leaseTTL)
	leaseTTL = 300 * time.Millisecond

	h, err := r.takeLease(ctx, LeaseBackup)
	if err != nil {
		t.Fatal(err)
	}
	defer h.release()
	close(h.stop) // no background refreshes: the store "partitioned"
	h.wg.Wait()
	h.stop = make(chan struct{}) // for release
	waitFor(t, 2*time.Second, func() bool { return errors.Is(h.check(), ErrLeaseLost) })
	if err := h.refresh(ctx); err != nil { // the store is back
		t.Fatal(err)
	}
	if err := h.check(); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("check after the lapse and a good refresh: %v", err)
	}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s", d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestBackupAfterPruneElsewhere: a long-lived repository (the supervisor's)
// still has index entries for packs another process's prune deleted; its
// next backup must not deduplicate against them.
func TestBackupAfterPruneElsewhere(t *testing.T) {
	ctx := context.Background()
	s := fileStore(t)
	r1 := smallRepo(t, s, nil)
	x := map[string][]byte{"x": randBytes(2 << 20)}
	if _, err := r1.Backup(ctx, BackupRequest{Dir: snapshotDir(t, x), Parent: "none"}); err != nil {
		t.Fatal(err)
	}
	y := map[string][]byte{"y": randBytes(2 << 20)}
	if _, err := r1.Backup(ctx, BackupRequest{Dir: snapshotDir(t, y), Parent: "none"}); err != nil {
		t.Fatal(err)
	}
	r2, err := Open(ctx, s, Options{})
	if err != nil {
		t.Fatal(err)
	}
	res, err := Prune(ctx, r2, KeepPolicy{Last: 1}, PruneOptions{Grace: -1})
	if err != nil || res.PacksDeleted == 0 {
		t.Fatalf("prune: %+v %v", res, err)
	}
	m, err := r1.Backup(ctx, BackupRequest{Dir: snapshotDir(t, x), Parent: "none"})
	if err != nil {
		t.Fatal(err)
	}
	if m.Stats.NewBytes != 2<<20 {
		t.Errorf("backup after prune stored %d new bytes, want the whole file again (%d)", m.Stats.NewBytes, 2<<20)
	}
	mustVerify(t, r1)
	restoresTo(t, r1, m.ID, x)
}

// TestConcurrentWritersStayValid runs backups from two repositories and
// prunes from a third against one store at the same time: whoever yields,
// the repository stays valid and every listed snapshot restores.
func TestConcurrentWritersStayValid(t *testing.T) {
	for name, open := range backends(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			s := open(t)
			smallRepo(t, s, nil)
			var mu sync.Mutex
			contents := map[string]map[string][]byte{}
			var wg sync.WaitGroup
			stop := make(chan struct{})
			var backups, prunes, locked int
			for w := range 2 {
				r, err := Open(ctx, s, Options{Concurrency: 2})
				if err != nil {
					t.Fatal(err)
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					common := randBytes(512 << 10)
					for i := 0; i < 6; i++ {
						files := map[string][]byte{"common": common, fmt.Sprintf("w%d-%d", w, i): randBytes(1 << 20)}
						dir := snapshotDir(t, files)
						m, err := r.Backup(ctx, BackupRequest{Dir: dir})
						for errors.Is(err, ErrLocked) {
							mu.Lock()
							locked++
							mu.Unlock()
							time.Sleep(5 * time.Millisecond) // retry tick, as the backup loop's backoff would
							m, err = r.Backup(ctx, BackupRequest{Dir: dir})
						}
						mu.Lock()
						switch {
						case err != nil:
							t.Errorf("backup: %v", err)
						default:
							backups++
							contents[m.ID] = files
						}
						mu.Unlock()
					}
				}()
			}
			pr, err := Open(ctx, s, Options{})
			if err != nil {
				t.Fatal(err)
			}
			var pwg sync.WaitGroup
			pwg.Add(1)
			go func() {
				defer pwg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					time.Sleep(5 * time.Millisecond) // retry tick
					_, err := Prune(ctx, pr, KeepPolicy{Last: 3}, PruneOptions{Grace: -1})
					mu.Lock()
					if errors.Is(err, ErrLocked) {
						locked++
					} else if err != nil {
						t.Errorf("prune: %v", err)
					} else {
						prunes++
					}
					mu.Unlock()
				}
			}()
			// And verify beside them: what they add or delete meanwhile is
			// never a problem.
			verifies := 0
			pwg.Add(1)
			go func() {
				defer pwg.Done()
				vr, err := Open(ctx, s, Options{})
				if err != nil {
					t.Error(err)
					return
				}
				for {
					select {
					case <-stop:
						return
					default:
					}
					rep, err := Verify(ctx, vr, VerifyOptions{ReadDataPercent: 50})
					if err != nil || !rep.OK() {
						t.Errorf("verify beside writers: %v %v", err, rep.Problems)
						return
					}
					verifies++
				}
			}()
			wg.Wait()
			close(stop)
			pwg.Wait()
			t.Logf("%d backups, %d prunes, %d verifies, %d refused with ErrLocked", backups, prunes, verifies, locked)
			if backups == 0 {
				t.Fatal("no backup got through")
			}
			if _, err := Prune(ctx, pr, KeepPolicy{Last: 3}, PruneOptions{Grace: -1}); err != nil {
				t.Fatal(err)
			}
			r, err := Open(ctx, s, Options{})
			if err != nil {
				t.Fatal(err)
			}
			rep := mustVerify(t, r)
			list, _ := r.Snapshots(ctx)
			if len(list) != 3 {
				t.Fatalf("%d snapshots after keep-last 3", len(list))
			}
			if len(rep.Notes) != 0 {
				t.Errorf("garbage left: %v", rep.Notes)
			}
			for _, m := range list {
				restoresTo(t, r, m.ID, contents[m.ID])
			}
		})
	}
}

func TestPruneRefusesDamagedRepository(t *testing.T) {
	ctx := context.Background()
	s := fileStore(t)
	r := smallRepo(t, s, nil)
	for range 2 {
		if _, err := r.Backup(ctx, BackupRequest{Dir: snapshotDir(t, map[string][]byte{"f": randBytes(1 << 20)})}); err != nil {
			t.Fatal(err)
		}
	}
	// An unreadable manifest: prune cannot know what it references.
	bad := snapshotsPrefix + "00000000000000000001-deadbeef"
	s.Put(ctx, bad, strings.NewReader("garbage"), 7)
	before := objectKeys(t, s, "")
	if _, err := Prune(ctx, r, KeepPolicy{Last: 1}, PruneOptions{Grace: -1}); err == nil || !strings.Contains(err.Error(), "deadbeef") {
		t.Fatalf("prune with an unreadable manifest: %v", err)
	}
	if after := objectKeys(t, s, ""); strings.Join(after, " ") != strings.Join(before, " ") {
		t.Fatalf("a refused prune changed the store:\n%v\n%v", before, after)
	}
	s.Delete(ctx, bad)
	// An index object lost: kept snapshots reference chunks in no index.
	idx := objectKeys(t, s, indexPrefix)
	s.Delete(ctx, idx[len(idx)-1])
	before = objectKeys(t, s, "")
	if _, err := Prune(ctx, r, KeepPolicy{}, PruneOptions{Grace: -1}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("prune with a lost index: %v", err)
	}
	if after := objectKeys(t, s, ""); strings.Join(after, " ") != strings.Join(before, " ") {
		t.Fatalf("a refused prune changed the store:\n%v\n%v", before, after)
	}
	rep, err := Verify(ctx, r, VerifyOptions{})
	if err != nil || rep.OK() || !strings.Contains(rep.Err().Error(), "in no index") {
		t.Fatalf("verify of a repository with a lost index: %v %v", rep.Err(), err)
	}
}
