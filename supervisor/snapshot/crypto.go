package snapshot

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/zeebo/blake3"
	"golang.org/x/crypto/hkdf"
	"golang.org/x/crypto/scrypt"
)

// ErrWrongKey means the repository is encrypted with another key.
var ErrWrongKey = errors.New("wrong encryption key for this repository")

// keyMismatch is a key given for an unencrypted repository, or none for an
// encrypted one; errors.Is(err, ErrWrongKey) holds for it too, as for a
// wrong key: a mistake in the settings, not a store to wait for.
type keyMismatch struct{ error }

func (keyMismatch) Is(target error) bool { return target == ErrWrongKey }

// ErrCorrupt means stored bytes failed authentication or a checksum.
var ErrCorrupt = errors.New("corrupt or tampered data")

// keys holds the keys derived from the master key. A nil *keys is an
// unencrypted repository.
type keys struct {
	id    []byte // keys the chunk-id hash
	meta  []byte // seals config-independent objects: index, manifests, pack trailers
	chunk []byte // root of the per-chunk keys
	check []byte // stored in the config to recognise a wrong key
}

// deriveKeys stretches the user's key material with scrypt (salt and cost
// from the repository config) and derives the purpose keys with HKDF-SHA256.
func deriveKeys(secret []byte, kdf *KDFParams) (*keys, error) {
	master, err := scrypt.Key(secret, kdf.Salt, kdf.N, kdf.R, kdf.P, 32)
	if err != nil {
		return nil, fmt.Errorf("derive key: %w", err)
	}
	k := &keys{}
	for _, d := range []struct {
		info string
		dst  *[]byte
	}{{"lifeboat chunk id", &k.id}, {"lifeboat metadata", &k.meta}, {"lifeboat chunk", &k.chunk}, {"lifeboat key check", &k.check}} {
		*d.dst = make([]byte, 32)
		if _, err := io.ReadFull(hkdf.New(sha256.New, master, nil, []byte(d.info)), *d.dst); err != nil {
			return nil, err
		}
	}
	return k, nil
}

// keyCheck is the value stored in the config: HMAC of a constant.
func (k *keys) keyCheck() []byte {
	m := hmac.New(sha256.New, k.check)
	m.Write([]byte("lifeboat"))
	return m.Sum(nil)[:16]
}

// ChunkID is the BLAKE3-256 hash of a chunk's plaintext, keyed when the
// repository is encrypted (so ids reveal nothing about content).
type ChunkID [32]byte

func (id ChunkID) String() string { return fmt.Sprintf("%x", id[:]) }

// hasher computes chunk ids: plain BLAKE3 (the zero hasher), or keyed
// ones from a pool (a keyed BLAKE3 hasher is a few KiB to set up, and
// there is one per chunk).
type hasher struct {
	keyed *sync.Pool // nil: not keyed
}

// newHasher is a hasher keyed with key.
func newHasher(key []byte) hasher {
	return hasher{keyed: &sync.Pool{New: func() any {
		x, _ := blake3.NewKeyed(key)
		return x
	}}}
}

func (h hasher) sum(data []byte) ChunkID {
	var id ChunkID
	if h.keyed == nil {
		id = blake3.Sum256(data)
		return id
	}
	x := h.keyed.Get().(*blake3.Hasher)
	x.Reset()
	x.Write(data)
	x.Sum(id[:0])
	h.keyed.Put(x)
	return id
}

// chunkAEAD seals one chunk under a key derived from its id. Each key seals
// exactly one plaintext (the chunk with that id), so the nonce can be fixed;
// identical chunks give identical ciphertext, which dedup reveals anyway.
func (k *keys) chunkAEAD(id ChunkID) (cipher.AEAD, error) {
	m := hmac.New(sha256.New, k.chunk)
	m.Write(id[:])
	block, err := aes.NewCipher(m.Sum(nil))
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

var zeroNonce = make([]byte, 12)

// blobOverhead is the most a blob's stored form adds to its chunk: the
// GCM tag of a sealed chunk (a compressed one is strictly shorter).
const blobOverhead = 16

func (k *keys) sealChunk(dst []byte, id ChunkID, plain []byte) ([]byte, error) {
	aead, err := k.chunkAEAD(id)
	if err != nil {
		return nil, err
	}
	return aead.Seal(dst, zeroNonce, plain, id[:]), nil
}

func (k *keys) openChunk(dst []byte, id ChunkID, sealed []byte) ([]byte, error) {
	aead, err := k.chunkAEAD(id)
	if err != nil {
		return nil, err
	}
	out, err := aead.Open(dst, zeroNonce, sealed, id[:])
	if err != nil {
		return nil, fmt.Errorf("chunk %s: %w", id, ErrCorrupt)
	}
	return out, nil
}

// sealMeta seals metadata with a random nonce, bound to kind ("index",
// "manifest", "pack") so objects cannot be swapped between roles.
func (k *keys) sealMeta(kind string, plain []byte) ([]byte, error) {
	block, err := aes.NewCipher(k.meta)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return aead.Seal(nonce, nonce, plain, []byte(kind)), nil
}

func (k *keys) openMeta(kind string, sealed []byte) ([]byte, error) {
	block, err := aes.NewCipher(k.meta)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	if len(sealed) < aead.NonceSize()+aead.Overhead() {
		return nil, fmt.Errorf("%s: %w (too short)", kind, ErrCorrupt)
	}
	out, err := aead.Open(nil, sealed[:aead.NonceSize()], sealed[aead.NonceSize():], []byte(kind))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", kind, ErrCorrupt)
	}
	return out, nil
}
