package hooks

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"regexp"
	"strings"
	"syscall"

	"github.com/lifeboat/lifeboat/supervisor/process"
)

var metadataKey = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)

// ParseMetadata reads key=value lines: keys are [A-Za-z0-9_.-]+, the value
// is the rest of the line after the first "=" (it may be empty or hold
// "="). Empty lines and lines starting with "#" are skipped; a key given
// twice keeps its last value. Any other line is an error naming its
// number, never its content.
func ParseMetadata(data []byte) (map[string]string, error) {
	md := map[string]string{}
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimRight(line, "\r")
		if strings.TrimSpace(line) == "" || strings.HasPrefix(line, "#") {
			continue
		}
		// The line itself is not quoted: it may be a secret written
		// by mistake, and this error is logged.
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return md, fmt.Errorf("metadata line %d is not key=value: it has no '='", i+1)
		}
		if !metadataKey.MatchString(k) {
			return md, fmt.Errorf("metadata line %d is not key=value: the key (%d bytes before the first '=') may hold only letters, digits, '_', '.' or '-'", i+1, len(k))
		}
		md[k] = v
	}
	return md, nil
}

// FormatMetadata writes md as key=value lines sorted by key, the format
// ParseMetadata reads.
func FormatMetadata(md map[string]string) ([]byte, error) {
	var b bytes.Buffer
	for _, k := range sortedKeys(md) {
		if !metadataKey.MatchString(k) {
			return nil, fmt.Errorf("metadata key %q: keys are letters, digits, '_', '.' or '-'", clip(k, 80))
		}
		if strings.Contains(md[k], "\n") || strings.HasSuffix(md[k], "\r") {
			return nil, fmt.Errorf("metadata key %q: the value holds a line break", k)
		}
		fmt.Fprintf(&b, "%s=%s\n", k, md[k])
	}
	return b.Bytes(), nil
}

// readMetadata reads the file a hook wrote. The hook's user may replace
// it in the shared temp dir, and lifeboat reads it as root: a symlink (to
// /etc/shadow, say), a hard link to another file or a FIFO in its place is
// refused, not read.
func readMetadata(path string) (map[string]string, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]string{}, nil // the hook removed it: no metadata
	}
	if err != nil {
		return nil, fmt.Errorf("metadata file %s: %w (it must be a regular file)", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("metadata file %s: not a regular file", path)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink != 1 {
		return nil, fmt.Errorf("metadata file %s: has %d names (a hard link to another file?); it must be the file lifeboat made", path, st.Nlink)
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxMetadataBytes+1))
	if err != nil {
		return nil, fmt.Errorf("metadata file %s: %w", path, err)
	}
	if len(data) > MaxMetadataBytes {
		return nil, fmt.Errorf("metadata file is larger than %d bytes: metadata is for small facts such as a GTID position", MaxMetadataBytes)
	}
	return ParseMetadata(data)
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// metadataFiles are the per-run files LIFEBOAT_METADATA_FILE and
// LIFEBOAT_METADATA_IN name: mode 0600, owned by the hook's user, removed
// after the run.
type metadataFiles struct {
	dir   string
	user  *process.User
	paths []string
}

func (m *metadataFiles) create(hook, kind string, data []byte) (string, error) {
	f, err := os.CreateTemp(m.dir, ".lifeboat-hook-"+safeName(hook)+"-"+kind+"-*")
	if err != nil {
		return "", fmt.Errorf("metadata file: %w (is the temp dir writable?)", err)
	}
	m.paths = append(m.paths, f.Name())
	defer f.Close()
	if err := f.Chmod(metadataFileMode); err != nil {
		return "", fmt.Errorf("metadata file %s: %w", f.Name(), err)
	}
	if m.user != nil && (m.user.Uid != uint32(os.Geteuid()) || m.user.Gid != uint32(os.Getegid())) {
		if err := f.Chown(int(m.user.Uid), int(m.user.Gid)); err != nil {
			return "", fmt.Errorf("metadata file %s: give it to the hook's user: %w", f.Name(), err)
		}
	}
	if _, err := f.Write(data); err != nil {
		return "", fmt.Errorf("metadata file %s: %w", f.Name(), err)
	}
	return f.Name(), f.Close()
}

func (m *metadataFiles) remove() {
	for _, p := range m.paths {
		os.Remove(p)
	}
}

func safeName(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			b[i] = '_'
		}
	}
	return string(b)
}
