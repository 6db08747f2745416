// Package testrig starts the real servers lifeboat's tests talk to — Consul,
// Vault, MinIO and MariaDB — on free loopback ports in temporary
// directories, waits until each is ready, and tears them down when the test
// ends.
//
// The binaries come from PATH, /usr/sbin, or the cache that
// scripts/test-deps.sh fills ($LIFEBOAT_DEPS_BIN, default
// $(go env GOPATH)/lifeboat-deps/bin). A missing binary skips the test,
// except when CI=true: then it fails it, so CI never passes by skipping.
package testrig

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// ReadyTimeout bounds how long a server may take to become ready.
const ReadyTimeout = 90 * time.Second

// stopTimeout bounds a graceful stop before the server is killed.
const stopTimeout = 15 * time.Second

// DepsBin is the directory scripts/test-deps.sh installs the Go-built servers into.
func DepsBin() string {
	if d := os.Getenv("LIFEBOAT_DEPS_BIN"); d != "" {
		return d
	}
	gopath := os.Getenv("GOPATH")
	if gopath == "" {
		if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
			gopath = strings.TrimSpace(string(out))
		}
	}
	if gopath == "" {
		home, _ := os.UserHomeDir()
		gopath = filepath.Join(home, "go")
	}
	return filepath.Join(gopath, "lifeboat-deps", "bin")
}

// LookBinary finds an executable by name without a test; "" when missing.
func LookBinary(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{DepsBin(), "/usr/sbin", "/usr/bin", "/sbin"} {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

// Binary returns the path of an executable the test needs. When it is
// missing the test is skipped, or failed when CI=true.
func Binary(t testing.TB, name string) string {
	t.Helper()
	if p := LookBinary(name); p != "" {
		return p
	}
	Missing(t, "%s not found in PATH, /usr/sbin or %s; run scripts/test-deps.sh", name, DepsBin())
	return ""
}

// Missing skips the test for a missing prerequisite, or fails it when CI=true.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true and a prerequisite is missing: "+format, args...)
	}
	t.Skipf("prerequisite missing: "+format, args...)
}

// ports remembers the ports FreePort handed out in this test binary.
var ports struct {
	sync.Mutex
	given map[int]bool
}

// FreePort returns a port on 127.0.0.1 that was free for TCP and UDP a
// moment ago, never the same twice in one test binary. It is picked below
// the kernel's ephemeral range: a port the kernel chose (port 0) can be
// taken by the client side of any connection before the server binds it,
// which made servers fail with "address already in use".
func FreePort(t testing.TB) int {
	t.Helper()
	ports.Lock()
	defer ports.Unlock()
	if ports.given == nil {
		ports.given = map[int]bool{}
	}
	const low = 10000
	if top := ephemeralLow(); top > low+1000 {
		for range 200 {
			p := low + rand.IntN(top-low)
			if !ports.given[p] && portFree(p) {
				ports.given[p] = true
				return p
			}
		}
	}
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("testrig: free port: %v", err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !ports.given[p] {
			ports.given[p] = true
			return p
		}
	}
	t.Fatal("testrig: no free port")
	return 0
}

// ephemeralLow is the first port of the kernel's ephemeral range, 0 when
// it cannot be read.
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0
	}
	var lo, hi int
	if _, err := fmt.Sscan(string(b), &lo, &hi); err != nil {
		return 0
	}
	return lo
}

func portFree(p int) bool {
	addr := fmt.Sprintf("127.0.0.1:%d", p)
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	l.Close()
	u, err := net.ListenPacket("udp", addr)
	if err != nil {
		return false
	}
	u.Close()
	return true
}

// Server is one running server process with its log file.
type Server struct {
	name string
	path string
	args []string
	env  []string
	dir  string
	Log  string // path of the combined stdout/stderr log

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

func newServer(t testing.TB, name, path string, args, env []string) *Server {
	dir := t.TempDir()
	return &Server{name: name, path: path, args: args, env: env, dir: dir, Log: filepath.Join(dir, name+".log")}
}

// Dir is the server's scratch directory.
func (s *Server) Dir() string { return s.dir }

func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return fmt.Errorf("%s already running", s.name)
	}
	logf, err := os.OpenFile(s.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(s.path, s.args...)
	cmd.Dir = s.dir
	cmd.Env = append(os.Environ(), s.env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Own process group so a Freeze stops the whole server, and the kernel
	// kills the server if the test binary dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", s.name, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(done) }()
	s.cmd, s.done = cmd, done
	return nil
}

// running reports whether the process is still alive.
func (s *Server) running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return false
	}
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

// Pid is the server's process id, 0 when stopped.
func (s *Server) Pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// Stop stops the server (SIGTERM, then SIGKILL after a grace period) and
// waits for it to exit. Stopping a stopped server does nothing.
func (s *Server) Stop() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	syscall.Kill(-cmd.Process.Pid, syscall.SIGCONT) // a frozen server cannot handle SIGTERM
	syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(stopTimeout):
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
}

// Kill kills the server with SIGKILL and waits for it to exit.
func (s *Server) Kill() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	<-done
}

// Freeze stops the server with SIGSTOP: its sockets stay open but it answers
// nothing, like a hung or partitioned server.
func (s *Server) Freeze() { s.signal(syscall.SIGSTOP) }

// Thaw resumes a frozen server.
func (s *Server) Thaw() { s.signal(syscall.SIGCONT) }

func (s *Server) signal(sig syscall.Signal) {
	if pid := s.Pid(); pid != 0 {
		syscall.Kill(-pid, sig)
	}
}

// logTail returns the end of the server's log for error messages.
func (s *Server) logTail() string {
	b, _ := os.ReadFile(s.Log)
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

// waitReady polls ready until it returns nil, the server exits, or the
// deadline passes.
func (s *Server) waitReady(ready func(context.Context) error) error {
	deadline := time.Now().Add(ReadyTimeout)
	var last error
	for time.Now().Before(deadline) {
		if !s.running() {
			return fmt.Errorf("%s exited before it was ready; log:\n%s", s.name, s.logTail())
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		last = ready(ctx)
		cancel()
		if last == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready after %s: %v; log:\n%s", s.name, ReadyTimeout, last, s.logTail())
}

// startAndWait starts the server and waits for it to be ready, failing the
// test otherwise. The server is stopped at the end of the test.
func (s *Server) startAndWait(t testing.TB, ready func(context.Context) error) {
	t.Helper()
	if err := s.start(); err != nil {
		t.Fatalf("testrig: %v", err)
	}
	if err := s.waitReady(ready); err != nil {
		s.Kill()
		t.Fatalf("testrig: %v", err)
	}
}

// httpGet performs a GET and returns the status code and body.
func httpGet(ctx context.Context, url string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	_, err = buf.ReadFrom(resp.Body)
	return resp.StatusCode, buf.Bytes(), err
}

func expect200(url string) func(context.Context) error {
	return func(ctx context.Context) error {
		code, body, err := httpGet(ctx, url)
		if err != nil {
			return err
		}
		if code != http.StatusOK {
			return fmt.Errorf("GET %s: %d %s", url, code, bytes.TrimSpace(body))
		}
		return nil
	}
}

var errNotReady = errors.New("not ready yet")
