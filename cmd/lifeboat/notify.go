package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/lifeboat/lifeboat/supervisor/control"
)

func init() {
	commands["notify"] = command{summary: "ask the running supervisor to act on an event (backup)", run: runNotify}
}

func runNotify(args []string) int {
	fs := flag.NewFlagSet("notify", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: lifeboat notify EVENT [--reason TEXT] [--wait] [--timeout D] [--json] [--socket PATH]")
		fmt.Fprintln(os.Stderr, "\nEVENT is backup. With --wait, it returns when the snapshot is durable and prints its id.")
		fs.PrintDefaults()
	}
	reason := fs.String("reason", "", "why, recorded with the snapshot")
	wait := fs.Bool("wait", false, "wait until the work is done (the snapshot is durable) and print the snapshot id")
	timeout := fs.Duration("timeout", 0, "with --wait, give up waiting after this long (0: no limit); the backup itself goes on")
	asJSON := fs.Bool("json", false, "print the supervisor's answer as JSON")
	var sf socketFlags
	sf.register(fs)

	// The event may come before or after the flags.
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return exitUsage
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(pos) != 1 {
		fs.Usage()
		return exitUsage
	}
	event := pos[0]

	c, code := sf.dial("notify")
	if c == nil {
		return code
	}
	defer c.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *timeout)
		defer cancel()
	}
	t0 := time.Now()
	resp, err := c.Notify(ctx, event, control.NotifyRequest{Reason: *reason, Wait: *wait})
	if err != nil {
		fmt.Fprintf(os.Stderr, "lifeboat notify %s: %v\n", event, err)
		if ctx.Err() != nil && *wait {
			fmt.Fprintln(os.Stderr, "lifeboat: stopped waiting; the supervisor carries on with the work")
		}
		if errors.Is(err, control.ErrUnknownEvent) {
			return exitUsage
		}
		return exitFailure
	}
	switch {
	case *asJSON:
		b, _ := json.MarshalIndent(resp, "", "  ")
		fmt.Println(string(b))
	case *wait && resp.Snapshot != "":
		// stdout carries only the id, for scripts: id=$(lifeboat notify backup --wait)
		fmt.Println(resp.Snapshot)
		fmt.Fprintf(os.Stderr, "lifeboat: %s done in %s\n", event, time.Since(t0).Round(time.Millisecond))
	case *wait:
		fmt.Fprintf(os.Stderr, "lifeboat: %s done in %s%s\n", event, time.Since(t0).Round(time.Millisecond), note(resp.Message))
	default:
		fmt.Fprintf(os.Stderr, "lifeboat: %s accepted%s\n", event, note(resp.Message))
	}
	return 0
}

func note(msg string) string {
	if msg == "" {
		return ""
	}
	return ": " + msg
}
