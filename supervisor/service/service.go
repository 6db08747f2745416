// Package service registers the app as a service with the local Consul
// agent and keeps that registration true while the app runs: lifeboat runs
// the health check itself (a command, an HTTP GET or a TCP connect) and
// reports each result to a TTL check; a role tag (primary/replica) follows
// the role the election hands in; maintenance mode can be switched on and
// off; the service is registered again when the agent forgot it (an agent
// restart) and deregistered when lifeboat stops.
//
// Running the check in lifeboat rather than in the agent means the agent
// needs no access to the app, a command check runs inside the container
// (under lifeboat's reaper), and a dead lifeboat turns the service critical
// by itself when the TTL runs out.
package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/lifeboat/lifeboat/hooks"
	"github.com/lifeboat/lifeboat/supervisor/consul"
	"github.com/prometheus/client_golang/prometheus"
)

// Roles SetRole understands, and the default tags for them.
const (
	RolePrimary = "primary"
	RoleReplica = "replica"

	DefaultPrimaryTag = "primary"
	DefaultReplicaTag = "replica"
)

// Defaults of Options.
const (
	// DefaultRetryInitial and DefaultRetryMax bound the backoff between
	// failed registrations and failed agent queries.
	DefaultRetryInitial = 500 * time.Millisecond
	DefaultRetryMax     = 10 * time.Second
	// DefaultWaitTime is how long one blocking query on the agent's view of
	// the service waits for a change.
	DefaultWaitTime = 5 * time.Minute
	// DefaultRequestTimeout bounds one non-blocking call to the agent.
	DefaultRequestTimeout = 10 * time.Second
	// DefaultMaintenanceReason is recorded when maintenance is enabled
	// without a reason.
	DefaultMaintenanceReason = "maintenance mode enabled through lifeboat"
	// queryGrace is added to a blocking query's client-side deadline: an
	// agent that has not answered well after WaitTime is hung.
	queryGrace = 5 * time.Second
)

// Options configure a Registration.
type Options struct {
	// Client talks to the local agent (supervisor/consul.NewClient).
	Client *api.Client
	// Name is the service name; required.
	Name string
	// ID is the service id; default NAME-HOSTNAME, so replicas that share
	// an agent do not overwrite each other.
	ID      string
	Port    int
	Address string // empty: the agent's address
	Tags    []string
	Meta    map[string]string
	// PrimaryTag and ReplicaTag are added to Tags for the current role;
	// defaults DefaultPrimaryTag, DefaultReplicaTag.
	PrimaryTag string
	ReplicaTag string
	// Check is the health check; nil registers the service without one
	// (Consul then counts it as passing).
	Check *Check
	// Starter starts a command check's process (process.CodeStarter);
	// required for a command check.
	Starter Starter

	Logger  *slog.Logger          // nil discards
	Metrics prometheus.Registerer // nil: metrics are kept but not exported

	RetryInitial   time.Duration // default DefaultRetryInitial
	RetryMax       time.Duration // default DefaultRetryMax
	WaitTime       time.Duration // default DefaultWaitTime
	RequestTimeout time.Duration // default DefaultRequestTimeout
}

// Registration is one service kept registered with the agent. Create it
// with New, run it with Run, stop it with Close.
type Registration struct {
	opts    Options
	id      string
	checkID string
	ttl     time.Duration
	checker *checker
	log     *slog.Logger
	m       *metrics

	closing context.Context // cancelled by Close; ends Run
	cancel  context.CancelFunc
	started atomic.Bool
	done    chan struct{} // closed when Run returns

	// reportMu orders check reports against Drain: a result of the check
	// loop is sent before Drain's critical one or not at all.
	reportMu sync.Mutex

	mu            sync.Mutex
	role          string // RolePrimary, RoleReplica or ""
	maint         bool
	maintReason   string
	draining      bool
	registered    bool // the agent has the service, as far as we know
	dirty         bool // the agent must be sent the registration (again)
	wake          context.CancelFunc
	last          *Result
	lastErr       string
	registrations int // sent and taken by the agent; > 0: Close deregisters
}

// New checks opts and prepares a Registration; it does not contact Consul.
func New(opts Options) (*Registration, error) {
	if opts.Client == nil {
		return nil, errors.New("service: no Consul client")
	}
	if opts.Name == "" {
		return nil, errors.New("service: name must not be empty")
	}
	if opts.ID == "" {
		host, err := os.Hostname()
		if err != nil || host == "" {
			host = "lifeboat"
		}
		opts.ID = opts.Name + "-" + host
	}
	if opts.PrimaryTag == "" {
		opts.PrimaryTag = DefaultPrimaryTag
	}
	if opts.ReplicaTag == "" {
		opts.ReplicaTag = DefaultReplicaTag
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.RetryInitial <= 0 {
		opts.RetryInitial = DefaultRetryInitial
	}
	if opts.RetryMax <= 0 {
		opts.RetryMax = DefaultRetryMax
	}
	if opts.WaitTime <= 0 {
		opts.WaitTime = DefaultWaitTime
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = DefaultRequestTimeout
	}
	r := &Registration{
		opts:    opts,
		id:      opts.ID,
		checkID: "service:" + opts.ID,
		log:     opts.Logger.With("service", opts.Name, "service_id", opts.ID),
		m:       newMetrics(opts.Metrics),
		done:    make(chan struct{}),
		dirty:   true,
	}
	if opts.Check != nil {
		ch, err := newChecker(*opts.Check, opts.Address, opts.Port, opts.Starter)
		if err != nil {
			return nil, fmt.Errorf("service %q: %w", opts.Name, err)
		}
		r.checker = ch
		// One missed report is forgiven; two mean lifeboat (or its check)
		// is stuck, and Consul turns the service critical by itself.
		r.ttl = 2*ch.check.Interval + ch.check.Timeout
	}
	r.closing, r.cancel = context.WithCancel(context.Background())
	return r, nil
}

// ID is the service id registered with the agent.
func (r *Registration) ID() string { return r.id }

// CheckID is the id of the TTL check, "service:ID".
func (r *Registration) CheckID() string { return r.checkID }

// Run registers the service and keeps it registered until ctx ends or
// Close is called: it runs the check on its interval and reports it,
// follows role and maintenance changes, and registers again (with
// backoff) when the agent forgot the service. It returns ctx's error, or
// nil after Close.
func (r *Registration) Run(ctx context.Context) error {
	if !r.started.CompareAndSwap(false, true) {
		return errors.New("service: Run called twice")
	}
	defer close(r.done)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(r.closing, cancel)
	defer stop()

	var wg sync.WaitGroup
	if r.checker != nil {
		wg.Add(1)
		go func() { defer wg.Done(); r.checkLoop(ctx) }()
	}
	r.keep(ctx)
	wg.Wait()
	if r.closing.Err() != nil {
		return nil
	}
	return ctx.Err()
}

// Close stops Run and deregisters the service (and its check) from the
// agent. The agent not knowing the service any more is no error.
func (r *Registration) Close(ctx context.Context) error {
	r.cancel()
	if r.started.Load() {
		select {
		case <-r.done:
		case <-ctx.Done():
			return fmt.Errorf("service %s: stopping: %w", r.id, ctx.Err())
		}
	}
	r.mu.Lock()
	ever := r.registrations > 0
	r.registered = false
	r.mu.Unlock()
	r.m.registered.Set(0)
	if !ever {
		return nil
	}
	err := r.opts.Client.Agent().ServiceDeregisterOpts(r.id, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil && !consul.IsNotFound(err) {
		return fmt.Errorf("service %s: deregistering from the Consul agent: %w", r.id, err)
	}
	r.log.Info("service deregistered")
	return nil
}

// SetRole sets the role whose tag the service carries: RolePrimary
// ("primary", also the election's "leader"), RoleReplica ("replica", also
// "follower"), or no role tag for "" and anything else (the election's
// "candidate": between terms, or demoted). Dropping the tag for an
// unknown role is the safe side: a node that is not sure it leads must
// not look like the primary. The agent is told at once.
func (r *Registration) SetRole(role string) {
	switch strings.ToLower(role) {
	case RolePrimary, "leader":
		role = RolePrimary
	case RoleReplica, "follower":
		role = RoleReplica
	case "", "candidate":
		role = ""
	default:
		r.log.Warn("unknown role for the service tag; the service carries no role tag", "role", role)
		role = ""
	}
	r.mu.Lock()
	changed := r.role != role
	r.role = role
	r.mu.Unlock()
	r.m.setRole(role)
	if changed {
		r.log.Info("service role changed", "role", role)
		r.kick()
	}
}

// Drain marks the service critical at once (output "lifeboat is shutting
// down: REASON") and stops reporting check results, so clients stop
// using the instance before the app is stopped. A service without a
// check is put into maintenance mode instead, which health queries leave
// out the same way. Close deregisters it.
func (r *Registration) Drain(ctx context.Context, reason string) error {
	r.mu.Lock()
	r.draining = true
	r.mu.Unlock()
	r.reportMu.Lock()
	defer r.reportMu.Unlock()
	r.mu.Lock()
	reg := r.registered
	r.mu.Unlock()
	out := "lifeboat is shutting down"
	if reason != "" {
		out += ": " + reason
	}
	res := Result{State: StateCritical, Output: out, At: time.Now()}
	r.record(res)
	if r.checker == nil {
		// No check to fail. Maintenance mode is kept across
		// re-registrations, and cannot be lifted while draining.
		return r.SetMaintenance(ctx, true, out)
	}
	if !reg {
		return nil
	}
	return r.updateTTL(ctx, res)
}

// kick makes the keeper send the registration again now.
func (r *Registration) kick() {
	r.mu.Lock()
	r.dirty = true
	if r.wake != nil {
		r.wake()
	}
	r.mu.Unlock()
}

// tags is the tag list for the current role.
func (r *Registration) tagsLocked() []string {
	tags := slices.Clone(r.opts.Tags)
	switch r.role {
	case RolePrimary:
		tags = append(tags, r.opts.PrimaryTag)
	case RoleReplica:
		tags = append(tags, r.opts.ReplicaTag)
	}
	return tags
}

// keep registers the service and then waits, in blocking queries on the
// agent's view of it, for the agent to forget it or for a change lifeboat
// must send; it registers again on either.
func (r *Registration) keep(ctx context.Context) {
	backoff := r.opts.RetryInitial
	hash := ""
	for ctx.Err() == nil {
		// The wait context comes first: a kick after it exists cancels it,
		// one before it is seen in dirty below.
		wctx, cancelWait := context.WithCancel(ctx)
		r.mu.Lock()
		r.wake = cancelWait
		dirty := r.dirty
		r.mu.Unlock()
		// pause waits out the backoff (or a kick) and doubles it.
		pause := func() {
			sleep(wctx, backoff)
			backoff = min(backoff*2, r.opts.RetryMax)
		}

		if dirty {
			if err := r.register(ctx); err != nil {
				if ctx.Err() != nil {
					cancelWait()
					return
				}
				r.m.registerErrors.Inc()
				r.setErr(err)
				r.log.Warn("service registration failed; retrying", "error", err, "retry_in", backoff.String())
				pause()
				cancelWait()
				continue
			}
			// The backoff is reset only once the agent shows the
			// registration back as sent: one it does not keep must not
			// be sent again and again without a pause.
			hash = ""
		}

		qctx, cancelQuery := context.WithTimeout(wctx, r.opts.WaitTime+r.opts.WaitTime/8+queryGrace)
		svc, qm, err := r.opts.Client.Agent().Service(r.id, (&api.QueryOptions{WaitHash: hash, WaitTime: r.opts.WaitTime}).WithContext(qctx))
		cancelQuery()
		kicked := wctx.Err() != nil
		switch {
		case ctx.Err() != nil:
			cancelWait()
			return
		case kicked:
			// A change to send (dirty is set); loop to send it.
		case consul.IsNotFound(err):
			r.log.Warn("the Consul agent does not know the service any more (agent restarted?); registering it again")
			r.markForgotten()
		case err != nil:
			r.setErr(fmt.Errorf("watching the service on the Consul agent: %w", err))
			r.log.Warn("cannot reach the Consul agent; retrying", "error", err, "retry_in", backoff.String())
			pause()
			hash = "" // ask at once when it answers again
		default:
			hash = qm.LastContentHash
			r.setErr(nil)
			if r.matches(svc) {
				backoff = r.opts.RetryInitial
				break
			}
			// Registered again after the backoff, not at once: something
			// that keeps changing it (or an agent that does not keep what
			// lifeboat sends) must not make lifeboat loop hot.
			r.log.Warn("the service's registration on the agent was changed outside lifeboat; registering it again", "retry_in", backoff.String())
			r.markDirty()
			pause()
		}
		cancelWait()
	}
}

// markDirty records that the registration must be sent again.
func (r *Registration) markDirty() {
	r.mu.Lock()
	r.dirty = true
	r.mu.Unlock()
}

// markForgotten records that the agent lost the registration.
func (r *Registration) markForgotten() {
	r.mu.Lock()
	r.registered = false
	r.dirty = true
	r.mu.Unlock()
	r.m.registered.Set(0)
}

// matches reports whether the agent's copy is what lifeboat registered.
func (r *Registration) matches(svc *api.AgentService) bool {
	if svc == nil {
		return false
	}
	r.mu.Lock()
	want := r.tagsLocked()
	r.mu.Unlock()
	got := slices.Clone(svc.Tags)
	slices.Sort(want)
	slices.Sort(got)
	return svc.Service == r.opts.Name && svc.Port == r.opts.Port && slices.Equal(want, got)
}

// register sends the registration: the service with its current tags and
// the TTL check in its last known state, then the last check output and
// maintenance mode, which a fresh registration does not carry.
func (r *Registration) register(ctx context.Context) error {
	r.mu.Lock()
	r.dirty = false
	tags := r.tagsLocked()
	role := r.role
	maint, reason := r.maint, r.maintReason
	// Replacing the checks also deletes the agent's maintenance check: only
	// when the agent holds checks of an earlier run (before the first
	// registration) or none of ours (it forgot the service); registered is
	// never set before the first.
	replace := !r.registered
	var last *Result
	if r.last != nil {
		l := *r.last
		last = &l
	}
	r.mu.Unlock()

	reg := &api.AgentServiceRegistration{
		ID:      r.id,
		Name:    r.opts.Name,
		Tags:    tags,
		Port:    r.opts.Port,
		Address: r.opts.Address,
		Meta:    r.opts.Meta,
	}
	if r.checker != nil {
		state := StateCritical // nothing checked yet: not ready
		if last != nil {
			state = last.State
		}
		c := r.checker.check
		chk := &api.AgentServiceCheck{
			CheckID: r.checkID,
			Name:    fmt.Sprintf("%s health (%s, run by lifeboat)", r.opts.Name, c.Kind()),
			Notes:   fmt.Sprintf("lifeboat runs a %s check on %s every %s (timeout %s) and reports it here", c.Kind(), r.checker.target(), c.Interval, c.Timeout),
			TTL:     r.ttl.String(),
			Status:  state,
		}
		if c.DeregisterAfter > 0 {
			chk.DeregisterCriticalServiceAfter = c.DeregisterAfter.String()
		}
		reg.Check = chk
	}
	rctx, cancel := context.WithTimeout(ctx, r.opts.RequestTimeout)
	defer cancel()
	if err := r.opts.Client.Agent().ServiceRegisterOpts(reg, api.ServiceRegisterOpts{ReplaceExistingChecks: replace}.WithContext(rctx)); err != nil {
		r.markDirty()
		return fmt.Errorf("registering service %s with the Consul agent: %w", r.id, err)
	}
	// From here on the agent has the service (Close deregisters it). What
	// it did not take is an error: the keeper sends the registration again
	// after its backoff rather than at once, which could loop hot.
	var incomplete error
	if last != nil && r.checker != nil {
		err := r.reportTTL(rctx, *last)
		switch {
		case consul.IsUnknownCheck(err):
			incomplete = fmt.Errorf("the Consul agent took service %s but does not know its check: %w", r.id, err)
		case err != nil:
			r.log.Warn("cannot report the last check result after registering", "error", err)
		}
	}
	if maint && incomplete == nil {
		if err := r.opts.Client.Agent().EnableServiceMaintenanceOpts(r.id, reason, (&api.QueryOptions{}).WithContext(rctx)); err != nil {
			incomplete = fmt.Errorf("restoring maintenance mode of service %s after registering: %w", r.id, err)
		}
	}
	r.mu.Lock()
	first := r.registrations == 0
	r.registered = true
	r.registrations++
	r.lastErr = ""
	// SetMaintenance only records a change while the service is not
	// registered, and this registration carried the mode read at its
	// start: a change made meanwhile must be sent with the next one.
	maintChanged := r.maint != maint || r.maintReason != reason
	if incomplete != nil {
		r.dirty = true
	}
	r.mu.Unlock()
	if maintChanged && incomplete == nil {
		r.kick()
	}
	r.m.registered.Set(1)
	r.m.registrations.Inc()
	if first {
		r.log.Info("service registered", "tags", tags, "port", r.opts.Port)
	} else {
		r.log.Info("service registered again", "tags", tags, "role", role)
	}
	return incomplete
}

// checkLoop runs the check every interval and reports each result.
func (r *Registration) checkLoop(ctx context.Context) {
	t := time.NewTimer(0) // first check at once: the service starts critical
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if r.isDraining() {
			return
		}
		r.mu.Lock()
		env := []string{hooks.VarRole + "=" + r.role}
		r.mu.Unlock()
		res := r.checker.run(ctx, env)
		if ctx.Err() != nil || !r.report(ctx, res) {
			return
		}
		t.Reset(r.checker.check.Interval)
	}
}

// report records a check result and sends it to the agent; once Drain has
// begun it drops the result and returns false.
func (r *Registration) report(ctx context.Context, res Result) bool {
	r.reportMu.Lock()
	defer r.reportMu.Unlock()
	r.mu.Lock()
	draining, reg := r.draining, r.registered
	r.mu.Unlock()
	if draining {
		return false
	}
	r.record(res)
	if reg {
		if err := r.updateTTL(ctx, res); err != nil && ctx.Err() == nil {
			r.log.Warn("cannot report the check result to the Consul agent", "error", err)
		}
	}
	return true
}

func (r *Registration) isDraining() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.draining
}

// record keeps a result for status, metrics and re-registration, and logs
// state changes.
func (r *Registration) record(res Result) {
	r.mu.Lock()
	prev := ""
	if r.last != nil {
		prev = r.last.State
	}
	r.last = &res
	r.mu.Unlock()
	r.m.setCheckState(res.State)
	if res.Duration > 0 {
		r.m.checkDuration.Set(res.Duration.Seconds())
		r.m.checks.WithLabelValues(res.State).Inc()
	}
	if prev != res.State {
		lvl := slog.LevelInfo
		if res.State != StatePassing {
			lvl = slog.LevelWarn
		}
		r.log.Log(context.Background(), lvl, "service check changed", "from", prev, "to", res.State, "output", firstLine(res.Output, 200))
	}
}

// updateTTL reports res to the TTL check. A 404 or an agent that does not
// know the check means it forgot the registration: send it again.
func (r *Registration) updateTTL(ctx context.Context, res Result) error {
	err := r.reportTTL(ctx, res)
	if consul.IsUnknownCheck(err) {
		r.log.Warn("the Consul agent does not know the check any more (agent restarted?); registering the service again")
		r.markForgotten()
		r.kick()
	}
	return err
}

// reportTTL reports res to the TTL check and leaves it to the caller what
// an agent that does not know the check means.
func (r *Registration) reportTTL(ctx context.Context, res Result) error {
	ctx, cancel := context.WithTimeout(ctx, r.opts.RequestTimeout)
	defer cancel()
	err := r.opts.Client.Agent().UpdateTTLOpts(r.checkID, res.Output, res.State, (&api.QueryOptions{}).WithContext(ctx))
	if err == nil {
		r.setErr(nil)
		return nil
	}
	r.m.ttlUpdateErrors.Inc()
	r.setErr(fmt.Errorf("reporting the check to the Consul agent: %w", err))
	return fmt.Errorf("reporting check %s to the Consul agent: %w", r.checkID, err)
}

func (r *Registration) setErr(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err == nil {
		r.lastErr = ""
		return
	}
	r.lastErr = err.Error()
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

func firstLine(s string, n int) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return truncate(s, n)
}
