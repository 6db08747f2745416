// Package templates renders files and environment variables from Consul
// and Vault data (Go text/template), keeps them current with Consul
// blocking queries and Vault lease renewals, debounces changes with
// wait {min, max}, writes files atomically only when their content
// changed, and runs each template's on_change action.
//
// A template's functions (key, secret, ...) register what they read; the
// Manager watches each piece of data with one goroutine and renders again
// when one changes. A template whose data is not all there is not written:
// the first render waits for it (bounded by a timeout, then names what is
// missing), later renders keep the last file.
package templates

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strings"
	"sync"
	"text/template"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
)

// Defaults.
const (
	DefaultFirstRenderTimeout = 60 * time.Second
	DefaultRetryInitial       = 250 * time.Millisecond
	DefaultRetryMax           = 30 * time.Second
	DefaultCommandTimeout     = 60 * time.Second
	// DefaultPerms is the mode of a rendered file that reads no secret;
	// DefaultSecretPerms of one that does.
	DefaultPerms       os.FileMode = 0o644
	DefaultSecretPerms os.FileMode = 0o600
	// waitMaxFactor gives wait.max when only wait.min is set, as
	// consul-template does.
	waitMaxFactor = 4
)

// Template is one file to render.
type Template struct {
	Name        string // for logs, status and metrics; default the destination
	Source      string // template file; or
	Contents    string // inline template text
	Destination string
	Perms       os.FileMode // 0: DefaultSecretPerms if it reads a secret, else DefaultPerms
	User, Group string      // owner; "" falls back to Options.DefaultUser/DefaultGroup
	OnChange    Action
	WaitMin     time.Duration // quiet time after a change before rendering
	WaitMax     time.Duration // render at the latest this long after the first change
}

// Options configure a Manager.
type Options struct {
	Templates []Template
	// Env maps variable names to template text, rendered once before the
	// app starts.
	Env    map[string]string
	Consul *api.Client  // nil: Consul functions fail with a clear error
	Vault  SecretSource // nil: secret fails with a clear error
	// Leader returns the current leader's address for the leader function;
	// call Manager.Notify when it changes.
	Leader func() string
	App    AppController // on_change restart/reload/signal; nil: skipped
	// RunCommand runs on_change commands; default runs argv directly.
	RunCommand CommandRunner
	// DefaultUser and DefaultGroup own rendered files whose template names
	// no user (the app's user, so a 0600 file is readable by the app).
	DefaultUser, DefaultGroup string

	FirstRenderTimeout time.Duration // default DefaultFirstRenderTimeout
	StaticRefresh      time.Duration // re-read of lease-less secrets; default vault.DefaultStaticRefresh
	ConsulWaitTime     time.Duration // blocking query wait; default consul.DefaultWaitTime
	RetryInitial       time.Duration // default DefaultRetryInitial
	RetryMax           time.Duration // default DefaultRetryMax
	CommandTimeout     time.Duration // default DefaultCommandTimeout

	Logger  *slog.Logger
	Metrics prometheus.Registerer // nil: not exported
}

// Manager renders and watches a set of templates and env values.
type Manager struct {
	opts Options
	log  *slog.Logger
	m    *metrics

	tmpls []*tmplState
	env   []*envState

	watchCtx    context.Context
	watchCancel context.CancelFunc
	wg          sync.WaitGroup
	changed     chan struct{}

	mu        sync.Mutex
	deps      map[string]*depState
	firstDone bool
	envOut    map[string]string
}

type tmplState struct {
	spec     Template
	t        *template.Template
	uid, gid int

	// Below under Manager.mu (read by Status).
	rendered     bool
	lastRender   time.Time
	renders      int
	actions      int
	lastErr      string
	pendingSince time.Time
	lastEvent    time.Time
}

type envState struct {
	name string
	t    *template.Template
}

type depState struct {
	d         dep
	have      bool
	value     any
	err       error
	errAt     time.Time
	updatedAt time.Time
}

// New parses every template (source files are read here) and resolves
// owners. Errors name the template.
func New(opts Options) (*Manager, error) {
	if opts.FirstRenderTimeout <= 0 {
		opts.FirstRenderTimeout = DefaultFirstRenderTimeout
	}
	if opts.RetryInitial <= 0 {
		opts.RetryInitial = DefaultRetryInitial
	}
	if opts.RetryMax <= 0 {
		opts.RetryMax = DefaultRetryMax
	}
	if opts.CommandTimeout <= 0 {
		opts.CommandTimeout = DefaultCommandTimeout
	}
	if opts.RunCommand == nil {
		opts.RunCommand = defaultRunCommand
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	m := &Manager{
		opts:    opts,
		log:     opts.Logger.With("component", "templates"),
		m:       newMetrics(opts.Metrics),
		changed: make(chan struct{}, 1),
		deps:    map[string]*depState{},
	}
	m.watchCtx, m.watchCancel = context.WithCancel(context.Background())
	for i, spec := range opts.Templates {
		if spec.Destination == "" {
			return nil, fmt.Errorf("template %d: destination is required", i+1)
		}
		if spec.Name == "" {
			spec.Name = spec.Destination
		}
		text := spec.Contents
		switch {
		case spec.Source != "" && spec.Contents != "":
			return nil, fmt.Errorf("template %q: set source or contents, not both", spec.Name)
		case spec.Source != "":
			b, err := os.ReadFile(spec.Source)
			if err != nil {
				return nil, fmt.Errorf("template %q: reading source: %w", spec.Name, err)
			}
			text = string(b)
		case spec.Contents == "":
			return nil, fmt.Errorf("template %q: source or contents is required", spec.Name)
		}
		if spec.WaitMin > 0 && spec.WaitMax == 0 {
			spec.WaitMax = waitMaxFactor * spec.WaitMin
		}
		if spec.WaitMax > 0 && spec.WaitMax < spec.WaitMin {
			return nil, fmt.Errorf("template %q: wait max %s is shorter than min %s", spec.Name, spec.WaitMax, spec.WaitMin)
		}
		t, err := parse(spec.Name, text)
		if err != nil {
			return nil, err
		}
		uid, gid, err := resolveOwner(orDefault(spec.User, opts.DefaultUser), orDefault(spec.Group, opts.DefaultGroup))
		if err != nil {
			return nil, fmt.Errorf("template %q: %w", spec.Name, err)
		}
		m.tmpls = append(m.tmpls, &tmplState{spec: spec, t: t, uid: uid, gid: gid})
	}
	names := make([]string, 0, len(opts.Env))
	for n := range opts.Env {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		t, err := parse("env "+n, opts.Env[n])
		if err != nil {
			return nil, err
		}
		m.env = append(m.env, &envState{name: n, t: t})
	}
	return m, nil
}

func parse(name, text string) (*template.Template, error) {
	t, err := template.New(name).Option("missingkey=error").Funcs((&renderCtx{}).funcs()).Parse(text)
	if err != nil {
		return nil, fmt.Errorf("template %q: %w", name, err)
	}
	return t, nil
}

// Close stops every watch and waits for the watchers to end.
func (m *Manager) Close() {
	m.watchCancel()
	m.wg.Wait()
}

// Notify asks for a re-render, for data the Manager does not watch itself
// (the election's leader).
func (m *Manager) Notify() { m.signal() }

func (m *Manager) signal() {
	select {
	case m.changed <- struct{}{}:
	default:
	}
}

// lookup returns a dependency's value, starting its watch on first use.
func (m *Manager) lookup(d dep) (*depState, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	st, ok := m.deps[d.id()]
	if !ok {
		st = &depState{d: d}
		m.deps[d.id()] = st
		if m.watchCtx.Err() == nil {
			m.wg.Add(1)
			go func() {
				defer m.wg.Done()
				d.watch(m.watchCtx, m)
			}()
		}
	}
	return st, st.have
}

// update records a watcher's result: a value (v, nil) or a failure
// (nil, err), which keeps the last value.
func (m *Manager) update(d dep, v any, err error) {
	m.mu.Lock()
	st := m.deps[d.id()]
	if err != nil {
		first := st.err == nil
		st.err, st.errAt = err, time.Now()
		m.mu.Unlock()
		if first {
			m.log.Warn("cannot read; keeping the last value and retrying", "source", d.source(), "what", d.describe(), "error", err)
		}
		m.m.depErrors.WithLabelValues(d.source()).Inc()
		return
	}
	recovered := st.err != nil
	changed := !st.have || !sameValue(st.value, v)
	st.have, st.value, st.err, st.updatedAt = true, v, nil, time.Now()
	m.mu.Unlock()
	if recovered {
		m.log.Info("reading again", "source", d.source(), "what", d.describe())
	}
	if changed {
		m.signal()
	}
}

// execute runs one template with the current data. missing lists what it
// still waits for; out is only meaningful when missing is empty and err nil.
func (m *Manager) execute(t *template.Template) (out []byte, missing []string, usesSecret bool, err error) {
	rc := &renderCtx{m: m}
	c, err := t.Clone()
	if err != nil {
		return nil, nil, false, err
	}
	c.Funcs(rc.funcs())
	var buf bytes.Buffer
	err = c.Execute(&buf, nil)
	if len(rc.missing) > 0 {
		return nil, rc.missing, rc.usesSecret, nil
	}
	if err != nil {
		return nil, nil, rc.usesSecret, fmt.Errorf("template %q: %w", t.Name(), err)
	}
	return buf.Bytes(), nil, rc.usesSecret, nil
}

// RenderFirst renders every template and env value before the app starts.
// It waits until all their data is there, bounded by FirstRenderTimeout,
// and then writes all files at once; on timeout the error names each
// missing key or secret path (never a value).
func (m *Manager) RenderFirst(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, m.opts.FirstRenderTimeout)
	defer cancel()
	for {
		outs, missing, err := m.renderAll()
		if err != nil {
			return err
		}
		if len(missing) == 0 {
			for i, ts := range m.tmpls {
				if err := m.write(ts, outs[i].out, outs[i].secret, false); err != nil {
					return err
				}
			}
			m.mu.Lock()
			m.firstDone = true
			m.mu.Unlock()
			return nil
		}
		select {
		case <-m.changed:
		case <-ctx.Done():
			if ctx.Err() == context.DeadlineExceeded {
				return fmt.Errorf("templates: first render did not complete within %s; still missing: %s",
					m.opts.FirstRenderTimeout, strings.Join(missing, "; "))
			}
			return fmt.Errorf("templates: first render: %w", ctx.Err())
		}
	}
}

type rendered struct {
	out    []byte
	secret bool
}

func (m *Manager) renderAll() ([]rendered, []string, error) {
	var missing []string
	seen := map[string]bool{}
	addMissing := func(where string, ms []string) {
		for _, s := range ms {
			s = s + " (" + where + ")"
			if !seen[s] {
				seen[s] = true
				missing = append(missing, s)
			}
		}
	}
	outs := make([]rendered, len(m.tmpls))
	for i, ts := range m.tmpls {
		out, ms, sec, err := m.execute(ts.t)
		if err != nil {
			return nil, nil, err
		}
		addMissing("template "+ts.spec.Name, ms)
		outs[i] = rendered{out, sec}
	}
	envOut := map[string]string{}
	for _, e := range m.env {
		out, ms, _, err := m.execute(e.t)
		if err != nil {
			return nil, nil, err
		}
		addMissing("env "+e.name, ms)
		envOut[e.name] = string(out)
	}
	if len(missing) == 0 {
		m.mu.Lock()
		m.envOut = envOut
		m.mu.Unlock()
	}
	return outs, missing, nil
}

// Env returns the rendered env block as NAME=value pairs, sorted by name.
func (m *Manager) Env() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]string, 0, len(m.envOut))
	for _, e := range m.env {
		if v, ok := m.envOut[e.name]; ok {
			out = append(out, e.name+"="+v)
		}
	}
	return out
}

// write renders ts's output to its destination when it differs from what
// is there, and runs the on_change action when asked to.
func (m *Manager) write(ts *tmplState, out []byte, usesSecret, act bool) error {
	perm := ts.spec.Perms
	if perm == 0 {
		perm = DefaultPerms
		if usesSecret {
			perm = DefaultSecretPerms
		}
	}
	changed, err := writeAtomic(ts.spec.Destination, out, perm, ts.uid, ts.gid)
	now := time.Now()
	m.mu.Lock()
	if err != nil {
		ts.lastErr = err.Error()
	} else {
		ts.lastErr = ""
		ts.rendered = true
		ts.lastRender = now
		if changed {
			ts.renders++
		}
	}
	m.mu.Unlock()
	if err != nil {
		m.m.failures.WithLabelValues(ts.spec.Name).Inc()
		return fmt.Errorf("template %q: %w", ts.spec.Name, err)
	}
	if !changed {
		return nil
	}
	m.m.renders.WithLabelValues(ts.spec.Name).Inc()
	m.m.lastRender.WithLabelValues(ts.spec.Name).Set(float64(now.UnixNano()) / 1e9)
	m.log.Info("template rendered", "template", ts.spec.Name, "destination", ts.spec.Destination, "bytes", len(out))
	if act {
		m.runAction(ts)
	}
	return nil
}

func (m *Manager) runAction(ts *tmplState) {
	a := ts.spec.OnChange
	var err error
	switch a.Kind {
	case "", ActionNone:
		return
	case ActionRestart, ActionReload, ActionSignal:
		if m.opts.App == nil {
			m.log.Warn("template changed but no app to act on", "template", ts.spec.Name, "on_change", a.String())
			return
		}
		if a.Kind == ActionRestart {
			err = m.opts.App.Restart()
		} else {
			err = m.opts.App.Signal(a.Signal)
		}
	case ActionCommand:
		ctx, cancel := context.WithTimeout(m.watchCtx, m.opts.CommandTimeout)
		err = m.opts.RunCommand(ctx, a.Command, []string{"LIFEBOAT_TEMPLATE=" + ts.spec.Destination, "LIFEBOAT_TEMPLATE_NAME=" + ts.spec.Name})
		cancel()
	}
	m.mu.Lock()
	ts.actions++
	m.mu.Unlock()
	m.m.actions.WithLabelValues(ts.spec.Name, a.Kind).Inc()
	if err != nil {
		m.log.Warn("on_change action failed", "template", ts.spec.Name, "on_change", a.String(), "error", err)
		return
	}
	m.log.Info("on_change action done", "template", ts.spec.Name, "on_change", a.String())
}

// Run keeps the templates current until ctx ends: every change of their
// data marks them pending; a pending template renders once its data has
// been quiet for WaitMin, or WaitMax after the first change at the latest.
// Call it after RenderFirst, once the app runs.
func (m *Manager) Run(ctx context.Context) error {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-m.changed:
			now := time.Now()
			m.mu.Lock()
			for _, ts := range m.tmpls {
				if ts.pendingSince.IsZero() {
					ts.pendingSince = now
				}
				ts.lastEvent = now
			}
			m.mu.Unlock()
		case <-timer.C:
		}
		now := time.Now()
		next := time.Duration(-1)
		for _, ts := range m.tmpls {
			m.mu.Lock()
			pending := !ts.pendingSince.IsZero()
			due := ts.lastEvent.Add(ts.spec.WaitMin)
			if ts.spec.WaitMax > 0 {
				if d := ts.pendingSince.Add(ts.spec.WaitMax); d.Before(due) {
					due = d
				}
			}
			m.mu.Unlock()
			if !pending {
				continue
			}
			if wait := due.Sub(now); wait > 0 {
				if next < 0 || wait < next {
					next = wait
				}
				continue
			}
			m.mu.Lock()
			ts.pendingSince, ts.lastEvent = time.Time{}, time.Time{}
			m.mu.Unlock()
			m.renderOne(ts)
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		if next >= 0 {
			timer.Reset(next)
		} else {
			timer.Reset(time.Hour)
		}
	}
}

func (m *Manager) renderOne(ts *tmplState) {
	out, missing, sec, err := m.execute(ts.t)
	if err == nil && len(missing) > 0 {
		err = fmt.Errorf("template %q: keeping the last file, waiting for: %s", ts.spec.Name, strings.Join(missing, "; "))
	}
	if err != nil {
		m.mu.Lock()
		ts.lastErr = err.Error()
		m.mu.Unlock()
		m.m.failures.WithLabelValues(ts.spec.Name).Inc()
		m.log.Warn("template not rendered", "template", ts.spec.Name, "error", err)
		return
	}
	if err := m.write(ts, out, sec, true); err != nil {
		m.log.Error("template not written", "template", ts.spec.Name, "error", err)
	}
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
