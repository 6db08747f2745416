package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/hashicorp/consul/api"
	"github.com/lifeboat/lifeboat/supervisor/consul"
	"github.com/lifeboat/lifeboat/supervisor/control"
)

// PathMaintenance is the control-socket endpoint MaintenanceHandler serves.
const PathMaintenance = "/v1/maintenance"

// MaintenanceRequest is the body of POST /v1/maintenance.
type MaintenanceRequest struct {
	// Enable is required: true enters maintenance mode, false leaves it.
	Enable *bool `json:"enable"`
	// Reason is shown in Consul (and status) while in maintenance.
	Reason string `json:"reason,omitempty"`
}

// drainsByMaintenance reports whether the service is draining through
// maintenance mode: it has no check to fail (Drain). r.mu is held.
func (r *Registration) drainsByMaintenance() bool {
	return r.draining && r.checker == nil
}

// SetMaintenance puts the service into maintenance mode (Consul then
// reports it critical, with reason, and routes no one to it) or takes it
// out. The mode is kept across re-registrations. Before the first
// registration it is only recorded and sent with it; when the agent does
// not take the change, the old mode stays and the error says why (a
// drain's maintenance stays recorded even then).
func (r *Registration) SetMaintenance(ctx context.Context, enable bool, reason string) error {
	if enable && reason == "" {
		reason = DefaultMaintenanceReason
	}
	if !enable {
		reason = ""
	}
	r.mu.Lock()
	if !enable && r.drainsByMaintenance() {
		r.mu.Unlock()
		return fmt.Errorf("service %s stays in maintenance mode: it is draining, lifeboat is shutting down", r.id)
	}
	prev, prevReason := r.maint, r.maintReason
	r.maint, r.maintReason = enable, reason
	reg := r.registered
	r.mu.Unlock()
	if !reg {
		r.m.maintenance.Set(boolGauge(enable))
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, r.opts.RequestTimeout)
	defer cancel()
	q := (&api.QueryOptions{}).WithContext(ctx)
	var err error
	if enable {
		err = r.opts.Client.Agent().EnableServiceMaintenanceOpts(r.id, reason, q)
	} else {
		err = r.opts.Client.Agent().DisableServiceMaintenanceOpts(r.id, q)
	}
	if err != nil {
		r.mu.Lock()
		// A drain's maintenance is kept even so: it goes out with the
		// next registration, and the instance must never turn passing
		// again while lifeboat shuts down.
		kept := enable && r.drainsByMaintenance()
		if !kept {
			r.maint, r.maintReason = prev, prevReason
		}
		r.mu.Unlock()
		if kept {
			r.m.maintenance.Set(1)
		}
		verb := "enabling"
		if !enable {
			verb = "disabling"
		}
		if consul.IsNotFound(err) {
			// The agent forgot the service; the keeper registers it again.
			r.markForgotten()
			r.kick()
		}
		return fmt.Errorf("%s maintenance of service %s on the Consul agent: %w", verb, r.id, err)
	}
	r.m.maintenance.Set(boolGauge(enable))
	if enable {
		r.log.Warn("service in maintenance mode", "reason", reason)
	} else {
		r.log.Info("service out of maintenance mode")
	}
	return nil
}

// MaintenanceHandler serves POST /v1/maintenance with a MaintenanceRequest
// and answers with the service's Status. Errors are {"error": "..."} like
// the rest of the control socket: 400 for a bad body, 503 when the agent
// did not take the change.
func (r *Registration) MaintenanceHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		var body MaintenanceRequest
		dec := json.NewDecoder(io.LimitReader(req.Body, 64<<10))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&body); err != nil && !errors.Is(err, io.EOF) {
			control.WriteError(w, http.StatusBadRequest, "maintenance: the body must be JSON like {\"enable\": true, \"reason\": \"...\"}: "+err.Error())
			return
		}
		if body.Enable == nil {
			control.WriteError(w, http.StatusBadRequest, "maintenance: say {\"enable\": true} or {\"enable\": false}")
			return
		}
		if err := r.SetMaintenance(req.Context(), *body.Enable, body.Reason); err != nil {
			control.WriteError(w, http.StatusServiceUnavailable, err.Error())
			return
		}
		control.WriteJSON(w, http.StatusOK, r.Status())
	})
}
