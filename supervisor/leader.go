package supervisor

// The supervisor's side of the election: the election block mapped to an
// elector; the elect phase learns the current leader before the restore;
// the node competes once the app runs (so on_leader and on_follower act on
// a running app); the role goes to the service registration and to the
// backups (only_leader, fencing token); at shutdown, after the final
// backup, the lock is released so a follower takes over at once.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/lifeboat/lifeboat/hooks"
	"github.com/lifeboat/lifeboat/supervisor/config"
	"github.com/lifeboat/lifeboat/supervisor/election"
	"golang.org/x/sys/unix"
)

// EnvNode names this node in the election (default: the hostname). Every
// replica needs its own: two lifeboats with one node id would take each
// other's election checks for leftovers of a dead run.
const EnvNode = "LIFEBOAT_NODE"

// leaderReleaseTimeout bounds Release at shutdown; Consul frees the lock
// after ttl anyway.
const leaderReleaseTimeout = 10 * time.Second

// electReadTimeout bounds the elect phase's read of the current leader.
const electReadTimeout = 10 * time.Second

// leaderPart is the elector and the goroutine that runs it.
type leaderPart struct {
	wg sync.WaitGroup

	mu      sync.Mutex
	e       *election.Elector // set in the elect phase; status reads it from the control socket
	initial string            // the leader the elect phase saw, until the elector knows better
	known   bool              // the elector has reported a role
}

// elector is the elector; nil without an election block or before the
// elect phase.
func (s *Supervisor) elector() *election.Elector {
	s.elect.mu.Lock()
	defer s.elect.mu.Unlock()
	return s.elect.e
}

// leaderAddr is the template function leader's source.
func (s *Supervisor) leaderAddr() string {
	s.elect.mu.Lock()
	e, initial, known := s.elect.e, s.elect.initial, s.elect.known
	s.elect.mu.Unlock()
	if !known {
		return initial
	}
	return e.LeaderAddr()
}

// electLeader is the elect phase: build the elector and learn who leads
// now. This node competes only once its app runs (serveLeader).
func (s *Supervisor) electLeader(ctx context.Context) error {
	ec := s.cfg.Election
	if ec == nil {
		return nil
	}
	done := s.phaseStart(PhaseElect)
	err := s.newElector(ctx)
	done(err)
	return err
}

func (s *Supervisor) newElector(ctx context.Context) error {
	ec := s.cfg.Election
	cl, err := s.consulClient()
	if err != nil {
		return err
	}
	e, err := election.New(election.Options{
		Client:         cl,
		Key:            ec.Key,
		TTL:            config.Dur(ec.TTL),
		LockDelay:      config.Dur(ec.LockDelay),
		DemoteAfter:    config.Dur(ec.DemoteAfter),
		NodeID:         os.Getenv(EnvNode),
		Advertise:      ec.Advertise,
		Port:           ec.Port,
		Hooks:          electionHooks{s},
		OnDemoteFailed: s.demoteFailed,
		Logger:         s.log,
		Registerer:     s.registry,
	})
	if err != nil {
		return usageError{err}
	}
	o := e.Options()
	if h := config.FindHook(ec.Hooks, election.HookOnDemote); h != nil {
		if budget := o.DemoteBudget(); hookTimeout(h) > budget {
			s.log.Warn("election: on_demote may run longer than a demoted leader has before another node can lead; it will be cut off and the app stopped",
				"timeout", hookTimeout(h).String(), "budget", budget.String())
		}
	}
	s.elect.mu.Lock()
	s.elect.e = e
	s.elect.mu.Unlock()
	s.setBackupRole(e.IsLeader, e.FencingToken)
	e.OnRole(func(c election.Change) {
		s.elect.mu.Lock()
		s.elect.known = true
		s.elect.mu.Unlock()
		s.setServiceRole(string(c.Role))
		s.leaderChanged()
	})
	s.setLeaderSource(s.leaderAddr)

	// Bounded: a hung agent must not hold the start; the elector retries.
	rctx, cancel := context.WithTimeout(ctx, electReadTimeout)
	defer cancel()
	l, token, ok, err := election.CurrentLeader(rctx, cl, o.Key)
	switch {
	case err != nil:
		// Not fatal: the restore does not depend on it (one lineage per
		// cluster), and the elector retries once the app runs.
		s.log.Warn("election: cannot read the current leader yet", "error", err)
	case ok:
		s.elect.mu.Lock()
		s.elect.initial = l.Addr()
		s.elect.mu.Unlock()
		s.log.Info("election: current leader", "leader", l.Addr(), "leader_node", l.Node, "fencing_token", token, "node", o.NodeID)
	default:
		s.log.Info("election: no leader yet", "node", o.NodeID)
	}
	return nil
}

func hookTimeout(h *config.Hook) time.Duration {
	if d := config.Dur(h.Timeout); d > 0 {
		return d
	}
	return hooks.DefaultTimeout
}

// serveLeader starts competing once the app runs.
func (s *Supervisor) serveLeader() {
	e := s.elector()
	if e == nil {
		return
	}
	s.elect.wg.Add(1)
	go func() {
		defer s.elect.wg.Done()
		// No context of its own to cancel: releaseLeader's Release stops Run.
		if err := e.Run(context.Background()); err != nil && !errors.Is(err, election.ErrReleased) && !errors.Is(err, context.Canceled) {
			s.log.Error("election stopped", "error", err)
		}
	}()
}

// releaseLeader hands the lock over: after the app stopped and the final
// backup, before the service is deregistered.
func (s *Supervisor) releaseLeader() {
	e := s.elector()
	if e == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), leaderReleaseTimeout)
	defer cancel()
	if err := e.Release(ctx); err != nil {
		s.log.Warn("election: release is slow; the lock is released when the election stops", "error", err)
	}
	s.elect.wg.Wait()
}

// demoteFailed: on_demote could not fence the app in time, so lifeboat
// stops it rather than risk two primaries. The container ends; the
// scheduler starts a new one as a follower.
func (s *Supervisor) demoteFailed(err error) {
	s.log.Error("election: stopping the app because it could not be demoted in time", "error", err)
	s.requestShutdown()
	if s.app != nil {
		s.app.Stop(unix.SIGTERM)
	}
}

// leaderStatus is the election section of the status; nil without one.
func (s *Supervisor) leaderStatus() *election.Status {
	e := s.elector()
	if e == nil {
		return nil
	}
	st := e.Status()
	return &st
}

// electionHooks runs election.hook blocks through the hook runner with
// the reaper as starter.
type electionHooks struct{ s *Supervisor }

func (h electionHooks) Run(ctx context.Context, name string, env map[string]string) error {
	s := h.s
	hk := config.FindHook(s.cfg.Election.Hooks, name)
	if hk == nil {
		return nil
	}
	if s.cfg.Data != nil && s.cfg.Data.Path != "" {
		env[hooks.VarData] = s.cfg.Data.Path
	}
	if _, err := s.runConfigHook(ctx, hk, env); err != nil {
		return fmt.Errorf("election hook %s: %w", name, err)
	}
	return nil
}
