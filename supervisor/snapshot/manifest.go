package snapshot

import (
	"bytes"
	"context"
	"fmt"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/zeebo/blake3"
)

// Entry kinds.
const (
	KindDir      = "dir"
	KindFile     = "file"
	KindSymlink  = "symlink"
	KindHardlink = "hardlink"
)

// Entry is one item of a snapshot's tree. Paths are "/"-separated and
// relative to the backed-up directory; "." is the directory itself.
// Parents come before their children.
type Entry struct {
	Path   string `json:"path"`
	Kind   string `json:"kind"`
	Mode   uint32 `json:"mode"` // permission bits plus setuid, setgid, sticky (os.FileMode bits)
	UID    uint32 `json:"uid"`
	GID    uint32 `json:"gid"`
	MTime  int64  `json:"mtime"` // unix nanoseconds
	Size   int64  `json:"size,omitempty"`
	Target string `json:"target,omitempty"` // symlink target, or the path a hardlink shares
	// PathBytes and TargetBytes carry Path and Target when they are not
	// valid UTF-8, which a JSON string cannot hold (file names and link
	// texts are bytes); Path and Target then hold them with each invalid
	// byte replaced by U+FFFD, for display only.
	PathBytes   []byte            `json:"path_bytes,omitempty"`
	TargetBytes []byte            `json:"target_bytes,omitempty"`
	Chunks      []ChunkID         `json:"chunks,omitempty"`
	Xattrs      map[string][]byte `json:"xattrs,omitempty"`
	// Change detection against the next backup (not used by restore).
	Dev   uint64 `json:"dev,omitempty"`
	Inode uint64 `json:"inode,omitempty"`
	CTime int64  `json:"ctime,omitempty"`
}

// StreamEntry is a named stream: the stdout of a backup command.
type StreamEntry struct {
	Name   string    `json:"name"`
	Size   int64     `json:"size"`
	Chunks []ChunkID `json:"chunks"`
}

// Tree is a snapshot's content, stored as its own object before the
// manifest that commits it.
type Tree struct {
	Version int           `json:"version"`
	Entries []Entry       `json:"entries"`
	Streams []StreamEntry `json:"streams,omitempty"`
}

// Stats describe one backup.
type Stats struct {
	Files       int      `json:"files"`
	Dirs        int      `json:"dirs"`
	Symlinks    int      `json:"symlinks"`
	Hardlinks   int      `json:"hardlinks"`
	Bytes       int64    `json:"bytes"`        // file and stream bytes in the snapshot
	ReadBytes   int64    `json:"read_bytes"`   // bytes read (unchanged files are not read)
	NewBytes    int64    `json:"new_bytes"`    // raw bytes of chunks the repository did not have
	StoredBytes int64    `json:"stored_bytes"` // bytes uploaded in packs
	NewChunks   int      `json:"new_chunks"`
	Skipped     []string `json:"skipped,omitempty"` // "path: reason" (sockets, fifos, devices, vanished files)
	Changed     []string `json:"changed,omitempty"` // files that changed while being read
	Duration    string   `json:"duration"`
}

// Manifest commits a snapshot: written last, it makes the tree and every
// chunk it references part of the repository.
type Manifest struct {
	Version      int               `json:"version"`
	ID           string            `json:"id"`
	Time         time.Time         `json:"time"`
	Host         string            `json:"host,omitempty"`
	Tags         []string          `json:"tags,omitempty"`
	Reason       string            `json:"reason,omitempty"`
	Parent       string            `json:"parent,omitempty"`
	FencingToken uint64            `json:"fencing_token,omitempty"`
	Meta         map[string]string `json:"meta,omitempty"`
	TreeKey      string            `json:"tree"`
	TreeHash     ChunkID           `json:"tree_hash"` // BLAKE3 of the stored tree object
	Stats        Stats             `json:"stats"`

	Key string `json:"-"` // the manifest's object key
}

const (
	treesPrefix     = "trees/"
	maxManifestSize = 16 << 20
	maxTreeSize     = 1 << 30
)

func manifestKey(t time.Time, id string) string {
	return fmt.Sprintf("%s%020d-%s", snapshotsPrefix, t.UnixNano(), id)
}

// Snapshots lists committed snapshots, oldest first in time order.
// Manifests that fail to decode are skipped with a warning (verify reports
// them), so one bad object never hides the others.
func (r *Repository) Snapshots(ctx context.Context) ([]*Manifest, error) {
	return r.listManifests(ctx, false)
}

// manifestReads is how many manifests are read at once. They are small
// (about 1 KiB), so the round trips, not the bytes, are the cost: every
// container start reads all of them, and a repository that backs up on
// every push holds hundreds between two prunes. Through a store 10 ms
// away, 152 manifests took 0.53 s to list 8 at a time.
const manifestReads = 32

// listManifests reads every manifest, oldest first. strict makes one that
// cannot be read an error (prune must not decide on a partial list);
// otherwise it is skipped with a warning.
func (r *Repository) listManifests(ctx context.Context, strict bool) ([]*Manifest, error) {
	keys, err := r.listKeys(ctx, snapshotsPrefix, "snapshots")
	if err != nil {
		return nil, err
	}
	out := make([]*Manifest, len(keys))
	err = parallel(ctx, max(r.conc, manifestReads), indices(len(keys)), func(ctx context.Context, i int) error {
		m, err := r.readManifest(ctx, keys[i])
		switch {
		case err != nil && strict:
			return fmt.Errorf("snapshot manifest %s: %w", keys[i], err)
		case err != nil:
			r.log.Warn("unreadable snapshot manifest skipped", "key", keys[i], "error", err)
			return nil
		}
		out[i] = m
		return nil
	})
	if err != nil {
		return nil, err
	}
	list := out[:0]
	for _, m := range out {
		if m != nil {
			list = append(list, m)
		}
	}
	sort.SliceStable(list, func(i, j int) bool { return list[i].Time.Before(list[j].Time) })
	return list, nil
}

func indices(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = i
	}
	return s
}

func (r *Repository) readManifest(ctx context.Context, key string) (*Manifest, error) {
	b, err := r.getAll(ctx, key, maxManifestSize)
	if err != nil {
		return nil, err
	}
	var m Manifest
	if err := r.decodeObject("manifest", b, &m); err != nil {
		return nil, err
	}
	if m.Version != 1 || m.ID == "" || !strings.HasSuffix(key, "-"+m.ID) {
		return nil, fmt.Errorf("manifest %s: %w: id or version mismatch", key, ErrCorrupt)
	}
	m.Key = key
	return &m, nil
}

// Latest orders snapshots for "latest": the highest fencing token wins (a
// deposed leader's late backup never becomes latest), then the newest.
func Latest(list []*Manifest) *Manifest {
	var best *Manifest
	for _, m := range list {
		if best == nil || m.FencingToken > best.FencingToken || (m.FencingToken == best.FencingToken && m.Time.After(best.Time)) {
			best = m
		}
	}
	return best
}

// ByPreference is list sorted best first, in Latest's order.
func ByPreference(list []*Manifest) []*Manifest {
	out := append([]*Manifest(nil), list...)
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.FencingToken != b.FencingToken {
			return a.FencingToken > b.FencingToken
		}
		return a.Time.After(b.Time)
	})
	return out
}

// FindSnapshot resolves "latest", a full id or a unique id prefix.
func (r *Repository) FindSnapshot(ctx context.Context, ref string) (*Manifest, error) {
	list, err := r.Snapshots(ctx)
	if err != nil {
		return nil, err
	}
	if ref == "" || ref == "latest" {
		if m := Latest(list); m != nil {
			return m, nil
		}
		return nil, fmt.Errorf("%s: %w", r.store, ErrNoSnapshot)
	}
	var found *Manifest
	for _, m := range list {
		if strings.HasPrefix(m.ID, ref) {
			if found != nil {
				return nil, fmt.Errorf("snapshot id %q is ambiguous: give more digits", ref)
			}
			found = m
		}
	}
	if found == nil {
		return nil, fmt.Errorf("snapshot %q: %w", ref, ErrNoSnapshot)
	}
	return found, nil
}

// ReadTree loads a snapshot's tree, checking it is the one the manifest
// committed.
func (r *Repository) ReadTree(ctx context.Context, m *Manifest) (*Tree, error) {
	b, err := r.getAll(ctx, m.TreeKey, maxTreeSize)
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: read tree: %w", m.ID, err)
	}
	if ChunkID(blake3.Sum256(b)) != m.TreeHash {
		return nil, fmt.Errorf("snapshot %s: tree: %w: hash mismatch", m.ID, ErrCorrupt)
	}
	var t Tree
	if err := r.decodeObject("tree", b, &t); err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", m.ID, err)
	}
	if t.Version != 1 {
		return nil, fmt.Errorf("snapshot %s: tree version %d not supported", m.ID, t.Version)
	}
	for i := range t.Entries {
		e := &t.Entries[i]
		if e.PathBytes != nil {
			e.Path, e.PathBytes = string(e.PathBytes), nil
		}
		if e.TargetBytes != nil {
			e.Target, e.TargetBytes = string(e.TargetBytes), nil
		}
	}
	return &t, nil
}

// keepBytes sets PathBytes and TargetBytes where Path and Target are not
// valid UTF-8, which JSON would store with U+FFFD in place of the bytes.
func (t *Tree) keepBytes() {
	for i := range t.Entries {
		e := &t.Entries[i]
		if !utf8.ValidString(e.Path) {
			e.PathBytes = []byte(e.Path)
		}
		if !utf8.ValidString(e.Target) {
			e.TargetBytes = []byte(e.Target)
		}
	}
}

// commit writes the tree, then the manifest: the commit point.
func (r *Repository) commit(ctx context.Context, m *Manifest, t *Tree) error {
	t.keepBytes()
	tb, err := r.encodeObject("tree", t)
	if err != nil {
		return err
	}
	m.TreeKey = treesPrefix + m.ID
	m.TreeHash = ChunkID(blake3.Sum256(tb))
	if err := r.store.Put(ctx, m.TreeKey, bytes.NewReader(tb), int64(len(tb))); err != nil {
		return fmt.Errorf("write tree: %w", err)
	}
	mb, err := r.encodeObject("manifest", m)
	if err != nil {
		return err
	}
	m.Key = manifestKey(m.Time, m.ID)
	if err := r.store.PutIfAbsent(ctx, m.Key, bytes.NewReader(mb), int64(len(mb))); err != nil {
		return fmt.Errorf("write manifest: %w", err)
	}
	return nil
}
