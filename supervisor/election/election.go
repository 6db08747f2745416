// Package election elects one primary among lifeboat replicas through a
// Consul session lock, gives every term a fencing token, and runs the role
// transition hooks (on_leader, on_follower, on_demote).
//
// The lock is Consul's own: a session with a TTL acquires a KV key
// (consul/api's Session and KV.Acquire/Release); Consul's Raft decides who
// holds it. What this package adds on top of those primitives is the part a
// client must get right for "never two primaries":
//
//   - Each node's session is bound to an agent TTL check that the node
//     refreshes together with the session. When lifeboat dies, the check
//     goes critical after one ttl and Consul invalidates the session at once
//     (a bare session TTL would hold the lock for 2×ttl, Consul's grace).
//   - A leader that has not renewed both for demote_after (default ttl/2)
//     demotes itself. The earliest any other node can acquire the lock is
//     ttl + lock_delay after the last renewal that reached Consul (2×ttl +
//     lock_delay when the leader's agent is gone), so the old leader has
//     stopped acting as primary — on_demote done — before a new one starts.
//   - Fencing tokens are the Raft index of the write that acquired the key
//     (its ModifyIndex): strictly increasing from term to term for the life
//     of the Consul cluster's data.
//   - Followers poll the key every 100 ms while Consul's lock_delay keeps
//     a freed lock closed (consul/api's Lock waits 5 s there), so a new
//     leader takes over within milliseconds of lock_delay ending.
//   - Release hands the lock over at once: it releases the key (no
//     lock_delay applies to a release) before destroying the session.
package election

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/lifeboat/lifeboat/hooks"
	"github.com/prometheus/client_golang/prometheus"
)

// Defaults and limits.
const (
	DefaultKey       = "lifeboat/leader"
	DefaultTTL       = 10 * time.Second
	MinTTL           = 10 * time.Second // Consul's minimum session TTL
	DefaultLockDelay = time.Second
	// DefaultDemoteAfterDivisor makes demote_after ttl/2 when not set.
	DefaultDemoteAfterDivisor = 2
	// heartbeatsPerDemote is how many renewals fit into demote_after, so
	// one or two slow or lost requests do not demote a healthy leader.
	heartbeatsPerDemote = 3
	// lockDelayPoll is how often a follower retries while lock_delay keeps
	// a freed lock closed.
	lockDelayPoll = 100 * time.Millisecond
	// watchWait is the wait time of the blocking query on the key.
	watchWait = 30 * time.Second
	// retryInitial and retryMax bound the backoff while Consul is unreachable.
	retryInitial = 250 * time.Millisecond
	retryMax     = 5 * time.Second
	// cleanupTimeout bounds each best-effort request that gives up a
	// session (release, destroy, check deregistration).
	cleanupTimeout = 2 * time.Second
	// demoteMargin is kept between the end of on_demote and the earliest
	// moment Consul could let another node take the lock.
	demoteMargin = 500 * time.Millisecond
)

// Hook names.
const (
	HookOnLeader   = "on_leader"
	HookOnFollower = "on_follower"
	HookOnDemote   = "on_demote"
)

// Variables each hook gets (besides what the hook runner adds).
const (
	VarPhase        = hooks.VarPhase             // "election"
	VarRole         = hooks.VarRole              // the role the node has after the transition
	VarLeader       = hooks.VarLeader            // the leader's advertised host:port
	VarLeaderNode   = "LIFEBOAT_LEADER_NODE"     // the leader's node id
	VarFencingToken = hooks.VarFencingToken      // the term's fencing token
	VarNode         = "LIFEBOAT_NODE"            // this node's id
	VarPrevLeader   = "LIFEBOAT_PREVIOUS_LEADER" // on_follower: the leader before, "" at first
)

// Role is what a node is in the election.
type Role string

// Roles.
const (
	// RoleCandidate: no leader is known or this node is between terms
	// (starting, lock free, Consul unreachable, just demoted, stopped).
	RoleCandidate Role = "candidate"
	RoleFollower  Role = "follower"
	RoleLeader    Role = "leader"
)

// ErrReleased is returned by Run after Release.
var ErrReleased = errors.New("election: leadership released")

// HookRunner runs the transition hook called name (on_leader, on_follower,
// on_demote) with the given LIFEBOAT_* variables. A hook that is not
// configured must return nil. It must honour ctx: the elector bounds
// on_leader by the leadership and on_demote by the time left before Consul
// could give the lock to another node.
type HookRunner interface {
	Run(ctx context.Context, name string, env map[string]string) error
}

// Options configure an Elector.
type Options struct {
	Client      *api.Client   // required
	Key         string        // KV key of the lock; DefaultKey
	TTL         time.Duration // session and check TTL; DefaultTTL, at least MinTTL
	LockDelay   time.Duration // Consul lock-delay after an invalidation; DefaultLockDelay; <0 means 0
	DemoteAfter time.Duration // self-demotion after this long without renewal; TTL/2, must be < TTL
	NodeID      string        // this node's id in the leader value; the hostname
	Advertise   string        // address others reach this node at; first non-loopback IP, else NodeID
	Port        int           // port advertised with the address; 0 for none
	Hooks       HookRunner    // nil: no hooks
	// OnDemoteFailed is called when on_demote failed or did not finish in
	// the time left before another node could lead: the app may still act
	// as primary, and the caller should stop it. Nil: only logged.
	OnDemoteFailed func(error)
	Logger         *slog.Logger
	Registerer     prometheus.Registerer // nil: no metrics
}

// Leader names the node holding the lock; it is the key's JSON value.
type Leader struct {
	Node    string `json:"node"`
	Address string `json:"address"`
	Port    int    `json:"port,omitempty"`
}

// Addr is the leader's address as host:port (just the host without a port).
func (l Leader) Addr() string {
	if l.Address == "" {
		return ""
	}
	if l.Port == 0 {
		return l.Address
	}
	return net.JoinHostPort(l.Address, strconv.Itoa(l.Port))
}

// Change is a role change handed to observers.
type Change struct {
	Role         Role
	Leader       Leader // the leader now; zero when unknown
	FencingToken uint64 // the leader's term; 0 when no leader is known
}

// Status is the election's state for `lifeboat status`.
type Status struct {
	Role           Role      `json:"role"`
	Node           string    `json:"node"`
	Key            string    `json:"key"`
	Leader         string    `json:"leader,omitempty"`
	LeaderNode     string    `json:"leader_node,omitempty"`
	FencingToken   uint64    `json:"fencing_token,omitempty"`
	Since          time.Time `json:"since"`
	Session        string    `json:"session,omitempty"`
	SessionHealthy bool      `json:"session_healthy"`
	LastRenew      time.Time `json:"last_renew,omitempty"`
	Transition     string    `json:"transition,omitempty"` // the hook running now
	Terms          int       `json:"terms"`                // times this node became leader
	SelfDemotions  int       `json:"self_demotions"`
	LastError      string    `json:"last_error,omitempty"`
}

// Elector takes part in one election. Run it once; Release it at the end.
type Elector struct {
	opts   Options
	log    *slog.Logger
	m      *metrics
	client *api.Client
	value  []byte // this node's Leader as JSON

	mu        sync.Mutex
	observers []func(Change)
	st        Status
	cancelRun context.CancelFunc
	running   bool
	released  bool
	runDone   chan struct{}
	sess      *session // the session of the running loop; nil between sessions
}

// New checks opts, fills defaults and returns an Elector.
func New(opts Options) (*Elector, error) {
	if opts.Client == nil {
		return nil, errors.New("election: no Consul client")
	}
	if opts.Key == "" {
		opts.Key = DefaultKey
	}
	if opts.TTL == 0 {
		opts.TTL = DefaultTTL
	}
	if opts.TTL < MinTTL {
		return nil, fmt.Errorf("election: ttl %s is shorter than Consul's minimum %s", opts.TTL, MinTTL)
	}
	if opts.LockDelay == 0 {
		opts.LockDelay = DefaultLockDelay
	} else if opts.LockDelay < 0 {
		opts.LockDelay = 0
	}
	if opts.DemoteAfter == 0 {
		opts.DemoteAfter = opts.TTL / DefaultDemoteAfterDivisor
	}
	if opts.DemoteAfter >= opts.TTL {
		return nil, fmt.Errorf("election: demote_after %s must be shorter than ttl %s, or a leader could still act after Consul freed its lock", opts.DemoteAfter, opts.TTL)
	}
	if opts.NodeID == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			return nil, fmt.Errorf("election: no node id given and no hostname: %v", err)
		}
		opts.NodeID = h
	}
	if opts.Advertise == "" {
		opts.Advertise = defaultAdvertise(opts.NodeID)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	value, err := json.Marshal(Leader{Node: opts.NodeID, Address: opts.Advertise, Port: opts.Port})
	if err != nil {
		return nil, err
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, fmt.Errorf("election: metrics: %w", err)
	}
	e := &Elector{
		opts:   opts,
		log:    opts.Logger.With("part", "election", "key", opts.Key),
		m:      m,
		client: opts.Client,
		value:  value,
	}
	e.st = Status{Role: RoleCandidate, Node: opts.NodeID, Key: opts.Key, Since: time.Now()}
	return e, nil
}

// defaultAdvertise is the first non-loopback IP address of the host, or
// fallback when there is none.
func defaultAdvertise(fallback string) string {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return fallback
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && !ipn.IP.IsLoopback() && ipn.IP.To4() != nil {
			return ipn.IP.String()
		}
	}
	return fallback
}

// DemoteBudget is how long on_demote may run after the last renewal before
// Consul could let another node take the lock, less a margin. on_demote
// itself starts demote_after after that renewal at the latest.
func (o Options) DemoteBudget() time.Duration {
	return o.TTL + o.LockDelay - demoteMargin - o.DemoteAfter
}

// Options returns the options with defaults filled in.
func (e *Elector) Options() Options { return e.opts }

// OnRole registers fn to be called on every role or leader change, in
// order, from the elector's goroutine. fn must return quickly (hand slow
// work to a goroutine of its own). Register before Run.
func (e *Elector) OnRole(fn func(Change)) {
	e.mu.Lock()
	e.observers = append(e.observers, fn)
	e.mu.Unlock()
}

// Status returns a copy of the current state.
func (e *Elector) Status() Status {
	e.mu.Lock()
	defer e.mu.Unlock()
	st := e.st
	if e.sess != nil {
		st.Session = e.sess.id
		last := e.sess.lastRenew()
		st.LastRenew = last
		st.SessionHealthy = !e.sess.isGone() && time.Since(last) < e.opts.DemoteAfter
	}
	return st
}

// Role is the current role.
func (e *Elector) Role() Role {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.st.Role
}

// IsLeader reports whether this node is the announced leader (on_leader
// done, leadership not lost since).
func (e *Elector) IsLeader() bool { return e.Role() == RoleLeader }

// FencingToken is this node's term token while it is the leader, else 0.
// A backup taken as leader records it; a token lower than one already in
// the store comes from a stale leader.
func (e *Elector) FencingToken() uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.st.Role != RoleLeader {
		return 0
	}
	return e.st.FencingToken
}

// LeaderAddr is the known leader's host:port ("" when none is known); it
// is this node's own address while it leads.
func (e *Elector) LeaderAddr() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.st.Leader
}

// setRole records a role change and tells the observers.
func (e *Elector) setRole(role Role, l Leader, token uint64) {
	e.mu.Lock()
	changed := e.st.Role != role || e.st.Leader != l.Addr() || e.st.LeaderNode != l.Node || e.st.FencingToken != token
	if !changed {
		e.mu.Unlock()
		return
	}
	if e.st.Role != role {
		e.st.Since = time.Now()
	}
	e.st.Role, e.st.Leader, e.st.LeaderNode, e.st.FencingToken = role, l.Addr(), l.Node, token
	obs := append([]func(Change){}, e.observers...)
	e.mu.Unlock()
	e.m.role(role, token)
	e.log.Info("election role", "role", string(role), "leader", l.Addr(), "leader_node", l.Node, "fencing_token", token)
	c := Change{Role: role, Leader: l, FencingToken: token}
	for _, fn := range obs {
		fn(c)
	}
}

func (e *Elector) setError(err error) {
	e.mu.Lock()
	if err == nil {
		e.st.LastError = ""
	} else {
		e.st.LastError = err.Error()
	}
	e.mu.Unlock()
}

func (e *Elector) setTransition(name string) {
	e.mu.Lock()
	e.st.Transition = name
	e.mu.Unlock()
}

// CurrentLeader reads who holds key now, without taking part: for the
// elect phase before this node competes. ok is false when nobody holds it.
func CurrentLeader(ctx context.Context, client *api.Client, key string) (l Leader, token uint64, ok bool, err error) {
	if key == "" {
		key = DefaultKey
	}
	pair, _, err := client.KV().Get(key, (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err != nil {
		return Leader{}, 0, false, fmt.Errorf("election: read leader key %q: %w", key, err)
	}
	if pair == nil || pair.Session == "" {
		return Leader{}, 0, false, nil
	}
	return parseLeader(pair), pair.ModifyIndex, true, nil
}

// parseLeader reads a key's value; a value that is not ours still names
// the session so a follower sees the leader change.
func parseLeader(pair *api.KVPair) Leader {
	var l Leader
	if err := json.Unmarshal(pair.Value, &l); err != nil || l.Node == "" {
		l = Leader{Node: "session:" + pair.Session}
	}
	return l
}
