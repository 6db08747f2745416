package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/lifeboat/lifeboat/cmd/lifeboat/internal/early"
	"github.com/lifeboat/lifeboat/supervisor"
	"github.com/lifeboat/lifeboat/supervisor/config"
	"github.com/lifeboat/lifeboat/supervisor/logging"
)

func init() {
	commands["run"] = command{summary: "run the app as PID 1: restore, supervise, back up", run: runRun}
}

func runRun(args []string) int {
	// Catching every signal takes milliseconds; it started during package
	// init (package early) and overlaps with it.
	signals := early.Signals()
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: lifeboat run [flags] [-- COMMAND ARGS...]")
		fs.PrintDefaults()
	}
	cfgPath := fs.String("config", "", "config file (default $LIFEBOAT_CONFIG)")
	var ov config.Overrides
	fs.StringVar(&ov.Data, "data", "", "data directory (overrides data.path and $LIFEBOAT_DATA)")
	fs.StringVar(&ov.Store, "store", "", "store URL (overrides store.url and $LIFEBOAT_STORE)")
	fs.StringVar(&ov.Socket, "socket", "", "control socket path (overrides control.socket and $LIFEBOAT_SOCKET)")
	fs.StringVar(&ov.LogFormat, "log-format", "", "auto, text or json (default auto: text on a terminal)")
	fs.StringVar(&ov.LogLevel, "log-level", "", "debug, info, warn or error (default info)")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	ov.Command = fs.Args()

	t0 := time.Now()
	cfg, err := config.Load(*cfgPath, ov)
	if err != nil {
		fmt.Fprintf(os.Stderr, "lifeboat: invalid config:\n%v\n", err)
		return exitUsage
	}
	if len(cfg.App.Command) == 0 {
		fmt.Fprintln(os.Stderr, "lifeboat: no app command: set app.command in the config or give it after --")
		return exitUsage
	}
	log, err := logging.New(os.Stderr, cfg.Log.Format, cfg.Log.Level)
	if err != nil {
		fmt.Fprintf(os.Stderr, "lifeboat: %v\n", err)
		return exitUsage
	}
	sup := supervisor.New(supervisor.Options{Config: cfg, Logger: log, LoadDuration: time.Since(t0), Version: version, Signals: signals})
	return sup.Run(context.Background())
}
