package templates

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Action kinds of a template's on_change.
const (
	ActionNone    = "none"
	ActionRestart = "restart"
	ActionReload  = "reload" // SIGHUP to the app
	ActionSignal  = "signal"
	ActionCommand = "command"
)

// Action is what happens after a template's file changed while the app
// runs (never on the first render: the app is not started yet).
type Action struct {
	Kind    string
	Signal  syscall.Signal // ActionSignal (and ActionReload: SIGHUP)
	Command []string       // ActionCommand: argv
}

// String names the action for logs and metrics labels.
func (a Action) String() string {
	switch a.Kind {
	case "":
		return ActionNone
	case ActionSignal:
		return "signal " + unix.SignalName(a.Signal)
	}
	return a.Kind
}

// ParseAction parses on_change: [] or ["none"], ["restart"], ["reload"],
// ["signal", "SIGUSR1"], ["command", "argv0", "arg"...]. A single string
// "signal SIGUSR1" is split on spaces for convenience.
func ParseAction(words []string) (Action, error) {
	if len(words) == 1 && strings.Contains(words[0], " ") {
		words = strings.Fields(words[0])
	}
	if len(words) == 0 {
		return Action{Kind: ActionNone}, nil
	}
	switch words[0] {
	case ActionNone, ActionRestart:
		if len(words) != 1 {
			return Action{}, fmt.Errorf("on_change %q takes no arguments", words[0])
		}
		return Action{Kind: words[0]}, nil
	case ActionReload:
		if len(words) != 1 {
			return Action{}, fmt.Errorf("on_change reload takes no arguments (it sends SIGHUP; use signal NAME for another)")
		}
		return Action{Kind: ActionReload, Signal: unix.SIGHUP}, nil
	case ActionSignal:
		if len(words) != 2 {
			return Action{}, fmt.Errorf(`on_change signal needs one signal name, e.g. ["signal", "SIGUSR1"]`)
		}
		sig, err := ParseSignal(words[1])
		if err != nil {
			return Action{}, err
		}
		return Action{Kind: ActionSignal, Signal: sig}, nil
	case ActionCommand:
		if len(words) < 2 {
			return Action{}, fmt.Errorf(`on_change command needs a command, e.g. ["command", "/bin/reload", "--now"]`)
		}
		return Action{Kind: ActionCommand, Command: words[1:]}, nil
	}
	return Action{}, fmt.Errorf("on_change %q: want restart, reload, signal NAME, command ARGV... or none", words[0])
}

// ParseSignal parses "SIGHUP", "HUP" or "hup".
func ParseSignal(name string) (syscall.Signal, error) {
	n := strings.ToUpper(strings.TrimSpace(name))
	if !strings.HasPrefix(n, "SIG") {
		n = "SIG" + n
	}
	sig := unix.SignalNum(n)
	if sig == 0 {
		return 0, fmt.Errorf("unknown signal %q", name)
	}
	return sig, nil
}

// AppController is the part of the supervisor a template's on_change acts
// on. The supervisor satisfies it with its process.App.
type AppController interface {
	Restart() error
	Signal(sig syscall.Signal) error
}

// CommandRunner runs an on_change command. The supervisor may pass its
// hook runner; the default runs argv directly with the template
// destination in LIFEBOAT_TEMPLATE.
type CommandRunner func(ctx context.Context, argv []string, env []string) error

func defaultRunCommand(ctx context.Context, argv []string, env []string) error {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(cmd.Environ(), env...)
	// Output is not captured into lifeboat's log: a reload script may
	// print what it reloaded, secrets included.
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("on_change command %s: %w", argv[0], err)
	}
	return nil
}
