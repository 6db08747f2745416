// Command lifeboat is a container entrypoint that makes a stateful app look
// stateless: it restores the app's data before the app starts, supervises it
// as PID 1, and backs the data up to object storage while it runs.
//
// Each subcommand lives in its own file and registers itself in commands;
// main only dispatches. No logic beyond flag parsing belongs in this package.
package main

import (
	"fmt"
	"os"
	"sort"
)

// command is one subcommand: run parses args (without the subcommand name)
// and returns the process exit status.
type command struct {
	summary string
	run     func(args []string) int
}

var commands = map[string]command{}

// exitUsage is the status for usage and config errors.
const exitUsage = 2

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(exitUsage)
	}
	name := os.Args[1]
	switch name {
	case "-h", "-help", "--help", "help":
		usage()
		os.Exit(0)
	}
	cmd, ok := commands[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "lifeboat: unknown command %q\n\n", name)
		usage()
		os.Exit(exitUsage)
	}
	os.Exit(cmd.run(os.Args[2:]))
}

func usage() {
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	fmt.Fprintln(os.Stderr, "usage: lifeboat COMMAND [flags] [args]")
	fmt.Fprintln(os.Stderr, "\ncommands:")
	for _, n := range names {
		fmt.Fprintf(os.Stderr, "  %-10s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(os.Stderr, "\nRun 'lifeboat COMMAND -h' for the flags of one command.")
}
