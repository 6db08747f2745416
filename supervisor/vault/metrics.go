package vault

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	up            prometheus.Gauge
	logins        prometheus.Counter
	renewals      prometheus.Counter
	leaseRenewals prometheus.Counter
	reads         prometheus.Counter
	errors        prometheus.Counter
}

// newMetrics registers lifeboat_vault_*; with a nil registerer the metrics
// exist but are not exported.
func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		up:            prometheus.NewGauge(prometheus.GaugeOpts{Name: "lifeboat_vault_up", Help: "1 when the last request to Vault succeeded, 0 when it failed."}),
		logins:        prometheus.NewCounter(prometheus.CounterOpts{Name: "lifeboat_vault_logins_total", Help: "Successful logins to Vault (the first and every re-authentication)."}),
		renewals:      prometheus.NewCounter(prometheus.CounterOpts{Name: "lifeboat_vault_token_renewals_total", Help: "Renewals of lifeboat's Vault token."}),
		leaseRenewals: prometheus.NewCounter(prometheus.CounterOpts{Name: "lifeboat_vault_lease_renewals_total", Help: "Renewals of leases of dynamic secrets."}),
		reads:         prometheus.NewCounter(prometheus.CounterOpts{Name: "lifeboat_vault_secret_reads_total", Help: "Secrets read from Vault."}),
		errors:        prometheus.NewCounter(prometheus.CounterOpts{Name: "lifeboat_vault_errors_total", Help: "Failed requests to Vault (login, renewal, read)."}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.up, m.logins, m.renewals, m.leaseRenewals, m.reads, m.errors} {
			_ = reg.Register(c) // a second client on the same registry keeps the first's series
		}
	}
	return m
}

func (m *metrics) setUp(ok bool) {
	if ok {
		m.up.Set(1)
	} else {
		m.up.Set(0)
	}
}
