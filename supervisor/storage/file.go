package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// tempPrefix marks files being written; they are never listed and a crashed
// writer's leftovers are harmless.
const tempPrefix = ".tmp-"

// File is a store in a local directory. Every object is a file; a put is a
// temp file, fsync, rename and directory fsync, so a crash at any moment
// leaves either the old object or the new one, never a torn one.
type File struct {
	root string
}

var _ Store = (*File)(nil)

// OpenFile opens (creating it if needed) a file store rooted at dir.
func OpenFile(dir string) (*File, error) {
	if !filepath.IsAbs(dir) {
		return nil, fmt.Errorf("file store %q: path must be absolute", dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("file store: %w", err)
	}
	return &File{root: filepath.Clean(dir)}, nil
}

func (f *File) path(key string) (string, error) {
	if err := checkKey(key); err != nil {
		return "", err
	}
	return filepath.Join(f.root, filepath.FromSlash(key)), nil
}

func (f *File) String() string { return "file://" + f.root }

func (f *File) Close() error { return nil }

// writeTemp writes r into a synced temp file beside p and returns its path.
func (f *File) writeTemp(ctx context.Context, p string, r io.Reader) (string, error) {
	dir := filepath.Dir(p)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	tmp, err := os.CreateTemp(dir, tempPrefix+"*")
	if err != nil {
		return "", err
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err := io.Copy(tmp, ctxReader{ctx, r}); err != nil {
		return "", err
	}
	if err := tmp.Sync(); err != nil {
		return "", err
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	ok = true
	return tmp.Name(), nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func (f *File) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	p, err := f.path(key)
	if err != nil {
		return err
	}
	tmp, err := f.writeTemp(ctx, p, r)
	if err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	if err := os.Rename(tmp, p); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("put %s: %w", key, err)
	}
	if err := syncDir(filepath.Dir(p)); err != nil {
		return fmt.Errorf("put %s: sync directory: %w", key, err)
	}
	return nil
}

func (f *File) PutIfAbsent(ctx context.Context, key string, r io.Reader, size int64) error {
	p, err := f.path(key)
	if err != nil {
		return err
	}
	tmp, err := f.writeTemp(ctx, p, r)
	if err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	defer os.Remove(tmp)
	// link(2) fails if the name exists: the atomic create-if-absent.
	if err := os.Link(tmp, p); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("put %s: %w", key, ErrExist)
		}
		return fmt.Errorf("put %s: %w", key, err)
	}
	if err := syncDir(filepath.Dir(p)); err != nil {
		return fmt.Errorf("put %s: sync directory: %w", key, err)
	}
	return nil
}

func (f *File) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	return f.GetRange(ctx, key, 0, -1)
}

func (f *File) GetRange(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	p, err := f.path(key)
	if err != nil {
		return nil, err
	}
	fh, err := os.Open(p)
	if err != nil {
		return nil, mapNotExist(key, err)
	}
	if offset == 0 && length < 0 {
		return fh, nil
	}
	if length < 0 {
		fi, err := fh.Stat()
		if err != nil {
			fh.Close()
			return nil, err
		}
		length = fi.Size() - offset
	}
	return struct {
		io.Reader
		io.Closer
	}{io.NewSectionReader(fh, offset, length), fh}, nil
}

func (f *File) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	p, err := f.path(key)
	if err != nil {
		return ObjectInfo{}, err
	}
	fi, err := os.Stat(p)
	if err != nil {
		return ObjectInfo{}, mapNotExist(key, err)
	}
	return ObjectInfo{Key: key, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

func (f *File) List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error {
	// Walk only the directory the prefix names; keys are sorted as a whole
	// because a directory walk's order is not lexical across levels
	// ("a/b" vs "a-c").
	base := f.root
	if i := strings.LastIndex(prefix, "/"); i >= 0 {
		base = filepath.Join(f.root, filepath.FromSlash(prefix[:i]))
	}
	var infos []ObjectInfo
	err := filepath.WalkDir(base, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.IsDir() || strings.HasPrefix(d.Name(), tempPrefix) {
			return nil
		}
		rel, _ := filepath.Rel(f.root, p)
		key := filepath.ToSlash(rel)
		if !strings.HasPrefix(key, prefix) {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // deleted while listing
			}
			return err
		}
		infos = append(infos, ObjectInfo{Key: key, Size: fi.Size(), ModTime: fi.ModTime()})
		return ctx.Err()
	})
	if err != nil {
		return fmt.Errorf("list %s: %w", prefix, err)
	}
	sort.Slice(infos, func(i, j int) bool { return infos[i].Key < infos[j].Key })
	for _, info := range infos {
		if err := fn(info); err != nil {
			return err
		}
	}
	return nil
}

func (f *File) Delete(ctx context.Context, key string) error {
	p, err := f.path(key)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	return nil
}

func mapNotExist(key string, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s: %w", key, ErrNotExist)
	}
	return err
}

// ctxReader stops a long copy when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
