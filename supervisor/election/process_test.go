package election

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/lifeboat/lifeboat/internal/testrig"
)

// The process tests run each elector as a child process (this test binary
// re-executed), so a kill is a real SIGKILL and each elector talks to its
// own agent of a 3-server Consul cluster, whose agents can be stopped and
// frozen one by one.

// clusterLockDelay is the lock_delay recommended with server agents.
const clusterLockDelay = DefaultTTL/DefaultDemoteAfterDivisor + time.Second

const (
	childEnv     = "LIFEBOAT_ELECTION_CHILD" // node id; set only in a child
	childAddrEnv = "LIFEBOAT_ELECTION_CHILD_CONSUL"
	childKeyEnv  = "LIFEBOAT_ELECTION_CHILD_KEY"
)

func TestMain(m *testing.M) {
	if node := os.Getenv(childEnv); node != "" {
		os.Exit(childMain(node))
	}
	os.Exit(m.Run())
}

// childEvent is one line a child prints on stdout.
type childEvent struct {
	Node  string `json:"node"`
	Kind  string `json:"kind"` // hook, role, release
	Hook  string `json:"hook,omitempty"`
	End   bool   `json:"end,omitempty"`
	Err   string `json:"err,omitempty"`
	Role  Role   `json:"role,omitempty"`
	Token uint64 `json:"token"`
	At    int64  `json:"at"` // unix nanos
}

// childMain runs one elector until SIGKILL, or until SIGTERM, on which it
// releases the lock like lifeboat does at shutdown.
func childMain(node string) int {
	var mu sync.Mutex
	enc := json.NewEncoder(os.Stdout)
	emit := func(ev childEvent) {
		ev.Node, ev.At = node, time.Now().UnixNano()
		mu.Lock()
		enc.Encode(ev)
		mu.Unlock()
	}
	client, err := api.NewClient(&api.Config{Address: os.Getenv(childAddrEnv)})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	e, err := New(Options{
		Client: client, Key: os.Getenv(childKeyEnv), NodeID: node, Advertise: node, Port: 1,
		// The agents are Consul servers: lock_delay must cover demote_after
		// (docs/election.md), or autopilot's removal of a dead server could
		// free the lock before its leader demoted.
		LockDelay: clusterLockDelay,
		Hooks: hookFunc(func(ctx context.Context, name string, env map[string]string) error {
			tok, _ := strconv.ParseUint(env[VarFencingToken], 10, 64)
			emit(childEvent{Kind: "hook", Hook: name, Token: tok})
			emit(childEvent{Kind: "hook", Hook: name, End: true, Token: tok})
			return nil
		}),
		OnDemoteFailed: func(err error) { fmt.Fprintln(os.Stderr, "on_demote failed:", err) },
		Logger:         testLoggerTo(os.Stderr).With("node", node),
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	e.OnRole(func(c Change) { emit(childEvent{Kind: "role", Role: c.Role, Token: c.FencingToken}) })
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- e.Run(context.Background()) }()
	select {
	case <-sig:
		emit(childEvent{Kind: "release"})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := e.Release(ctx); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return 0
	case err := <-done:
		fmt.Fprintln(os.Stderr, "run ended:", err)
		return 1
	}
}

type hookFunc func(ctx context.Context, name string, env map[string]string) error

func (f hookFunc) Run(ctx context.Context, name string, env map[string]string) error {
	return f(ctx, name, env)
}

// proc is one child elector.
type proc struct {
	node   string
	cmd    *exec.Cmd
	exited chan struct{}
	exitAt time.Time
}

// fleet runs child electors and records what they say.
type fleet struct {
	t      *testing.T
	key    string
	agents map[string]*testrig.Consul // node -> its agent
	logDir string

	lastEvent bool // disrupt does not restore the fleet after this one

	mu       sync.Mutex
	procs    map[string]*proc
	roles    map[string]childEvent // last role event per node
	open     map[string]*interval  // acting leaders
	done     []interval
	failures []string
}

func newFleet(t *testing.T, agents []*testrig.Consul) *fleet {
	f := &fleet{t: t, key: "test/" + t.Name() + "/leader", agents: map[string]*testrig.Consul{}, logDir: t.TempDir(),
		procs: map[string]*proc{}, roles: map[string]childEvent{}, open: map[string]*interval{}}
	for i, a := range agents {
		f.agents[fmt.Sprintf("n%d", i+1)] = a
	}
	t.Cleanup(func() {
		for n := range f.agents {
			f.kill(n)
		}
		if t.Failed() {
			for n := range f.agents {
				b, _ := os.ReadFile(filepath.Join(f.logDir, n+".log"))
				if len(b) > 4000 {
					b = b[len(b)-4000:]
				}
				t.Logf("log of %s (tail):\n%s", n, b)
			}
		}
	})
	return f
}

func (f *fleet) start(node string) {
	f.t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+node, childAddrEnv+"="+f.agents[node].HTTPAddr, childKeyEnv+"="+f.key)
	logf, err := os.OpenFile(filepath.Join(f.logDir, node+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		f.t.Fatal(err)
	}
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		f.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		f.t.Fatal(err)
	}
	p := &proc{node: node, cmd: cmd, exited: make(chan struct{})}
	f.mu.Lock()
	f.procs[node] = p
	f.mu.Unlock()
	// The reader owns the child: it reads until the pipe closes, then
	// reaps it and closes the leader interval it may have left open.
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var ev childEvent
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				continue
			}
			f.record(ev)
		}
		cmd.Wait()
		logf.Close()
		f.mu.Lock()
		p.exitAt = time.Now()
		if iv := f.open[node]; iv != nil {
			iv.End = p.exitAt
			f.done = append(f.done, *iv)
			delete(f.open, node)
		}
		delete(f.roles, node)
		f.mu.Unlock()
		close(p.exited)
	}()
}

func (f *fleet) record(ev childEvent) {
	at := time.Unix(0, ev.At)
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case ev.Kind == "role":
		f.roles[ev.Node] = ev
	case ev.Kind == "hook" && ev.Hook == HookOnLeader && !ev.End:
		if f.open[ev.Node] != nil {
			f.failures = append(f.failures, fmt.Sprintf("%s: on_leader again without on_demote", ev.Node))
		}
		f.open[ev.Node] = &interval{Node: ev.Node, Token: ev.Token, Start: at}
	case ev.Kind == "hook" && ev.Hook == HookOnDemote && ev.End, ev.Kind == "release":
		if iv := f.open[ev.Node]; iv != nil {
			iv.End = at
			f.done = append(f.done, *iv)
			delete(f.open, ev.Node)
		}
	}
}

// kill SIGKILLs node's elector and waits until it is gone.
func (f *fleet) kill(node string) { f.signal(node, syscall.SIGKILL) }

// term asks node's elector to release and waits until it exited.
func (f *fleet) term(node string) { f.signal(node, syscall.SIGTERM) }

func (f *fleet) signal(node string, sig syscall.Signal) {
	f.mu.Lock()
	p := f.procs[node]
	f.mu.Unlock()
	if p == nil {
		return
	}
	p.cmd.Process.Signal(sig)
	select {
	case <-p.exited:
	case <-time.After(20 * time.Second):
		p.cmd.Process.Kill()
		<-p.exited
		f.t.Errorf("%s did not exit after %s", node, sig)
	}
	f.mu.Lock()
	delete(f.procs, node)
	f.mu.Unlock()
}

// leader is the node that announced itself leader last and still is.
func (f *fleet) leader() (string, uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for n, ev := range f.roles {
		if ev.Role == RoleLeader {
			return n, ev.Token
		}
	}
	return "", 0
}

// settled: every running node has a role; one leads, the others follow it.
func (f *fleet) settled() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	var lead []uint64
	for n := range f.procs {
		ev, ok := f.roles[n]
		if !ok {
			return false
		}
		if ev.Role == RoleLeader {
			lead = append(lead, ev.Token)
		}
	}
	if len(lead) != 1 {
		return false
	}
	for n := range f.procs {
		if ev := f.roles[n]; ev.Role == RoleFollower && ev.Token != lead[0] || ev.Role == RoleCandidate {
			return false
		}
	}
	return true
}

// waitNewLeader waits for a leader with a token above old.
func (f *fleet) waitNewLeader(old uint64, d time.Duration) (string, uint64, time.Duration) {
	f.t.Helper()
	t0 := time.Now()
	for {
		if n, tok := f.leader(); n != "" && tok > old {
			return n, tok, time.Since(t0)
		}
		if time.Since(t0) > d {
			f.t.Fatalf("no new leader (token above %d) within %s", old, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (f *fleet) waitSettled(d time.Duration) {
	f.t.Helper()
	waitFor(f.t, d, "one leader and every running node following it", f.settled)
}

// check fails the test when two leader intervals overlapped or a token
// did not increase.
func (f *fleet) check() int {
	f.t.Helper()
	f.mu.Lock()
	all := append([]interval(nil), f.done...)
	for _, iv := range f.open {
		c := *iv
		c.End = time.Now()
		all = append(all, c)
	}
	failures := append([]string(nil), f.failures...)
	f.mu.Unlock()
	for _, s := range failures {
		f.t.Error(s)
	}
	if err := checkIntervals(all); err != nil {
		f.t.Fatal(err)
	}
	return len(all)
}

// failover is one disruption of the current leader.
type failover struct {
	name string
	// act disrupts leader and returns what undoes it once a new leader is in.
	act func(f *fleet, leader string) (undo func())
	// within bounds the time to a new leader.
	within time.Duration
}

var failovers = map[string]failover{
	"kill": {"SIGKILL the leader's elector", func(f *fleet, l string) func() {
		f.kill(l)
		return func() { f.start(l) }
	}, DefaultTTL + clusterLockDelay + 5*time.Second},
	"release": {"SIGTERM the leader's elector (Release)", func(f *fleet, l string) func() {
		f.term(l)
		return func() { f.start(l) }
	}, 2 * time.Second},
	"freeze": {"SIGSTOP the leader's Consul agent", func(f *fleet, l string) func() {
		f.agents[l].Freeze()
		return f.agents[l].Thaw
	}, 3*DefaultTTL + clusterLockDelay},
	"stop": {"stop the leader's Consul agent", func(f *fleet, l string) func() {
		f.agents[l].Stop()
		return func() { f.agents[l].Start(f.t) }
	}, 3*DefaultTTL + clusterLockDelay},
	"kill-follower": {"SIGKILL a follower's elector", nil, 0},
}

// disrupt runs one failover and checks the leader changed (or, for a
// follower kill, did not).
func (f *fleet) disrupt(kind string) {
	f.t.Helper()
	l, tok := f.leader()
	if kind == "kill-follower" {
		for n := range f.agents {
			if n != l {
				f.kill(n)
				f.start(n)
				break
			}
		}
		f.waitSettled(30 * time.Second)
		if l2, tok2 := f.leader(); l2 != l || tok2 != tok {
			f.t.Fatalf("killing a follower moved the leadership from %s/%d to %s/%d", l, tok, l2, tok2)
		}
		return
	}
	fo := failovers[kind]
	undo := fo.act(f, l)
	n, tok2, d := f.waitNewLeader(tok, fo.within)
	f.t.Logf("%s: %s (token %d) -> %s (token %d) in %s", fo.name, l, tok, n, tok2, d.Round(time.Millisecond))
	if f.lastEvent {
		return // the checker runs next; nothing needs the fleet whole again
	}
	undo()
	f.waitSettled(3 * DefaultTTL)
	f.waitConsulHealthy(time.Minute)
}

// waitConsulHealthy waits until the cluster can lose a server again: a
// stopped or frozen server may have been removed by autopilot and must be
// a healthy voter again before the next disruption, or that one would
// take the quorum with it (a test condition, not the elector's).
func (f *fleet) waitConsulHealthy(d time.Duration) {
	f.t.Helper()
	var clients []*api.Client
	for _, a := range f.agents {
		clients = append(clients, consulClient(f.t, a.HTTPAddr))
	}
	t0 := time.Now()
	defer func() { f.t.Logf("consul healthy again after %s", time.Since(t0).Round(time.Millisecond)) }()
	waitFor(f.t, d, "the Consul cluster to tolerate a failure again", func() bool {
		time.Sleep(200 * time.Millisecond) // a gentle poll: Consul limits connections per client
		for _, c := range clients {
			h, err := c.Operator().AutopilotServerHealth(nil)
			if err != nil {
				continue
			}
			return h.Healthy && h.FailureTolerance >= 1 && len(h.Servers) == len(f.agents)
		}
		return false
	})
}

func startFleet(t *testing.T) *fleet {
	agents := testrig.StartConsulCluster(t, 3)
	f := newFleet(t, agents)
	for n := range f.agents {
		f.start(n)
	}
	f.waitSettled(30 * time.Second)
	return f
}

// Each kind of failover once, against real processes and a real 3-server
// cluster: a new leader every time, never two at once, tokens increasing.
// The randomized 50-event run is TestSoak (LIFEBOAT_SOAK=1).
func TestProcessFailovers(t *testing.T) {
	t.Parallel()
	f := startFleet(t)
	kinds := []string{"kill", "release", "kill-follower", "freeze", "stop"}
	for i, kind := range kinds {
		f.lastEvent = i == len(kinds)-1
		f.disrupt(kind)
	}
	if n := f.check(); n < 5 {
		t.Fatalf("only %d leader terms recorded", n)
	}
}

// TestSoak: at least 50 randomized kills, releases, agent stops and
// freezes; a checker asserts no two leader intervals ever overlap and
// fencing tokens only increase. About 10 s per event: run with
// LIFEBOAT_SOAK=1 (LIFEBOAT_SOAK_EVENTS=N to change the count).
func TestSoak(t *testing.T) {
	if os.Getenv("LIFEBOAT_SOAK") == "" {
		t.Skip("soak run: set LIFEBOAT_SOAK=1 (takes ~9 min)")
	}
	events := 50
	if n, err := strconv.Atoi(os.Getenv("LIFEBOAT_SOAK_EVENTS")); err == nil && n > 0 {
		events = n
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	kinds := []string{"kill", "kill", "release", "freeze", "stop", "kill-follower"}
	f := startFleet(t)
	count := map[string]int{}
	for i := 0; i < events; i++ {
		k := kinds[rng.IntN(len(kinds))]
		count[k]++
		f.disrupt(k)
		if t.Failed() {
			break
		}
	}
	terms := f.check()
	t.Logf("%d events %v, %d leader terms, no overlap, tokens increasing", events, count, terms)
}

// testLoggerTo logs everything to w: a child's stderr goes to its log file.
func testLoggerTo(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
