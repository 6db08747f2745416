package main

import (
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lifeboat/lifeboat/internal/testrig"
	"github.com/lifeboat/lifeboat/supervisor/snapshot"
)

// packFiles lists the pack objects of a file:// store.
func packFiles(t *testing.T, storeDir string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(filepath.Join(storeDir, "packs"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			out = append(out, p)
		}
		return nil
	})
	if len(out) == 0 {
		t.Fatalf("no packs in %s", storeDir)
	}
	return out
}

func TestVerifyCLI(t *testing.T) {
	dir := t.TempDir()
	storeDir := filepath.Join(dir, "store")
	env := []string{"LIFEBOAT_STORE=file://" + storeDir}
	data := filepath.Join(dir, "data")
	makeData(t, data)
	expectCode(t, cliRun(t, env, "backup", "--data", data), 0, "")
	// A second snapshot with new data: its own pack, so one can be damaged
	// and the other deleted below.
	os.WriteFile(filepath.Join(data, "new.txt"), []byte(strings.Repeat("new data ", 1000)), 0o600)
	expectCode(t, cliRun(t, env, "backup", "--data", data), 0, "")

	r := cliRun(t, env, "verify")
	expectCode(t, r, 0, "")
	if !strings.Contains(r.stdout, "2 snapshots") || !strings.Contains(r.stdout, "data not read") || !strings.Contains(r.stdout, "no problems found") {
		t.Errorf("structure check:\n%s", r.stdout)
	}
	r = cliRun(t, env, "verify", "--read-data", "--json")
	expectCode(t, r, 0, "")
	var rep snapshot.VerifyReport
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("verify --json: %v\n%s", err, r.stdout)
	}
	if rep.PacksRead != rep.Packs || rep.BlobsRead != rep.Blobs || rep.Blobs == 0 {
		t.Errorf("--read-data alone must read everything: %d/%d packs, %d/%d blobs", rep.PacksRead, rep.Packs, rep.BlobsRead, rep.Blobs)
	}
	expectCode(t, cliRun(t, env, "verify", "--read-data=101"), 2, "percentage from 0 to 100")
	expectCode(t, cliRun(t, env, "verify", "--read-data=0%"), 0, "")

	// A flipped byte in a pack: the structure is fine, the data is not.
	packs := packFiles(t, storeDir)
	if len(packs) < 2 {
		t.Fatalf("want a pack per backup, got %v", packs)
	}
	var biggest string
	var size int64
	for _, p := range packs {
		if fi, _ := os.Stat(p); fi.Size() > size {
			biggest, size = p, fi.Size()
		}
	}
	b, _ := os.ReadFile(biggest)
	b[10] ^= 0xff
	os.WriteFile(biggest, b, 0o600)
	expectCode(t, cliRun(t, env, "verify"), 0, "")
	r = cliRun(t, env, "verify", "--read-data=100%")
	expectCode(t, r, 1, "")
	if !strings.Contains(r.stdout, "PROBLEM: packs/") || !strings.Contains(r.stdout, "problems found") {
		t.Errorf("flipped byte not reported:\n%s", r.stdout)
	}

	// A missing pack is a structure problem; both are listed.
	for _, p := range packs {
		if p != biggest {
			os.Remove(p)
			break
		}
	}
	r = cliRun(t, env, "verify", "--read-data")
	expectCode(t, r, 1, "")
	if n := strings.Count(r.stdout, "PROBLEM:"); n < 2 {
		t.Errorf("want every problem listed, got %d:\n%s", n, r.stdout)
	}
}

func TestVerifyCLIMinIO(t *testing.T) {
	m := testrig.StartMinIO(t)
	env := append(m.Env(), "LIFEBOAT_STORE="+m.StoreURL("verify", "repo"), "LIFEBOAT_ENCRYPTION_KEY=k")
	data := filepath.Join(t.TempDir(), "data")
	makeData(t, data)
	expectCode(t, cliRun(t, env, "backup", "--data", data), 0, "")
	r := cliRun(t, env, "verify", "--read-data")
	expectCode(t, r, 0, "")
	if !strings.Contains(r.stdout, "no problems found") || !strings.Contains(r.stdout, "decrypted, decompressed and hashed") {
		t.Errorf("verify on MinIO:\n%s", r.stdout)
	}
}
