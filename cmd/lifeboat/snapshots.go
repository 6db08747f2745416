package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/lifeboat/lifeboat/supervisor"
	"github.com/lifeboat/lifeboat/supervisor/config"
	"github.com/lifeboat/lifeboat/supervisor/logging"
	"github.com/lifeboat/lifeboat/supervisor/progress"
	"github.com/lifeboat/lifeboat/supervisor/snapshot"
)

// EnvCPUProfile names a file to write a CPU profile of a snapshot command
// to (go tool pprof reads it): how bench/snapshot finds where time goes.
const EnvCPUProfile = "LIFEBOAT_CPUPROFILE"

func startCPUProfile(path string) (func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", EnvCPUProfile, err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", EnvCPUProfile, err)
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

func init() {
	commands["snapshots"] = command{summary: "list the snapshots in the store", run: runSnapshots}
}

// repoFlags are the flags every snapshot command shares: where the config
// and the store are.
type repoFlags struct {
	config    string
	store     string
	logFormat string
	logLevel  string
}

func (f *repoFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.config, "config", "", "config file to read store, data and backup settings from (default $LIFEBOAT_CONFIG; none: defaults)")
	fs.StringVar(&f.store, "store", "", "store URL: s3://BUCKET/PREFIX?endpoint=HOST:PORT or file:///ABS/PATH (overrides store.url and $LIFEBOAT_STORE)")
	fs.StringVar(&f.logFormat, "log-format", "", "auto, text or json (default auto: text on a terminal)")
	fs.StringVar(&f.logLevel, "log-level", "", "debug, info, warn or error (default warn; info shows the engine's own lines)")
}

// cliError carries the exit status with the message.
type cliError struct {
	code int
	err  error
}

func (e *cliError) Error() string { return e.err.Error() }
func (e *cliError) Unwrap() error { return e.err }

func usageErr(format string, args ...any) error {
	return &cliError{exitUsage, fmt.Errorf(format, args...)}
}

// exitWith prints err for people and returns its exit status: 2 for usage
// and config errors, 1 for everything else.
func exitWith(name string, err error) int {
	if err == nil {
		return 0
	}
	fmt.Fprintf(os.Stderr, "lifeboat %s: %v\n", name, err)
	var ce *cliError
	if errors.As(err, &ce) {
		return ce.code
	}
	return exitFailure
}

// withRepo loads the config, opens the existing repository without its
// index and calls fn: the start of snapshots, verify and prune. It returns fn's exit
// code, or exitWith's for an error.
func (f *repoFlags) withRepo(name string, fn func(s *session, repo *snapshot.Repository) (int, error)) int {
	s, err := f.load("")
	if err != nil {
		return exitWith(name, err)
	}
	defer s.stop()
	// snapshots needs no index; verify and prune read it themselves.
	repo, err := s.openRepo(snapshot.Options{SkipIndex: true})
	if err != nil {
		return exitWith(name, err)
	}
	defer repo.Store().Close()
	code, err := fn(s, repo)
	if err != nil {
		return exitWith(name, err)
	}
	return code
}

// session is what a snapshot command works with: the loaded config, a
// logger, and a context cancelled by SIGINT/SIGTERM.
type session struct {
	cfg  *config.Config
	log  *slog.Logger
	ctx  context.Context
	stop context.CancelFunc
}

// load reads the config with the flags' overrides and sets up logging. The
// snapshot commands log at warn by default: their output is the progress
// line and the summary, not the engine's chatter.
func (f *repoFlags) load(data string) (*session, error) {
	if f.logLevel == "" && os.Getenv(config.EnvLogLevel) == "" {
		f.logLevel = "warn"
	}
	if data != "" {
		// A relative --data/--to is relative to here; the config wants it absolute.
		abs, err := filepath.Abs(data)
		if err != nil {
			return nil, usageErr("%s: %v", data, err)
		}
		data = abs
	}
	cfg, err := config.Load(f.config, config.Overrides{Store: f.store, Data: data, LogFormat: f.logFormat, LogLevel: f.logLevel})
	if err != nil {
		return nil, &cliError{exitUsage, fmt.Errorf("invalid config:\n%w", err)}
	}
	log, err := logging.New(os.Stderr, cfg.Log.Format, cfg.Log.Level)
	if err != nil {
		return nil, &cliError{exitUsage, err}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	if p := os.Getenv(EnvCPUProfile); p != "" {
		stopProfile, err := startCPUProfile(p)
		if err != nil {
			stop()
			return nil, err
		}
		cancel := stop
		stop = func() { stopProfile(); cancel() }
	}
	return &session{cfg: cfg, log: log, ctx: ctx, stop: stop}, nil
}

// openRepo opens the store and the repository in it. opts.Create makes a
// new repository when the store holds none (backup does; the others must
// not invent an empty repository where the user mistyped a URL);
// opts.SkipIndex leaves its index unloaded. Key and logger are filled in.
func (s *session) openRepo(opts snapshot.Options) (*snapshot.Repository, error) {
	// store.vault: log in to Vault (the vault block; VAULT_ADDR and
	// VAULT_TOKEN fill it in) and fill the store's credentials and key
	// from it, as lifeboat run does.
	if err := supervisor.ResolveStoreVault(s.ctx, s.cfg, s.log); err != nil {
		if supervisor.IsConfigError(err) {
			return nil, &cliError{exitUsage, err}
		}
		return nil, fmt.Errorf("store credentials from Vault: %w", err)
	}
	st := s.cfg.Store
	key, err := supervisor.EncryptionKey(st)
	if err != nil {
		return nil, &cliError{exitUsage, err}
	}
	store, err := supervisor.OpenStore(s.ctx, st)
	if supervisor.IsConfigError(err) {
		return nil, &cliError{exitUsage, err}
	}
	if err != nil {
		return nil, err
	}
	opts.Key, opts.Logger = key, s.log
	repo, err := snapshot.Open(s.ctx, store, opts)
	if err != nil {
		store.Close()
		if errors.Is(err, snapshot.ErrNoRepository) {
			return nil, fmt.Errorf("%w; check --store / store.url / $LIFEBOAT_STORE (a repository is created by the first backup)", err)
		}
		return nil, err
	}
	return repo, nil
}

// display is a progress display on stderr: a redrawn line on a terminal,
// periodic log lines otherwise.
func (s *session) display(op, verb string) *progress.Display {
	return progress.New(progress.Options{Op: op, TransferVerb: verb, Out: os.Stderr, TTY: progress.IsTerminal(os.Stderr), Logger: s.log})
}

// progressFunc adapts the engine's counters to the display. The engine
// reports Done also when it failed, so the display is ended by the caller
// (Finish on success, Abort on error), never by the engine's last call.
func progressFunc(d *progress.Display) func(snapshot.Progress) {
	return func(p snapshot.Progress) {
		d.Update(progress.Stats{Files: p.Files, TotalFiles: p.TotalFiles, Bytes: p.Bytes, TotalBytes: p.TotalBytes,
			Transferred: p.Stored, Elapsed: p.Elapsed})
	}
}

func runSnapshots(args []string) int {
	fs := flag.NewFlagSet("snapshots", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: lifeboat snapshots [--store URL] [--config F] [--json]")
		fmt.Fprintln(os.Stderr, "\nLists the snapshots, oldest first; * marks the one `restore --snapshot latest` picks.")
		fs.PrintDefaults()
	}
	var rf repoFlags
	rf.register(fs)
	asJSON := fs.Bool("json", false, "print the manifests as a JSON array")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return exitUsage
	}
	return rf.withRepo("snapshots", func(s *session, repo *snapshot.Repository) (int, error) {
		list, err := repo.Snapshots(s.ctx)
		if err != nil {
			return 0, err
		}
		if *asJSON {
			if list == nil {
				list = []*snapshot.Manifest{}
			}
			b, _ := json.MarshalIndent(list, "", "  ")
			fmt.Println(string(b))
			return 0, nil
		}
		writeSnapshotTable(os.Stdout, list, snapshot.Latest(list), time.Local)
		return 0, nil
	})
}

// writeSnapshotTable prints one row per snapshot, oldest first.
func writeSnapshotTable(w io.Writer, list []*snapshot.Manifest, latest *snapshot.Manifest, loc *time.Location) {
	if len(list) == 0 {
		fmt.Fprintln(w, "no snapshots")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tTIME\tHOST\tFILES\tSIZE\tADDED\tTAGS\tREASON")
	for _, m := range list {
		id := m.ID
		if m == latest {
			id += " *"
		}
		st := m.Stats
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", id, m.Time.In(loc).Format("2006-01-02 15:04:05"), orDash(m.Host),
			progress.FormatCount(int64(st.Files)), progress.FormatBytes(st.Bytes), progress.FormatBytes(st.NewBytes),
			orDash(strings.Join(m.Tags, ",")), orDash(m.Reason))
	}
	tw.Flush()
	fmt.Fprintf(w, "%d snapshots\n", len(list))
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
