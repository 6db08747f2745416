package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat/lifeboat/internal/testrig"
	"github.com/lifeboat/lifeboat/supervisor/snapshot"
	"github.com/minio/minio-go/v7"
)

func snapshotIDs(t *testing.T, env []string) []string {
	t.Helper()
	r := cliRun(t, env, "snapshots", "--json")
	expectCode(t, r, 0, "")
	var list []snapshot.Manifest
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, m := range list {
		ids = append(ids, m.ID)
	}
	return ids
}

func TestPruneCLI(t *testing.T) {
	dir := t.TempDir()
	storeDir := filepath.Join(dir, "store")
	env := []string{"LIFEBOAT_STORE=file://" + storeDir}
	data := filepath.Join(dir, "data")
	makeData(t, data)
	var ids []string
	for i := 0; i < 4; i++ {
		// Each snapshot has a file of its own, so forgetting it frees a pack.
		os.WriteFile(filepath.Join(data, "own.bin"), []byte(strings.Repeat(string(rune('a'+i)), 200<<10)), 0o600)
		r := cliRun(t, env, "backup", "--data", data)
		expectCode(t, r, 0, "")
		ids = append(ids, strings.TrimSpace(r.stdout))
	}
	packsBefore := len(packFiles(t, storeDir))

	r := cliRun(t, env, "prune", "--keep-last", "2", "--dry-run", "--grace", "0")
	expectCode(t, r, 0, "")
	if !strings.Contains(r.stdout, "would forget") || !strings.Contains(r.stdout, "2 snapshots kept, 2 forgotten") ||
		!strings.Contains(r.stdout, "dry run: nothing was changed") {
		t.Errorf("dry run:\n%s", r.stdout)
	}
	if got := snapshotIDs(t, env); len(got) != 4 || len(packFiles(t, storeDir)) != packsBefore {
		t.Fatalf("a dry run changed the repository: %v", got)
	}

	// The default grace period protects the packs a running backup may
	// still need: snapshots go, packs stay.
	r = cliRun(t, env, "prune", "--keep-last", "3")
	expectCode(t, r, 0, "")
	if got := snapshotIDs(t, env); strings.Join(got, ",") != strings.Join(ids[1:], ",") {
		t.Errorf("after keep-last 3: %v, want %v", got, ids[1:])
	}
	if !strings.Contains(r.stdout, "younger than the grace period") || len(packFiles(t, storeDir)) != packsBefore {
		t.Errorf("packs deleted inside the grace period:\n%s", r.stdout)
	}

	// backup.keep from the config when no --keep-* flag is given; --grace 0
	// frees the packs at once.
	cfg := filepath.Join(dir, "keep.hcl")
	os.WriteFile(cfg, []byte("backup {\n  keep {\n    last = 1\n  }\n}\n"), 0o600)
	r = cliRun(t, env, "prune", "--config", cfg, "--grace", "0", "--json")
	expectCode(t, r, 0, "")
	var res struct {
		Forgotten    []string
		PacksDeleted int
		Decisions    []struct {
			ID   string
			Keep bool
		}
	}
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
		t.Fatalf("prune --json: %v\n%s", err, r.stdout)
	}
	if len(res.Forgotten) != 2 || res.PacksDeleted == 0 || len(res.Decisions) != 3 || res.Decisions[0].ID != ids[3] || !res.Decisions[0].Keep {
		t.Errorf("prune by the config's policy: %+v", res)
	}
	if got := snapshotIDs(t, env); len(got) != 1 || got[0] != ids[3] {
		t.Errorf("after keep.last = 1: %v", got)
	}
	if n := len(packFiles(t, storeDir)); n >= packsBefore {
		t.Errorf("no pack freed: %d before, %d after", packsBefore, n)
	}
	if r := cliRun(t, env, "verify", "--read-data"); r.code != 0 || !strings.Contains(r.stdout, "no problems") {
		t.Errorf("verify after prune: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	dst := filepath.Join(dir, "out")
	expectCode(t, cliRun(t, env, "restore", "--to", dst), 0, "")
	sameTree(t, data, dst)

	// No policy at all: a warning, everything kept.
	r = cliRun(t, env, "prune")
	expectCode(t, r, 0, "every snapshot is kept")
	expectCode(t, cliRun(t, env, "prune", "--keep-daily", "-1"), 2, "must be 0 or more")
}

// TestPruneCLIWhileABackupRuns: prune deletes nothing while a backup holds
// its lease, says so, and exits 1; the backup then completes.
func TestPruneCLIWhileABackupRuns(t *testing.T) {
	m := testrig.StartMinIO(t)
	dir := t.TempDir()
	env := append(m.Env(), "LIFEBOAT_STORE="+m.StoreURL("prune", "repo"))
	data := filepath.Join(dir, "data")
	makeData(t, data)
	expectCode(t, cliRun(t, env, "backup", "--data", data), 0, "")

	// A backup whose stream waits for a file the test creates.
	gate := filepath.Join(dir, "go")
	cfg := filepath.Join(dir, "slow.hcl")
	os.WriteFile(cfg, []byte(`backup {
  stream "slow" { command = ["sh", "-c", "while [ ! -e `+gate+` ]; do sleep 0.05; done; echo done"] }
}
`), 0o600)
	cmd := exec.Command(testrig.BuildLifeboat(t), "backup", "--config", cfg, "--data", data)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{}) // closed when the backup has exited; waitErr is set then
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		os.WriteFile(gate, nil, 0o600)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	waitFor(t, 20*time.Second, "the backup's lease", func() bool {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel() // stops the listing's goroutine
		for o := range m.Client(t).ListObjects(ctx, "prune", minio.ListObjectsOptions{Prefix: "repo/locks/", Recursive: true}) {
			if o.Err == nil {
				return true
			}
		}
		return false
	})

	r := cliRun(t, env, "prune", "--keep-last", "1", "--grace", "0")
	expectCode(t, r, 1, "retry later")
	if !strings.Contains(r.stderr, "nothing was deleted") {
		t.Errorf("prune must say it deleted nothing: %s", r.stderr)
	}
	os.WriteFile(gate, nil, 0o600)
	select {
	case <-done:
		if waitErr != nil {
			t.Fatalf("the backup failed: %v\n%s", waitErr, out.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the backup did not finish")
	}
	if got := snapshotIDs(t, env); len(got) != 2 {
		t.Errorf("want both snapshots, got %v", got)
	}
	expectCode(t, cliRun(t, env, "prune", "--keep-last", "1", "--grace", "0"), 0, "")
	expectCode(t, cliRun(t, env, "verify", "--read-data"), 0, "")
}
