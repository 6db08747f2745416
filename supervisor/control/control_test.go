package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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

	"github.com/lifeboat/lifeboat/internal/testrig"
	"github.com/prometheus/client_golang/prometheus"
)

// sockDir returns a short temp dir: unix socket paths are limited to 107
// bytes and t.TempDir() names grow with the test name.
func sockDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "lbc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// start runs a server on a socket in a temp dir and closes it at cleanup.
func start(t *testing.T, opts Options) *Server {
	t.Helper()
	if opts.Socket == "" {
		opts.Socket = filepath.Join(sockDir(t), "lb.sock")
	}
	return startAt(t, opts)
}

// startAt runs a server with opts as given (an empty Socket searches).
func startAt(t *testing.T, opts Options) *Server {
	t.Helper()
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Close(ctx)
	})
	return s
}

func dial(t *testing.T, s *Server) *Client {
	t.Helper()
	c, err := Dial(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

type testStatus struct {
	Phase    string `json:"phase"`
	Version  string `json:"version"`
	AppPID   int    `json:"app_pid"`
	Restarts int    `json:"restarts"`
}

func TestStatus(t *testing.T) {
	s := start(t, Options{Status: func(ctx context.Context) (any, error) {
		return testStatus{Phase: "serve", Version: "1.2.3", AppPID: 42}, nil
	}})
	raw, err := dial(t, s).Status(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	var got testStatus
	if err := json.Unmarshal(raw, &got); err != nil {
		t.Fatalf("%v: %s", err, raw)
	}
	if got != (testStatus{Phase: "serve", Version: "1.2.3", AppPID: 42}) {
		t.Fatalf("status = %+v", got)
	}
}

func TestStatusErrorAndMissing(t *testing.T) {
	s := start(t, Options{Status: func(ctx context.Context) (any, error) {
		return nil, fmt.Errorf("still restoring: %w", ErrUnavailable)
	}})
	_, err := dial(t, s).Status(ctxT(t))
	var ce *Error
	if !errors.As(err, &ce) || ce.Code != http.StatusServiceUnavailable || !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "still restoring") {
		t.Fatalf("err = %#v", err)
	}

	s2 := start(t, Options{})
	_, err = dial(t, s2).Status(ctxT(t))
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("nil StatusFunc: %v", err)
	}
}

// fakeBackup is a NotifyFunc that behaves like the supervisor's: it starts
// the work and, with wait, blocks until it is done.
type fakeBackup struct {
	mu      sync.Mutex
	got     []NotifyRequest
	release chan struct{}
	fail    error
}

func (f *fakeBackup) notify(ctx context.Context, event string, req NotifyRequest) (NotifyResponse, error) {
	if event != "backup" {
		return NotifyResponse{}, fmt.Errorf("event %q: %w", event, ErrUnknownEvent)
	}
	f.mu.Lock()
	f.got = append(f.got, req)
	f.mu.Unlock()
	if !req.Wait {
		return NotifyResponse{Message: "backup queued"}, nil
	}
	select {
	case <-f.release:
	case <-ctx.Done():
		return NotifyResponse{}, ctx.Err()
	}
	if f.fail != nil {
		return NotifyResponse{}, f.fail
	}
	return NotifyResponse{Snapshot: "snap-0001"}, nil
}

func TestNotifyWithoutWait(t *testing.T) {
	f := &fakeBackup{release: make(chan struct{})}
	s := start(t, Options{Notify: f.notify})
	resp, err := dial(t, s).Notify(ctxT(t), "backup", NotifyRequest{Reason: "pre-migration"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Event != "backup" || resp.Message != "backup queued" || resp.Snapshot != "" {
		t.Fatalf("resp = %+v", resp)
	}
	if len(f.got) != 1 || f.got[0].Reason != "pre-migration" || f.got[0].Wait {
		t.Fatalf("handler got %+v", f.got)
	}
}

func TestNotifyWaitBlocksUntilDone(t *testing.T) {
	f := &fakeBackup{release: make(chan struct{})}
	s := start(t, Options{Notify: f.notify})
	c := dial(t, s)
	type result struct {
		resp NotifyResponse
		err  error
	}
	done := make(chan result, 1)
	go func() {
		r, err := c.Notify(ctxT(t), "backup", NotifyRequest{Wait: true})
		done <- result{r, err}
	}()
	// The request must not return while the backup is still running:
	// wait until the handler has the request, then check it is still open.
	deadline := time.Now().Add(5 * time.Second)
	for {
		f.mu.Lock()
		n := len(f.got)
		f.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("handler never got the request")
		}
		time.Sleep(5 * time.Millisecond)
	}
	select {
	case r := <-done:
		t.Fatalf("notify --wait returned before the backup finished: %+v", r)
	default:
	}
	close(f.release)
	r := <-done
	if r.err != nil || r.resp.Snapshot != "snap-0001" {
		t.Fatalf("resp=%+v err=%v", r.resp, r.err)
	}
}

func TestNotifyErrorPropagates(t *testing.T) {
	f := &fakeBackup{release: make(chan struct{}), fail: errors.New("hook pre_backup: exit status 3")}
	close(f.release)
	s := start(t, Options{Notify: f.notify})
	_, err := dial(t, s).Notify(ctxT(t), "backup", NotifyRequest{Wait: true})
	var ce *Error
	if !errors.As(err, &ce) || ce.Code != http.StatusInternalServerError || err.Error() != "hook pre_backup: exit status 3" {
		t.Fatalf("err = %#v", err)
	}

	s2 := start(t, Options{Notify: func(ctx context.Context, event string, req NotifyRequest) (NotifyResponse, error) {
		return NotifyResponse{}, fmt.Errorf("this node is a replica; backups run on the primary: %w", ErrRejected)
	}})
	_, err = dial(t, s2).Notify(ctxT(t), "backup", NotifyRequest{})
	if !errors.As(err, &ce) || ce.Code != http.StatusConflict || !errors.Is(err, ErrRejected) {
		t.Fatalf("rejected: %#v", err)
	}
}

func TestNotifyUnknownEvent(t *testing.T) {
	f := &fakeBackup{release: make(chan struct{})}
	// From the handler's own error.
	s := start(t, Options{Notify: f.notify})
	_, err := dial(t, s).Notify(ctxT(t), "bakup", NotifyRequest{})
	if !errors.Is(err, ErrUnknownEvent) || !strings.Contains(err.Error(), `"bakup"`) {
		t.Fatalf("err = %v", err)
	}
	// From the Events list, before the handler runs.
	s2 := start(t, Options{Notify: f.notify, Events: []string{"backup"}})
	_, err = dial(t, s2).Notify(ctxT(t), "nope", NotifyRequest{})
	if !errors.Is(err, ErrUnknownEvent) || err.Error() != `unknown event "nope"; known events: backup` {
		t.Fatalf("err = %v", err)
	}
	// A bare sentinel from the handler still names the event.
	s3 := start(t, Options{Notify: func(context.Context, string, NotifyRequest) (NotifyResponse, error) {
		return NotifyResponse{}, ErrUnknownEvent
	}})
	_, err = dial(t, s3).Notify(ctxT(t), "x-y", NotifyRequest{})
	if !errors.Is(err, ErrUnknownEvent) || err.Error() != `unknown event "x-y"` {
		t.Fatalf("bare sentinel: %v", err)
	}
	if len(f.got) != 0 {
		t.Fatalf("handler ran for unknown events: %+v", f.got)
	}
}

func TestNotifyBadBody(t *testing.T) {
	f := &fakeBackup{release: make(chan struct{})}
	s := start(t, Options{Notify: f.notify})
	c := dial(t, s)
	err := c.Do(ctxT(t), http.MethodPost, PathNotify+"backup", json.RawMessage(`"not an object"`), nil)
	var ce *Error
	if !errors.As(err, &ce) || ce.Code != http.StatusBadRequest {
		t.Fatalf("err = %#v", err)
	}
	// Wrong method: the mux answers 405.
	err = c.Do(ctxT(t), http.MethodGet, PathNotify+"backup", nil, nil)
	if !errors.As(err, &ce) || ce.Code != http.StatusMethodNotAllowed {
		t.Fatalf("GET notify: %#v", err)
	}
}

func TestSocketMode(t *testing.T) {
	s := start(t, Options{})
	fi, err := os.Lstat(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode = %v, want socket 0600", fi.Mode())
	}
	// No temporary socket is left beside it.
	ents, _ := os.ReadDir(filepath.Dir(s.Path()))
	if len(ents) != 1 {
		t.Fatalf("dir holds %d entries, want only the socket", len(ents))
	}
}

func TestStaleSocketReplaced(t *testing.T) {
	path := filepath.Join(sockDir(t), "lb.sock")
	// A socket left by a supervisor that died: bound, never unlinked,
	// nobody accepting.
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("stale socket not left behind: %v", err)
	}
	s := start(t, Options{Socket: path, Status: func(context.Context) (any, error) { return map[string]string{"ok": "yes"}, nil }})
	if _, err := dial(t, s).Status(ctxT(t)); err != nil {
		t.Fatalf("status through the replaced socket: %v", err)
	}
}

func TestLiveSocketRefused(t *testing.T) {
	s := start(t, Options{})
	_, err := New(Options{Socket: s.Path()})
	if !errors.Is(err, ErrSupervisorRunning) || !strings.Contains(err.Error(), "another supervisor is listening on "+s.Path()) {
		t.Fatalf("err = %v", err)
	}
	// The first server still answers.
	if _, err := Dial(s.Path()); err != nil {
		t.Fatalf("first server broken by the refused second: %v", err)
	}
}

func TestNonSocketFileRefused(t *testing.T) {
	path := filepath.Join(sockDir(t), "lb.sock")
	os.WriteFile(path, []byte("precious"), 0o644)
	_, err := New(Options{Socket: path})
	if err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("err = %v", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "precious" {
		t.Fatal("a regular file was replaced")
	}
}

func TestCloseRemovesSocket(t *testing.T) {
	path := filepath.Join(sockDir(t), "lb.sock")
	s, err := New(Options{Socket: path})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Fatalf("socket still there after Close: %v", err)
	}
	if err := s.Close(ctxT(t)); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestCloseCancelsWaitersAfterDeadline(t *testing.T) {
	f := &fakeBackup{release: make(chan struct{})}
	path := filepath.Join(sockDir(t), "lb.sock")
	s, err := New(Options{Socket: path, Notify: f.notify})
	if err != nil {
		t.Fatal(err)
	}
	c, _ := Dial(path)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Notify(ctxT(t), "backup", NotifyRequest{Wait: true})
		errc <- err
	}()
	deadline := time.Now().Add(5 * time.Second)
	for {
		f.mu.Lock()
		n := len(f.got)
		f.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("handler never got the request")
		}
		time.Sleep(5 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	if err := s.Close(ctx); err == nil || !strings.Contains(err.Error(), "cut off") {
		t.Errorf("Close with a stuck waiter: %v", err)
	}
	if d := time.Since(t0); d > 3*time.Second {
		t.Fatalf("Close took %v with a stuck waiter", d)
	}
	if err := <-errc; err == nil {
		t.Fatal("waiting notify succeeded though the server closed")
	}
}

func TestMetricsEndpointAndTCP(t *testing.T) {
	reg := prometheus.NewRegistry()
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "lifeboat_test_gauge", Help: "test"})
	g.Set(7)
	reg.MustRegister(g)
	s := start(t, Options{Registry: reg, TelemetryListen: "127.0.0.1:0"})
	c := dial(t, s)
	// One status call, so the request counter has a sample.
	c.Status(ctxT(t))
	text, err := c.Metrics(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"lifeboat_test_gauge 7", `lifeboat_control_requests_total{code="503",endpoint="status"} 1`} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %q:\n%s", want, text)
		}
	}

	addr := s.TelemetryAddr()
	if addr == "" {
		t.Fatal("no telemetry address")
	}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "lifeboat_test_gauge 7") {
		t.Fatalf("TCP /metrics: %s\n%s", resp.Status, body)
	}
	// Only /metrics on TCP: status and notify stay on the 0600 socket.
	for _, p := range []string{"/v1/status"} {
		resp, err := http.Get("http://" + addr + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("TCP %s: %s, want 404", p, resp.Status)
		}
	}
	resp, err = http.Post("http://"+addr+"/v1/notify/backup", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("TCP notify: %s, want 404", resp.Status)
	}
}

func TestTelemetryListenBusy(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	path := filepath.Join(sockDir(t), "lb.sock")
	_, err = New(Options{Socket: path, TelemetryListen: l.Addr().String()})
	if err == nil || !strings.Contains(err.Error(), "telemetry.listen") {
		t.Fatalf("err = %v", err)
	}
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Fatal("socket left behind after a failed New")
	}
}

func TestHandleAddsEndpoint(t *testing.T) {
	s := start(t, Options{})
	var mode string
	s.Handle("POST /v1/maintenance", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			On bool `json:"on"`
		}
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			WriteError(w, http.StatusBadRequest, "bad body")
			return
		}
		mode = fmt.Sprint(body.On)
		json.NewEncoder(w).Encode(map[string]bool{"maintenance": body.On})
	}))
	var out map[string]bool
	if err := dial(t, s).Do(ctxT(t), http.MethodPost, "/v1/maintenance", map[string]bool{"on": true}, &out); err != nil {
		t.Fatal(err)
	}
	if !out["maintenance"] || mode != "true" {
		t.Fatalf("out=%v mode=%q", out, mode)
	}
}

func TestDialNothingListening(t *testing.T) {
	dir := sockDir(t)
	// No file at all.
	path := filepath.Join(dir, "none.sock")
	_, err := Dial(path)
	want := "no lifeboat supervisor is listening on " + path + " (is `lifeboat run` running? set LIFEBOAT_SOCKET)"
	if !errors.Is(err, ErrNoSupervisor) || err.Error() != want {
		t.Fatalf("err = %v\nwant  %s", err, want)
	}
	// A stale socket file.
	stale := filepath.Join(dir, "stale.sock")
	l, _ := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	l.SetUnlinkOnClose(false)
	l.Close()
	if _, err := Dial(stale); !errors.Is(err, ErrNoSupervisor) {
		t.Fatalf("stale: %v", err)
	}
}

func TestClientAfterServerGone(t *testing.T) {
	path := filepath.Join(sockDir(t), "lb.sock")
	s, err := New(Options{Socket: path})
	if err != nil {
		t.Fatal(err)
	}
	c, err := Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	s.Close(ctxT(t))
	if _, err := c.Status(ctxT(t)); !errors.Is(err, ErrNoSupervisor) {
		t.Fatalf("err = %v", err)
	}
}

func TestSearchFallsBack(t *testing.T) {
	dir := sockDir(t)
	// /run stands in as a directory that does not exist (root may write
	// the real /run, and a test must not touch it).
	defer func(old string) { defaultSocket = old }(defaultSocket)
	defaultSocket = filepath.Join(dir, "no-run", SocketName)
	xdg := filepath.Join(dir, "no-xdg")
	t.Setenv("XDG_RUNTIME_DIR", xdg)
	t.Setenv(EnvSocket, "")
	data := filepath.Join(dir, "data")
	os.Mkdir(data, 0o755)

	want := []string{defaultSocket, filepath.Join(xdg, SocketName), filepath.Join(data, DataDirSocketName)}
	if c := Candidates(data); fmt.Sprint(c) != fmt.Sprint(want) {
		t.Fatalf("Candidates = %v, want %v", c, want)
	}
	// Neither /run nor XDG usable: the data dir it is.
	s := startAt(t, Options{Socket: "", DataDir: data})
	if s.Path() != want[2] {
		t.Fatalf("server at %s, want %s", s.Path(), want[2])
	}
	// The client finds it by the same search.
	if got := Locate("", data); got != want[2] {
		t.Fatalf("Locate = %s, want %s", got, want[2])
	}
	if _, err := Dial(Locate("", data)); err != nil {
		t.Fatal(err)
	}
	// Once XDG exists, a new server prefers it, and so does the client.
	os.Mkdir(xdg, 0o700)
	s2 := startAt(t, Options{Socket: "", DataDir: data})
	if s2.Path() != want[1] || Locate("", data) != want[1] {
		t.Fatalf("server at %s, Locate %s; want %s", s2.Path(), Locate("", data), want[1])
	}
	// An explicit path and $LIFEBOAT_SOCKET win over the search.
	if Locate("/x.sock", data) != "/x.sock" {
		t.Fatal("explicit path ignored")
	}
	t.Setenv(EnvSocket, "/y.sock")
	if Locate("", data) != "/y.sock" {
		t.Fatal("LIFEBOAT_SOCKET ignored")
	}
	// Nothing usable: the error says what to set.
	t.Setenv(EnvSocket, "")
	t.Setenv("XDG_RUNTIME_DIR", filepath.Join(dir, "no-xdg-either"))
	_, err := New(Options{Socket: "", DataDir: filepath.Join(dir, "no-data")})
	if err == nil || !strings.Contains(err.Error(), "set control.socket or LIFEBOAT_SOCKET") {
		t.Fatalf("err = %v", err)
	}
}

// BenchmarkStatus measures one status round trip over the unix socket
// (keep-alive connection, small JSON).
func BenchmarkStatus(b *testing.B) {
	dir, err := os.MkdirTemp("", "lbb")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	s, err := New(Options{Socket: filepath.Join(dir, "lb.sock"), Status: func(context.Context) (any, error) {
		return testStatus{Phase: "serve", Version: "1.2.3", AppPID: 42}, nil
	}})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close(context.Background())
	c, err := Dial(s.Path())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.Status(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// TestSocketGroupAccess gives a group (nogroup, gid 65534) access to the
// socket: mode 0660 with that group, and a client running as nobody in
// that group gets through, while the same user without the group does not.
func TestSocketGroupAccess(t *testing.T) {
	if os.Geteuid() != 0 {
		testrig.Missing(t, "needs root to chgrp the socket and dial as another user")
	}
	dir, err := os.MkdirTemp("", "lbgrp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	s := start(t, Options{Socket: filepath.Join(dir, "lb.sock"), Group: "65534",
		Status: func(context.Context) (any, error) { return map[string]string{"ok": "yes"}, nil }})
	fi, err := os.Lstat(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o660 || fi.Sys().(*syscall.Stat_t).Gid != 65534 {
		t.Fatalf("socket mode %v gid %d, want 0660 gid 65534", fi.Mode(), fi.Sys().(*syscall.Stat_t).Gid)
	}
	dialAs := func(groups []uint32) error {
		// The real CLI as another user: credentials are per process.
		cmd := exec.Command(testrig.BuildLifeboat(t), "status", "--socket", s.Path())
		cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 12345, Groups: groups}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	}
	if err := dialAs([]uint32{65534}); err != nil {
		t.Errorf("nobody in the socket's group: %v", err)
	}
	if err := dialAs(nil); err == nil {
		t.Errorf("nobody outside the socket's group got through a 0660 socket")
	}
	if _, err := New(Options{Socket: filepath.Join(dir, "other.sock"), Group: "no-such-group-here"}); err == nil || !strings.Contains(err.Error(), `control socket group "no-such-group-here"`) {
		t.Errorf("unknown group: %v", err)
	}
}
