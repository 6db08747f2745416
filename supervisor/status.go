package supervisor

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/lifeboat/lifeboat/supervisor/control"
	"github.com/lifeboat/lifeboat/supervisor/election"
	"github.com/lifeboat/lifeboat/supervisor/service"
)

// Status is what GET /v1/status and `lifeboat status` show. Field order is
// the order people read it in. Secrets never appear here: the app's env and
// command arguments are left out on purpose.
type Status struct {
	Version  string           `json:"version"`
	Phase    string           `json:"phase"`
	Uptime   string           `json:"uptime"`
	App      AppStatus        `json:"app"`
	Phases   []PhaseStatus    `json:"phases"`
	Secrets  *SecretsStatus   `json:"secrets,omitempty"`  // Consul/Vault/templates: names and health, no values
	Data     *DataStatus      `json:"data,omitempty"`     // restore, backups, retention (data.go)
	Service  *service.Status  `json:"service,omitempty"`  // Consul registration, check, role tag, maintenance
	Election *election.Status `json:"election,omitempty"` // role, leader, fencing token, session health
}

// AppStatus is the app's side of the status.
type AppStatus struct {
	Command   string `json:"command"`
	Running   bool   `json:"running"`
	Pid       int    `json:"pid,omitempty"`
	StartedAt string `json:"started_at,omitempty"`
	Restarts  int    `json:"restarts"`
	LastExit  string `json:"last_exit,omitempty"`
	Orphans   int    `json:"orphans_reaped"`
}

// PhaseStatus is one finished phase.
type PhaseStatus struct {
	Name     string `json:"name"`
	Duration string `json:"duration"`
	Error    string `json:"error,omitempty"`
}

// Status returns the supervisor's current status.
func (s *Supervisor) Status() Status {
	s.mu.Lock()
	st := Status{
		Version: s.version,
		Phase:   s.phase,
		Uptime:  time.Since(s.started).Round(time.Second).String(),
	}
	for _, p := range s.phases {
		st.Phases = append(st.Phases, PhaseStatus{Name: p.Name, Duration: p.Duration.Round(time.Microsecond).String(), Error: p.Error})
	}
	s.mu.Unlock()
	if len(s.cfg.App.Command) > 0 {
		// Only the program: arguments may carry secrets.
		st.App.Command = s.cfg.App.Command[0]
	}
	if s.app != nil {
		st.App.Pid = s.app.Pid()
		st.App.Running = st.App.Pid != 0
		st.App.Restarts = s.app.Restarts()
		if st.App.Running {
			st.App.StartedAt = s.app.StartedAt().UTC().Format(time.RFC3339)
		}
		if e := s.app.LastExit(); e != nil {
			st.App.LastExit = e.String()
		}
	}
	if s.reaper != nil {
		st.App.Orphans = s.reaper.Orphans()
	}
	st.Secrets = s.secretsStatus()
	st.Data = s.dataStatus()
	st.Service = s.serviceStatus()
	st.Election = s.leaderStatus()
	return st
}

func (s *Supervisor) statusFunc(ctx context.Context) (any, error) {
	return s.Status(), nil
}

var errNoBackups = fmt.Errorf("%w: backups are not configured: no store is set (store.url, --store or LIFEBOAT_STORE)", control.ErrRejected)

// notify handles POST /v1/notify/{event}.
func (s *Supervisor) notify(ctx context.Context, event string, req control.NotifyRequest) (control.NotifyResponse, error) {
	switch strings.ToLower(event) {
	case "backup":
		return s.notifyBackup(ctx, req)
	}
	return control.NotifyResponse{}, control.ErrUnknownEvent
}
