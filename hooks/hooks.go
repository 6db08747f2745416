// Package hooks runs lifeboat's hook commands: pre_backup, post_backup,
// pre_restore, post_restore and init around the data lifecycle, and
// on_leader, on_follower and on_demote for the election.
//
// A hook is a command run with a timeout, as a configurable user, in its own
// process group, with the inherited environment plus the hook's own env and
// LIFEBOAT_* variables. Its stdout and stderr go to the log line by line
// with the hook's name. It can hand back key=value metadata through the file
// named in LIFEBOAT_METADATA_FILE; metadata stored with a snapshot comes
// back to restore hooks as LIFEBOAT_META_<KEY> variables and in the file
// named in LIFEBOAT_METADATA_IN.
//
// When lifeboat is PID 1, one reaper goroutine owns wait4(-1) and
// exec.Cmd.Wait would race it, so the Runner starts commands through a
// Starter (process.CodeStarter in the supervisor; os/exec by default).
package hooks

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/lifeboat/lifeboat/supervisor/process"
)

// Defaults for a Runner and a Hook.
const (
	// DefaultTimeout bounds a hook whose Timeout is zero.
	DefaultTimeout = 5 * time.Minute
	// DefaultKillGrace is how long a timed-out hook's process group has
	// between SIGTERM and SIGKILL.
	DefaultKillGrace = 5 * time.Second
	// DefaultOutputDrain is how long the runner keeps reading output after
	// the hook's main process ended, for lines still in the pipe. Processes
	// the hook left behind that keep the pipe open are not waited for
	// longer than this.
	DefaultOutputDrain = 2 * time.Second
	// MaxMetadataBytes bounds the metadata file a hook writes.
	MaxMetadataBytes = 64 << 10
	// maxLine splits longer output lines so one runaway line cannot grow
	// memory without bound.
	maxLine = 16 << 10
)

// Variables the runner or its caller set in every hook's environment.
// Callers fill the vars map of Run with these keys (a key without the
// LIFEBOAT_ prefix gets it, upper-cased: "phase" is LIFEBOAT_PHASE).
const (
	VarHook          = "LIFEBOAT_HOOK"          // the hook's name; set by the runner
	VarPhase         = "LIFEBOAT_PHASE"         // backup, restore, init, election
	VarData          = "LIFEBOAT_DATA"          // the data directory
	VarSnapshot      = "LIFEBOAT_SNAPSHOT"      // the snapshot id, where there is one
	VarReason        = "LIFEBOAT_REASON"        // the reasons of the requests a backup covers
	VarTrigger       = "LIFEBOAT_TRIGGER"       // the sources of those requests
	VarRole          = "LIFEBOAT_ROLE"          // leader, follower, or standalone
	VarLeader        = "LIFEBOAT_LEADER"        // the leader's advertised address
	VarFencingToken  = "LIFEBOAT_FENCING_TOKEN" // the election term's fencing token
	VarBackupError   = "LIFEBOAT_BACKUP_ERROR"  // post_backup only: why the backup failed
	VarMetadataFile  = "LIFEBOAT_METADATA_FILE" // the file a hook writes key=value lines to; set by the runner
	VarMetadataIn    = "LIFEBOAT_METADATA_IN"   // the snapshot's metadata as key=value lines; set by the runner
	MetaEnvPrefix    = "LIFEBOAT_META_"         // prefix of each metadata key given back as a variable
	lifeboatPrefix   = "LIFEBOAT_"
	metadataFileMode = 0o600
)

// Starter starts a command and returns a function that waits for it. The
// command's stdio is nil or *os.File. process.CodeStarter satisfies it;
// snapshot.Starter is the same interface.
type Starter interface {
	Start(cmd *exec.Cmd) (wait func() (exitCode int, err error), err error)
}

// ExecStarter starts commands with os/exec (cmd.Start and cmd.Wait). Use it
// only where no reaper owns wait4: the CLI, tests.
type ExecStarter struct{}

// Start starts cmd; wait returns its exit code, 128+N when signal N killed it.
func (ExecStarter) Start(cmd *exec.Cmd) (func() (int, error), error) {
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return func() (int, error) {
		err := cmd.Wait()
		st := cmd.ProcessState
		if st == nil {
			return -1, err
		}
		if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal()), err
		}
		return st.ExitCode(), err
	}, nil
}

// Hook is one configured hook.
type Hook struct {
	Name    string            // pre_backup, post_backup, ...: the log and error name
	Command []string          // program and arguments; no shell unless it is one
	Timeout time.Duration     // 0 means DefaultTimeout
	User    string            // "name", "uid", "name:group" or "uid:gid"; "" runs as lifeboat's user
	Env     map[string]string // extra variables; values may be secrets and are never logged
	Dir     string            // working directory; "" keeps lifeboat's
}

// Result is what a hook run produced.
type Result struct {
	Metadata map[string]string // the key=value lines the hook wrote; never nil
	ExitCode int               // 128+N when killed by signal N; -1 when it never started
	Duration time.Duration
}

// ExitError is a hook that ended with a non-zero status.
type ExitError struct {
	Hook string
	Code int
}

func (e *ExitError) Error() string {
	return fmt.Sprintf("hook %s exited with status %d", e.Hook, e.Code)
}

// TimeoutError is a hook killed because it ran longer than its timeout.
type TimeoutError struct {
	Hook    string
	Timeout time.Duration
}

func (e *TimeoutError) Error() string {
	return fmt.Sprintf("hook %s timed out after %s", e.Hook, e.Timeout)
}

// Option changes one Run.
type Option func(*runOptions)

type runOptions struct {
	metadata map[string]string
}

// WithMetadata hands a snapshot's metadata to the hook (restore hooks): as
// LIFEBOAT_META_<KEY> variables (key upper-cased, every character that is
// not a letter or digit made "_") and as key=value lines in the file named
// in LIFEBOAT_METADATA_IN.
func WithMetadata(m map[string]string) Option {
	return func(o *runOptions) { o.metadata = m }
}

// Runner runs hooks. The zero value works: os/exec, no logging.
type Runner struct {
	Starter   Starter       // nil: ExecStarter
	Logger    *slog.Logger  // nil: discard
	KillGrace time.Duration // 0: DefaultKillGrace
	// Env is the environment hooks inherit; nil means os.Environ().
	Env []string
	// TempDir holds the metadata files; "" means os.TempDir(). The hook's
	// user must be able to reach it.
	TempDir string
	// OutputDrain: 0 means DefaultOutputDrain.
	OutputDrain time.Duration
}

// Run runs h and waits for it. vars are the LIFEBOAT_* variables the caller
// knows (see the Var constants). The error is a *TimeoutError, an
// *ExitError, a metadata error, or a failure to start; the Result is filled
// as far as the hook got either way.
func (r Runner) Run(ctx context.Context, h Hook, vars map[string]string, opts ...Option) (Result, error) {
	t0 := time.Now()
	res := Result{Metadata: map[string]string{}, ExitCode: -1}
	var o runOptions
	for _, opt := range opts {
		opt(&o)
	}
	log := r.logger().With("hook", h.Name)
	if len(h.Command) == 0 || h.Command[0] == "" {
		return res, fmt.Errorf("hook %s: no command configured", h.Name)
	}
	if err := ctx.Err(); err != nil {
		return res, fmt.Errorf("hook %s not started: %w", h.Name, err)
	}
	timeout := h.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	var u *process.User
	if h.User != "" {
		var err error
		if u, err = process.LookupUser(h.User); err != nil {
			return res, fmt.Errorf("hook %s: run as %w", h.Name, err)
		}
	}

	files := metadataFiles{dir: r.TempDir, user: u}
	defer files.remove()
	outPath, err := files.create(h.Name, "out", nil)
	if err != nil {
		return res, fmt.Errorf("hook %s: %w", h.Name, err)
	}
	inPath := ""
	if o.metadata != nil {
		data, err := FormatMetadata(o.metadata)
		if err != nil {
			return res, fmt.Errorf("hook %s: metadata for LIFEBOAT_METADATA_IN: %w", h.Name, err)
		}
		if inPath, err = files.create(h.Name, "in", data); err != nil {
			return res, fmt.Errorf("hook %s: %w", h.Name, err)
		}
	}

	cmd := exec.Command(h.Command[0], h.Command[1:]...)
	if cmd.Err != nil {
		res.ExitCode = 127
		return res, fmt.Errorf("hook %s: cannot start %q: %w (check the hook's command and PATH)", h.Name, h.Command[0], unwrapExec(cmd.Err))
	}
	cmd.Dir = h.Dir
	cmd.Env = r.environ(h, vars, u, outPath, inPath, o.metadata)
	attr := &syscall.SysProcAttr{Setpgid: true}
	if u != nil {
		attr.Credential = u.Credential()
	}
	cmd.SysProcAttr = attr

	out, err := startOutput(log)
	if err != nil {
		return res, fmt.Errorf("hook %s: %w", h.Name, err)
	}
	cmd.Stdout, cmd.Stderr = out.stdoutW, out.stderrW
	log.Info("hook started", "program", h.Command[0], "user", h.User, "timeout", timeout)
	wait, err := r.starter().Start(cmd)
	out.closeWriters()
	if err != nil {
		out.close()
		res.ExitCode = 126
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, syscall.ENOENT) {
			res.ExitCode = 127
		}
		res.Duration = time.Since(t0)
		return res, fmt.Errorf("hook %s: cannot start %q: %w", h.Name, h.Command[0], unwrapExec(err))
	}

	code, runErr := r.await(ctx, cmd.Process.Pid, wait, h.Name, timeout, log)
	out.drain(r.outputDrain())
	res.ExitCode = code
	res.Duration = time.Since(t0)

	md, mdErr := readMetadata(outPath)
	if md != nil {
		res.Metadata = md
	}
	if runErr == nil && mdErr != nil {
		runErr = fmt.Errorf("hook %s: %w", h.Name, mdErr)
	}
	if runErr != nil {
		log.Warn("hook failed", "error", runErr, "exit_code", code, "duration", res.Duration.Round(time.Millisecond))
		return res, runErr
	}
	log.Info("hook done", "exit_code", code, "duration", res.Duration.Round(time.Millisecond), "metadata_keys", len(res.Metadata))
	return res, nil
}

// await waits for the hook's main process. On timeout or cancellation it
// sends SIGTERM to the whole process group, and SIGKILL to what is left of
// it once the main process ended or the grace period ran out.
func (r Runner) await(ctx context.Context, pid int, wait func() (int, error), name string, timeout time.Duration, log *slog.Logger) (int, error) {
	type exit struct {
		code int
		err  error
	}
	done := make(chan exit, 1)
	go func() {
		code, err := wait()
		done <- exit{code, err}
	}()
	timer := time.NewTimer(timeout)
	defer timer.Stop()

	var stopErr error
	select {
	case e := <-done:
		if e.code != 0 {
			return e.code, &ExitError{Hook: name, Code: e.code}
		}
		return 0, nil
	case <-timer.C:
		stopErr = &TimeoutError{Hook: name, Timeout: timeout}
	case <-ctx.Done():
		stopErr = fmt.Errorf("hook %s stopped: %w", name, ctx.Err())
	}
	grace := r.killGrace()
	log.Warn("stopping hook", "reason", stopErr, "signal", "SIGTERM", "grace", grace)
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	graceTimer := time.NewTimer(grace)
	defer graceTimer.Stop()
	var e exit
	select {
	case e = <-done:
		// The main process is gone; children it left in the group that
		// ignore SIGTERM would outlive the hook.
		_ = syscall.Kill(-pid, syscall.SIGKILL)
	case <-graceTimer.C:
		log.Warn("hook ignored SIGTERM; killing its process group", "signal", "SIGKILL")
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		e = <-done
	}
	return e.code, stopErr
}

// environ builds the hook's environment: inherited, then the hook's own
// env, then the LIFEBOAT_* variables, later ones winning.
func (r Runner) environ(h Hook, vars map[string]string, u *process.User, outPath, inPath string, md map[string]string) []string {
	base := r.Env
	if base == nil {
		base = os.Environ()
	}
	if u != nil {
		base = append(slices.Clip(base), u.LoginEnv()...)
	}
	env := newEnvList(base)
	for _, k := range sortedKeys(h.Env) {
		env.set(k, h.Env[k])
	}
	for _, k := range sortedKeys(md) {
		env.set(MetaEnvName(k), md[k])
	}
	for _, k := range sortedKeys(vars) {
		env.set(VarName(k), vars[k])
	}
	env.set(VarHook, h.Name)
	env.set(VarMetadataFile, outPath)
	if inPath != "" {
		env.set(VarMetadataIn, inPath)
	}
	return env.list()
}

// VarName is the environment name of a vars key: LIFEBOAT_ prefixed and
// upper-cased when it is not already.
func VarName(k string) string {
	if strings.HasPrefix(k, lifeboatPrefix) {
		return k
	}
	return lifeboatPrefix + strings.ToUpper(k)
}

// MetaEnvName is the variable a metadata key is handed to restore hooks
// in: LIFEBOAT_META_ + the key upper-cased, every character that is not a
// letter or digit made "_" (gtid.pos -> LIFEBOAT_META_GTID_POS).
func MetaEnvName(key string) string {
	b := []byte(strings.ToUpper(key))
	for i, c := range b {
		if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			b[i] = '_'
		}
	}
	return MetaEnvPrefix + string(b)
}

func (r Runner) logger() *slog.Logger {
	if r.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return r.Logger
}

func (r Runner) starter() Starter {
	if r.Starter == nil {
		return ExecStarter{}
	}
	return r.Starter
}

func (r Runner) killGrace() time.Duration {
	if r.KillGrace <= 0 {
		return DefaultKillGrace
	}
	return r.KillGrace
}

func (r Runner) outputDrain() time.Duration {
	if r.OutputDrain <= 0 {
		return DefaultOutputDrain
	}
	return r.OutputDrain
}

func unwrapExec(err error) error {
	var ee *exec.Error
	if errors.As(err, &ee) {
		return ee.Err
	}
	return err
}

// envList is an environment with set-or-replace by name, order kept.
type envList struct {
	kv  []string
	idx map[string]int
}

func newEnvList(base []string) *envList {
	e := &envList{idx: map[string]int{}}
	for _, kv := range base {
		k, _, _ := strings.Cut(kv, "=")
		if i, ok := e.idx[k]; ok {
			e.kv[i] = kv
			continue
		}
		e.idx[k] = len(e.kv)
		e.kv = append(e.kv, kv)
	}
	return e
}

func (e *envList) set(k, v string) {
	if i, ok := e.idx[k]; ok {
		e.kv[i] = k + "=" + v
		return
	}
	e.idx[k] = len(e.kv)
	e.kv = append(e.kv, k+"="+v)
}

func (e *envList) list() []string { return e.kv }

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
