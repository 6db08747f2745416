package election

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/lifeboat/lifeboat/internal/testrig"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// hookEvent is one hook start or end seen by recHooks.
type hookEvent struct {
	Node  string
	Hook  string
	End   bool
	Token uint64
	Env   map[string]string
	Err   error
	At    time.Time
}

// recHooks records every hook run, shared by the electors of a test.
type recHooks struct {
	mu     sync.Mutex
	events []hookEvent
	fail   map[string]error // node/hook -> error to return
	delay  map[string]time.Duration
	block  map[string]chan struct{} // node/hook -> closed when the hook may end; ctx is ignored
}

func newRecHooks() *recHooks {
	return &recHooks{fail: map[string]error{}, delay: map[string]time.Duration{}, block: map[string]chan struct{}{}}
}

// forNode is the HookRunner of one node.
func (r *recHooks) forNode(node string) HookRunner { return nodeHooks{r, node} }

type nodeHooks struct {
	r    *recHooks
	node string
}

func (h nodeHooks) Run(ctx context.Context, name string, env map[string]string) error {
	tok, _ := strconv.ParseUint(env[VarFencingToken], 10, 64)
	h.r.mu.Lock()
	h.r.events = append(h.r.events, hookEvent{Node: h.node, Hook: name, Token: tok, Env: env, At: time.Now()})
	err, d, block := h.r.fail[h.node+"/"+name], h.r.delay[h.node+"/"+name], h.r.block[h.node+"/"+name]
	h.r.mu.Unlock()
	if block != nil {
		<-block
	}
	if d > 0 {
		select {
		case <-time.After(d):
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	h.r.mu.Lock()
	h.r.events = append(h.r.events, hookEvent{Node: h.node, Hook: name, End: true, Token: tok, Env: env, Err: err, At: time.Now()})
	h.r.mu.Unlock()
	return err
}

func (r *recHooks) snapshot() []hookEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]hookEvent(nil), r.events...)
}

// find returns the events matching node ("" any), hook and end.
func (r *recHooks) find(node, hook string, end bool) []hookEvent {
	var out []hookEvent
	for _, ev := range r.snapshot() {
		if (node == "" || ev.Node == node) && ev.Hook == hook && ev.End == end {
			out = append(out, ev)
		}
	}
	return out
}

func testLogger(t *testing.T) *slog.Logger {
	if os.Getenv("LIFEBOAT_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
	}
	return slog.New(slog.DiscardHandler)
}

func consulClient(t *testing.T, addr string) *api.Client {
	t.Helper()
	c, err := api.NewClient(&api.Config{Address: addr})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// node is one in-process elector of a test.
type node struct {
	id     string
	e      *Elector
	cancel context.CancelFunc
	done   chan error
}

func startNode(t *testing.T, addr, id string, hooks *recHooks, mod func(*Options)) *node {
	t.Helper()
	opts := Options{
		Client:    consulClient(t, addr),
		Key:       "test/" + t.Name() + "/leader",
		NodeID:    id,
		Advertise: "10.0.0." + id[len(id)-1:],
		Port:      3306,
		Logger:    testLogger(t).With("node", id),
	}
	if hooks != nil {
		opts.Hooks = hooks.forNode(id)
	}
	if mod != nil {
		mod(&opts)
	}
	e, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &node{id: id, e: e, cancel: cancel, done: make(chan error, 1)}
	go func() { n.done <- e.Run(ctx) }()
	t.Cleanup(n.stop)
	return n
}

// stop ends Run without releasing, as a crash would, and waits for it.
func (n *node) stop() {
	n.cancel()
	<-n.done
	n.done <- nil // later stops return at once
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	t0 := time.Now()
	for !cond() {
		if time.Since(t0) > d {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(t0)
}

func leaders(nodes []*node) []*node {
	var out []*node
	for _, n := range nodes {
		if n.e.IsLeader() {
			out = append(out, n)
		}
	}
	return out
}

// settled is true when exactly one node leads and every other follows it.
func settled(nodes []*node) bool {
	ls := leaders(nodes)
	if len(ls) != 1 {
		return false
	}
	want := ls[0].e.Status()
	for _, n := range nodes {
		if n == ls[0] {
			continue
		}
		st := n.e.Status()
		if st.Role != RoleFollower || st.Leader != want.Leader || st.FencingToken != want.FencingToken {
			return false
		}
	}
	return true
}

func TestNewChecksOptions(t *testing.T) {
	c, _ := api.NewClient(api.DefaultConfig())
	cases := []struct {
		name string
		opts Options
		err  string
	}{
		{"no client", Options{}, "no Consul client"},
		{"ttl too short", Options{Client: c, TTL: 5 * time.Second}, "shorter than Consul's minimum"},
		{"demote after ttl", Options{Client: c, TTL: 10 * time.Second, DemoteAfter: 10 * time.Second}, "must be shorter than ttl"},
		{"defaults", Options{Client: c, NodeID: "n1"}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e, err := New(tc.opts)
			if tc.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				o := e.Options()
				if o.Key != DefaultKey || o.TTL != DefaultTTL || o.LockDelay != DefaultLockDelay || o.DemoteAfter != DefaultTTL/2 || o.Advertise == "" {
					t.Fatalf("defaults not filled: %+v", o)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("error %v, want it to say %q", err, tc.err)
			}
		})
	}
}

func TestLeaderAddr(t *testing.T) {
	for _, tc := range []struct {
		l    Leader
		want string
	}{
		{Leader{Address: "10.0.0.1", Port: 3306}, "10.0.0.1:3306"},
		{Leader{Address: "db-1"}, "db-1"},
		{Leader{Address: "::1", Port: 5}, "[::1]:5"},
		{Leader{}, ""},
	} {
		if got := tc.l.Addr(); got != tc.want {
			t.Errorf("%+v.Addr() = %q, want %q", tc.l, got, tc.want)
		}
	}
}

// Three electors on one agent: exactly one leads, the others follow it
// and were told its address; the token is the key's Raft index.
func TestThreeElectorsOneLeader(t *testing.T) {
	t.Parallel()
	c := testrig.StartConsul(t)
	hooks := newRecHooks()
	reg := prometheus.NewRegistry()
	var nodes []*node
	for i := 1; i <= 3; i++ {
		i := i
		nodes = append(nodes, startNode(t, c.HTTPAddr, fmt.Sprintf("n%d", i), hooks, func(o *Options) {
			if i == 1 {
				o.Registerer = reg
			}
		}))
	}
	waitFor(t, 10*time.Second, "one leader, two followers", func() bool { return settled(nodes) })
	ldr := leaders(nodes)[0]
	st := ldr.e.Status()
	if st.FencingToken == 0 || ldr.e.FencingToken() != st.FencingToken || !st.SessionHealthy || st.Session == "" || st.Terms != 1 {
		t.Fatalf("leader status: %+v", st)
	}
	l, tok, ok, err := CurrentLeader(context.Background(), consulClient(t, c.HTTPAddr), ldr.e.Options().Key)
	if err != nil || !ok || l.Node != ldr.id || tok != st.FencingToken || l.Addr() != "10.0.0."+ldr.id[1:]+":3306" {
		t.Fatalf("CurrentLeader = %+v %d %v %v; leader %s token %d", l, tok, ok, err, ldr.id, st.FencingToken)
	}
	if got := hooks.find(ldr.id, HookOnLeader, true); len(got) != 1 || got[0].Err != nil || got[0].Token != st.FencingToken || got[0].Env[VarRole] != "leader" {
		t.Fatalf("on_leader runs of the leader: %+v", got)
	}
	for _, n := range nodes {
		if n == ldr {
			if f := hooks.find(n.id, HookOnFollower, true); len(f) != 0 {
				t.Errorf("leader %s ran on_follower: %+v", n.id, f)
			}
			continue
		}
		if n.e.FencingToken() != 0 {
			t.Errorf("follower %s has a fencing token", n.id)
		}
		f := hooks.find(n.id, HookOnFollower, true)
		if len(f) != 1 || f[0].Env[VarLeader] != st.Leader || f[0].Env[VarLeaderNode] != ldr.id || f[0].Token != st.FencingToken {
			t.Errorf("on_follower of %s: %+v, want leader %s", n.id, f, st.Leader)
		}
	}
	// Metrics of n1 agree with its role.
	want := 0.0
	if ldr.id == "n1" {
		want = 1
	}
	if got := testutil.ToFloat64(nodes[0].e.m.leader); got != want {
		t.Errorf("lifeboat_election_leader of n1 = %v, want %v", got, want)
	}
	if n, err := testutil.GatherAndCount(reg, "lifeboat_election_fencing_token"); err != nil || n != 1 {
		t.Errorf("fencing token metric not registered: %d %v", n, err)
	}
}

// A leader that stops renewing without releasing (a crash) is replaced
// once its check goes critical and lock_delay passes: within ttl +
// lock_delay and a little, with a higher fencing token.
func TestCrashedLeaderIsReplaced(t *testing.T) {
	t.Parallel()
	c := testrig.StartConsul(t)
	hooks := newRecHooks()
	var nodes []*node
	for i := 1; i <= 3; i++ {
		nodes = append(nodes, startNode(t, c.HTTPAddr, fmt.Sprintf("n%d", i), hooks, nil))
	}
	waitFor(t, 10*time.Second, "a leader", func() bool { return settled(nodes) })
	old := leaders(nodes)[0]
	oldTok := old.e.Status().FencingToken
	old.stop()
	if old.e.IsLeader() {
		t.Fatal("a stopped elector still says it leads")
	}
	rest := without(nodes, old)
	d := waitFor(t, DefaultTTL+DefaultLockDelay+5*time.Second, "a new leader", func() bool { return settled(rest) })
	newTok := leaders(rest)[0].e.Status().FencingToken
	if newTok <= oldTok {
		t.Fatalf("fencing token went from %d to %d", oldTok, newTok)
	}
	// Not before the old session's check could have gone critical.
	if d < DefaultTTL-DefaultTTL/2/heartbeatsPerDemote-time.Second {
		t.Fatalf("new leader after %s: sooner than the crashed leader's check can expire", d)
	}
	t.Logf("crash failover took %s", d)
}

func without(nodes []*node, x *node) []*node {
	var out []*node
	for _, n := range nodes {
		if n != x {
			out = append(out, n)
		}
	}
	return out
}

// Release hands over at once: no ttl, no lock_delay.
func TestReleaseHandsOverAtOnce(t *testing.T) {
	t.Parallel()
	c := testrig.StartConsul(t)
	hooks := newRecHooks()
	var nodes []*node
	for i := 1; i <= 3; i++ {
		nodes = append(nodes, startNode(t, c.HTTPAddr, fmt.Sprintf("n%d", i), hooks, func(o *Options) { o.LockDelay = 5 * time.Second }))
	}
	waitFor(t, 10*time.Second, "a leader", func() bool { return settled(nodes) })
	old := leaders(nodes)[0]
	oldTok := old.e.Status().FencingToken
	var roles []Role
	var mu sync.Mutex
	old.e.OnRole(func(ch Change) { mu.Lock(); roles = append(roles, ch.Role); mu.Unlock() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	t0 := time.Now()
	if err := old.e.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-old.done; !errors.Is(err, ErrReleased) {
		t.Fatalf("Run after Release returned %v", err)
	}
	old.done <- nil
	rest := without(nodes, old)
	waitFor(t, 2*time.Second, "a new leader after release", func() bool { return len(leaders(rest)) == 1 })
	d := time.Since(t0)
	if d > time.Second {
		t.Fatalf("handover took %s, want under 1s (lock_delay must not apply to a release)", d)
	}
	if tok := leaders(rest)[0].e.Status().FencingToken; tok <= oldTok {
		t.Fatalf("token went from %d to %d", oldTok, tok)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(roles) == 0 || roles[len(roles)-1] != RoleCandidate {
		t.Fatalf("observer of the released leader saw %v, want it to end as candidate", roles)
	}
	if d := hooks.find(old.id, HookOnDemote, false); len(d) != 0 {
		t.Fatalf("release ran on_demote: %+v", d)
	}
	// The session and check are gone from Consul.
	cl := consulClient(t, c.HTTPAddr)
	if ids := electionChecks(t, cl, old); len(ids) != 0 {
		t.Fatalf("election checks %v still registered after Release", ids)
	}
	t.Logf("graceful handover took %s", d)
}

// electionChecks lists the agent's checks and services of n's election.
func electionChecks(t *testing.T, cl *api.Client, n *node) []string {
	t.Helper()
	checks, err := cl.Agent().Checks()
	if err != nil {
		t.Fatal(err)
	}
	services, err := cl.Agent().Services()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for id, svc := range services {
		if n.e.ownService(svc) {
			ids = append(ids, "service "+id)
		}
	}
	for id, ch := range checks {
		if strings.HasPrefix(id, n.e.servicePrefix()) || services[ch.ServiceID] != nil && n.e.ownService(services[ch.ServiceID]) {
			ids = append(ids, "check "+id)
		}
	}
	return ids
}

// Node ids that extend one another ("db", "db-replica") on one agent:
// a new session of one never removes the other's check.
func TestNodeIDPrefixesStayApart(t *testing.T) {
	t.Parallel()
	c := testrig.StartConsul(t)
	cl := consulClient(t, c.HTTPAddr)
	replica := startNode(t, c.HTTPAddr, "db-replica", nil, nil)
	waitFor(t, 10*time.Second, "db-replica leads", func() bool { return replica.e.IsLeader() })
	before := electionChecks(t, cl, replica)
	db := startNode(t, c.HTTPAddr, "db", nil, nil)
	waitFor(t, 10*time.Second, "db follows", func() bool { return db.e.Role() == RoleFollower })
	// db's next session (as after a restart) drops only db's old one.
	db.stop()
	db2 := startNode(t, c.HTTPAddr, "db", nil, nil)
	waitFor(t, 10*time.Second, "db follows again", func() bool { return db2.e.Role() == RoleFollower })
	if after := electionChecks(t, cl, replica); !slices.Equal(sorted(before), sorted(after)) {
		t.Fatalf("db-replica's election checks went from %v to %v", before, after)
	}
	if !replica.e.IsLeader() || replica.e.Status().Terms != 1 {
		t.Fatalf("db-replica lost its term: %+v", replica.e.Status())
	}
}

func sorted(s []string) []string { s = slices.Clone(s); slices.Sort(s); return s }

// A Release that gives up waiting (the leader is stuck in a hook) still
// hands the lock over as soon as the election stops, not a ttl later.
func TestSlowReleaseStillHandsOver(t *testing.T) {
	t.Parallel()
	c := testrig.StartConsul(t)
	hooks := newRecHooks()
	unblock := make(chan struct{})
	hooks.block["n1/"+HookOnLeader] = unblock
	n1 := startNode(t, c.HTTPAddr, "n1", hooks, nil)
	waitFor(t, 10*time.Second, "n1 in on_leader", func() bool { return len(hooks.find("n1", HookOnLeader, false)) == 1 })
	n2 := startNode(t, c.HTTPAddr, "n2", hooks, nil)
	waitFor(t, 10*time.Second, "n2 follows n1", func() bool { return n2.e.Status().LeaderNode == "n1" })
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := n1.e.Release(ctx); err == nil {
		t.Fatal("Release returned nil while on_leader still ran")
	}
	close(unblock)
	if err := <-n1.done; !errors.Is(err, ErrReleased) {
		t.Fatalf("Run after Release returned %v", err)
	}
	n1.done <- nil
	d := waitFor(t, DefaultTTL+DefaultLockDelay+5*time.Second, "n2 leads", func() bool { return n2.e.IsLeader() })
	if d > 3*time.Second {
		t.Fatalf("n2 led %s after n1's election stopped: the lock was left to expire, not released", d)
	}
	if ids := electionChecks(t, consulClient(t, c.HTTPAddr), n1); len(ids) != 0 {
		t.Fatalf("n1's election checks %v still registered", ids)
	}
}

// The election's check hangs on a service of its own: when a node dies
// and its check goes critical, other services on the same agent stay
// healthy, and the agent removes the dead node's check after reapAfter.
func TestDeadElectorLeavesOtherServicesHealthy(t *testing.T) {
	t.Parallel()
	c := testrig.StartConsul(t)
	cl := consulClient(t, c.HTTPAddr)
	if err := cl.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "web-1", Name: "web",
		Check: &api.AgentServiceCheck{TTL: "10m", Status: api.HealthPassing}}); err != nil {
		t.Fatal(err)
	}
	n1 := startNode(t, c.HTTPAddr, "n1", nil, nil)
	waitFor(t, 10*time.Second, "n1 leads", func() bool { return n1.e.IsLeader() })
	n1.stop() // as a crash: nothing given up
	waitFor(t, 2*DefaultTTL, "n1's election check critical", func() bool {
		checks, err := cl.Agent().Checks()
		if err != nil {
			return false
		}
		for id, ch := range checks {
			if strings.HasPrefix(id, n1.e.servicePrefix()) && ch.Status == api.HealthCritical {
				return true
			}
		}
		return false
	})
	entries, _, err := cl.Health().Service("web", "", true, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Fatalf("web has %d passing instances while a dead elector's check is critical, want 1", len(entries))
	}
	// The agent reaps it: Consul's reaper runs every 30 s, and the agent
	// reports no check's reap time, so this waits.
	d := waitFor(t, reapAfter+time.Minute, "the agent to remove the dead elector's check", func() bool {
		return len(electionChecks(t, cl, n1)) == 0
	})
	t.Logf("critical election check removed %s after it went critical", d)
}

// With the only agent frozen, the leader demotes itself after
// demote_after and nobody is promoted meanwhile; after the thaw a leader
// is elected again with a higher token.
func TestLeaderDemotesWhenAgentFrozen(t *testing.T) {
	t.Parallel()
	c := testrig.StartConsul(t)
	hooks := newRecHooks()
	var failed []error
	var mu sync.Mutex
	var nodes []*node
	for i := 1; i <= 2; i++ {
		nodes = append(nodes, startNode(t, c.HTTPAddr, fmt.Sprintf("n%d", i), hooks, func(o *Options) {
			o.OnDemoteFailed = func(err error) { mu.Lock(); failed = append(failed, err); mu.Unlock() }
		}))
	}
	waitFor(t, 10*time.Second, "a leader", func() bool { return settled(nodes) })
	old := leaders(nodes)[0]
	oldTok := old.e.Status().FencingToken
	c.Freeze()
	t0 := time.Now()
	d := waitFor(t, 10*time.Second, "self-demotion", func() bool { return !old.e.IsLeader() && len(hooks.find(old.id, HookOnDemote, true)) == 1 })
	if d > DefaultTTL/2+time.Second {
		t.Fatalf("demoted after %s, want about demote_after (%s)", d, DefaultTTL/2)
	}
	if st := old.e.Status(); st.SelfDemotions != 1 || st.SessionHealthy {
		t.Fatalf("status after self-demotion: %+v", st)
	}
	if ls := hooks.find("", HookOnLeader, false); len(ls) != 1 {
		t.Fatalf("someone was promoted while the agent was frozen: %+v", ls)
	}
	c.Thaw()
	waitFor(t, 3*DefaultTTL, "a leader after the thaw", func() bool { return settled(nodes) })
	if tok := leaders(nodes)[0].e.Status().FencingToken; tok <= oldTok {
		t.Fatalf("token went from %d to %d", oldTok, tok)
	}
	assertNoOverlap(t, hooks, nil)
	mu.Lock()
	defer mu.Unlock()
	if len(failed) != 0 {
		t.Fatalf("on_demote reported failures: %v", failed)
	}
	t.Logf("frozen for %s", time.Since(t0))
}

// A failing on_leader gives the lock up: on_demote fences the half
// promotion, the node sits out, and another node leads.
func TestFailedPromotionGivesUp(t *testing.T) {
	t.Parallel()
	c := testrig.StartConsul(t)
	hooks := newRecHooks()
	hooks.fail["n2/"+HookOnLeader] = errors.New("promotion refused")
	n1 := startNode(t, c.HTTPAddr, "n1", hooks, nil)
	waitFor(t, 10*time.Second, "n1 leads", func() bool { return n1.e.IsLeader() })
	n2 := startNode(t, c.HTTPAddr, "n2", hooks, nil)
	waitFor(t, 10*time.Second, "n2 follows", func() bool { return n2.e.Role() == RoleFollower })
	released := time.Now()
	if err := n1.e.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "n2's failed promotion and its on_demote", func() bool {
		return len(hooks.find("n2", HookOnLeader, true)) == 1 && len(hooks.find("n2", HookOnDemote, true)) == 1
	})
	if ev := hooks.find("n2", HookOnLeader, true)[0]; ev.Err == nil {
		t.Fatalf("n2 on_leader: %+v", ev)
	}
	if n2.e.IsLeader() {
		t.Fatal("n2 leads although its on_leader failed")
	}
	// n2 sits out a ttl, so a newcomer takes the lock.
	n3 := startNode(t, c.HTTPAddr, "n3", hooks, nil)
	waitFor(t, 5*time.Second, "n3 leads", func() bool { return n3.e.IsLeader() })
	waitFor(t, 2*DefaultTTL, "n2 follows n3", func() bool { return settled([]*node{n2, n3}) })
	assertNoOverlap(t, hooks, map[string]time.Time{"n1": released})
}

// A slow on_demote that overruns the time before another node could take
// the lock is cut off and reported, so the caller can stop the app.
func TestSlowDemoteIsReported(t *testing.T) {
	t.Parallel()
	c := testrig.StartConsul(t)
	hooks := newRecHooks()
	hooks.delay["n1/"+HookOnDemote] = time.Minute
	reported := make(chan error, 1)
	n1 := startNode(t, c.HTTPAddr, "n1", hooks, func(o *Options) {
		o.OnDemoteFailed = func(err error) { reported <- err }
	})
	waitFor(t, 10*time.Second, "n1 leads", func() bool { return n1.e.IsLeader() })
	c.Freeze()
	defer c.Thaw()
	select {
	case err := <-reported:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("reported %v, want a deadline error", err)
		}
	case <-time.After(DefaultTTL + DefaultLockDelay + 5*time.Second):
		t.Fatal("a stuck on_demote was not reported")
	}
	ends := hooks.find("n1", HookOnDemote, true)
	if len(ends) != 1 {
		t.Fatalf("on_demote ends: %+v", ends)
	}
	// It was cut off before the earliest moment Consul could hand the lock on.
	starts := hooks.find("n1", HookOnLeader, true)
	last := n1.e.Status().LastRenew
	if ends[0].At.After(last.Add(DefaultTTL + DefaultLockDelay)) {
		t.Fatalf("on_demote ran until %s, past the last renewal %s + ttl + lock_delay (leader since %s)", ends[0].At, last, starts[0].At)
	}
}

// interval is one node's time as acting leader: from on_leader's start to
// on_demote's end (or its death).
type interval struct {
	Node       string
	Token      uint64
	Start, End time.Time
}

// intervalsFrom builds leader intervals from hook events; open intervals
// end at ends[node] or now.
func intervalsFrom(events []hookEvent, ends map[string]time.Time) []interval {
	var out []interval
	open := map[string]int{}
	for _, ev := range events {
		switch {
		case ev.Hook == HookOnLeader && !ev.End:
			open[ev.Node] = len(out)
			out = append(out, interval{Node: ev.Node, Token: ev.Token, Start: ev.At})
		case ev.Hook == HookOnDemote && ev.End:
			if i, ok := open[ev.Node]; ok {
				out[i].End = ev.At
				delete(open, ev.Node)
			}
		}
	}
	for n, i := range open {
		if e, ok := ends[n]; ok {
			out[i].End = e
		} else {
			out[i].End = time.Now()
		}
	}
	return out
}

// checkIntervals says what is wrong with a run's leader intervals: two
// that overlap, or a token that does not increase.
func checkIntervals(iv []interval) error {
	sorted := append([]interval(nil), iv...)
	for i := 1; i < len(sorted); i++ {
		for j := i; j > 0 && sorted[j].Start.Before(sorted[j-1].Start); j-- {
			sorted[j], sorted[j-1] = sorted[j-1], sorted[j]
		}
	}
	for i := 1; i < len(sorted); i++ {
		a, b := sorted[i-1], sorted[i]
		if !b.Start.After(a.End) {
			return fmt.Errorf("two leaders at once: %s (token %d) %s..%s and %s (token %d) from %s",
				a.Node, a.Token, a.Start.Format("15:04:05.000"), a.End.Format("15:04:05.000"), b.Node, b.Token, b.Start.Format("15:04:05.000"))
		}
		if b.Token <= a.Token {
			return fmt.Errorf("fencing token did not increase: %s had %d, then %s had %d", a.Node, a.Token, b.Node, b.Token)
		}
	}
	return nil
}

func assertNoOverlap(t *testing.T, hooks *recHooks, ends map[string]time.Time) {
	t.Helper()
	if err := checkIntervals(intervalsFrom(hooks.snapshot(), ends)); err != nil {
		t.Fatal(err)
	}
}

// The checker itself must catch what it is for.
func TestCheckIntervalsCatchesOverlapAndTokens(t *testing.T) {
	t0 := time.Now()
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	ok := []interval{{"a", 5, at(0), at(10)}, {"b", 9, at(11), at(20)}}
	if err := checkIntervals(ok); err != nil {
		t.Fatal(err)
	}
	if err := checkIntervals([]interval{{"b", 9, at(9), at(20)}, {"a", 5, at(0), at(10)}}); err == nil {
		t.Fatal("overlap not caught")
	}
	if err := checkIntervals([]interval{{"a", 5, at(0), at(10)}, {"b", 5, at(11), at(20)}}); err == nil {
		t.Fatal("equal token not caught")
	}
}
