package snapshot

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/lifeboat/lifeboat/supervisor/storage"
)

// A pack is chunks back to back, then a trailer listing them:
//
//	blob 0 | blob 1 | ... | trailer | trailer length (uint32 LE) | "LBPK" | version (1 byte)
//
// The trailer is count (uint32 LE) then per blob: id (32 bytes), stored
// length (uint32 LE), raw length (uint32 LE), flags (1 byte); sealed as
// metadata kind "pack" when the repository is encrypted. Blob offsets are
// the running sum of stored lengths.

var packMagic = []byte("LBPK")

const (
	packVersion     = 1
	packFooterSize  = 4 + 4 + 1
	packEntrySize   = 32 + 4 + 4 + 1
	blobFlagZstd    = 1
	maxTrailerBytes = 64 << 20
)

// BlobRef locates one chunk.
type BlobRef struct {
	Pack   string // pack id
	Offset int64
	Length int   // stored bytes
	Raw    int   // bytes after decompression
	Flags  uint8 // blobFlagZstd
}

// packEntry is one blob in a pack's trailer.
type packEntry struct {
	ID     ChunkID
	Length int
	Raw    int
	Flags  uint8
}

func packKey(id string) string { return packPrefix + id[:2] + "/" + id }

// blobFits reports whether a blob's stored length, plain size and flags
// are ones this repository can have written. Index objects and pack
// trailers are checked with it when decoded, so readers can size
// downloads and slice buffers with what they say.
func (r *Repository) blobFits(length, raw int, flags uint8) bool {
	return length > 0 && length <= r.maxBlob()+blobOverhead && raw > 0 && raw <= r.maxBlob() && flags&^blobFlagZstd == 0
}

// validPackID reports whether id is a pack id (32 hex digits, what a
// backup names its packs): ids come from stored bytes and keys.
func validPackID(id string) bool {
	if len(id) != 32 {
		return false
	}
	_, err := hex.DecodeString(id)
	return err == nil
}

// storedPacks lists the packs in the store by id; objects under packs/
// that are not named like packs are not packs and are left out.
func (r *Repository) storedPacks(ctx context.Context) (map[string]storage.ObjectInfo, error) {
	stored := map[string]storage.ObjectInfo{}
	if err := r.store.List(ctx, packPrefix, func(o storage.ObjectInfo) error {
		if id := packIDFromKey(o.Key); validPackID(id) && o.Key == packKey(id) {
			stored[id] = o
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("list packs: %w", err)
	}
	return stored, nil
}

// encodeTrailer builds the trailer and footer for entries.
func (r *Repository) encodeTrailer(entries []packEntry) ([]byte, error) {
	t := make([]byte, 4, 4+len(entries)*packEntrySize)
	binary.LittleEndian.PutUint32(t, uint32(len(entries)))
	for _, e := range entries {
		t = append(t, e.ID[:]...)
		t = binary.LittleEndian.AppendUint32(t, uint32(e.Length))
		t = binary.LittleEndian.AppendUint32(t, uint32(e.Raw))
		t = append(t, e.Flags)
	}
	if r.keys != nil {
		var err error
		if t, err = r.keys.sealMeta("pack", t); err != nil {
			return nil, err
		}
	}
	t = binary.LittleEndian.AppendUint32(t, uint32(len(t)))
	t = append(t, packMagic...)
	return append(t, packVersion), nil
}

// decodeTrailer parses a trailer (without the footer).
func (r *Repository) decodeTrailer(t []byte) ([]packEntry, error) {
	if r.keys != nil {
		var err error
		if t, err = r.keys.openMeta("pack", t); err != nil {
			return nil, err
		}
	}
	if len(t) < 4 {
		return nil, fmt.Errorf("pack trailer: %w: too short", ErrCorrupt)
	}
	n := int(binary.LittleEndian.Uint32(t))
	t = t[4:]
	if n < 0 || len(t) != n*packEntrySize {
		return nil, fmt.Errorf("pack trailer: %w: %d entries in %d bytes", ErrCorrupt, n, len(t))
	}
	entries := make([]packEntry, n)
	for i := range entries {
		e := &entries[i]
		copy(e.ID[:], t[:32])
		e.Length = int(binary.LittleEndian.Uint32(t[32:]))
		e.Raw = int(binary.LittleEndian.Uint32(t[36:]))
		e.Flags = t[40]
		if !r.blobFits(e.Length, e.Raw, e.Flags) {
			return nil, fmt.Errorf("pack trailer: %w: blob %d: length %d, size %d, flags %d are outside the chunk limit", ErrCorrupt, i, e.Length, e.Raw, e.Flags)
		}
		t = t[packEntrySize:]
	}
	return entries, nil
}

// ReadPackTrailer reads the blob list of a stored pack from its trailer
// alone, which is how a lost index is rebuilt.
func (r *Repository) ReadPackTrailer(ctx context.Context, packID string, size int64) ([]BlobRef, error) {
	entries, err := r.readTrailerEntries(ctx, packID, size)
	if err != nil {
		return nil, err
	}
	refs := make([]BlobRef, len(entries))
	var off int64
	for i, e := range entries {
		refs[i] = BlobRef{Pack: packID, Offset: off, Length: e.Length, Raw: e.Raw, Flags: e.Flags}
		off += int64(e.Length)
	}
	return refs, nil
}

// readTrailerEntries reads a pack's blob list (with chunk ids) from its
// footer and trailer: two ranged reads, not the whole pack.
func (r *Repository) readTrailerEntries(ctx context.Context, id string, size int64) ([]packEntry, error) {
	get := func(off, n int64) ([]byte, error) {
		rc, err := r.store.GetRange(ctx, packKey(id), off, n)
		if err != nil {
			return nil, err
		}
		defer rc.Close()
		b, err := io.ReadAll(io.LimitReader(rc, n+1))
		if err == nil && int64(len(b)) != n {
			err = fmt.Errorf("%w: short read", ErrCorrupt)
		}
		return b, err
	}
	if size < packFooterSize {
		return nil, fmt.Errorf("pack %s: %w: truncated (%d bytes)", id, ErrCorrupt, size)
	}
	foot, err := get(size-packFooterSize, packFooterSize)
	if err != nil {
		return nil, fmt.Errorf("pack %s: %w", id, err)
	}
	tlen, err := trailerLength(foot, size)
	if err != nil {
		return nil, fmt.Errorf("pack %s: %w", id, err)
	}
	t, err := get(size-packFooterSize-tlen, tlen)
	if err != nil {
		return nil, fmt.Errorf("pack %s: %w", id, err)
	}
	entries, err := r.decodeTrailer(t)
	if err == nil {
		err = checkCover(entries, size-packFooterSize-tlen)
	}
	if err != nil {
		return nil, fmt.Errorf("pack %s: %w", id, err)
	}
	return entries, nil
}

// trailerLength checks a pack's footer (the last packFooterSize bytes of
// a pack of size bytes) and returns the trailer's length.
func trailerLength(foot []byte, size int64) (int64, error) {
	if len(foot) != packFooterSize || !bytes.Equal(foot[4:8], packMagic) || foot[8] != packVersion {
		return 0, fmt.Errorf("%w: no pack footer (truncated?)", ErrCorrupt)
	}
	tlen := int64(binary.LittleEndian.Uint32(foot))
	if tlen > maxTrailerBytes || tlen > size-packFooterSize {
		return 0, fmt.Errorf("%w: trailer length %d", ErrCorrupt, tlen)
	}
	return tlen, nil
}

// checkCover checks that the blobs of a trailer fill the n bytes before it.
func checkCover(entries []packEntry, n int64) error {
	var total int64
	for _, e := range entries {
		total += int64(e.Length)
	}
	if total != n {
		return fmt.Errorf("%w: blobs cover %d bytes of %d", ErrCorrupt, total, n)
	}
	return nil
}

// packer collects sealed blobs into packs and uploads full packs in the
// background, at most conc at a time. Memory: (conc+1) packs.
type packer struct {
	r   *Repository
	ctx context.Context

	mu      sync.Mutex
	buf     *bytes.Buffer
	entries []packEntry
	done    []indexPack // uploaded packs, for the session's index
	bytes   int64       // stored bytes uploaded or queued
	err     error       // the first failed upload's

	sem  chan struct{}
	wg   sync.WaitGroup
	pool sync.Pool
}

func newPacker(ctx context.Context, r *Repository) *packer {
	p := &packer{r: r, ctx: ctx, sem: make(chan struct{}, max(1, r.conc/2))}
	p.pool.New = func() any { return bytes.NewBuffer(make([]byte, 0, r.cfg.PackSize+r.cfg.Chunker.Max+1<<16)) }
	p.buf = p.pool.Get().(*bytes.Buffer)
	return p
}

// add appends a stored blob; a full pack is sealed and uploaded.
func (p *packer) add(id ChunkID, stored []byte, raw int, flags uint8) error {
	p.mu.Lock()
	if err := p.err; err != nil {
		p.mu.Unlock()
		return err
	}
	p.buf.Write(stored)
	p.entries = append(p.entries, packEntry{ID: id, Length: len(stored), Raw: raw, Flags: flags})
	p.bytes += int64(len(stored))
	var full *bytes.Buffer
	var entries []packEntry
	if p.buf.Len() >= p.r.cfg.PackSize {
		full, entries = p.buf, p.entries
		p.buf, p.entries = p.pool.Get().(*bytes.Buffer), nil
		p.buf.Reset()
	}
	p.mu.Unlock()
	if full != nil {
		return p.upload(full, entries)
	}
	return nil
}

// upload seals and stores one pack; it blocks while conc uploads run.
func (p *packer) upload(buf *bytes.Buffer, entries []packEntry) error {
	trailer, err := p.r.encodeTrailer(entries)
	if err != nil {
		return err
	}
	buf.Write(trailer)
	select {
	case p.sem <- struct{}{}:
	case <-p.ctx.Done():
		return p.ctx.Err()
	}
	p.wg.Add(1)
	go func() {
		defer func() { <-p.sem; p.wg.Done() }()
		id := randomID(16)
		size := int64(buf.Len())
		err := p.r.store.Put(p.ctx, packKey(id), bytes.NewReader(buf.Bytes()), size)
		if err != nil {
			p.mu.Lock()
			if p.err == nil {
				p.err = fmt.Errorf("upload pack: %w", err)
			}
			p.mu.Unlock()
			return
		}
		ip := indexPack{ID: id, Size: size}
		var off int64
		for _, e := range entries {
			ip.Blobs = append(ip.Blobs, indexBlob{ID: e.ID, Offset: off, Length: e.Length, Raw: e.Raw, Flags: e.Flags})
			off += int64(e.Length)
		}
		buf.Reset()
		p.pool.Put(buf)
		p.mu.Lock()
		p.done = append(p.done, ip)
		p.mu.Unlock()
	}()
	return nil
}

// finish uploads the last partial pack and waits for every upload.
func (p *packer) finish() ([]indexPack, error) {
	p.mu.Lock()
	buf, entries := p.buf, p.entries
	p.buf, p.entries = nil, nil
	p.mu.Unlock()
	var err error
	if len(entries) > 0 {
		err = p.upload(buf, entries)
	}
	p.wg.Wait()
	if err = errors.Join(err, p.err); err != nil {
		return nil, err
	}
	return p.done, nil
}
