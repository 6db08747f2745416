package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"syscall"
)

// ErrNoSupervisor means nothing listens on the socket: no `lifeboat run`,
// or it listens elsewhere.
var ErrNoSupervisor = errors.New("no lifeboat supervisor is listening")

// Client talks to a supervisor's control socket.
type Client struct {
	path string
	hc   *http.Client
}

// Dial returns a client for the socket at path after checking that a
// supervisor answers there; if none does, the error wraps ErrNoSupervisor
// and says what to do. Use Locate to find path the way the CLI does.
func Dial(path string) (*Client, error) {
	c := &Client{path: path}
	c.hc = &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		DisableCompression: true,
	}}
	conn, err := net.DialTimeout("unix", path, probeTimeout)
	if err != nil {
		return nil, c.dialError(err)
	}
	conn.Close()
	return c, nil
}

// Path returns the socket path.
func (c *Client) Path() string { return c.path }

// Close releases idle connections.
func (c *Client) Close() error {
	c.hc.CloseIdleConnections()
	return nil
}

func (c *Client) dialError(err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("%w on %s (is `lifeboat run` running? set %s)", ErrNoSupervisor, c.path, EnvSocket)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("control socket %s: permission denied; it is mode 0600, run as the supervisor's user (often root)", c.path)
	}
	return fmt.Errorf("control socket %s: %w", c.path, err)
}

// Error is a non-2xx answer from the supervisor. It matches ErrUnknownEvent,
// ErrUnavailable and ErrRejected with errors.Is by its status code.
type Error struct {
	Code    int    // HTTP status
	Message string // the supervisor's message
}

func (e *Error) Error() string { return e.Message }

// Is maps status codes back to the sentinels a NotifyFunc returned.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrUnknownEvent:
		return e.Code == http.StatusNotFound
	case ErrUnavailable:
		return e.Code == http.StatusServiceUnavailable
	case ErrRejected:
		return e.Code == http.StatusConflict
	}
	return false
}

// Do sends a request to path on the control socket with body (JSON-encoded
// unless nil) and decodes a 2xx answer into out (unless nil). Non-2xx
// answers come back as *Error. For endpoints other rooms add with Handle.
func (c *Client) Do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("encode request to %s: %w", path, err)
		}
		rd = bytes.NewReader(b)
	}
	// The host is ignored by the unix dialer; it only has to be valid.
	req, err := http.NewRequestWithContext(ctx, method, "http://lifeboat"+path, rd)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%s %s on %s: %w", method, path, c.path, ctx.Err())
		}
		return c.dialError(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("%s %s on %s: read answer: %w", method, path, c.path, err)
	}
	if resp.StatusCode/100 != 2 {
		var eb errorBody
		if json.Unmarshal(b, &eb) != nil || eb.Error == "" {
			eb.Error = fmt.Sprintf("%s %s: %s", method, path, resp.Status)
		}
		return &Error{Code: resp.StatusCode, Message: eb.Error}
	}
	if out == nil {
		return nil
	}
	if raw, ok := out.(*json.RawMessage); ok {
		*raw = append((*raw)[:0], bytes.TrimSpace(b)...)
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("%s %s on %s: decode answer: %w", method, path, c.path, err)
	}
	return nil
}

// Status returns the supervisor's status as raw JSON (its shape belongs to
// the supervisor; FormatStatus renders any shape for people).
func (c *Client) Status(ctx context.Context) (json.RawMessage, error) {
	var raw json.RawMessage
	if err := c.Do(ctx, http.MethodGet, PathStatus, nil, &raw); err != nil {
		return nil, err
	}
	return raw, nil
}

// Notify sends event. With req.Wait it returns when the supervisor has
// done the work (for a backup: the snapshot is durable) or failed it.
func (c *Client) Notify(ctx context.Context, event string, req NotifyRequest) (NotifyResponse, error) {
	var resp NotifyResponse
	err := c.Do(ctx, http.MethodPost, PathNotify+url.PathEscape(event), req, &resp)
	return resp, err
}

// Metrics returns the Prometheus text exposition from GET /metrics.
func (c *Client) Metrics(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://lifeboat"+PathMetrics, nil)
	if err != nil {
		return "", err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return "", c.dialError(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s on %s: %s %v", PathMetrics, c.path, resp.Status, err)
	}
	return string(b), nil
}
