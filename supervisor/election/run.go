package election

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
)

// Run takes part in the election until ctx ends or Release is called. It
// returns ErrReleased after Release. When ctx ends without Release, Run
// stops renewing and leaves the session to expire, as a crash would: the
// lock passes on after ttl + lock_delay. Call Release for a handover.
func (e *Elector) Run(ctx context.Context) error {
	e.mu.Lock()
	if e.running || e.released {
		e.mu.Unlock()
		return errors.New("election: Run may be called once, and not after Release")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	e.running, e.cancelRun, e.runDone = true, cancel, make(chan struct{})
	done := e.runDone
	e.mu.Unlock()
	defer close(done)

	e.warnServerAgent(ctx)
	backoff := retryInitial
	for ctx.Err() == nil {
		s, err := e.openSession(ctx)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			e.setError(err)
			e.log.Warn("election: cannot open a session; retrying", "in", backoff.String(), "error", err)
			if !sleepCtx(ctx, backoff) {
				break
			}
			backoff = min(2*backoff, retryMax)
			continue
		}
		backoff = retryInitial
		e.mu.Lock()
		e.sess = s
		e.mu.Unlock()
		sitOut := e.serve(ctx, s)
		if ctx.Err() != nil {
			break // keep e.sess: given up below after Release, else left to expire as after a crash
		}
		e.closeSession(s)
		e.mu.Lock()
		e.sess = nil
		e.mu.Unlock()
		if sitOut {
			// on_leader failed here: give the others a term before
			// competing again.
			e.log.Warn("election: sitting out one ttl after a failed promotion", "ttl", e.opts.TTL.String())
			sleepCtx(ctx, e.opts.TTL)
		}
	}
	// Stopped: no longer renewing, so no longer the leader. After Release
	// the session is given up here, not left to Release: a Release that
	// stopped waiting for Run (its context ended) would otherwise leave
	// the lock held until the session's ttl.
	e.mu.Lock()
	s, released := e.sess, e.released
	if released {
		e.sess = nil
	} else if s != nil {
		s.stop()
	}
	e.mu.Unlock()
	e.setRole(RoleCandidate, Leader{}, 0)
	if released {
		e.giveUp(s)
		return ErrReleased
	}
	return ctx.Err()
}

// giveUp releases the key and closes the session, if there is one.
func (e *Elector) giveUp(s *session) {
	if s == nil {
		return
	}
	e.log.Info("election: releasing leadership", "session", s.id)
	e.closeSession(s)
	e.log.Info("election: leadership released", "session", s.id)
}

// warnServerAgent warns when the agent is a Consul server and lock_delay
// is shorter than demote_after: when a server dies, autopilot removes it
// and Consul destroys its sessions at once, so only lock_delay would keep
// another node from leading before this one has demoted itself.
func (e *Elector) warnServerAgent(ctx context.Context) {
	cctx, cancel := context.WithTimeout(ctx, e.requestTimeout())
	defer cancel()
	var self struct{ Config struct{ Server bool } }
	if _, err := e.client.Raw().Query("/v1/agent/self", &self, (&api.QueryOptions{}).WithContext(cctx)); err != nil {
		return
	}
	if self.Config.Server && e.opts.LockDelay < e.opts.DemoteAfter+demoteMargin {
		e.log.Warn("election: the Consul agent is a server; if it dies, Consul may free the lock after only lock_delay, before this node demotes itself. Use a client agent, or set election.lock_delay above demote_after",
			"lock_delay", e.opts.LockDelay.String(), "demote_after", e.opts.DemoteAfter.String())
	}
}

// Release ends this node's part in the election and hands the lock over
// at once: it stops Run, stops acting as leader (observers see
// RoleCandidate; on_demote is not run, the caller has stopped the app),
// releases the key so a follower can take it without waiting for
// lock_delay, destroys the session and deregisters its check. Call it
// after the app is stopped and the final backup is taken.
func (e *Elector) Release(ctx context.Context) error {
	e.mu.Lock()
	if e.released {
		e.mu.Unlock()
		return nil
	}
	e.released = true
	cancel, done, running := e.cancelRun, e.runDone, e.running
	e.mu.Unlock()
	if running {
		// Run gives the session up as it returns (unless it returned
		// before Release began; then e.sess is still set, below).
		cancel()
		select {
		case <-done:
		case <-ctx.Done():
			return fmt.Errorf("election: release: the election did not stop in time; it releases the lock when it does: %w", ctx.Err())
		}
	}
	e.setRole(RoleCandidate, Leader{}, 0)
	e.mu.Lock()
	s := e.sess
	e.sess = nil
	e.mu.Unlock()
	e.giveUp(s)
	return nil
}

// serve takes part with session s until s is lost or given up, or ctx
// ends. It returns true when this node should sit out before competing
// again.
func (e *Elector) serve(ctx context.Context, s *session) (sitOut bool) {
	wctx, stopWatch := context.WithCancel(ctx)
	w := e.startWatch(wctx)
	defer func() { stopWatch(); <-w.done }()

	leading := false
	var token uint64
	deadline := time.NewTimer(time.Hour)
	defer deadline.Stop()
	for {
		var deadlineC <-chan time.Time
		if leading {
			deadline.Reset(time.Until(s.lastRenew().Add(e.opts.DemoteAfter)))
			deadlineC = deadline.C
		}
		select {
		case <-ctx.Done():
			return false
		case <-s.gone:
			if leading {
				e.demote(s, token, "the session is gone from Consul")
			}
			return false
		case <-deadlineC:
			if time.Since(s.lastRenew()) >= e.opts.DemoteAfter {
				e.m.selfDemotions.Inc()
				e.mu.Lock()
				e.st.SelfDemotions++
				e.mu.Unlock()
				e.demote(s, token, fmt.Sprintf("no session renewal for %s (demote_after)", e.opts.DemoteAfter))
				return false
			}
		case <-w.changed:
			pair := w.latest()
			switch {
			case pair != nil && pair.Session == s.id:
				if !leading {
					var ok bool
					if ok, sitOut = e.lead(ctx, s, pair.ModifyIndex); !ok {
						return sitOut
					}
					leading, token = true, pair.ModifyIndex
				}
			case pair == nil || pair.Session == "":
				if leading {
					e.demote(s, token, "the lock is no longer held by this node's session")
					return false
				}
				t, err := e.acquire(ctx, s)
				if errors.Is(err, errSessionGone) {
					return false
				}
				if err != nil {
					e.setError(err)
					e.log.Warn("election: acquiring the lock failed", "error", err)
					continue
				}
				if t != 0 {
					var ok bool
					if ok, sitOut = e.lead(ctx, s, t); !ok {
						return sitOut
					}
					leading, token = true, t
				}
			default:
				if leading {
					e.demote(s, token, "another session holds the lock")
					return false
				}
				e.follow(ctx, parseLeader(pair), pair.ModifyIndex)
			}
		}
	}
}

// acquire tries to take the free lock. It returns the term's fencing
// token, or 0 when another node got the lock first. While Consul's
// lock_delay keeps the lock closed it retries every lockDelayPoll.
func (e *Elector) acquire(ctx context.Context, s *session) (uint64, error) {
	kv := e.client.KV()
	for {
		cctx, cancel := context.WithTimeout(ctx, e.requestTimeout())
		ok, _, err := kv.Acquire(&api.KVPair{Key: e.opts.Key, Value: e.value, Session: s.id}, (&api.WriteOptions{}).WithContext(cctx))
		cancel()
		if err != nil {
			if strings.Contains(err.Error(), "invalid session") {
				s.markGone()
				return 0, fmt.Errorf("%w: %v", errSessionGone, err)
			}
			return 0, fmt.Errorf("acquire election key %q: %w", e.opts.Key, err)
		}
		cctx, cancel = context.WithTimeout(ctx, e.requestTimeout())
		pair, _, err := kv.Get(e.opts.Key, (&api.QueryOptions{RequireConsistent: true}).WithContext(cctx))
		cancel()
		if err != nil {
			// When the acquire succeeded, the watch sees the key held by
			// this session and starts the term from there.
			return 0, fmt.Errorf("read election key %q: %w", e.opts.Key, err)
		}
		switch {
		case pair != nil && pair.Session == s.id:
			return pair.ModifyIndex, nil
		case ok:
			return 0, nil // acquired and lost at once; the watch tells the rest
		case pair != nil && pair.Session != "":
			return 0, nil // another node was first
		}
		// Free but not acquirable: lock_delay after an invalidation.
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-s.gone:
			return 0, errSessionGone
		case <-time.After(lockDelayPoll):
		}
	}
}

// lead starts a term: on_leader runs while the lease holds, then the node
// announces itself as leader. ok is false when the term did not start (the
// node demoted and should give up the session); sitOut when on_leader
// failed.
func (e *Elector) lead(ctx context.Context, s *session, token uint64) (ok, sitOut bool) {
	self := Leader{Node: e.opts.NodeID, Address: e.opts.Advertise, Port: e.opts.Port}
	e.log.Info("election: acquired the lock; promoting", "fencing_token", token)
	e.mu.Lock()
	e.st.Terms++
	e.mu.Unlock()
	lctx, cancel := e.leaseContext(ctx, s)
	err := e.runHook(lctx, HookOnLeader, e.hookEnv(RoleLeader, self, token, ""))
	lost := lctx.Err() != nil && ctx.Err() == nil
	cancel()
	if ctx.Err() != nil {
		return false, false
	}
	if lost {
		e.demote(s, token, "leadership lost while on_leader ran")
		return false, false
	}
	if err != nil {
		e.log.Error("election: on_leader failed; giving up the lock", "fencing_token", token, "error", err)
		e.demote(s, token, "on_leader failed")
		return false, true
	}
	e.setRole(RoleLeader, self, token)
	e.m.terms.Inc()
	return true, false
}

// demote ends this node's term: observers hear it is no longer leader at
// once, then on_demote fences the app, bounded by the time left before
// Consul could let another node acquire the lock.
func (e *Elector) demote(s *session, token uint64, reason string) {
	e.log.Warn("election: demoting", "reason", reason, "fencing_token", token)
	e.setRole(RoleCandidate, Leader{}, 0)
	// The earliest another node can take the lock: the check goes critical
	// ttl after the last refresh that reached the agent, then lock_delay.
	budget := s.lastRenew().Add(e.opts.TTL + e.opts.LockDelay - demoteMargin)
	ctx, cancel := context.WithDeadline(context.Background(), budget)
	err := e.runHook(ctx, HookOnDemote, e.hookEnv(RoleFollower, Leader{}, token, ""))
	cancel()
	if err != nil {
		err = fmt.Errorf("election: on_demote did not fence the app (term %d): %w", token, err)
		e.log.Error("election: demotion hook failed; the app may still act as primary", "error", err)
		e.setError(err)
		if e.opts.OnDemoteFailed != nil {
			e.opts.OnDemoteFailed(err)
		}
	}
}

// follow records the leader and runs on_follower when it is new.
func (e *Elector) follow(ctx context.Context, l Leader, token uint64) {
	e.mu.Lock()
	same := e.st.Role == RoleFollower && e.st.LeaderNode == l.Node && e.st.Leader == l.Addr() && e.st.FencingToken == token
	prev := e.st.Leader
	e.mu.Unlock()
	if same {
		return
	}
	e.setRole(RoleFollower, l, token)
	if err := e.runHook(ctx, HookOnFollower, e.hookEnv(RoleFollower, l, token, prev)); err != nil && ctx.Err() == nil {
		e.log.Error("election: on_follower failed", "leader", l.Addr(), "error", err)
		e.setError(fmt.Errorf("election: on_follower (leader %s): %w", l.Addr(), err))
	}
}

func (e *Elector) hookEnv(role Role, l Leader, token uint64, prev string) map[string]string {
	env := map[string]string{
		VarPhase:        "election",
		VarRole:         string(role),
		VarNode:         e.opts.NodeID,
		VarFencingToken: strconv.FormatUint(token, 10),
	}
	// Variables that do not apply are left unset (on_demote knows no leader).
	if a := l.Addr(); a != "" {
		env[VarLeader] = a
	}
	if l.Node != "" {
		env[VarLeaderNode] = l.Node
	}
	if prev != "" {
		env[VarPrevLeader] = prev
	}
	return env
}

// runHook runs one transition hook, recording it in status and metrics.
func (e *Elector) runHook(ctx context.Context, name string, env map[string]string) error {
	if e.opts.Hooks == nil {
		return nil
	}
	e.setTransition(name)
	t0 := time.Now()
	err := e.opts.Hooks.Run(ctx, name, env)
	e.setTransition("")
	e.m.hookDuration.WithLabelValues(name).Observe(time.Since(t0).Seconds())
	if err != nil {
		e.m.hookFailures.WithLabelValues(name).Inc()
	}
	return err
}

// leaseContext is cancelled when the lease of s ends: demote_after passed
// without renewal, or the session is gone.
func (e *Elector) leaseContext(parent context.Context, s *session) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(parent)
	go func() {
		t := time.NewTimer(time.Hour)
		defer t.Stop()
		for {
			left := time.Until(s.lastRenew().Add(e.opts.DemoteAfter))
			if left <= 0 {
				cancel()
				return
			}
			t.Reset(left)
			select {
			case <-ctx.Done():
				return
			case <-s.gone:
				cancel()
				return
			case <-t.C:
			}
		}
	}()
	return ctx, cancel
}

// keyWatch follows the lock key with blocking queries; the latest value
// wins, so a busy elector never falls behind.
type keyWatch struct {
	mu      sync.Mutex
	pair    *api.KVPair
	changed chan struct{}
	done    chan struct{}
}

func (w *keyWatch) latest() *api.KVPair {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.pair
}

func (e *Elector) startWatch(ctx context.Context) *keyWatch {
	w := &keyWatch{changed: make(chan struct{}, 1), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		var index uint64
		backoff := retryInitial
		for ctx.Err() == nil {
			qctx, cancel := context.WithTimeout(ctx, watchWait+watchWait/16+5*time.Second)
			pair, meta, err := e.client.KV().Get(e.opts.Key, (&api.QueryOptions{WaitIndex: index, WaitTime: watchWait}).WithContext(qctx))
			cancel()
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				e.setError(fmt.Errorf("election: watch key %q: %w", e.opts.Key, err))
				if !sleepCtx(ctx, backoff) {
					return
				}
				backoff = min(2*backoff, retryMax)
				continue
			}
			backoff = retryInitial
			if meta.LastIndex < index {
				index = 0 // Consul's index went backwards (restore, reset): start over
			} else {
				index = meta.LastIndex
			}
			w.mu.Lock()
			w.pair = pair
			w.mu.Unlock()
			select {
			case w.changed <- struct{}{}:
			default:
			}
		}
	}()
	return w
}

// sleepCtx waits d; false when ctx ended first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
