package service

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/lifeboat/lifeboat/hooks"
	"github.com/lifeboat/lifeboat/supervisor/config"
)

// Check results, as Consul names them.
const (
	StatePassing  = "passing"
	StateWarning  = "warning"
	StateCritical = "critical"
)

// Check kinds.
const (
	KindCommand = "command"
	KindHTTP    = "http"
	KindTCP     = "tcp"
)

// Check defaults (docs/service.md and config.Default* say the same).
const (
	DefaultCheckInterval = 10 * time.Second
	DefaultCheckTimeout  = 5 * time.Second
	// MaxOutput bounds the output sent to Consul, as Consul's own
	// output_max_size does for checks it runs.
	MaxOutput = 4096
	// killGrace is how long a timed-out command's output pipe may stay open
	// after its process group was killed (a grandchild that left the group).
	killGrace = 2 * time.Second
)

// Starter starts a command under the process's single reaper (when lifeboat
// is PID 1 nothing else may call wait4). process.CodeStarter satisfies it.
// cmd's stdio is *os.File or nil; wait returns the exit code (128+N for
// signal N) and an error for a non-zero exit.
type Starter = hooks.Starter

// Check is the health check lifeboat runs itself and reports to Consul as
// a TTL check. Exactly one of Command, HTTP and TCP is set.
type Check struct {
	// Command is argv; exit 0 is passing, 1 warning, anything else (or a
	// timeout) critical, as for Consul's own script checks.
	Command []string
	// HTTP is a URL for a GET: 2xx passing, 429 warning, anything else
	// critical. A bare path ("/health") means http://ADDRESS:PORT/health
	// of the service (127.0.0.1 without an address).
	HTTP string
	// TCP is host:port to connect to; ":PORT" means 127.0.0.1:PORT.
	TCP string
	// Interval between checks; default DefaultCheckInterval.
	Interval time.Duration
	// Timeout of one check; default DefaultCheckTimeout.
	Timeout time.Duration
	// DeregisterAfter makes Consul remove the service once its check has
	// been critical this long (Consul's minimum is 1m); 0 never.
	DeregisterAfter time.Duration
	// Dir and Env are the command's working directory and extra
	// environment (added to lifeboat's own); the command also gets
	// LIFEBOAT_ROLE, the role the service carries now.
	Dir string
	Env []string
	// Credential runs the command as another user (the app's); nil runs
	// it as lifeboat's.
	Credential *syscall.Credential
}

// Kind names which of the three kinds the check is.
func (c *Check) Kind() string {
	switch {
	case len(c.Command) > 0:
		return KindCommand
	case c.HTTP != "":
		return KindHTTP
	case c.TCP != "":
		return KindTCP
	}
	return ""
}

// Result is one run of the check.
type Result struct {
	State    string
	Output   string
	Duration time.Duration
	At       time.Time
}

// checker runs one configured check.
type checker struct {
	check   Check
	httpURL string // resolved HTTP target
	tcpAddr string // resolved TCP target
	starter Starter
	client  *http.Client
}

func newChecker(c Check, address string, port int, starter Starter) (*checker, error) {
	if c.Interval <= 0 {
		c.Interval = DefaultCheckInterval
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultCheckTimeout
	}
	ch := &checker{check: c, starter: starter}
	host := address
	if host == "" {
		host = "127.0.0.1"
	}
	switch c.Kind() {
	case KindCommand:
		if starter == nil {
			return nil, errors.New("service check: a command check needs a Starter (the supervisor's reaper)")
		}
	case KindHTTP:
		target := c.HTTP
		if strings.HasPrefix(target, "/") {
			if port == 0 {
				return nil, fmt.Errorf("service check http %q: a bare path needs service.port", target)
			}
			target = "http://" + net.JoinHostPort(host, strconv.Itoa(port)) + target
		}
		u, err := url.Parse(target)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("service check http %q: want a URL like http://127.0.0.1:8080/health or a path like /health", config.RedactURL(c.HTTP))
		}
		ch.httpURL = target
		// Each check is one fresh connection: a pooled one would hide a
		// listener that no longer accepts.
		ch.client = &http.Client{
			Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil},
			CheckRedirect: func(req *http.Request, via []*http.Request) error {
				if len(via) >= 5 {
					return errors.New("more than 5 redirects")
				}
				return nil
			},
		}
	case KindTCP:
		h, p, err := net.SplitHostPort(c.TCP)
		if err != nil || p == "" {
			return nil, fmt.Errorf("service check tcp %q: want host:port or :port", c.TCP)
		}
		if h == "" {
			h = host
		}
		ch.tcpAddr = net.JoinHostPort(h, p)
	default:
		return nil, errors.New("service check: set exactly one of command, http or tcp")
	}
	return ch, nil
}

// target describes what is checked, for status and logs, without secrets:
// only a command's program, never its arguments; a URL without password.
func (ch *checker) target() string {
	switch ch.check.Kind() {
	case KindCommand:
		return ch.check.Command[0]
	case KindHTTP:
		return config.RedactURL(ch.httpURL)
	case KindTCP:
		return ch.tcpAddr
	}
	return ""
}

// run runs the check once, bounded by the check's timeout; env is added
// to a command's environment.
func (ch *checker) run(ctx context.Context, env []string) Result {
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(ctx, ch.check.Timeout)
	defer cancel()
	var state, out string
	switch ch.check.Kind() {
	case KindCommand:
		state, out = ch.runCommand(ctx, env)
	case KindHTTP:
		state, out = ch.runHTTP(ctx)
	case KindTCP:
		state, out = ch.runTCP(ctx)
	}
	return Result{State: state, Output: truncate(out, MaxOutput), Duration: time.Since(t0), At: t0}
}

func (ch *checker) runHTTP(ctx context.Context) (string, string) {
	target := config.RedactURL(ch.httpURL)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, ch.httpURL, nil)
	if err != nil {
		return StateCritical, fmt.Sprintf("HTTP GET %s: %v", target, err)
	}
	req.Header.Set("User-Agent", "lifeboat-health-check")
	resp, err := ch.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return StateCritical, fmt.Sprintf("HTTP GET %s: timed out after %s", target, ch.check.Timeout)
		}
		return StateCritical, fmt.Sprintf("HTTP GET %s: %v", target, stripURLError(err))
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, MaxOutput))
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20)) // let the server finish its answer
	state := StateCritical
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		state = StatePassing
	case resp.StatusCode == http.StatusTooManyRequests:
		state = StateWarning
	}
	out := fmt.Sprintf("HTTP GET %s: %s", target, resp.Status)
	if b := strings.TrimSpace(string(body)); b != "" {
		out += " Output: " + b
	}
	return state, out
}

func (ch *checker) runTCP(ctx context.Context) (string, string) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", ch.tcpAddr)
	if err != nil {
		if ctx.Err() != nil {
			return StateCritical, fmt.Sprintf("TCP connect %s: timed out after %s", ch.tcpAddr, ch.check.Timeout)
		}
		return StateCritical, fmt.Sprintf("TCP connect %s: %v", ch.tcpAddr, err)
	}
	conn.Close()
	return StatePassing, fmt.Sprintf("TCP connect %s: Success", ch.tcpAddr)
}

// runCommand starts the command through the starter (never exec.Cmd.Wait:
// the reaper owns wait4), in its own process group so a timeout kills
// whatever it started too, with stdout and stderr on one pipe.
func (ch *checker) runCommand(ctx context.Context, env []string) (string, string) {
	argv := ch.check.Command
	pr, pw, err := os.Pipe()
	if err != nil {
		return StateCritical, fmt.Sprintf("check %s: cannot make a pipe: %v", argv[0], err)
	}
	defer pr.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = ch.check.Dir
	cmd.Env = append(append(os.Environ(), ch.check.Env...), env...)
	cmd.Stdout, cmd.Stderr = pw, pw
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: ch.check.Credential}
	wait, err := ch.starter.Start(cmd)
	pw.Close() // the child holds its own copy
	if err != nil {
		return StateCritical, fmt.Sprintf("check %s could not be started: %v", argv[0], err)
	}
	outCh := make(chan []byte, 1)
	go func() {
		var buf bytes.Buffer
		io.Copy(&buf, io.LimitReader(pr, MaxOutput))
		io.Copy(io.Discard, pr) // drain, so the check never blocks on a full pipe
		outCh <- buf.Bytes()
	}()
	type exit struct {
		code int
		err  error
	}
	exitCh := make(chan exit, 1)
	go func() {
		code, err := wait()
		exitCh <- exit{code, err}
	}()
	var e exit
	timedOut := false
	select {
	case e = <-exitCh:
	case <-ctx.Done():
		timedOut = true
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		e = <-exitCh
	}
	// A child of the check that left its process group may hold the pipe
	// open; do not wait for it for long.
	var out []byte
	select {
	case out = <-outCh:
	case <-time.After(killGrace):
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		pr.Close()
	}
	text := strings.TrimSpace(string(out))
	if timedOut {
		return StateCritical, strings.TrimSpace(fmt.Sprintf("check %s timed out after %s and was killed\n%s", argv[0], ch.check.Timeout, text))
	}
	switch e.code {
	case 0:
		return StatePassing, text
	case 1:
		return StateWarning, text
	}
	if text == "" {
		text = fmt.Sprintf("check %s exited with status %d", argv[0], e.code)
	}
	return StateCritical, text
}

// stripURLError drops the URL that *url.Error repeats (it may carry a
// password), keeping the cause.
func stripURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
