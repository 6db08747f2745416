package control

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// Socket locations.
const (
	// DefaultSocket is where the supervisor listens and clients look first.
	DefaultSocket = "/run/lifeboat.sock"
	// EnvSocket overrides the socket path for the server and the client.
	EnvSocket = "LIFEBOAT_SOCKET"
	// EnvData is the data directory, the last place the socket may live.
	EnvData = "LIFEBOAT_DATA"
	// SocketName is the file name under $XDG_RUNTIME_DIR.
	SocketName = "lifeboat.sock"
	// DataDirSocketName is the file name inside the data directory; hidden,
	// so it reads as lifeboat's own and not the app's.
	DataDirSocketName = ".lifeboat.sock"
	// SocketMode is the socket file's mode: only the supervisor's user may
	// ask it for backups or read its status.
	SocketMode = 0o600
	// GroupSocketMode is the mode when a group is given access (Options.Group).
	GroupSocketMode = 0o660

	// probeTimeout bounds the dial that tells a live socket from a stale one.
	probeTimeout = time.Second
	// maxSocketPath is the kernel's limit on a unix socket path (sun_path
	// is 108 bytes including the terminating NUL).
	maxSocketPath = 107
)

// defaultSocket is DefaultSocket; tests point it elsewhere so they never
// touch the real /run.
var defaultSocket = DefaultSocket

// ErrSupervisorRunning is returned when the socket path is already served
// by a live process.
var ErrSupervisorRunning = errors.New("another supervisor is listening")

// Candidates returns, in order, the paths where a supervisor may listen
// when no path is configured: DefaultSocket, then $XDG_RUNTIME_DIR (if
// set), then the data directory (if given). The server takes the first it
// can create; the client takes the first that exists.
func Candidates(dataDir string) []string {
	c := []string{defaultSocket}
	if x := os.Getenv("XDG_RUNTIME_DIR"); x != "" {
		c = append(c, filepath.Join(x, SocketName))
	}
	if dataDir != "" {
		c = append(c, filepath.Join(dataDir, DataDirSocketName))
	}
	return c
}

// Locate returns the socket a client should talk to: explicit if set (a
// --socket flag), else $LIFEBOAT_SOCKET, else the first candidate (see
// Candidates) that exists as a socket, else DefaultSocket, so the error
// names the place users expect.
func Locate(explicit, dataDir string) string {
	if explicit != "" {
		return explicit
	}
	if env := os.Getenv(EnvSocket); env != "" {
		return env
	}
	for _, p := range Candidates(dataDir) {
		if fi, err := os.Lstat(p); err == nil && fi.Mode().Type() == fs.ModeSocket {
			return p
		}
	}
	return defaultSocket
}

// listen binds the socket. An empty path or DefaultSocket means "search":
// try each candidate in turn and fall back past the ones whose directory
// cannot be written (a read-only /run, a non-root user). Any other path is
// used as given.
func listen(path, dataDir string, gid int) (*net.UnixListener, string, error) {
	if path != "" && path != DefaultSocket && path != defaultSocket {
		l, err := listenAt(path, gid)
		return l, path, err
	}
	var tried []string
	for _, p := range Candidates(dataDir) {
		l, err := listenAt(p, gid)
		if err == nil {
			return l, p, nil
		}
		if !unwritable(err) {
			return nil, p, err
		}
		tried = append(tried, fmt.Sprintf("%s (%v)", p, errors.Unwrap(err)))
	}
	return nil, defaultSocket, fmt.Errorf("control socket: no writable place for it; tried %v; set control.socket or %s to a path in a writable directory", tried, EnvSocket)
}

// unwritable reports whether err means "this directory is not usable",
// the cases where falling back to the next candidate is right.
func unwritable(err error) bool {
	return errors.Is(err, fs.ErrPermission) || errors.Is(err, syscall.EROFS) || errors.Is(err, fs.ErrNotExist)
}

// listenAt binds a unix socket at path with mode 0600 from its first
// moment: it binds under a temporary name, sets the mode, then renames it
// into place, so no other user can ever connect through a wider umask.
// The rename also replaces a stale socket atomically. A socket a live
// process still answers on is never touched. gid >= 0 gives that group
// access (mode 0660), set before the rename like the mode.
func listenAt(path string, gid int) (*net.UnixListener, error) {
	if len(path) > maxSocketPath {
		return nil, fmt.Errorf("control socket %s: path is %d bytes, longer than the %d a unix socket allows; choose a shorter path", path, len(path), maxSocketPath)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("control socket %s: the path exists and is not a socket; remove it or choose another path", path)
		}
		if live(path) {
			return nil, fmt.Errorf("control socket %s: %w on %s; stop it first or set %s to another path", path, ErrSupervisorRunning, path, EnvSocket)
		}
		// Stale: left by a supervisor that died; the rename below replaces it.
	}
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	tmp := filepath.Join(filepath.Dir(path), ".lb-"+hex.EncodeToString(rnd[:])+".sock")
	if len(tmp) > maxSocketPath {
		tmp = path + "~" // still within the limit only if path is; checked above
		if len(tmp) > maxSocketPath {
			return nil, fmt.Errorf("control socket %s: path too long to bind safely; choose a path shorter than %d bytes", path, maxSocketPath-1)
		}
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	// We unlink the final path ourselves on Close; Go would unlink tmp.
	l.SetUnlinkOnClose(false)
	mode := os.FileMode(SocketMode)
	if gid >= 0 {
		mode = GroupSocketMode
		if err := os.Chown(tmp, -1, gid); err != nil {
			l.Close()
			os.Remove(tmp)
			// %v, not %w: EPERM here means this user may not give the
			// socket to that group, not that the directory is unwritable,
			// so the search must not fall through to the next candidate.
			return nil, fmt.Errorf("control socket %s: give group %d access: %v", path, gid, err)
		}
	}
	if err := os.Chmod(tmp, mode); err != nil {
		l.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("control socket %s: set mode %#o: %w", path, mode, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		l.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	return l, nil
}

// live reports whether the socket may belong to a live process. Only a
// refused connection proves it stale; anything else (accepted, permission
// denied, a full backlog timing out) leaves it alone.
func live(path string) bool {
	c, err := net.DialTimeout("unix", path, probeTimeout)
	if err != nil {
		return !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, fs.ErrNotExist)
	}
	c.Close()
	return true
}
