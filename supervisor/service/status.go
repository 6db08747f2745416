package service

import "time"

// Status is the service part of `lifeboat status`. It names what is
// checked but never a command's arguments or a URL's password.
type Status struct {
	Name              string       `json:"name"`
	ID                string       `json:"id"`
	Registered        bool         `json:"registered"`
	Role              string       `json:"role,omitempty"`
	Tags              []string     `json:"tags"`
	Maintenance       bool         `json:"maintenance"`
	MaintenanceReason string       `json:"maintenance_reason,omitempty"`
	Check             *CheckStatus `json:"check,omitempty"`
	Registrations     int          `json:"registrations"`
	LastError         string       `json:"last_error,omitempty"`
}

// CheckStatus is the health check's side of Status.
type CheckStatus struct {
	Kind     string `json:"kind"`
	Target   string `json:"target"`
	Interval string `json:"interval"`
	TTL      string `json:"ttl"`
	State    string `json:"state,omitempty"` // empty before the first run
	Output   string `json:"output,omitempty"`
	LastRun  string `json:"last_run,omitempty"`
	Duration string `json:"duration,omitempty"`
}

// Status returns the registration's current state.
func (r *Registration) Status() Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := Status{
		Name:              r.opts.Name,
		ID:                r.id,
		Registered:        r.registered,
		Role:              r.role,
		Tags:              r.tagsLocked(),
		Maintenance:       r.maint,
		MaintenanceReason: r.maintReason,
		Registrations:     r.registrations,
		LastError:         r.lastErr,
	}
	if st.Tags == nil {
		st.Tags = []string{}
	}
	if r.checker != nil {
		c := r.checker
		cs := &CheckStatus{Kind: c.check.Kind(), Target: c.target(), Interval: c.check.Interval.String(), TTL: r.ttl.String()}
		if l := r.last; l != nil {
			cs.State = l.State
			cs.Output = firstLine(l.Output, 200)
			cs.LastRun = l.At.UTC().Format(time.RFC3339)
			if l.Duration > 0 {
				cs.Duration = l.Duration.Round(time.Microsecond).String()
			}
		}
		st.Check = cs
	}
	return st
}
