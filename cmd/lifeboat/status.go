package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/lifeboat/lifeboat/supervisor/config"
	"github.com/lifeboat/lifeboat/supervisor/control"
)

// exitFailure is the status when lifeboat itself fails (here: no
// supervisor answers, or it reports an error).
const exitFailure = 1

// statusTimeout bounds `lifeboat status`: the supervisor answers at once.
const statusTimeout = 10 * time.Second

func init() {
	commands["status"] = command{summary: "show the running supervisor's status", run: runStatus}
}

// socketFlags are the flags that find the control socket, shared by the
// client subcommands.
type socketFlags struct {
	socket string
	config string
	data   string
}

func (s *socketFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&s.socket, "socket", "", "control socket (default $LIFEBOAT_SOCKET, control.socket, or search /run/lifeboat.sock, $XDG_RUNTIME_DIR, the data dir)")
	fs.StringVar(&s.config, "config", "", "config file to read control.socket and data.path from (default $LIFEBOAT_CONFIG)")
	fs.StringVar(&s.data, "data", "", "data directory, the last place searched for the socket (default $LIFEBOAT_DATA)")
}

// path resolves the socket the way the server chose it: --socket, then
// $LIFEBOAT_SOCKET, then control.socket from the config, then the search.
// A config that does not load is an error only when --config named it.
func (s *socketFlags) path() (string, error) {
	if s.socket != "" {
		return s.socket, nil
	}
	explicit, data := "", s.data
	if data == "" {
		data = os.Getenv(control.EnvData)
	}
	cfg, err := config.Load(s.config, config.Overrides{Data: s.data})
	switch {
	case err != nil && s.config != "":
		return "", fmt.Errorf("config %s: %w", s.config, err)
	case err == nil:
		if cfg.Control != nil && cfg.Control.Socket != control.DefaultSocket {
			explicit = cfg.Control.Socket
		}
		if cfg.Data != nil && cfg.Data.Path != "" {
			data = cfg.Data.Path
		}
	}
	return control.Locate(explicit, data), nil
}

// dial connects to the supervisor or prints why not.
func (s *socketFlags) dial(cmd string) (*control.Client, int) {
	path, err := s.path()
	if err != nil {
		fmt.Fprintf(os.Stderr, "lifeboat %s: %v\n", cmd, err)
		return nil, exitUsage
	}
	c, err := control.Dial(path)
	if err != nil {
		fmt.Fprintf(os.Stderr, "lifeboat %s: %v\n", cmd, err)
		return nil, exitFailure
	}
	return c, 0
}

func runStatus(args []string) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: lifeboat status [--json] [--socket PATH]")
		fs.PrintDefaults()
	}
	asJSON := fs.Bool("json", false, "print the supervisor's status JSON as is")
	var sf socketFlags
	sf.register(fs)
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "lifeboat status: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	c, code := sf.dial("status")
	if c == nil {
		return code
	}
	defer c.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, statusTimeout)
	defer cancel()
	raw, err := c.Status(ctx)
	if err != nil {
		fmt.Fprintf(os.Stderr, "lifeboat status: %v\n", err)
		return exitFailure
	}
	if *asJSON {
		os.Stdout.Write(append(raw, '\n'))
		return 0
	}
	if err := control.FormatStatus(os.Stdout, raw); err != nil {
		fmt.Fprintf(os.Stderr, "lifeboat status: %v\n", err)
		return exitFailure
	}
	fmt.Printf("(via %s)\n", c.Path())
	return 0
}
