// Package snapshot is lifeboat's snapshot engine: deduplicated, compressed,
// optionally encrypted snapshots of a directory tree and of named streams,
// stored in any storage.Store. docs/snapshot-format.md describes the
// repository format precisely; in short:
//
//	config                  repository parameters (plain JSON)
//	packs/XX/PACKID         chunks, each compressed (and sealed), plus a trailer
//	index/ID                which chunk lives where, one file per backup
//	snapshots/TIME-ID       a manifest: the tree, streams, metadata
//	locks/ID                leases that keep prune away from running backups
//
// Write order is packs, index, manifest; the manifest is the commit point.
// The engine knows nothing of the supervisor.
package snapshot

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
	"runtime"
	"sync"
	"time"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/klauspost/compress/zstd"
	"github.com/lifeboat/lifeboat/supervisor/storage"
	"golang.org/x/sync/errgroup"
)

// FormatVersion is the repository format this code writes and reads.
const FormatVersion = 1

// Defaults of a new repository.
const (
	DefaultChunkMin = 128 << 10
	DefaultChunkAvg = 512 << 10
	DefaultChunkMax = 2 << 20
	DefaultPackSize = 16 << 20
)

// Object key prefixes.
const (
	configKey       = "config"
	packPrefix      = "packs/"
	indexPrefix     = "index/"
	snapshotsPrefix = "snapshots/"
	locksPrefix     = "locks/"
)

// ErrNoRepository means the store holds no repository (no config object).
var ErrNoRepository = errors.New("no repository in this store")

// ErrNoSnapshot means the repository holds no (matching) snapshot.
var ErrNoSnapshot = errors.New("no snapshot")

// RepoConfig is the repository's config object.
type RepoConfig struct {
	Format      string          `json:"format"`
	Version     int             `json:"version"`
	ID          string          `json:"id"`
	Created     time.Time       `json:"created"`
	Chunker     ChunkerParams   `json:"chunker"`
	Hash        string          `json:"hash"`
	Compression string          `json:"compression"`
	PackSize    int             `json:"pack_size"`
	Encryption  *EncryptionInfo `json:"encryption,omitempty"`
}

// ChunkerParams are the content-defined chunker's sizes in bytes.
type ChunkerParams struct {
	Min int `json:"min"`
	Avg int `json:"avg"`
	Max int `json:"max"`
}

// EncryptionInfo says how the key is derived and how to recognise it.
type EncryptionInfo struct {
	Cipher   string    `json:"cipher"`
	KDF      KDFParams `json:"kdf"`
	KeyCheck []byte    `json:"key_check"`
}

// KDFParams are scrypt's parameters.
type KDFParams struct {
	Name string `json:"name"`
	Salt []byte `json:"salt"`
	N    int    `json:"n"`
	R    int    `json:"r"`
	P    int    `json:"p"`
}

// Starter starts a command and returns a function that waits for it. When
// lifeboat is PID 1 the supervisor passes its reaper-backed starter (a
// second wait4 owner would steal exit statuses); the default uses
// cmd.Start and cmd.Wait.
type Starter interface {
	Start(cmd *exec.Cmd) (wait func() (int, error), err error)
}

type execStarter struct{}

func (execStarter) Start(cmd *exec.Cmd) (func() (int, error), error) {
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return func() (int, error) {
		err := cmd.Wait()
		return cmd.ProcessState.ExitCode(), err
	}, nil
}

// Options open a repository.
type Options struct {
	// Key is the encryption key material (any length; stretched with
	// scrypt). nil opens or creates an unencrypted repository.
	Key []byte
	// Create makes a new repository when the store has none.
	Create bool
	// Logger receives the engine's log lines; nil discards them.
	Logger *slog.Logger
	// Starter starts stream commands; nil uses os/exec directly.
	Starter Starter
	// Concurrency bounds parallel uploads and downloads; 0 means 8.
	Concurrency int
	// SkipIndex leaves the index unloaded: for callers that need none
	// (listing snapshots) or read the index objects themselves (prune,
	// verify). Backup and restore need it.
	SkipIndex bool
}

// Repository is an open repository.
type Repository struct {
	store   storage.Store
	cfg     RepoConfig
	keys    *keys
	hash    hasher
	log     *slog.Logger
	starter Starter
	conc    int

	zenc *zstd.Encoder
	// blobEnc compresses chunks: frames without a checksum.
	blobEnc *zstd.Encoder
	zdec    *zstd.Decoder
	// blobDec decodes chunks; its output is capped at the destination's
	// capacity (the chunk's size from the index).
	blobDec *zstd.Decoder

	mu      sync.RWMutex
	index   map[ChunkID]BlobRef
	indexes map[string]bool // index objects already loaded
}

// Open opens the repository in store, creating it when opts.Create is set
// and there is none.
func Open(ctx context.Context, store storage.Store, opts Options) (*Repository, error) {
	r := &Repository{store: store, log: opts.Logger, starter: opts.Starter, conc: opts.Concurrency,
		index: map[ChunkID]BlobRef{}, indexes: map[string]bool{}}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if r.starter == nil {
		r.starter = execStarter{}
	}
	if r.conc <= 0 {
		r.conc = 8
	}
	var err error
	if r.zenc, err = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)+1)); err != nil {
		return nil, err
	}
	// A chunk's id checks its bytes, so its frame needs no checksum of
	// its own: none is written, and one that is there is not computed.
	if r.blobEnc, err = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)+1),
		zstd.WithEncoderCRC(false)); err != nil {
		return nil, err
	}
	if r.zdec, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(1<<30)); err != nil {
		return nil, err
	}
	if r.blobDec, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecodeAllCapLimit(true), zstd.IgnoreChecksum(true)); err != nil {
		return nil, err
	}
	cfg, err := readConfig(ctx, store)
	if errors.Is(err, ErrNoRepository) && opts.Create {
		cfg, err = createConfig(ctx, store, opts.Key)
	}
	if err != nil {
		return nil, err
	}
	r.cfg = *cfg
	// Deriving the keys takes scrypt's ~0.1 s of CPU by design; the index
	// downloads meanwhile. A wrong key is the error reported, whatever
	// happened to the index.
	done := make(chan error, 1)
	go func() { done <- r.unlock(opts.Key) }()
	unlocked := sync.OnceValue(func() error { return <-done })
	if !opts.SkipIndex {
		err = r.loadIndex(ctx, unlocked)
	}
	if uerr := unlocked(); uerr != nil {
		return nil, uerr
	}
	if err != nil {
		return nil, err
	}
	return r, nil
}

// Config returns the repository's parameters.
func (r *Repository) Config() RepoConfig { return r.cfg }

// Store is the store the repository lives in.
func (r *Repository) Store() storage.Store { return r.store }

// Encrypted reports whether the repository is encrypted.
func (r *Repository) Encrypted() bool { return r.keys != nil }

func (r *Repository) unlock(key []byte) error {
	enc := r.cfg.Encryption
	switch {
	case enc == nil && key != nil:
		return keyMismatch{fmt.Errorf("repository %s is not encrypted, but an encryption key was given; remove the key or use a new store", r.store)}
	case enc == nil:
		return nil
	case key == nil:
		return keyMismatch{fmt.Errorf("repository %s is encrypted: give its key (store.encryption_key or LIFEBOAT_ENCRYPTION_KEY)", r.store)}
	}
	k, err := deriveKeys(key, &enc.KDF)
	if err != nil {
		return err
	}
	if !bytes.Equal(k.keyCheck(), enc.KeyCheck) {
		return fmt.Errorf("repository %s: %w", r.store, ErrWrongKey)
	}
	r.keys = k
	r.hash = newHasher(k.id)
	return nil
}

func readConfig(ctx context.Context, store storage.Store) (*RepoConfig, error) {
	rc, err := store.Get(ctx, configKey)
	if errors.Is(err, storage.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", store, ErrNoRepository)
	}
	if err != nil {
		return nil, fmt.Errorf("read repository config: %w", err)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("read repository config: %w", err)
	}
	return decodeConfig(b)
}

func decodeConfig(b []byte) (*RepoConfig, error) {
	var cfg RepoConfig
	if err := json.Unmarshal(b, &cfg); err != nil {
		return nil, fmt.Errorf("repository config: %w: %v", ErrCorrupt, err)
	}
	if cfg.Format != "lifeboat-repo" {
		return nil, fmt.Errorf("repository config: not a lifeboat repository (format %q)", cfg.Format)
	}
	if cfg.Version != FormatVersion {
		return nil, fmt.Errorf("repository format version %d is not supported by this lifeboat (it reads version %d)", cfg.Version, FormatVersion)
	}
	c := cfg.Chunker
	if c.Min < 64 || c.Avg < c.Min || c.Max < c.Avg || c.Max > 64<<20 || cfg.PackSize < 1<<20 || cfg.PackSize > 1<<30 {
		return nil, fmt.Errorf("repository config: %w: bad chunker or pack size", ErrCorrupt)
	}
	if e := cfg.Encryption; e != nil {
		if e.Cipher != "aes-256-gcm" || e.KDF.Name != "scrypt" || e.KDF.N < 2 || e.KDF.N > 1<<22 || e.KDF.R < 1 || e.KDF.R > 32 || e.KDF.P < 1 || e.KDF.P > 16 || len(e.KDF.Salt) < 16 {
			return nil, fmt.Errorf("repository config: %w: unsupported encryption parameters", ErrCorrupt)
		}
	}
	return &cfg, nil
}

// createConfig writes a new config. When another writer created one at the
// same moment, PutIfAbsent lets exactly one win and the winner's is used.
func createConfig(ctx context.Context, store storage.Store, key []byte) (*RepoConfig, error) {
	cfg := &RepoConfig{
		Format: "lifeboat-repo", Version: FormatVersion, ID: randomID(16), Created: time.Now().UTC(),
		Chunker:     ChunkerParams{Min: DefaultChunkMin, Avg: DefaultChunkAvg, Max: DefaultChunkMax},
		Hash:        "blake3",
		Compression: "zstd",
		PackSize:    DefaultPackSize,
	}
	if key != nil {
		salt := make([]byte, 32)
		rand.Read(salt)
		cfg.Encryption = &EncryptionInfo{Cipher: "aes-256-gcm", KDF: KDFParams{Name: "scrypt", Salt: salt, N: 1 << 15, R: 8, P: 1}}
		k, err := deriveKeys(key, &cfg.Encryption.KDF)
		if err != nil {
			return nil, err
		}
		cfg.Encryption.KeyCheck = k.keyCheck()
	}
	b, _ := json.MarshalIndent(cfg, "", "  ")
	err := store.PutIfAbsent(ctx, configKey, bytes.NewReader(b), int64(len(b)))
	if errors.Is(err, storage.ErrExist) {
		return readConfig(ctx, store)
	}
	if err != nil {
		return nil, fmt.Errorf("create repository: %w", err)
	}
	return cfg, nil
}

func randomID(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// Envelope of metadata objects (index, manifest): magic, flags, payload.
// The payload is zstd-compressed JSON, sealed when the repository is
// encrypted.
var envelopeMagic = []byte("LBO1")

const (
	flagZstd      = 1
	flagEncrypted = 2
)

func (r *Repository) encodeObject(kind string, v any) ([]byte, error) {
	js, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	payload := r.zenc.EncodeAll(js, nil)
	flags := byte(flagZstd)
	if r.keys != nil {
		if payload, err = r.keys.sealMeta(kind, payload); err != nil {
			return nil, err
		}
		flags |= flagEncrypted
	}
	return append(append(append([]byte{}, envelopeMagic...), flags), payload...), nil
}

func (r *Repository) decodeObject(kind string, b []byte, v any) error {
	if len(b) < 5 || !bytes.Equal(b[:4], envelopeMagic) {
		return fmt.Errorf("%s: %w: bad envelope", kind, ErrCorrupt)
	}
	flags, payload := b[4], b[5:]
	if flags&^(flagZstd|flagEncrypted) != 0 {
		return fmt.Errorf("%s: %w: unknown flags %#x", kind, ErrCorrupt, flags)
	}
	if flags&flagEncrypted != 0 {
		if r.keys == nil {
			return fmt.Errorf("%s is encrypted but the repository is not: %w", kind, ErrCorrupt)
		}
		var err error
		if payload, err = r.keys.openMeta(kind, payload); err != nil {
			return err
		}
	} else if r.keys != nil {
		return fmt.Errorf("%s is not encrypted in an encrypted repository: %w", kind, ErrCorrupt)
	}
	if flags&flagZstd != 0 {
		var err error
		if payload, err = r.zdec.DecodeAll(payload, nil); err != nil {
			return fmt.Errorf("%s: %w: %v", kind, ErrCorrupt, err)
		}
	}
	// encoding/json/v2 (the go-json-experiment module it grew from; Go
	// 1.26 has it only behind GOEXPERIMENT) decodes what encoding/json
	// writes twice as fast: the tree of ten thousand files took 36 ms,
	// before every restore and every backup (its parent's tree). It is
	// also stricter with stored bytes, which may be hostile: nesting is
	// limited (without a limit, a deeply nested value can overflow the
	// stack, which no recover catches), and duplicate names and invalid
	// UTF-8 are errors.
	if err := jsonv2.Unmarshal(payload, v); err != nil {
		return fmt.Errorf("%s: %w: %v", kind, ErrCorrupt, err)
	}
	return nil
}

func (r *Repository) getAll(ctx context.Context, key string, limit int64) ([]byte, error) {
	rc, err := r.store.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s: larger than %d bytes: %w", key, limit, ErrCorrupt)
	}
	return b, nil
}

// parallel runs fn for each item with at most n at a time.
func parallel[T any](ctx context.Context, n int, items []T, fn func(context.Context, T) error) error {
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(n)
	for _, it := range items {
		g.Go(func() error { return fn(ctx, it) })
	}
	return g.Wait()
}

// maxBlob is the largest chunk this repository's chunker can cut.
func (r *Repository) maxBlob() int {
	if r.cfg.Chunker.Max > 0 {
		return r.cfg.Chunker.Max
	}
	return 1 << 24
}
