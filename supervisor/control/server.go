// Package control is the supervisor's control socket: HTTP over a unix
// socket (mode 0600) that the CLI talks to. It serves the status the
// supervisor reports (GET /v1/status), takes events such as a backup
// request (POST /v1/notify/{event}), exposes Prometheus metrics
// (GET /metrics, also on an optional TCP listener), and lets other parts
// of the supervisor add their own endpoints with Server.Handle.
//
// The package knows nothing about backups or the lifecycle: the supervisor
// passes in the functions that answer. Client is the other end.
package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/lifeboat/lifeboat/supervisor/process"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Endpoint paths.
const (
	PathStatus  = "/v1/status"
	PathNotify  = "/v1/notify/" // + event
	PathMetrics = "/metrics"
)

// Server tuning defaults.
const (
	// DefaultReadHeaderTimeout bounds a client that connects and says nothing.
	DefaultReadHeaderTimeout = 5 * time.Second
	// maxBodyBytes bounds a notify request body.
	maxBodyBytes = 64 << 10
)

// Errors a NotifyFunc returns (wrapped or not) to choose the HTTP status;
// the client turns the status back into the same sentinel, so callers on
// both sides can use errors.Is.
var (
	// ErrUnknownEvent: the supervisor has no such event (404).
	ErrUnknownEvent = errors.New("unknown event")
	// ErrUnavailable: the supervisor cannot take it now, e.g. it is still
	// restoring or shutting down (503).
	ErrUnavailable = errors.New("not available now")
	// ErrRejected: the request is understood but refused in this state,
	// e.g. backups run on the primary and this node is a replica (409).
	ErrRejected = errors.New("rejected")
)

// NotifyRequest is the body of POST /v1/notify/{event}.
type NotifyRequest struct {
	// Reason is free text recorded with whatever the event causes (a
	// backup's snapshot metadata), e.g. "before schema migration".
	Reason string `json:"reason,omitempty"`
	// Wait asks the server to answer only when the work is done (for a
	// backup: the snapshot is durable in the store) instead of when it is
	// accepted.
	Wait bool `json:"wait,omitempty"`
}

// NotifyResponse is the answer to a notify.
type NotifyResponse struct {
	Event string `json:"event"`
	// Snapshot is the id of the snapshot a waited-for backup wrote.
	Snapshot string `json:"snapshot,omitempty"`
	// Message is a short human note, e.g. "coalesced with a running backup".
	Message string `json:"message,omitempty"`
}

// NotifyFunc handles an event. Without req.Wait it should return as soon
// as the event is accepted; with req.Wait, when the work is done. ctx is
// cancelled when the client goes away or the server closes: stop waiting
// then, but do not abort work that others rely on (a backup a client gave
// up on is still worth finishing).
type NotifyFunc func(ctx context.Context, event string, req NotifyRequest) (NotifyResponse, error)

// StatusFunc returns the supervisor's status: any value that encodes as a
// JSON object. Keep field order meaningful (struct order is kept by the
// CLI's table), durations as strings ("1.2s"), times as RFC 3339.
type StatusFunc func(ctx context.Context) (any, error)

// Options configure a Server. Only Socket-related fields have defaults.
type Options struct {
	// Socket is the path to listen on. Empty or DefaultSocket searches the
	// Candidates: /run, then $XDG_RUNTIME_DIR, then DataDir.
	Socket string
	// DataDir is the app's data directory, the last fallback for the socket.
	DataDir string
	// Status answers GET /v1/status; nil answers 503.
	Status StatusFunc
	// Notify answers POST /v1/notify/{event}; nil answers 503.
	Notify NotifyFunc
	// Events, when set, lists the events Notify accepts; others get a 404
	// naming the known ones before Notify is called.
	Events []string
	// Registry is served on GET /metrics; nil creates an empty one. The
	// server registers its own request counter on it.
	Registry *prometheus.Registry
	// TelemetryListen is an optional TCP address ("127.0.0.1:9090") that
	// serves GET /metrics only, for Prometheus scrapes from outside.
	TelemetryListen string
	// Logger receives the server's own log lines; nil discards them.
	Logger *slog.Logger
	// ReadHeaderTimeout defaults to DefaultReadHeaderTimeout.
	ReadHeaderTimeout time.Duration
	// Group, when set (a group name or numeric gid), may use the socket
	// too (mode 0660): for example the app's own hooks (a git
	// post-receive hook running as the app's user) that notify backups.
	Group string
}

// Server is a running control socket. Create it with New, stop it with
// Close.
type Server struct {
	opts     Options
	log      *slog.Logger
	path     string
	mux      *http.ServeMux
	http     *http.Server
	unix     *net.UnixListener
	tcp      net.Listener
	tcpHTTP  *http.Server
	requests *prometheus.CounterVec
	bound    os.FileInfo // the socket file as bound, to remove only our own

	baseCtx    context.Context
	cancelBase context.CancelFunc
	wg         sync.WaitGroup
	closeOnce  sync.Once
	closeErr   error
}

// New binds the socket (and the telemetry listener, if set) and starts
// serving at once, so a bind error surfaces here and not later. The
// goroutines it starts end in Close.
func New(opts Options) (*Server, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Registry == nil {
		opts.Registry = prometheus.NewRegistry()
	}
	if opts.ReadHeaderTimeout <= 0 {
		opts.ReadHeaderTimeout = DefaultReadHeaderTimeout
	}
	s := &Server{opts: opts, log: opts.Logger, mux: http.NewServeMux()}
	s.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "lifeboat_control_requests_total",
		Help: "Requests to the control socket by endpoint and HTTP status code.",
	}, []string{"endpoint", "code"})
	if err := opts.Registry.Register(s.requests); err != nil {
		var are prometheus.AlreadyRegisteredError
		if !errors.As(err, &are) {
			return nil, fmt.Errorf("control: register metrics: %w", err)
		}
		s.requests = are.ExistingCollector.(*prometheus.CounterVec)
	}

	metrics := promhttp.HandlerFor(opts.Registry, promhttp.HandlerOpts{ErrorLog: slogErrorLog{s.log}})
	s.mux.Handle("GET "+PathStatus, s.counted("status", http.HandlerFunc(s.handleStatus)))
	s.mux.Handle("POST "+PathNotify+"{event}", s.counted("notify", http.HandlerFunc(s.handleNotify)))
	s.mux.Handle("GET "+PathMetrics, s.counted("metrics", metrics))

	s.baseCtx, s.cancelBase = context.WithCancel(context.Background())
	base := func(net.Listener) context.Context { return s.baseCtx }
	s.http = &http.Server{Handler: s.mux, ReadHeaderTimeout: opts.ReadHeaderTimeout, BaseContext: base}

	// The group is looked up before the telemetry listener opens: a
	// mistyped group then leaves nothing to close.
	path := opts.Socket
	if path == "" {
		path = os.Getenv(EnvSocket)
	}
	gid := -1
	if opts.Group != "" {
		g, err := process.LookupGroup(opts.Group)
		if err != nil {
			return nil, fmt.Errorf("control socket %w", err)
		}
		gid = int(g)
	}

	if opts.TelemetryListen != "" {
		l, err := net.Listen("tcp", opts.TelemetryListen)
		if err != nil {
			return nil, fmt.Errorf("telemetry.listen %q: %w; choose a free host:port or leave it empty", opts.TelemetryListen, err)
		}
		s.tcp = l
		tmux := http.NewServeMux()
		tmux.Handle("GET "+PathMetrics, s.counted("metrics_tcp", metrics))
		s.tcpHTTP = &http.Server{Handler: tmux, ReadHeaderTimeout: opts.ReadHeaderTimeout, BaseContext: base}
	}

	ul, where, err := listen(path, opts.DataDir, gid)
	if err != nil {
		if s.tcp != nil {
			s.tcp.Close()
		}
		return nil, err
	}
	s.unix, s.path = ul, where
	s.bound, _ = os.Lstat(where)

	s.serve(s.http, s.unix)
	if s.tcp != nil {
		s.serve(s.tcpHTTP, s.tcp)
		s.log.Info("metrics listening", "addr", s.tcp.Addr().String())
	}
	s.log.Info("control socket listening", "socket", s.path)
	return s, nil
}

func (s *Server) serve(h *http.Server, l net.Listener) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := h.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("control server stopped", "addr", l.Addr().String(), "error", err)
		}
	}()
}

// Path returns the socket path the server listens on (after the fallback
// search).
func (s *Server) Path() string { return s.path }

// TelemetryAddr returns the TCP address /metrics is served on, or "" when
// there is no telemetry listener.
func (s *Server) TelemetryAddr() string {
	if s.tcp == nil {
		return ""
	}
	return s.tcp.Addr().String()
}

// Handle adds an endpoint on the control socket (not on the telemetry
// listener), with a Go 1.22 ServeMux pattern such as
// "POST /v1/maintenance". Safe to call while serving. Answer errors with
// WriteError so the Client reads them the same way.
func (s *Server) Handle(pattern string, h http.Handler) {
	s.mux.Handle(pattern, h)
}

// Close stops accepting, lets requests in flight finish until ctx ends
// (a waiting notify may take a while), then cancels them and removes the
// socket file.
func (s *Server) Close(ctx context.Context) error {
	s.closeOnce.Do(func() {
		errs := []error{s.http.Shutdown(ctx)}
		if s.tcpHTTP != nil {
			errs = append(errs, s.tcpHTTP.Shutdown(ctx))
		}
		if ctx.Err() != nil {
			// Out of patience: cancel waiting handlers and drop connections.
			s.cancelBase()
			s.http.Close()
			if s.tcpHTTP != nil {
				s.tcpHTTP.Close()
			}
		}
		s.cancelBase()
		s.wg.Wait()
		// Remove the socket only if it is still ours: a later supervisor
		// may have replaced a socket it judged stale.
		if fi, err := os.Lstat(s.path); err == nil {
			if s.bound != nil && os.SameFile(fi, s.bound) {
				os.Remove(s.path)
			}
		}
		if err := errors.Join(errs...); err != nil {
			s.closeErr = fmt.Errorf("control socket %s: requests still running at shutdown were cut off: %w", s.path, err)
		}
	})
	return s.closeErr
}

func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request) {
	if s.opts.Status == nil {
		WriteError(w, http.StatusServiceUnavailable, "status is not available yet")
		return
	}
	v, err := s.opts.Status(r.Context())
	if err != nil {
		writeErr(w, fmt.Errorf("status: %w", err))
		return
	}
	WriteJSON(w, http.StatusOK, v)
}

func (s *Server) handleNotify(w http.ResponseWriter, r *http.Request) {
	event := r.PathValue("event")
	if len(s.opts.Events) > 0 && !contains(s.opts.Events, event) {
		WriteError(w, http.StatusNotFound, s.unknownEvent(event))
		return
	}
	if s.opts.Notify == nil {
		WriteError(w, http.StatusServiceUnavailable, "notify is not available yet")
		return
	}
	var req NotifyRequest
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBodyBytes+1))
	if err != nil {
		WriteError(w, http.StatusBadRequest, "read request body: "+err.Error())
		return
	}
	if len(body) > maxBodyBytes {
		WriteError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body larger than %d bytes", maxBodyBytes))
		return
	}
	if len(body) > 0 {
		if err := json.Unmarshal(body, &req); err != nil {
			WriteError(w, http.StatusBadRequest, `request body is not JSON like {"reason":"...","wait":true}: `+err.Error())
			return
		}
	}
	s.log.Info("notify", "event", event, "reason", req.Reason, "wait", req.Wait)
	resp, err := s.opts.Notify(r.Context(), event, req)
	if err != nil {
		s.log.Warn("notify failed", "event", event, "error", err)
		if errors.Is(err, ErrUnknownEvent) && !strings.Contains(err.Error(), event) {
			// A bare sentinel does not say which event; the user needs to.
			WriteError(w, http.StatusNotFound, s.unknownEvent(event))
			return
		}
		writeErr(w, err)
		return
	}
	if resp.Event == "" {
		resp.Event = event
	}
	code := http.StatusAccepted
	if req.Wait {
		code = http.StatusOK
	}
	WriteJSON(w, code, resp)
}

// counted counts requests per endpoint and status code.
func (s *Server) counted(endpoint string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &codeRecorder{ResponseWriter: w, code: http.StatusOK}
		h.ServeHTTP(rec, r)
		s.requests.WithLabelValues(endpoint, strconv.Itoa(rec.code)).Inc()
	})
}

type codeRecorder struct {
	http.ResponseWriter
	code    int
	written bool
}

func (c *codeRecorder) WriteHeader(code int) {
	if !c.written {
		c.code, c.written = code, true
	}
	c.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach Flush and deadlines.
func (c *codeRecorder) Unwrap() http.ResponseWriter { return c.ResponseWriter }

// errorBody is the JSON of every error answer.
type errorBody struct {
	Error string `json:"error"`
}

// WriteError answers with code and {"error": msg}, the shape the Client
// turns back into an error. For handlers added with Handle.
func WriteError(w http.ResponseWriter, code int, msg string) {
	WriteJSON(w, code, errorBody{Error: msg})
}

// writeErr maps the sentinel errors to their status codes.
func writeErr(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, ErrUnknownEvent):
		code = http.StatusNotFound
	case errors.Is(err, ErrUnavailable), errors.Is(err, context.Canceled):
		code = http.StatusServiceUnavailable
	case errors.Is(err, ErrRejected):
		code = http.StatusConflict
	}
	WriteError(w, code, err.Error())
}

// WriteJSON answers with code and v as indented JSON. For handlers added
// with Handle.
func WriteJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		code = http.StatusInternalServerError
		b, _ = json.Marshal(errorBody{Error: "encode answer: " + err.Error()})
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	w.Write(append(b, '\n'))
}

func (s *Server) unknownEvent(event string) string {
	if len(s.opts.Events) == 0 {
		return fmt.Sprintf("unknown event %q", event)
	}
	return fmt.Sprintf("unknown event %q; known events: %s", event, strings.Join(s.opts.Events, ", "))
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// slogErrorLog adapts slog to promhttp's error logger.
type slogErrorLog struct{ log *slog.Logger }

func (l slogErrorLog) Println(v ...any) { l.log.Error("metrics: " + fmt.Sprint(v...)) }
