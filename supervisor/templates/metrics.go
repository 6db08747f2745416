package templates

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	renders       *prometheus.CounterVec
	failures      *prometheus.CounterVec
	actions       *prometheus.CounterVec
	lastRender    *prometheus.GaugeVec
	depErrors     *prometheus.CounterVec
	consulUp      prometheus.Gauge
	consulWatches prometheus.Gauge
	consulErrors  prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		renders:       prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lifeboat_template_renders_total", Help: "Rendered files written because their content changed."}, []string{"template"}),
		failures:      prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lifeboat_template_render_failures_total", Help: "Renders that kept the last file: data missing, template error or write error."}, []string{"template"}),
		actions:       prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lifeboat_template_actions_total", Help: "on_change actions run after a rendered file changed."}, []string{"template", "action"}),
		lastRender:    prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "lifeboat_template_last_render_timestamp_seconds", Help: "Unix time the template's file was last written."}, []string{"template"}),
		depErrors:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lifeboat_template_source_errors_total", Help: "Failed reads of template data, by source (consul, vault); the last values are kept."}, []string{"source"}),
		consulUp:      prometheus.NewGauge(prometheus.GaugeOpts{Name: "lifeboat_consul_up", Help: "1 when the last Consul query of a template watch succeeded, 0 when it failed."}),
		consulWatches: prometheus.NewGauge(prometheus.GaugeOpts{Name: "lifeboat_consul_watches", Help: "Consul blocking queries running for templates."}),
		consulErrors:  prometheus.NewCounter(prometheus.CounterOpts{Name: "lifeboat_consul_watch_errors_total", Help: "Failed Consul blocking queries (each is retried with backoff)."}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.renders, m.failures, m.actions, m.lastRender, m.depErrors, m.consulUp, m.consulWatches, m.consulErrors} {
			_ = reg.Register(c)
		}
	}
	return m
}
