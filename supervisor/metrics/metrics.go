// Package metrics holds lifeboat's Prometheus plumbing: the registry the
// supervisor creates and serves on /metrics, and the supervisor-level
// metrics (build info, app up/restarts/exits, phase durations). Other parts
// register their own lifeboat_* collectors on the prometheus.Registerer
// they are given; docs/metrics.md lists every metric.
package metrics

import (
	"runtime"
	"runtime/debug"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Namespace prefixes every lifeboat metric.
const Namespace = "lifeboat"

// NewRegistry returns a registry with the Go runtime and process
// collectors (go_*, process_*), so memory and fd use of the supervisor
// are visible beside lifeboat_*.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return reg
}

// BuildInfo labels lifeboat_build_info.
type BuildInfo struct {
	Version  string // "0.1.0" or "dev"
	Revision string // VCS revision, may be empty
}

// VCSRevision is the commit the binary was built from, as the go command
// stamped it (empty outside a checkout or with -buildvcs=false).
func VCSRevision() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, st := range bi.Settings {
			if st.Key == "vcs.revision" {
				return st.Value
			}
		}
	}
	return ""
}

// Supervisor is the set of supervisor-level metrics. Its methods are safe
// for concurrent use and do nothing on a nil *Supervisor, so code under
// test can run without metrics.
type Supervisor struct {
	appUp          prometheus.Gauge
	appPID         prometheus.Gauge
	appStarts      prometheus.Counter
	appRestarts    prometheus.Counter
	appExits       *prometheus.CounterVec
	appLastExit    prometheus.Gauge
	appStartTime   prometheus.Gauge
	phaseDuration  *prometheus.GaugeVec
	phaseFailures  *prometheus.CounterVec
	phaseCurrent   *prometheus.GaugeVec
	mu             sync.Mutex // guards lastPhase
	lastPhase      string
	startTimestamp prometheus.Gauge
}

// NewSupervisor creates the supervisor metrics and registers them (and
// lifeboat_build_info) on reg.
func NewSupervisor(reg prometheus.Registerer, info BuildInfo) (*Supervisor, error) {
	if info.Version == "" {
		info.Version = "dev"
	}
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "build_info",
		Help:        "Always 1; labels say which lifeboat build runs.",
		ConstLabels: prometheus.Labels{"version": info.Version, "revision": info.Revision, "goversion": runtime.Version()},
	})
	build.Set(1)
	m := &Supervisor{
		appUp: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: Namespace, Name: "app_up",
			Help: "1 while the app process runs, 0 otherwise."}),
		appPID: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: Namespace, Name: "app_pid",
			Help: "PID of the running app, 0 when it is not running."}),
		appStarts: prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Name: "app_starts_total",
			Help: "Times the app was started (the first start and every restart)."}),
		appRestarts: prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Name: "app_restarts_total",
			Help: "Times the app was restarted after it exited (app.restart)."}),
		appExits: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "app_exits_total",
			Help: "Times the app exited, by outcome: success (status 0), failure (non-zero), signal (killed by a signal)."},
			[]string{"outcome"}),
		appLastExit: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: Namespace, Name: "app_last_exit_status",
			Help: "Exit status of the app's last exit (128+N for signal N); -1 before it first exits."}),
		appStartTime: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: Namespace, Name: "app_start_time_seconds",
			Help: "Unix time the app was last started."}),
		phaseDuration: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: Namespace, Name: "phase_duration_seconds",
			Help: "How long the last run of each lifecycle phase took (load, connect, elect, restore, render, start, shutdown)."},
			[]string{"phase"}),
		phaseFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "phase_failures_total",
			Help: "Lifecycle phases that ended with an error, by phase."},
			[]string{"phase"}),
		phaseCurrent: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: Namespace, Name: "phase",
			Help: "1 for the lifecycle phase the supervisor is in, 0 for phases it has been in before."},
			[]string{"phase"}),
		startTimestamp: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: Namespace, Name: "start_time_seconds",
			Help: "Unix time the supervisor started."}),
	}
	m.appLastExit.Set(-1)
	m.startTimestamp.Set(float64(time.Now().UnixNano()) / 1e9)
	for _, c := range []prometheus.Collector{build, m.appUp, m.appPID, m.appStarts, m.appRestarts, m.appExits,
		m.appLastExit, m.appStartTime, m.phaseDuration, m.phaseFailures, m.phaseCurrent, m.startTimestamp} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	// Outcomes exist from the start, so rate() and alerts see zeros.
	for _, o := range []string{OutcomeSuccess, OutcomeFailure, OutcomeSignal} {
		m.appExits.WithLabelValues(o)
	}
	return m, nil
}

// Exit outcomes, the values of lifeboat_app_exits_total{outcome}.
const (
	OutcomeSuccess = "success"
	OutcomeFailure = "failure"
	OutcomeSignal  = "signal"
)

// EnterPhase marks name as the current lifecycle phase.
func (m *Supervisor) EnterPhase(name string) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.lastPhase != "" {
		m.phaseCurrent.WithLabelValues(m.lastPhase).Set(0)
	}
	m.lastPhase = name
	m.phaseCurrent.WithLabelValues(name).Set(1)
}

// PhaseDone records how long a phase took and whether it failed. It fits
// the duration logging.Phase's done func returns:
//
//	m.PhaseDone("restore", done(err), err)
func (m *Supervisor) PhaseDone(name string, d time.Duration, err error) {
	if m == nil {
		return
	}
	m.phaseDuration.WithLabelValues(name).Set(d.Seconds())
	if err != nil {
		m.phaseFailures.WithLabelValues(name).Inc()
	}
}

// AppStarted records a start of the app with its pid; restart says
// whether it is a restart after an exit (app.restart) rather than the
// first start.
func (m *Supervisor) AppStarted(pid int, restart bool) {
	if m == nil {
		return
	}
	m.appUp.Set(1)
	m.appPID.Set(float64(pid))
	m.appStarts.Inc()
	if restart {
		m.appRestarts.Inc()
	}
	m.appStartTime.Set(float64(time.Now().UnixNano()) / 1e9)
}

// AppExited records the app's exit: status is the exit status lifeboat
// passes on (128+N for signal N), signaled whether a signal killed it.
func (m *Supervisor) AppExited(status int, signaled bool) {
	if m == nil {
		return
	}
	m.appUp.Set(0)
	m.appPID.Set(0)
	m.appLastExit.Set(float64(status))
	outcome := OutcomeFailure
	switch {
	case signaled:
		outcome = OutcomeSignal
	case status == 0:
		outcome = OutcomeSuccess
	}
	m.appExits.WithLabelValues(outcome).Inc()
}
