package election

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the election's lifeboat_election_* collectors. With a nil
// Registerer they exist but are not exported.
type metrics struct {
	leader        prometheus.Gauge
	token         prometheus.Gauge
	transitions   *prometheus.CounterVec
	terms         prometheus.Counter
	selfDemotions prometheus.Counter
	renewFailures prometheus.Counter
	lastRenew     prometheus.Gauge
	hookDuration  *prometheus.HistogramVec
	hookFailures  *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		leader: prometheus.NewGauge(prometheus.GaugeOpts{Name: "lifeboat_election_leader",
			Help: "1 while this node is the announced leader (on_leader done), else 0."}),
		token: prometheus.NewGauge(prometheus.GaugeOpts{Name: "lifeboat_election_fencing_token",
			Help: "Fencing token of the current leader's term as this node knows it; 0 when no leader is known."}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lifeboat_election_transitions_total",
			Help: "Role changes of this node, by the role it changed to."}, []string{"role"}),
		terms: prometheus.NewCounter(prometheus.CounterOpts{Name: "lifeboat_election_terms_total",
			Help: "Terms this node started as leader (on_leader succeeded)."}),
		selfDemotions: prometheus.NewCounter(prometheus.CounterOpts{Name: "lifeboat_election_self_demotions_total",
			Help: "Times this leader demoted itself because it could not renew its session for demote_after."}),
		renewFailures: prometheus.NewCounter(prometheus.CounterOpts{Name: "lifeboat_election_renew_failures_total",
			Help: "Failed session/check renewals."}),
		lastRenew: prometheus.NewGauge(prometheus.GaugeOpts{Name: "lifeboat_election_last_renew_timestamp_seconds",
			Help: "Unix time of the last successful session renewal."}),
		hookDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "lifeboat_election_hook_duration_seconds",
			Help:    "Run time of the election hooks, by hook.",
			Buckets: []float64{.01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}}, []string{"hook"}),
		hookFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lifeboat_election_hook_failures_total",
			Help: "Election hooks that failed or timed out, by hook."}, []string{"hook"}),
	}
	for _, r := range []Role{RoleCandidate, RoleFollower, RoleLeader} {
		m.transitions.WithLabelValues(string(r))
	}
	for _, h := range []string{HookOnLeader, HookOnFollower, HookOnDemote} {
		m.hookFailures.WithLabelValues(h)
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.leader, m.token, m.transitions, m.terms, m.selfDemotions, m.renewFailures, m.lastRenew, m.hookDuration, m.hookFailures} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return nil, err
			}
		}
	}
	return m, nil
}

func (m *metrics) role(r Role, token uint64) {
	m.transitions.WithLabelValues(string(r)).Inc()
	if r == RoleLeader {
		m.leader.Set(1)
	} else {
		m.leader.Set(0)
	}
	m.token.Set(float64(token))
}
