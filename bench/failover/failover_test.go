// Package failover measures how long lifeboat's election takes to put a
// new primary in place, with ttl = 10s (Consul's minimum) and the default
// lock_delay (1s), against a real Consul dev agent and three real
// `lifeboat run` replicas, each in its own PID namespace like a container:
//
//   - hard kill: SIGKILL of the leader's lifeboat (PID 1 of its namespace,
//     so the app dies with it) until the new leader's on_leader hook is
//     done;
//   - graceful: SIGTERM of the leader's lifeboat — the app stops, the final
//     backup runs, the lock is released — until the new leader's on_leader
//     hook is done; reported from the SIGTERM and from the release.
//
// The killed or stopped replica is started again after each trial, so
// every trial starts from one leader and two followers.
//
//	go test ./bench/failover -run TestFailover -v -timeout 30m
//
// LIFEBOAT_BENCH_FAILOVER_TRIALS sets the trials of each kind (default 20;
// about 6 minutes in all). It is skipped with -short and unless
// LIFEBOAT_BENCH=1 or -run names it.
package failover

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lifeboat/lifeboat/internal/testrig"
)

const nodes = 3

// replica is one lifeboat run in its own PID namespace.
type replica struct {
	name string
	dir  string
	cmd  *exec.Cmd // unshare; lifeboat is its child (PID 1 inside)
	done chan struct{}
}

type bench struct {
	t      *testing.T
	bin    string
	consul string
	root   string
	reps   map[string]*replica
}

func (b *bench) config(dir string, port int) string {
	app := `trap 'exit 0' TERM; while :; do sleep 0.05; done`
	hook := func(name, body string) string {
		return fmt.Sprintf("  hook %q {\n    command = [\"/bin/sh\", \"-c\", %q]\n    timeout = \"5s\"\n  }\n", name, body)
	}
	// Each hook writes its file atomically; on_leader stamps the time it
	// is done as its last act.
	cfg := fmt.Sprintf(`
app { command = ["/bin/sh", "-c", %q] }
data { path = "%[2]s/data" }
store { url = "file://%[2]s/store" }
control { socket = "%[2]s/lb.sock" }
consul { address = %[3]q }
election {
  key       = "bench/failover/leader"
  ttl       = "10s"
  advertise = "127.0.0.1"
  port      = %[4]d
%[5]s%[6]s}
`, app, dir, b.consul, port,
		hook("on_leader", `echo "$LIFEBOAT_FENCING_TOKEN $(date +%s%N)" > `+dir+`/leader.tmp && mv `+dir+`/leader.tmp `+dir+`/leader`),
		hook("on_follower", `echo "$LIFEBOAT_FENCING_TOKEN" > `+dir+`/follower.tmp && mv `+dir+`/follower.tmp `+dir+`/follower`))
	p := filepath.Join(dir, "lifeboat.hcl")
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		b.t.Fatal(err)
	}
	return p
}

func (b *bench) start(name string) {
	b.t.Helper()
	dir := filepath.Join(b.root, name)
	os.MkdirAll(dir, 0o755)
	os.Remove(filepath.Join(dir, "leader"))
	os.Remove(filepath.Join(dir, "follower"))
	port, _ := strconv.Atoi(name[1:])
	cfg := b.config(dir, 5000+port)
	logf, err := os.OpenFile(filepath.Join(dir, "lifeboat.log"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		b.t.Fatal(err)
	}
	cmd := exec.Command("unshare", "--pid", "--fork", "--mount-proc", "--kill-child", b.bin, "run", "--config", cfg)
	cmd.Env = append(os.Environ(), "LIFEBOAT_NODE="+name, "LIFEBOAT_LOG_LEVEL=info")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		b.t.Fatal(err)
	}
	r := &replica{name: name, dir: dir, cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); logf.Close(); close(r.done) }()
	b.reps[name] = r
}

// lifeboatPid is lifeboat's host pid: the child of unshare.
func (r *replica) lifeboatPid() int {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		p := r.cmd.Process.Pid
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", p, p))
		if f := strings.Fields(string(b)); len(f) > 0 {
			n, _ := strconv.Atoi(f[0])
			return n
		}
		time.Sleep(10 * time.Millisecond)
	}
	return 0
}

func (b *bench) signal(name string, sig syscall.Signal) time.Time {
	b.t.Helper()
	r := b.reps[name]
	pid := r.lifeboatPid()
	if pid == 0 {
		b.t.Fatalf("%s: no lifeboat process", name)
	}
	t0 := time.Now()
	syscall.Kill(pid, sig)
	return t0
}

func (b *bench) wait(name string) {
	b.t.Helper()
	select {
	case <-b.reps[name].done:
	case <-time.After(60 * time.Second):
		b.t.Fatalf("%s did not exit", name)
	}
}

// leaderFile reads a node's on_leader stamp: its token and when it was done.
func leaderFile(dir string) (uint64, time.Time, bool) {
	data, err := os.ReadFile(filepath.Join(dir, "leader"))
	if err != nil {
		return 0, time.Time{}, false
	}
	f := strings.Fields(string(data))
	if len(f) != 2 {
		return 0, time.Time{}, false
	}
	tok, err1 := strconv.ParseUint(f[0], 10, 64)
	ns, err2 := strconv.ParseInt(f[1], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, time.Time{}, false
	}
	return tok, time.Unix(0, ns), true
}

// leader is the running node with the highest token in its on_leader stamp.
func (b *bench) leader() (string, uint64, time.Time) {
	var name string
	var best uint64
	var at time.Time
	for n, r := range b.reps {
		if tok, t, ok := leaderFile(r.dir); ok && tok > best {
			name, best, at = n, tok, t
		}
	}
	return name, best, at
}

// waitSettled waits for a leader above min and every other node following it.
func (b *bench) waitSettled(min uint64) (string, uint64) {
	b.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		n, tok, _ := b.leader()
		if n != "" && tok > min {
			ok := true
			for m, r := range b.reps {
				if m == n {
					continue
				}
				data, _ := os.ReadFile(filepath.Join(r.dir, "follower"))
				if strings.TrimSpace(string(data)) != strconv.FormatUint(tok, 10) {
					ok = false
				}
			}
			if ok {
				return n, tok
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	b.t.Fatalf("the replicas did not settle on a leader above token %d", min)
	return "", 0
}

// releasedAt finds when the node logged that it released the lock.
func releasedAt(dir string) (time.Time, bool) {
	f, err := os.Open(filepath.Join(dir, "lifeboat.log"))
	if err != nil {
		return time.Time{}, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var line struct {
			Time time.Time `json:"time"`
			Msg  string    `json:"msg"`
		}
		if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "election: releasing leadership" {
			return line.Time, true
		}
	}
	return time.Time{}, false
}

// waitNew waits for a leader stamp above tok and returns when it was done.
func (b *bench) waitNew(tok uint64) (string, uint64, time.Time) {
	b.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if n, t, at := b.leader(); t > tok {
			return n, t, at
		}
		time.Sleep(5 * time.Millisecond)
	}
	b.t.Fatalf("no new leader after token %d", tok)
	return "", 0, time.Time{}
}

type stats []time.Duration

func (s stats) String() string {
	v := slices.Clone(s)
	slices.Sort(v)
	p := func(q float64) time.Duration { return v[int(q*float64(len(v)-1)+0.5)] }
	r := func(d time.Duration) string { return fmt.Sprintf("%.3f s", d.Seconds()) }
	return fmt.Sprintf("| %d | %s | %s | %s | %s |", len(v), r(p(0.5)), r(p(0.9)), r(v[0]), r(v[len(v)-1]))
}

func TestFailover(t *testing.T) {
	if testing.Short() || (os.Getenv("LIFEBOAT_BENCH") != "1" && !strings.Contains(strings.Join(os.Args, " "), "TestFailover")) {
		t.Skip("benchmark: run with -run TestFailover or LIFEBOAT_BENCH=1")
	}
	testrig.Binary(t, "unshare")
	trials := 20
	if n, err := strconv.Atoi(os.Getenv("LIFEBOAT_BENCH_FAILOVER_TRIALS")); err == nil && n > 0 {
		trials = n
	}
	c := testrig.StartConsul(t)
	b := &bench{t: t, bin: testrig.BuildLifeboat(t), consul: c.HTTPAddr, root: t.TempDir(), reps: map[string]*replica{}}
	for i := 1; i <= nodes; i++ {
		b.start(fmt.Sprintf("n%d", i))
	}
	t.Cleanup(func() {
		for _, r := range b.reps {
			r.cmd.Process.Kill()
			<-r.done
		}
	})
	_, tok := b.waitSettled(0)

	var hard, graceful, fromRelease stats
	for i := 0; i < trials; i++ {
		old, _, _ := b.leader()
		t0 := b.signal(old, syscall.SIGKILL)
		n, newTok, at := b.waitNew(tok)
		hard = append(hard, at.Sub(t0))
		t.Logf("hard kill %2d: %s -> %s in %s", i+1, old, n, at.Sub(t0).Round(time.Millisecond))
		b.wait(old)
		b.start(old)
		_, tok = b.waitSettled(newTok - 1)
	}
	for i := 0; i < trials; i++ {
		old, _, _ := b.leader()
		t0 := b.signal(old, syscall.SIGTERM)
		n, newTok, at := b.waitNew(tok)
		b.wait(old)
		rel, ok := releasedAt(b.reps[old].dir)
		if !ok {
			t.Fatalf("%s did not log its release", old)
		}
		graceful = append(graceful, at.Sub(t0))
		fromRelease = append(fromRelease, at.Sub(rel))
		t.Logf("graceful %2d: %s -> %s in %s (%s after the release)", i+1, old, n, at.Sub(t0).Round(time.Millisecond), at.Sub(rel).Round(time.Millisecond))
		b.start(old)
		_, tok = b.waitSettled(newTok - 1)
	}
	t.Logf("\n| failover (ttl 10s, lock_delay 1s) | trials | median | p90 | min | max |\n|---|---|---|---|---|---|\n"+
		"| SIGKILL of the leader → new leader's on_leader done %s\n"+
		"| SIGTERM of the leader → new leader's on_leader done %s\n"+
		"| lock released → new leader's on_leader done %s",
		hard, graceful, fromRelease)
}
