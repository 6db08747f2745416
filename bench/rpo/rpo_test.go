// Package rpo measures the data lifecycle against a real MinIO on a data set
// of at least 1 GiB:
//
//   - notify-to-durable: change 10 MiB of the data set, then time
//     `notify backup --wait` until the snapshot is committed in the store
//     (the recovery point objective an app gets when it notifies after each
//     meaningful write);
//   - time-to-app-start after a container loss: lifeboat run on an empty
//     data dir, from exec until the app's first instruction runs, against
//     the bare `lifeboat restore` of the same snapshot.
//
// Run it (about 3 minutes on 2 cores, 2 GiB of disk):
//
//	go test ./bench/rpo -run TestRPO -v -timeout 30m
//
// LIFEBOAT_BENCH_RPO_MIB sets the data set size (default 1024),
// LIFEBOAT_BENCH_RPO_RUNS the notify runs (default 15) and
// LIFEBOAT_BENCH_RPO_RESTORES the restore runs of each kind (default 3).
// It is a test, not a testing.B benchmark, because each measurement needs
// minutes of set-up that the benchmark framework would repeat; it is
// skipped with -short and unless LIFEBOAT_BENCH=1 or -run names it.
package rpo

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lifeboat/lifeboat/internal/testrig"
	"github.com/lifeboat/lifeboat/supervisor/control"
)

const (
	changeBytes = 10 << 20 // changed before each notify
	changeChunk = 1 << 20  // in pieces of this size at random places
	fileSize    = 8 << 20  // the data set is files of this size ...
	smallFiles  = 2000     // ... plus this many small ones (4-64 KiB)
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// writeDataset writes total bytes: half compressible text, half random, in
// fileSize files, plus small files; deterministic from the seed. It
// returns the number of files and bytes written.
func writeDataset(t *testing.T, dir string, total int64) (files int, bytes int64) {
	t.Helper()
	rng := rand.New(rand.NewPCG(20261123, 4))
	buf := make([]byte, fileSize)
	var written int64
	for i := 0; written < total; i++ {
		fill(rng, buf, i%2 == 0)
		p := filepath.Join(dir, fmt.Sprintf("tables/t%03d/part-%04d.db", i/32, i))
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, buf, 0o644); err != nil {
			t.Fatal(err)
		}
		written += fileSize
		files++
	}
	for i := 0; i < smallFiles; i++ {
		n := 4<<10 + rng.IntN(60<<10)
		fill(rng, buf[:n], i%2 == 0)
		p := filepath.Join(dir, fmt.Sprintf("small/d%02d/f%05d", i/200, i))
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, buf[:n], 0o644); err != nil {
			t.Fatal(err)
		}
		files++
		written += int64(n)
	}
	return files, written
}

var words = strings.Fields("INSERT UPDATE SELECT id= user session order invoice status=200 latency_ms= commit rollback primary replica")

func fill(rng *rand.Rand, b []byte, text bool) {
	if !text {
		for i := 0; i+8 <= len(b); i += 8 {
			v := rng.Uint64()
			for j := 0; j < 8; j++ {
				b[i+j] = byte(v >> (8 * j))
			}
		}
		return
	}
	for i := 0; i < len(b); {
		w := words[rng.IntN(len(words))]
		n := copy(b[i:], w)
		i += n
		if i < len(b) {
			b[i] = " \n"[rng.IntN(2)]
			i++
		}
	}
}

// change overwrites changeBytes at random places of the large files.
func change(t *testing.T, dir string, rng *rand.Rand) {
	t.Helper()
	var files []string
	filepath.WalkDir(filepath.Join(dir, "tables"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			files = append(files, p)
		}
		return nil
	})
	buf := make([]byte, changeChunk)
	for done := 0; done < changeBytes; done += changeChunk {
		fill(rng, buf, false)
		f, err := os.OpenFile(files[rng.IntN(len(files))], os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt(buf, rng.Int64N(fileSize-changeChunk)); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
}

type stats struct{ median, p90, min, max time.Duration }

func summarize(ds []time.Duration) stats {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return stats{median: s[len(s)/2], p90: s[(len(s)*9)/10], min: s[0], max: s[len(s)-1]}
}

func TestRPO(t *testing.T) {
	if testing.Short() || (os.Getenv("LIFEBOAT_BENCH") != "1" && !strings.Contains(strings.Join(os.Args, " "), "TestRPO")) {
		t.Skip("benchmark: run with -run TestRPO or LIFEBOAT_BENCH=1")
	}
	size := int64(envInt("LIFEBOAT_BENCH_RPO_MIB", 1024)) << 20
	runs := envInt("LIFEBOAT_BENCH_RPO_RUNS", 15)
	restores := envInt("LIFEBOAT_BENCH_RPO_RESTORES", 3)

	bin := testrig.BuildLifeboat(t)
	m := testrig.StartMinIO(t)
	work := t.TempDir()
	data := filepath.Join(work, "data")
	sock := filepath.Join(work, "lb.sock")
	started := filepath.Join(work, "app-started")
	storeURL := m.StoreURL("rpo", "bench")
	env := append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}, m.Env()...)
	cfg := filepath.Join(work, "lifeboat.hcl")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`
app {
  command = ["/bin/sh", "-c", "date +%%s%%N > %s; exec sleep 3600"]
}
data { path = %q }
store { url = %q }
backup { final = false }
control { socket = %q }
log { level = "info" }
`, started, data, storeURL, sock)), 0o600)

	t0 := time.Now()
	os.MkdirAll(data, 0o755)
	files, bytes := writeDataset(t, data, size)
	t.Logf("data set: %d files, %d MiB, written in %s", files, bytes>>20, time.Since(t0).Round(time.Millisecond))

	run := func() (*exec.Cmd, chan struct{}) {
		cmd := exec.Command(bin, "run", "--config", cfg)
		cmd.Env = env
		out, _ := os.Create(filepath.Join(work, "run.log"))
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { cmd.Wait(); out.Close(); close(done) }()
		t.Cleanup(func() { testrig.KillTree(cmd.Process.Pid); <-done })
		return cmd, done
	}
	waitStarted := func(done chan struct{}) time.Time {
		deadline := time.Now().Add(10 * time.Minute)
		for {
			if b, err := os.ReadFile(started); err == nil && len(b) > 1 {
				ns, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
				if err == nil {
					return time.Unix(0, ns)
				}
			}
			select {
			case <-done:
				log, _ := os.ReadFile(filepath.Join(work, "run.log"))
				t.Fatalf("lifeboat exited before the app started:\n%s", log)
			default:
			}
			if time.Now().After(deadline) {
				t.Fatal("the app did not start")
			}
			time.Sleep(2 * time.Millisecond) // poll tick
		}
	}
	notify := func(cl *control.Client) time.Duration {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		t0 := time.Now()
		resp, err := cl.Notify(ctx, "backup", control.NotifyRequest{Wait: true, Reason: "bench"})
		if err != nil || resp.Snapshot == "" {
			t.Fatalf("notify backup --wait: %v %+v", err, resp)
		}
		return time.Since(t0)
	}

	// Container 1: the initial full backup, then the notify runs.
	cmd, done := run()
	waitStarted(done)
	cl, err := control.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	full := notify(cl)
	t.Logf("initial backup of the data set: %s", full.Round(time.Millisecond))
	rng := rand.New(rand.NewPCG(7, 7))
	var rpo []time.Duration
	for i := 0; i < runs; i++ {
		change(t, data, rng)
		rpo = append(rpo, notify(cl))
	}
	cl.Close()
	st := summarize(rpo)
	t.Logf("notify-to-durable after changing %d MiB, %d runs: median %s, p90 %s, min %s, max %s",
		changeBytes>>20, runs, st.median.Round(time.Millisecond), st.p90.Round(time.Millisecond),
		st.min.Round(time.Millisecond), st.max.Round(time.Millisecond))
	testrig.KillTree(cmd.Process.Pid) // the container is lost, with its app
	<-done

	// settle runs before each timed restore: a restore ends with syncfs,
	// so flush everything else first (neither kind pays for the other's
	// or MinIO's dirty pages), and drop the page cache (when allowed) so
	// both read the store cold, as a new host would.
	settle := func() {
		syscall.Sync()
		os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0)
	}

	// Restores, alternating: the bare CLI restore, and lifeboat run on an
	// empty data dir until the app runs.
	var bare, boot []time.Duration
	// Each kind deletes its restored tree right after its measurement:
	// deleting a GiB just before a timed restore slows that restore (the
	// file system is still freeing blocks), and must not favour one kind.
	os.RemoveAll(data)
	timeRun := func() {
		os.Remove(started)
		settle()
		t0 := time.Now()
		cmd, done := run()
		at := waitStarted(done)
		boot = append(boot, at.Sub(t0))
		testrig.KillTree(cmd.Process.Pid)
		<-done
		if os.Getenv("RPO_DEBUG") != "" {
			lb, _ := os.ReadFile(filepath.Join(work, "run.log"))
			t.Logf("lifeboat run, t0=%s:\n%s", t0.UTC().Format("15:04:05.000"), lb)
		}
		os.RemoveAll(data)
	}
	timeBare := func(i int) {
		to := filepath.Join(work, fmt.Sprintf("bare-%d", i))
		r := exec.Command(bin, "restore", "--store", storeURL, "--to", to)
		r.Env = env
		settle()
		t0 := time.Now()
		out, err := r.CombinedOutput()
		if err != nil {
			t.Fatalf("lifeboat restore: %v\n%s", err, out)
		}
		bare = append(bare, time.Since(t0))
		if os.Getenv("RPO_DEBUG") != "" {
			t.Logf("lifeboat restore:\n%s", out)
		}
		os.RemoveAll(to)
	}
	// ABBA order, so neither kind always runs first after a deletion.
	for i := 0; i < restores; i++ {
		if i%2 == 0 {
			timeRun()
			timeBare(i)
		} else {
			timeBare(i)
			timeRun()
		}
	}
	b, s := summarize(bare), summarize(boot)
	t.Logf("bare `lifeboat restore` of the data set, %d runs: median %s (min %s, max %s)", restores,
		b.median.Round(time.Millisecond), b.min.Round(time.Millisecond), b.max.Round(time.Millisecond))
	t.Logf("lifeboat run to app start on an empty data dir, %d runs: median %s (min %s, max %s): %+.1f%% against the bare restore",
		restores, s.median.Round(time.Millisecond), s.min.Round(time.Millisecond), s.max.Round(time.Millisecond),
		100*(float64(s.median)/float64(b.median)-1))
}
