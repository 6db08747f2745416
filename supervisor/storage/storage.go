// Package storage is the object-store interface the snapshot engine writes
// to, and its backends: s3 (any S3-compatible service, through minio-go) and
// file (a local directory, the embedded default).
//
// The interface is deliberately small: whole-object puts that are atomic (an
// object is either fully visible or not at all), whole and ranged gets,
// listing by prefix, and deletes. Everything the snapshot format needs is
// built on these.
package storage

import (
	"context"
	"errors"
	"io"
	"time"
)

// ErrNotExist is returned (wrapped) by Get, GetRange and Stat when the object
// does not exist. Test with errors.Is.
var ErrNotExist = errors.New("object does not exist")

// ErrExist is returned (wrapped) by PutIfAbsent when the object already exists.
var ErrExist = errors.New("object already exists")

// ObjectInfo describes one stored object.
type ObjectInfo struct {
	Key     string    // full key relative to the store's prefix, "/"-separated
	Size    int64     // bytes
	ModTime time.Time // last modification as the backend reports it
}

// Store is one repository location: a bucket and prefix, or a directory.
// Keys are "/"-separated paths relative to that location; they never start
// with "/" and never contain "." or ".." elements.
//
// Implementations are safe for concurrent use.
type Store interface {
	// Put stores size bytes read from r under key, replacing any object
	// there. The object becomes visible atomically when Put returns nil; a
	// failed or interrupted Put never leaves a partial object under key.
	// size may be -1 when unknown.
	Put(ctx context.Context, key string, r io.Reader, size int64) error

	// PutIfAbsent is Put that fails with ErrExist when key already exists,
	// decided atomically by the backend (used for locks and for objects that
	// must never be overwritten).
	PutIfAbsent(ctx context.Context, key string, r io.Reader, size int64) error

	// Get opens the whole object.
	Get(ctx context.Context, key string) (io.ReadCloser, error)

	// GetRange opens length bytes starting at offset. length -1 reads to the end.
	GetRange(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error)

	// Stat returns the object's metadata.
	Stat(ctx context.Context, key string) (ObjectInfo, error)

	// List calls fn for every object whose key starts with prefix, in
	// lexical key order. An error from fn stops the listing and is returned.
	List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error

	// Delete removes key. Deleting a missing object is not an error.
	Delete(ctx context.Context, key string) error

	// String describes the location for logs and errors, without credentials.
	String() string

	// Close releases resources held by the store.
	Close() error
}
