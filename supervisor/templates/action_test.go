package templates

import (
	"syscall"
	"testing"
)

func TestParseAction(t *testing.T) {
	for _, tc := range []struct {
		in   []string
		want Action
		err  bool
	}{
		{nil, Action{Kind: ActionNone}, false},
		{[]string{"none"}, Action{Kind: ActionNone}, false},
		{[]string{"restart"}, Action{Kind: ActionRestart}, false},
		{[]string{"reload"}, Action{Kind: ActionReload, Signal: syscall.SIGHUP}, false},
		{[]string{"signal", "SIGUSR1"}, Action{Kind: ActionSignal, Signal: syscall.SIGUSR1}, false},
		{[]string{"signal usr2"}, Action{Kind: ActionSignal, Signal: syscall.SIGUSR2}, false},
		{[]string{"signal", "SIGNOPE"}, Action{}, true},
		{[]string{"signal"}, Action{}, true},
		{[]string{"restart", "now"}, Action{}, true},
		{[]string{"command"}, Action{}, true},
		{[]string{"bounce"}, Action{}, true},
	} {
		got, err := ParseAction(tc.in)
		if (err != nil) != tc.err {
			t.Errorf("%q: error %v, want error %v", tc.in, err, tc.err)
			continue
		}
		if !tc.err && (got.Kind != tc.want.Kind || got.Signal != tc.want.Signal) {
			t.Errorf("%q: got %+v, want %+v", tc.in, got, tc.want)
		}
	}
	a, err := ParseAction([]string{"command", "/bin/sh", "-c", "echo hi"})
	if err != nil || a.Kind != ActionCommand || len(a.Command) != 3 || a.Command[2] != "echo hi" {
		t.Errorf("command: %+v %v", a, err)
	}
}
