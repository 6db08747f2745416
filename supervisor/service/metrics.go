package service

import "github.com/prometheus/client_golang/prometheus"

// metrics are the lifeboat_service_* metrics (docs/metrics.md, "Service").
type metrics struct {
	registered      prometheus.Gauge
	registrations   prometheus.Counter
	registerErrors  prometheus.Counter
	checkState      *prometheus.GaugeVec
	checks          *prometheus.CounterVec
	checkDuration   prometheus.Gauge
	ttlUpdateErrors prometheus.Counter
	maintenance     prometheus.Gauge
	role            *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		registered:      prometheus.NewGauge(prometheus.GaugeOpts{Name: "lifeboat_service_registered", Help: "1 while the service is registered with the Consul agent (as far as lifeboat knows), 0 otherwise."}),
		registrations:   prometheus.NewCounter(prometheus.CounterOpts{Name: "lifeboat_service_registrations_total", Help: "Successful registrations with the agent: the first, tag changes, and re-registrations after the agent forgot the service."}),
		registerErrors:  prometheus.NewCounter(prometheus.CounterOpts{Name: "lifeboat_service_registration_errors_total", Help: "Failed registration attempts (each is retried with backoff)."}),
		checkState:      prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "lifeboat_service_check_state", Help: "1 for the state of the last health check (passing, warning, critical), 0 for the others."}, []string{"state"}),
		checks:          prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lifeboat_service_checks_total", Help: "Health checks run, by result."}, []string{"state"}),
		checkDuration:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "lifeboat_service_check_duration_seconds", Help: "How long the last health check took."}),
		ttlUpdateErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "lifeboat_service_ttl_update_errors_total", Help: "Check results the agent did not take (agent down, or it forgot the check)."}),
		maintenance:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "lifeboat_service_maintenance", Help: "1 while the service is in maintenance mode."}),
		role:            prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "lifeboat_service_role", Help: "1 for the role whose tag the service carries (primary, replica), 0 for the other."}, []string{"role"}),
	}
	for _, s := range []string{StatePassing, StateWarning, StateCritical} {
		m.checkState.WithLabelValues(s)
		m.checks.WithLabelValues(s)
	}
	for _, r := range []string{RolePrimary, RoleReplica} {
		m.role.WithLabelValues(r)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.registered, m.registrations, m.registerErrors, m.checkState, m.checks,
			m.checkDuration, m.ttlUpdateErrors, m.maintenance, m.role} {
			_ = reg.Register(c) // a second Registration on one registry keeps the first one's metrics
		}
	}
	return m
}

func (m *metrics) setCheckState(state string) {
	for _, s := range []string{StatePassing, StateWarning, StateCritical} {
		v := 0.0
		if s == state {
			v = 1
		}
		m.checkState.WithLabelValues(s).Set(v)
	}
}

func (m *metrics) setRole(role string) {
	for _, r := range []string{RolePrimary, RoleReplica} {
		v := 0.0
		if r == role {
			v = 1
		}
		m.role.WithLabelValues(r).Set(v)
	}
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
