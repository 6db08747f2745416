package supervisor

// The supervisor's side of service registration: it maps the service
// block to the service package's options once the app's environment is
// known, runs the registration while the app runs, marks the service
// critical as soon as lifeboat is asked to stop, serves maintenance mode
// on the control socket, and deregisters at shutdown. The election part
// hands the role in with setServiceRole.

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"syscall"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/lifeboat/lifeboat/hooks"
	"github.com/lifeboat/lifeboat/supervisor/config"
	"github.com/lifeboat/lifeboat/supervisor/consul"
	"github.com/lifeboat/lifeboat/supervisor/process"
	"github.com/lifeboat/lifeboat/supervisor/service"
)

// serviceDeregisterTimeout bounds deregistration at shutdown.
const serviceDeregisterTimeout = 5 * time.Second

// servicePart is the registration and the goroutines that serve it.
type servicePart struct {
	mu   sync.Mutex
	reg  *service.Registration
	role string // kept until the registration exists

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// prepareService builds the registration from the service block. It runs
// after the render phase, so a command check gets the app's rendered
// environment. A bad check target is a config error (exit 2).
func (s *Supervisor) prepareService() error {
	if s.cfg.Service == nil {
		return nil
	}
	err := s.newService()
	if err != nil {
		// No phase carries this step, so say it here.
		s.log.Error("cannot set up the service registration; not starting the app", "error", err)
	}
	return err
}

func (s *Supervisor) newService() error {
	sc := s.cfg.Service
	cl, err := s.consulClient()
	if err != nil {
		return err
	}
	opts := service.Options{
		Client:     cl,
		Name:       sc.Name,
		ID:         sc.ID,
		Port:       sc.Port,
		Address:    sc.Address,
		Tags:       sc.Tags,
		Meta:       sc.Meta,
		PrimaryTag: sc.PrimaryTag,
		ReplicaTag: sc.ReplicaTag,
		Logger:     s.log,
		Metrics:    s.registry,
	}
	if s.reaper != nil {
		opts.Starter = process.CodeStarter{Reaper: s.reaper}
	}
	if ch := sc.Check; ch != nil {
		c := &service.Check{
			Command:         ch.Command,
			HTTP:            ch.HTTP,
			TCP:             ch.TCP,
			Interval:        config.Dur(ch.Interval),
			Timeout:         config.Dur(ch.Timeout),
			DeregisterAfter: config.Dur(ch.DeregisterAfter),
		}
		if len(ch.Command) > 0 {
			env, cred, err := s.serviceCheckEnv()
			if err != nil {
				return usageError{fmt.Errorf("service.check.command: %w", err)}
			}
			c.Env, c.Credential = env, cred
			if s.cfg.App != nil {
				c.Dir = s.cfg.App.Workdir
			}
		}
		opts.Check = c
	}
	reg, err := service.New(opts)
	if err != nil {
		return usageError{err}
	}
	s.svc.mu.Lock()
	s.svc.reg = reg
	role := s.svc.role
	s.svc.mu.Unlock()
	if role != "" {
		reg.SetRole(role)
	}
	return nil
}

// consulClient is the client of the connect phase or, when that built
// none (no consul block, templates or env), one for the local agent or
// CONSUL_HTTP_ADDR, built once: the election and the service share it.
func (s *Supervisor) consulClient() (*consulapi.Client, error) {
	s.mu.Lock() // connect sets s.sec.consul under it
	defer s.mu.Unlock()
	if s.sec.consul == nil {
		cl, err := consul.NewClient(consul.Options{})
		if err != nil {
			return nil, usageError{err}
		}
		s.sec.consul = cl
	}
	return s.sec.consul, nil
}

// serviceCheckEnv is a command check's environment on top of lifeboat's:
// the app's env block and rendered env, the service's name, id and port,
// and the data directory; and the app's user, so the check runs with the
// app's rights, not root's.
func (s *Supervisor) serviceCheckEnv() ([]string, *syscall.Credential, error) {
	sc := s.cfg.Service
	var env []string
	var cred *syscall.Credential
	if a := s.cfg.App; a != nil {
		for k, v := range a.Env {
			env = append(env, k+"="+v)
		}
		if a.User != "" {
			u, err := process.LookupUser(a.User)
			if err != nil {
				return nil, nil, err
			}
			cred = u.Credential()
			env = append(env, u.LoginEnv()...)
		}
	}
	env = append(env, s.secretsEnv()...)
	env = append(env,
		hooks.VarPhase+"=check",
		"LIFEBOAT_SERVICE_NAME="+sc.Name,
		"LIFEBOAT_SERVICE_PORT="+strconv.Itoa(sc.Port),
	)
	if s.cfg.Data != nil {
		env = append(env, hooks.VarData+"="+s.cfg.Data.Path)
	}
	return env, cred, nil
}

// serveService registers the service and keeps it registered while the
// app runs; a stop request marks it critical at once, so clients leave
// before the app is stopped.
func (s *Supervisor) serveService() {
	s.svc.mu.Lock()
	reg := s.svc.reg
	s.svc.mu.Unlock()
	if reg == nil {
		return
	}
	if s.control != nil {
		s.control.Handle("POST "+service.PathMaintenance, reg.MaintenanceHandler())
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.svc.cancel = cancel
	s.svc.wg.Add(2)
	go func() {
		defer s.svc.wg.Done()
		reg.Run(ctx)
	}()
	go func() {
		defer s.svc.wg.Done()
		select {
		case <-ctx.Done():
		case <-s.shutdownCh:
			dctx, cancel := context.WithTimeout(ctx, serviceDeregisterTimeout)
			defer cancel()
			if err := reg.Drain(dctx, "the app is stopping"); err != nil {
				s.log.Warn("cannot mark the service critical before stopping", "error", err)
			}
		}
	}()
}

// closeService stops the registration and deregisters the service. It
// runs after the app has stopped and the final backup, before the Vault
// token is revoked.
func (s *Supervisor) closeService() {
	s.svc.mu.Lock()
	reg := s.svc.reg
	s.svc.mu.Unlock()
	if reg == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), serviceDeregisterTimeout)
	defer cancel()
	if err := reg.Close(ctx); err != nil {
		s.log.Warn("service not deregistered; Consul removes it after check.deregister_after, if set", "error", err)
	}
	if s.svc.cancel != nil {
		s.svc.cancel()
	}
	s.svc.wg.Wait()
}

// setServiceRole is how the election part tells the service its role:
// the election's role names ("leader", "follower", "candidate") or
// service.RolePrimary/RoleReplica; "candidate" and "" carry no role tag.
// Safe to call at any time, also before the registration exists; it
// returns at once (the agent is told from the registration's goroutine),
// so it may be called from Elector.OnRole.
func (s *Supervisor) setServiceRole(role string) {
	s.svc.mu.Lock()
	s.svc.role = role
	reg := s.svc.reg
	s.svc.mu.Unlock()
	if reg != nil {
		reg.SetRole(role)
	}
}

// serviceStatus is the status section; nil without a service block.
func (s *Supervisor) serviceStatus() *service.Status {
	s.svc.mu.Lock()
	reg := s.svc.reg
	s.svc.mu.Unlock()
	if reg == nil {
		return nil
	}
	st := reg.Status()
	return &st
}
