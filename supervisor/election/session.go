package election

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/lifeboat/lifeboat/supervisor/consul"
)

// session is one Consul session of this node with the agent TTL check it
// depends on, and the heartbeat that keeps both alive.
type session struct {
	id        string
	serviceID string // the service carrying the TTL check, and the check's id

	lastOK   atomic.Int64 // unix nanos at which the last good heartbeat was sent
	gone     chan struct{}
	goneOnce sync.Once
	stop     context.CancelFunc
	done     chan struct{}
}

func (s *session) lastRenew() time.Time { return time.Unix(0, s.lastOK.Load()) }

// markGone records that Consul no longer knows the session.
func (s *session) markGone() { s.goneOnce.Do(func() { close(s.gone) }) }

func (s *session) isGone() bool {
	select {
	case <-s.gone:
		return true
	default:
		return false
	}
}

// ServiceName is the Consul service under which every node's election
// check is registered.
const ServiceName = "lifeboat-election"

// reapAfter is how long Consul keeps a critical election check (and its
// service) of a run that died before the agent removes both; the check's
// session is invalid from the moment it went critical. Consul's minimum.
const reapAfter = time.Minute

// servicePrefix starts the ids of the agent services (one per session)
// whose TTL check this node's sessions depend on. The check hangs on a
// service, not on the node: a critical node check would fail every
// service on a shared agent until the same node ran again. Each session
// gets a fresh service (prefix + random suffix): an agent restores the
// last state of a re-registered TTL check, and a critical check left by a
// crashed run would refuse the new session. The key (which holds "/", not
// allowed in an id) is in the prefix as a hash, the node id as itself with
// anything but letters, digits, '.', '-' and '_' replaced: for people
// reading the agent's list. Which services are this node's, ownService
// decides.
func (e *Elector) servicePrefix() string {
	node := strings.Map(func(r rune) rune {
		if r == '.' || r == '-' || r == '_' || 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' {
			return r
		}
		return '_'
	}, e.opts.NodeID)
	sum := sha256.Sum256([]byte(e.opts.Key))
	return ServiceName + "-" + hex.EncodeToString(sum[:4]) + "-" + node + "-"
}

// ownService reports whether svc is an election service of this node and
// key: by its meta, since node ids may hold the id's separator ("db" and
// "db-replica") and the id's form of a node id is not unique.
func (e *Elector) ownService(svc *api.AgentService) bool {
	return svc.Service == ServiceName && svc.Meta["key"] == e.opts.Key && svc.Meta["node"] == e.opts.NodeID
}

// dropStale deregisters the election services (and so their checks) an
// earlier run of this node left on the agent. A node id is unique in the
// cluster, so their sessions belong to runs that are dead: dropping the
// check frees a lock such a run still held, after lock_delay, instead of
// after ttl.
func (e *Elector) dropStale(ctx context.Context) error {
	services, err := e.client.Agent().ServicesWithFilterOpts(fmt.Sprintf("Service == %q", ServiceName), (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("list the Consul agent's services: %w", err)
	}
	for id, svc := range services {
		if e.ownService(svc) {
			if err := e.client.Agent().ServiceDeregisterOpts(id, (&api.QueryOptions{}).WithContext(ctx)); err != nil {
				return fmt.Errorf("deregister stale election service %q: %w", id, err)
			}
			e.log.Info("election: removed a check left by an earlier run of this node", "service", id)
		}
	}
	return nil
}

// openSession registers the service with its TTL check (passing) and
// creates a session bound to that check alone, then starts the heartbeat.
func (e *Elector) openSession(ctx context.Context) (*session, error) {
	t0 := time.Now()
	var rnd [6]byte
	rand.Read(rnd[:])
	serviceID := e.servicePrefix() + hex.EncodeToString(rnd[:])
	reg := &api.AgentServiceRegistration{
		ID:   serviceID,
		Name: ServiceName,
		Meta: map[string]string{"key": e.opts.Key, "node": e.opts.NodeID},
		Check: &api.AgentServiceCheck{
			CheckID:                        serviceID,
			Name:                           "lifeboat election " + e.opts.NodeID,
			Notes:                          "lifeboat refreshes this check with its election session; when it goes critical the session and its lock are released",
			TTL:                            e.opts.TTL.String(),
			Status:                         api.HealthPassing,
			DeregisterCriticalServiceAfter: reapAfter.String(),
		},
	}
	cctx, cancel := context.WithTimeout(ctx, e.requestTimeout())
	defer cancel()
	if err := e.dropStale(cctx); err != nil {
		return nil, err
	}
	if err := e.client.Agent().ServiceRegisterOpts(reg, api.ServiceRegisterOpts{}.WithContext(cctx)); err != nil {
		return nil, fmt.Errorf("register election check %q with the Consul agent: %w", serviceID, err)
	}
	// consul/api's Session.Create cannot send a lock delay of 0 and
	// CreateNoChecks cannot name a check, so the body is written here.
	body := map[string]any{
		"Name":          "lifeboat election " + e.opts.Key + " " + e.opts.NodeID,
		"TTL":           e.opts.TTL.String(),
		"LockDelay":     fmt.Sprintf("%dms", e.opts.LockDelay.Milliseconds()),
		"Behavior":      api.SessionBehaviorRelease,
		"NodeChecks":    []string{},
		"ServiceChecks": []api.ServiceCheck{{ID: serviceID}},
	}
	var out struct{ ID string }
	if _, err := e.client.Raw().Write("/v1/session/create", body, &out, (&api.WriteOptions{}).WithContext(cctx)); err != nil {
		e.deregister(serviceID)
		return nil, fmt.Errorf("create Consul session for election key %q: %w", e.opts.Key, err)
	}
	if out.ID == "" {
		e.deregister(serviceID)
		return nil, fmt.Errorf("create Consul session for election key %q: empty session id", e.opts.Key)
	}
	s := &session{id: out.ID, serviceID: serviceID, gone: make(chan struct{}), done: make(chan struct{})}
	s.lastOK.Store(t0.UnixNano())
	hctx, stop := context.WithCancel(context.Background())
	s.stop = stop
	go func() {
		defer close(s.done)
		e.heartbeat(hctx, s)
	}()
	e.log.Debug("election session created", "session", s.id, "check", serviceID)
	return s, nil
}

// deregister removes an election service and its check, best-effort.
func (e *Elector) deregister(serviceID string) {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	if err := e.client.Agent().ServiceDeregisterOpts(serviceID, (&api.QueryOptions{}).WithContext(ctx)); err != nil {
		e.log.Debug("election: deregistering the check failed", "service", serviceID, "error", err)
	}
}

// heartbeatInterval fits heartbeatsPerDemote renewals into demote_after.
func (e *Elector) heartbeatInterval() time.Duration {
	return e.opts.DemoteAfter / heartbeatsPerDemote
}

// requestTimeout bounds one request to the agent so that a hung agent is
// noticed well before demote_after.
func (e *Elector) requestTimeout() time.Duration {
	return e.heartbeatInterval()
}

// heartbeat refreshes the check and renews the session every interval
// until ctx ends or Consul says the session is gone. A heartbeat counts
// only when both succeeded, from the moment it was sent: Consul's timers
// restart no earlier than that.
func (e *Elector) heartbeat(ctx context.Context, s *session) {
	tick := time.NewTicker(e.heartbeatInterval())
	defer tick.Stop()
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		t0 := time.Now()
		err := e.renew(ctx, s)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errSessionGone) {
			e.log.Warn("election session is gone from Consul", "session", s.id, "error", err)
			e.m.renewFailures.Inc()
			s.markGone()
			return
		}
		if err != nil {
			failures++
			e.m.renewFailures.Inc()
			e.setError(err)
			if failures == 1 || failures%10 == 0 {
				e.log.Warn("election session renewal failed", "session", s.id, "failures", failures, "since_last_renewal", time.Since(s.lastRenew()).Round(time.Millisecond).String(), "error", err)
			}
			continue
		}
		if failures > 0 {
			e.log.Info("election session renewed again", "session", s.id, "after_failures", failures)
			e.setError(nil)
		}
		failures = 0
		s.lastOK.Store(t0.UnixNano())
		e.m.lastRenew.Set(float64(t0.UnixNano()) / 1e9)
	}
}

var errSessionGone = errors.New("session no longer exists")

// renew refreshes the check, then the session.
func (e *Elector) renew(ctx context.Context, s *session) error {
	cctx, cancel := context.WithTimeout(ctx, e.requestTimeout())
	defer cancel()
	if err := e.client.Agent().UpdateTTLOpts(s.serviceID, "", api.HealthPassing, (&api.QueryOptions{}).WithContext(cctx)); err != nil {
		if consul.IsUnknownCheck(err) {
			// The agent forgot the check (restarted without state): the
			// session depending on it is invalid or about to be.
			return fmt.Errorf("%w: agent does not know check %q: %v", errSessionGone, s.serviceID, err)
		}
		return fmt.Errorf("refresh election check %q: %w", s.serviceID, err)
	}
	entry, _, err := e.client.Session().Renew(s.id, (&api.WriteOptions{}).WithContext(cctx))
	if err != nil {
		return fmt.Errorf("renew election session: %w", err)
	}
	if entry == nil {
		return fmt.Errorf("%w: Consul does not know session %s", errSessionGone, s.id)
	}
	return nil
}

// closeSession stops the heartbeat and gives the session up: releases
// the key if it holds it (at once, no lock_delay), destroys the session
// and deregisters the check's service. Each request is best-effort and
// bounded: an unreachable Consul expires them anyway.
func (e *Elector) closeSession(s *session) {
	s.stop()
	<-s.done
	kv := e.client.KV()
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	if _, _, err := kv.Release(&api.KVPair{Key: e.opts.Key, Value: e.value, Session: s.id}, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		e.log.Debug("election: release of the key failed", "error", err)
	}
	cancel()
	ctx, cancel = context.WithTimeout(context.Background(), cleanupTimeout)
	if _, err := e.client.Session().Destroy(s.id, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		e.log.Debug("election: destroying the session failed; it expires after its TTL", "session", s.id, "error", err)
	}
	cancel()
	e.deregister(s.serviceID)
}
