package templates

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/lifeboat/lifeboat/supervisor/process"
)

// writeAtomic puts data at path with mode perm and owner uid:gid (-1
// keeps lifeboat's) unless the file already holds exactly that. It writes a
// temp file in the same directory, syncs it and renames it over path, so a
// reader (or a crash) sees the old file or the new one, never half of one.
// It reports whether it wrote.
func writeAtomic(path string, data []byte, perm os.FileMode, uid, gid int) (bool, error) {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		if fi, err := os.Stat(path); err == nil && fi.Mode().Perm() == perm && ownerMatches(fi, uid, gid) {
			return false, nil
		}
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return false, fmt.Errorf("creating directory for %s: %w", path, err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return false, fmt.Errorf("writing %s: %w", path, err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	// Mode and owner before content: a secret is never readable by others,
	// not even for a moment.
	if err := f.Chmod(perm); err != nil {
		return false, fmt.Errorf("writing %s: %w", path, err)
	}
	if uid >= 0 || gid >= 0 {
		if err := f.Chown(uid, gid); err != nil {
			return false, fmt.Errorf("setting owner of %s to %d:%d: %w", path, uid, gid, err)
		}
	}
	if _, err := f.Write(data); err != nil {
		return false, fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return false, fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return false, fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return false, fmt.Errorf("writing %s: %w", path, err)
	}
	ok = true
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync() // make the rename durable
		d.Close()
	}
	return true, nil
}

func ownerMatches(fi os.FileInfo, uid, gid int) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return true
	}
	return (uid < 0 || int(st.Uid) == uid) && (gid < 0 || int(st.Gid) == gid)
}

// resolveOwner turns user and group names (or numbers) into ids; "" is -1
// (keep). A user without a group means the user's primary group.
func resolveOwner(userName, groupName string) (int, int, error) {
	uid, gid := -1, -1
	if userName != "" {
		u, err := process.LookupUser(userName)
		if err != nil {
			return 0, 0, err
		}
		uid, gid = int(u.Uid), int(u.Gid)
	}
	if groupName != "" {
		g, err := process.LookupGroup(groupName)
		if err != nil {
			return 0, 0, err
		}
		gid = int(g)
	}
	return uid, gid, nil
}
