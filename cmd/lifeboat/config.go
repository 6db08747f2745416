package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/lifeboat/lifeboat/supervisor/config"
)

func init() {
	commands["config"] = command{summary: "validate a config file and print the effective config", run: runConfig}
}

func runConfig(args []string) int {
	if len(args) == 0 || args[0] != "validate" {
		fmt.Fprintln(os.Stderr, "usage: lifeboat config validate [--config FILE]")
		return exitUsage
	}
	fs := flag.NewFlagSet("config validate", flag.ContinueOnError)
	path := fs.String("config", "", "config file (default $LIFEBOAT_CONFIG; none means all defaults)")
	quiet := fs.Bool("q", false, "print nothing when the config is valid")
	if err := fs.Parse(args[1:]); err != nil {
		return exitUsage
	}
	cfg, err := config.Load(*path, config.Overrides{Command: fs.Args()})
	if err != nil {
		fmt.Fprintf(os.Stderr, "lifeboat: invalid config:\n%v\n", err)
		return exitUsage
	}
	if !*quiet {
		fmt.Printf("config OK: %s\n\n", orNone(cfg.File))
		cfg.Summary(os.Stdout)
	}
	return 0
}

func orNone(s string) string {
	if s == "" {
		return "(no file)"
	}
	return s
}
