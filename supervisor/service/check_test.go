package service

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// execStarter starts with os/exec; fine in a test process that has no
// reaper (lifeboat itself passes process.CodeStarter).
type execStarter struct{}

func (execStarter) Start(cmd *exec.Cmd) (func() (int, error), error) {
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return func() (int, error) {
		err := cmd.Wait()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				return 128 + int(ws.Signal()), err
			}
			return ee.ExitCode(), err
		}
		return 0, err
	}, nil
}

func mustChecker(t *testing.T, c Check) *checker {
	t.Helper()
	ch, err := newChecker(c, "", 0, execStarter{})
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

// A check that leaves a child holding its output pipe still ends within
// the grace period, and the child is killed with its process group.
func TestCommandCheckChildHoldsPipe(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	ch := mustChecker(t, Check{Command: []string{"/bin/sh", "-c", `sleep 30 & echo $! > ` + pidFile + `; echo started`}, Timeout: 10 * time.Second})
	t0 := time.Now()
	res := ch.run(context.Background(), nil)
	if d := time.Since(t0); d > killGrace+2*time.Second {
		t.Errorf("check took %s", d)
	}
	if res.State != StatePassing {
		t.Errorf("result %+v", res)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid := strings.TrimSpace(string(b))
	deadline := time.Now().Add(5 * time.Second)
	for {
		// Gone, or a zombie nobody in this test reaps (its parent sh is gone,
		// so it was reparented): either way not running.
		st, err := os.ReadFile("/proc/" + pid + "/stat")
		if err != nil || strings.Contains(string(st), ") Z ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the check's child %s still runs: %s", pid, st)
		}
		time.Sleep(20 * time.Millisecond) // poll tick
	}
}

// Output beyond MaxOutput is cut, and a chatty check never blocks on a
// full pipe.
func TestCommandCheckOutputBounded(t *testing.T) {
	ch := mustChecker(t, Check{Command: []string{"/bin/sh", "-c", `i=0; while [ $i -lt 2000 ]; do echo "line $i of a chatty health check"; i=$((i+1)); done; exit 1`}, Timeout: 10 * time.Second})
	res := ch.run(context.Background(), nil)
	if res.State != StateWarning || len(res.Output) > MaxOutput || !strings.HasPrefix(res.Output, "line 0 ") {
		t.Errorf("state %s, %d bytes of output starting %q", res.State, len(res.Output), firstLine(res.Output, 40))
	}
}

func TestCommandCheckNotFound(t *testing.T) {
	ch := mustChecker(t, Check{Command: []string{"/nonexistent/health"}, Timeout: time.Second})
	res := ch.run(context.Background(), nil)
	if res.State != StateCritical || !strings.Contains(res.Output, "could not be started") {
		t.Errorf("%+v", res)
	}
}

func TestHTTPCheckTimeoutAndRedirectLoop(t *testing.T) {
	release := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer slow.Close()
	defer close(release)
	ch := mustChecker(t, Check{HTTP: slow.URL, Timeout: 200 * time.Millisecond})
	res := ch.run(context.Background(), nil)
	if res.State != StateCritical || !strings.Contains(res.Output, "timed out after 200ms") {
		t.Errorf("slow server: %+v", res)
	}

	var loop *httptest.Server
	loop = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, loop.URL+"/again", http.StatusFound)
	}))
	defer loop.Close()
	ch = mustChecker(t, Check{HTTP: loop.URL, Timeout: time.Second})
	res = ch.run(context.Background(), nil)
	if res.State != StateCritical || !strings.Contains(res.Output, "redirects") {
		t.Errorf("redirect loop: %+v", res)
	}
}

func TestCheckTargets(t *testing.T) {
	for _, tc := range []struct {
		c       Check
		address string
		port    int
		want    string
	}{
		{Check{HTTP: "/health"}, "", 8080, "http://127.0.0.1:8080/health"},
		{Check{HTTP: "/health"}, "10.0.0.5", 8080, "http://10.0.0.5:8080/health"},
		{Check{HTTP: "https://u:pw@db:8443/h"}, "", 0, "https://u:xxxxx@db:8443/h"},
		{Check{HTTP: "/h?token=sekrit&verbose=1"}, "", 80, "http://127.0.0.1:80/h?token=%28redacted%29&verbose=1"},
		{Check{TCP: ":3306"}, "", 0, "127.0.0.1:3306"},
		{Check{TCP: ":3306"}, "10.0.0.5", 0, "10.0.0.5:3306"},
		{Check{TCP: "db:3306"}, "10.0.0.5", 0, "db:3306"},
		{Check{Command: []string{"/bin/check", "--password=secret"}}, "", 0, "/bin/check"},
	} {
		ch, err := newChecker(tc.c, tc.address, tc.port, execStarter{})
		if err != nil {
			t.Errorf("%+v: %v", tc.c, err)
			continue
		}
		if got := ch.target(); got != tc.want {
			t.Errorf("%+v: target %q, want %q", tc.c, got, tc.want)
		}
	}
}
