package templates

import (
	"sort"
	"time"
)

// Status is what `lifeboat status` shows about templates. It names keys,
// paths and files, never values.
type Status struct {
	Templates []TemplateStatus `json:"templates"`
	Sources   []SourceStatus   `json:"sources"`
	Env       []string         `json:"env,omitempty"` // names only
	Healthy   bool             `json:"healthy"`       // every source read fine on its last try
}

// TemplateStatus is one template.
type TemplateStatus struct {
	Name        string    `json:"name"`
	Destination string    `json:"destination"`
	Rendered    bool      `json:"rendered"`
	LastRender  time.Time `json:"last_render,omitzero"`
	Renders     int       `json:"renders"`
	Actions     int       `json:"actions"`
	Pending     bool      `json:"pending"`
	LastError   string    `json:"last_error,omitempty"`
}

// SourceStatus is one watched piece of data.
type SourceStatus struct {
	Source      string    `json:"source"` // consul or vault
	What        string    `json:"what"`   // e.g. consul key "app/port"
	Healthy     bool      `json:"healthy"`
	Exists      bool      `json:"exists"`
	UpdatedAt   time.Time `json:"updated_at,omitzero"`
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
}

// Status returns the current status.
func (m *Manager) Status() Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := Status{Healthy: true}
	for _, ts := range m.tmpls {
		s.Templates = append(s.Templates, TemplateStatus{
			Name: ts.spec.Name, Destination: ts.spec.Destination, Rendered: ts.rendered,
			LastRender: ts.lastRender, Renders: ts.renders, Actions: ts.actions,
			Pending: !ts.pendingSince.IsZero(), LastError: ts.lastErr,
		})
	}
	for _, st := range m.deps {
		ss := SourceStatus{Source: st.d.source(), What: st.d.describe(), Healthy: st.err == nil && st.have, UpdatedAt: st.updatedAt}
		if st.have {
			_, isAbsent := st.value.(absent)
			ss.Exists = !isAbsent
		}
		if st.err != nil {
			ss.LastError, ss.LastErrorAt = st.err.Error(), st.errAt
		}
		if !ss.Healthy {
			s.Healthy = false
		}
		s.Sources = append(s.Sources, ss)
	}
	sort.Slice(s.Sources, func(i, j int) bool { return s.Sources[i].What < s.Sources[j].What })
	for _, e := range m.env {
		s.Env = append(s.Env, e.name)
	}
	return s
}
