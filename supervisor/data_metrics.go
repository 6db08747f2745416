package supervisor

import (
	"github.com/prometheus/client_golang/prometheus"
)

// dataMetrics are the data lifecycle's own metrics; the backup loop's
// (lifeboat_backup_*, lifeboat_backups_total) come from package trigger.
type dataMetrics struct {
	restoreBytes   prometheus.Gauge
	restoreCorrupt prometheus.Counter
	backupBytes    prometheus.Gauge
	newBytes       prometheus.Counter
	storedBytes    prometheus.Counter
	finalResult    *prometheus.CounterVec
	hooks          *prometheus.CounterVec
	retention      *prometheus.CounterVec
	forgotten      prometheus.Counter
	deletedBytes   prometheus.Counter
}

func newDataMetrics(reg prometheus.Registerer) *dataMetrics {
	m := &dataMetrics{
		restoreBytes: prometheus.NewGauge(prometheus.GaugeOpts{Name: "lifeboat_restore_bytes",
			Help: "Bytes of files and streams the restore phase wrote (0 when nothing was restored)."}),
		restoreCorrupt: prometheus.NewCounter(prometheus.CounterOpts{Name: "lifeboat_restore_corrupt_snapshots_total",
			Help: "Snapshots the restore phase found corrupt (and skipped, with data.on_corrupt = previous)."}),
		backupBytes: prometheus.NewGauge(prometheus.GaugeOpts{Name: "lifeboat_backup_last_size_bytes",
			Help: "Bytes of files and streams in the last successful snapshot."}),
		newBytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "lifeboat_backup_new_bytes_total",
			Help: "Raw bytes of chunks the store did not have yet, over all successful backups."}),
		storedBytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "lifeboat_backup_uploaded_bytes_total",
			Help: "Bytes uploaded in packs (compressed, encrypted), over all successful backups."}),
		finalResult: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lifeboat_backup_final_total",
			Help: "Final backups at shutdown, by result (success, failure)."}, []string{"result"}),
		hooks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lifeboat_hook_runs_total",
			Help: "Data hook runs by hook (pre_backup, post_backup, pre_restore, post_restore, init) and result."}, []string{"hook", "result"}),
		retention: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lifeboat_retention_runs_total",
			Help: "Retention and garbage collection runs after backups, by result (success, failure, interrupted)."}, []string{"result"}),
		forgotten: prometheus.NewCounter(prometheus.CounterOpts{Name: "lifeboat_retention_forgotten_snapshots_total",
			Help: "Snapshots removed by the backup.keep policy."}),
		deletedBytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "lifeboat_retention_deleted_bytes_total",
			Help: "Bytes of packs garbage collection deleted from the store."}),
	}
	if reg != nil {
		reg.MustRegister(m.restoreBytes, m.restoreCorrupt, m.backupBytes, m.newBytes, m.storedBytes,
			m.finalResult, m.hooks, m.retention, m.forgotten, m.deletedBytes)
	}
	return m
}

// hookResult counts a hook run; nil m (no data lifecycle) does nothing.
func (m *dataMetrics) hookResult(name string, err error) {
	if m == nil {
		return
	}
	r := "success"
	if err != nil {
		r = "failure"
	}
	m.hooks.WithLabelValues(name, r).Inc()
}
