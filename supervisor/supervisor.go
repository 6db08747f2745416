// Package supervisor is lifeboat's run lifecycle: load, connect, elect,
// restore, render, start, serve, shutdown. It joins the parts (process,
// snapshot, trigger, control, ...) and owns the order in which they act;
// the parts know nothing of each other or of this package.
package supervisor

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/lifeboat/lifeboat/supervisor/config"
	"github.com/lifeboat/lifeboat/supervisor/control"
	"github.com/lifeboat/lifeboat/supervisor/metrics"
	"github.com/lifeboat/lifeboat/supervisor/process"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// Exit statuses of lifeboat's own failures (the app's status is passed
// through otherwise).
const (
	ExitFailure = 1 // restore failed, a hook that must succeed failed, ...
	ExitUsage   = 2 // usage or config error
)

// Phase names, in lifecycle order.
const (
	PhaseLoad     = "load"
	PhaseConnect  = "connect"
	PhaseElect    = "elect"
	PhaseRestore  = "restore"
	PhaseRender   = "render"
	PhaseStart    = "start"
	PhaseServe    = "serve"
	PhaseShutdown = "shutdown"
)

// Options configure a Supervisor.
type Options struct {
	Config *config.Config
	Logger *slog.Logger
	// LoadDuration is how long loading the config took, so the load phase
	// is reported like the others.
	LoadDuration time.Duration
	Version      string
	// Signals, when set, waits for signal catching started early (see
	// process.CatchSignalsAsync); nil starts it in Run.
	Signals func() chan os.Signal
}

// Supervisor runs one app through the lifecycle.
type Supervisor struct {
	cfg     *config.Config
	log     *slog.Logger
	version string
	signals func() chan os.Signal

	reaper   *process.Reaper
	app      *process.App
	registry *prometheus.Registry
	metrics  *metrics.Supervisor
	control  *control.Server
	sec      secrets     // Consul, Vault, templates and env (secrets.go)
	data     dataPart    // store, restore, backups (data.go)
	svc      servicePart // Consul service registration (service_wiring.go)
	elect    leaderPart  // primary election (leader.go)

	// shutdownCh is closed when lifeboat is asked to stop (SIGTERM/SIGINT)
	// or the app has ended for good.
	shutdownCh   chan struct{}
	shutdownOnce sync.Once

	mu      sync.Mutex
	started time.Time
	phase   string
	phases  []PhaseRecord
	exit    *process.Exit
}

// PhaseRecord is one finished (or failed) phase.
type PhaseRecord struct {
	Name     string        `json:"name"`
	Duration time.Duration `json:"duration_ns"`
	Error    string        `json:"error,omitempty"`
}

// New prepares a supervisor; Run runs it.
func New(opts Options) *Supervisor {
	s := &Supervisor{
		cfg:        opts.Config,
		log:        opts.Logger,
		version:    opts.Version,
		signals:    opts.Signals,
		shutdownCh: make(chan struct{}),
		started:    time.Now(),
	}
	s.registry = metrics.NewRegistry()
	m, err := metrics.NewSupervisor(s.registry, metrics.BuildInfo{Version: opts.Version, Revision: metrics.VCSRevision()})
	if err != nil {
		s.log.Warn("supervisor metrics unavailable", "error", err)
	}
	s.metrics = m
	s.record(PhaseLoad, opts.LoadDuration, nil)
	return s
}

// phaseStart marks the start of a phase and returns the function that logs
// its end with the duration.
func (s *Supervisor) phaseStart(name string) func(error) {
	s.mu.Lock()
	s.phase = name
	s.mu.Unlock()
	s.metrics.EnterPhase(name)
	t0 := time.Now()
	return func(err error) { s.record(name, time.Since(t0), err) }
}

func (s *Supervisor) record(name string, d time.Duration, err error) {
	rec := PhaseRecord{Name: name, Duration: d}
	if err != nil {
		rec.Error = err.Error()
		s.log.Error("phase failed", "phase", name, "duration", d.Round(time.Microsecond).String(), "error", err)
	} else {
		s.log.Info("phase done", "phase", name, "duration", d.Round(time.Microsecond).String())
	}
	s.mu.Lock()
	s.phases = append(s.phases, rec)
	s.mu.Unlock()
	s.metrics.PhaseDone(name, d, err)
}

// Run runs the whole lifecycle and returns lifeboat's exit status: the
// app's own, 128+N when it died of signal N, 127/126 when it could not be
// started, 1 for lifeboat's own failures.
func (s *Supervisor) Run(ctx context.Context) int {
	// Signals stay caught and the reaper stays up until the process exits:
	// lifeboat exits right after Run, and un-catching SIGTERM earlier would
	// only open a window where it kills lifeboat mid-shutdown (and costs
	// milliseconds of start-to-exit overhead).
	catch := s.signals
	if catch == nil {
		catch = process.CatchSignalsAsync()
	}
	s.reaper = process.NewReaper(s.log)
	if err := process.SetSubreaper(); err != nil {
		s.log.Warn("cannot become a subreaper; orphans of the app will not be reaped here", "error", err)
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	srv, err := control.New(control.Options{
		Socket:          s.cfg.Control.Socket,
		Group:           s.socketGroup(),
		DataDir:         s.cfg.Data.Path,
		Status:          s.statusFunc,
		Notify:          s.notify,
		Events:          []string{"backup"},
		Registry:        s.registry,
		TelemetryListen: s.cfg.Telemetry.Listen,
		Logger:          s.log,
	})
	switch {
	case err == nil:
		s.control = srv
		defer func() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			srv.Close(ctx)
		}()
	case errors.Is(err, control.ErrSupervisorRunning):
		// Two supervisors on one socket would answer each other's notify
		// and status: a second lifeboat on the same data must not start.
		s.log.Error("another lifeboat is serving the control socket; not starting the app", "error", err)
		return ExitFailure
	case s.cfg.Control.Socket == config.DefaultSocket:
		// Nobody asked for a particular socket and no default place is
		// writable (a non-root user without XDG_RUNTIME_DIR): run the app
		// anyway, without status and notify.
		s.log.Warn("no control socket: status and notify are unavailable; set control.socket or LIFEBOAT_SOCKET to a writable path", "error", err)
	default:
		s.log.Error("cannot open the control socket; not starting the app", "error", err)
		return ExitFailure
	}

	signals := catch()
	// Until the app runs, SIGTERM/SIGINT abort whatever phase is under way.
	preStart := make(chan struct{})
	// received is written by the goroutine and read only after exited is
	// closed: it may take a signal in the same instant preStart closes.
	exited := make(chan struct{})
	var received unix.Signal
	go func() {
		defer close(exited)
		for {
			select {
			case sig := <-signals:
				if sig == unix.SIGTERM || sig == unix.SIGINT {
					received = sig.(unix.Signal)
					s.log.Warn("stop requested before the app started", "signal", sig.String())
					s.requestShutdown()
					cancel()
					return
				}
			case <-preStart:
				return
			}
		}
	}()

	defer s.closeSecrets() // last: the Vault token is revoked after everything else
	status, ok := s.prepare(ctx)
	close(preStart)
	<-exited
	if !ok {
		if received != 0 {
			return 128 + int(received)
		}
		return status
	}
	if received != 0 {
		return 128 + int(received)
	}

	exit, err := s.startAndServe(ctx, signals)
	done := s.phaseStart(PhaseShutdown)
	s.shutdown(exit, err)
	done(nil)
	if err != nil {
		var se *process.StartError
		if errors.As(err, &se) {
			return se.Status
		}
		return ExitFailure
	}
	return exit.Status()
}

// prepare runs the phases before the app starts. It returns false and
// the exit status when lifeboat must not start the app.
func (s *Supervisor) prepare(ctx context.Context) (int, bool) {
	if err := s.connectSecrets(ctx); err != nil {
		return phaseExit(err), false
	}
	if err := s.electLeader(ctx); err != nil {
		return phaseExit(err), false
	}
	if err := s.restoreData(ctx); err != nil {
		return phaseExit(err), false
	}
	if err := s.renderSecrets(ctx); err != nil {
		return phaseExit(err), false
	}
	if err := s.prepareService(); err != nil {
		return phaseExit(err), false
	}
	return 0, true
}

// startAndServe starts the app and serves until it has ended for good.
func (s *Supervisor) startAndServe(ctx context.Context, signals <-chan os.Signal) (process.Exit, error) {
	done := s.phaseStart(PhaseStart)
	spec, err := s.appSpec()
	if err != nil {
		done(err)
		return process.Exit{}, err
	}
	s.app = process.NewApp(spec, s.reaper, s.log)
	s.app.OnStart = s.metrics.AppStarted
	s.app.OnExit = func(e process.Exit) { s.metrics.AppExited(e.Status(), e.Signal != 0) }
	type result struct {
		exit process.Exit
		err  error
	}
	ended := make(chan result, 1)
	go func() {
		exit, err := s.app.Run(ctx)
		ended <- result{exit, err}
	}()
	// The start phase ends when the app is running (or failed to start).
	select {
	case <-s.app.Started():
		done(nil)
		s.serveSecrets()
		s.serveData()
		s.serveService()
		s.serveLeader()
	case r := <-ended:
		done(r.err)
		return r.exit, r.err
	}

	serveDone := s.phaseStart(PhaseServe)
	defer func() { serveDone(nil) }()
	for {
		select {
		case sig := <-signals:
			s.handleSignal(sig.(unix.Signal))
		case r := <-ended:
			s.requestShutdown()
			s.mu.Lock()
			s.exit = &r.exit
			s.mu.Unlock()
			if r.err != nil {
				s.log.Error("app could not be started", "error", r.err)
			} else {
				s.log.Info("app ended", "exit", r.exit.String(), "restarts", s.app.Restarts())
			}
			return r.exit, r.err
		}
	}
}

// handleSignal decides what a signal to lifeboat means while the app runs.
func (s *Supervisor) handleSignal(sig unix.Signal) {
	switch sig {
	case unix.SIGTERM, unix.SIGINT:
		s.data.stopRequested.Store(true)
		s.requestShutdown()
		s.app.Stop(sig)
	default:
		if s.backupSignal(sig) {
			return
		}
		if err := s.app.Signal(sig); err != nil {
			s.log.Debug("signal not forwarded", "signal", unix.SignalName(sig), "error", err)
		}
	}
}

// socketGroup is the group that may use the control socket besides
// lifeboat's own user: control.group, else the primary group of app.user,
// so the app and its hooks (a git post-receive hook, a database's
// trigger script) can `lifeboat notify backup` without being root.
func (s *Supervisor) socketGroup() string {
	if g := s.cfg.Control.Group; g != "" {
		return g
	}
	if s.cfg.App.User == "" || os.Geteuid() != 0 {
		return ""
	}
	u, err := process.LookupUser(s.cfg.App.User)
	if err != nil || u.Gid == 0 {
		return "" // the start phase reports a bad user; gid 0 needs no grant
	}
	return strconv.FormatUint(uint64(u.Gid), 10)
}

func (s *Supervisor) requestShutdown() {
	s.shutdownOnce.Do(func() { close(s.shutdownCh) })
}

// shutdown runs after the app has ended for good.
func (s *Supervisor) shutdown(exit process.Exit, startErr error) {
	s.shutdownData(exit, startErr)
	s.releaseLeader() // after the final backup: a follower takes over at once
	s.closeService()  // after the final backup: deregister
}

// appSpec maps the config's app block to a process spec.
func (s *Supervisor) appSpec() (process.Spec, error) {
	a := s.cfg.App
	spec := process.Spec{
		Command:        a.Command,
		Dir:            a.Workdir,
		User:           a.User,
		SignalGroup:    a.SignalGroup,
		StopTimeout:    config.Dur(a.StopTimeout),
		RestartPolicy:  a.Restart.Policy,
		MaxRestarts:    *a.Restart.MaxRestarts,
		BackoffInitial: config.Dur(a.Restart.BackoffInitial),
		BackoffMax:     config.Dur(a.Restart.BackoffMax),
	}
	if a.StopSignal != "" {
		sig, err := config.ParseSignal(a.StopSignal)
		if err != nil {
			return spec, err
		}
		spec.StopSignal = sig
	}
	for k, v := range a.Env {
		spec.Env = append(spec.Env, k+"="+v)
	}
	spec.Env = append(spec.Env, s.secretsEnv()...)
	return spec, nil
}
