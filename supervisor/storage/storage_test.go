package storage_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lifeboat/lifeboat/internal/testrig"
	"github.com/lifeboat/lifeboat/supervisor/storage"
)

// The same suite runs against every backend: file, and S3 on a real MinIO.

func TestFileStore(t *testing.T) {
	runSuite(t, func(t *testing.T) storage.Store {
		s, err := storage.Open(context.Background(), "file://"+t.TempDir()+"/store", storage.Options{})
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

func TestS3Store(t *testing.T) {
	m := testrig.StartMinIO(t)
	n := 0
	runSuite(t, func(t *testing.T) storage.Store {
		n++
		s, err := storage.Open(context.Background(), m.StoreURL(fmt.Sprintf("suite-%d", n), "some/prefix"),
			storage.Options{AccessKey: m.AccessKey, SecretKey: m.SecretKey, CreateBucket: true})
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

func runSuite(t *testing.T, open func(t *testing.T) storage.Store) {
	ctx := context.Background()
	t.Run("RoundTripOverwriteStatDelete", func(t *testing.T) {
		s := open(t)
		put(t, s, "a/b/c", "hello")
		if got := get(t, s, "a/b/c"); got != "hello" {
			t.Fatalf("get = %q", got)
		}
		put(t, s, "a/b/c", "bye")
		if got := get(t, s, "a/b/c"); got != "bye" {
			t.Fatalf("after overwrite get = %q", got)
		}
		info, err := s.Stat(ctx, "a/b/c")
		if err != nil || info.Size != 3 || info.Key != "a/b/c" || info.ModTime.IsZero() {
			t.Fatalf("stat = %+v, %v", info, err)
		}
		if err := s.Delete(ctx, "a/b/c"); err != nil {
			t.Fatal(err)
		}
		if err := s.Delete(ctx, "a/b/c"); err != nil {
			t.Fatalf("deleting a missing object: %v", err)
		}
	})
	t.Run("MissingObjectIsErrNotExist", func(t *testing.T) {
		s := open(t)
		if _, err := s.Get(ctx, "nope"); !errors.Is(err, storage.ErrNotExist) {
			t.Errorf("Get: %v", err)
		}
		if _, err := s.GetRange(ctx, "nope", 1, 2); !errors.Is(err, storage.ErrNotExist) {
			t.Errorf("GetRange: %v", err)
		}
		if _, err := s.Stat(ctx, "nope"); !errors.Is(err, storage.ErrNotExist) {
			t.Errorf("Stat: %v", err)
		}
	})
	t.Run("Ranges", func(t *testing.T) {
		s := open(t)
		put(t, s, "r", "0123456789")
		for _, tc := range []struct {
			off, n int64
			want   string
		}{{0, 10, "0123456789"}, {3, 4, "3456"}, {7, -1, "789"}, {0, -1, "0123456789"}, {5, 0, ""}} {
			rc, err := s.GetRange(ctx, "r", tc.off, tc.n)
			if err != nil {
				t.Fatalf("range %d+%d: %v", tc.off, tc.n, err)
			}
			b, err := io.ReadAll(rc)
			rc.Close()
			if err != nil || string(b) != tc.want {
				t.Errorf("range %d+%d = %q, %v; want %q", tc.off, tc.n, b, err, tc.want)
			}
		}
	})
	t.Run("ListIsLexicalAndByPrefix", func(t *testing.T) {
		s := open(t)
		for _, k := range []string{"b", "a/b", "a-c", "a/a", "x/y/z", "a/b2"} {
			put(t, s, k, k)
		}
		if got := list(t, s, ""); got != "a-c a/a a/b a/b2 b x/y/z" {
			t.Errorf("list all = %q", got)
		}
		if got := list(t, s, "a/"); got != "a/a a/b a/b2" {
			t.Errorf("list a/ = %q", got)
		}
		if got := list(t, s, "a/b"); got != "a/b a/b2" {
			t.Errorf("list a/b = %q", got)
		}
		if got := list(t, s, "nothing/"); got != "" {
			t.Errorf("list nothing/ = %q", got)
		}
		stop := errors.New("stop")
		n := 0
		err := s.List(ctx, "", func(storage.ObjectInfo) error { n++; return stop })
		if !errors.Is(err, stop) || n != 1 {
			t.Errorf("fn error did not stop the listing: %v after %d", err, n)
		}
	})
	t.Run("PutIfAbsentHasExactlyOneWinner", func(t *testing.T) {
		s := open(t)
		const n = 8
		var wg sync.WaitGroup
		errs := make([]error, n)
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				body := fmt.Sprintf("writer-%d", i)
				errs[i] = s.PutIfAbsent(ctx, "lock", strings.NewReader(body), int64(len(body)))
			}(i)
		}
		wg.Wait()
		winner := -1
		for i, err := range errs {
			switch {
			case err == nil && winner >= 0:
				t.Fatalf("two winners: %d and %d", winner, i)
			case err == nil:
				winner = i
			case !errors.Is(err, storage.ErrExist):
				t.Fatalf("writer %d: %v", i, err)
			}
		}
		if winner < 0 {
			t.Fatal("no winner")
		}
		if got := get(t, s, "lock"); got != fmt.Sprintf("writer-%d", winner) {
			t.Fatalf("lock holds %q, winner was %d", got, winner)
		}
	})
	t.Run("LargeObjectOfUnknownSize", func(t *testing.T) {
		s := open(t)
		data := make([]byte, 20<<20+123)
		rand.Read(data)
		if err := s.Put(ctx, "big", onlyReader{bytes.NewReader(data)}, -1); err != nil {
			t.Fatal(err)
		}
		rc, err := s.Get(ctx, "big")
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(rc)
		rc.Close()
		if !bytes.Equal(got, data) {
			t.Fatalf("large object differs: %d bytes back of %d", len(got), len(data))
		}
	})
	t.Run("CancelledPutLeavesNothing", func(t *testing.T) {
		s := open(t)
		cctx, cancel := context.WithCancel(ctx)
		r := &cancelAfter{n: 1 << 20, cancel: cancel}
		if err := s.Put(cctx, "cancelled", r, -1); err == nil {
			t.Fatal("cancelled put succeeded")
		}
		if _, err := s.Stat(ctx, "cancelled"); !errors.Is(err, storage.ErrNotExist) {
			t.Fatalf("cancelled put left an object: %v", err)
		}
		if got := list(t, s, ""); got != "" {
			t.Fatalf("cancelled put left %q", got)
		}
	})
	t.Run("InvalidKeysRefused", func(t *testing.T) {
		s := open(t)
		for _, k := range []string{"", "/abs", "../up", "a/../b", "a//b", "a/./b", "a/"} {
			if err := s.Put(ctx, k, strings.NewReader("x"), 1); err == nil {
				t.Errorf("key %q accepted", k)
			}
		}
	})
}

func put(t *testing.T, s storage.Store, key, val string) {
	t.Helper()
	if err := s.Put(context.Background(), key, strings.NewReader(val), int64(len(val))); err != nil {
		t.Fatal(err)
	}
}

func get(t *testing.T, s storage.Store, key string) string {
	t.Helper()
	rc, err := s.Get(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func list(t *testing.T, s storage.Store, prefix string) string {
	t.Helper()
	var keys []string
	if err := s.List(context.Background(), prefix, func(o storage.ObjectInfo) error {
		keys = append(keys, o.Key)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return strings.Join(keys, " ")
}

// onlyReader hides io.Seeker and io.ReaderAt so backends see a plain stream.
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

// cancelAfter yields n bytes, then cancels the context and blocks until
// the writer notices.
type cancelAfter struct {
	n      int
	cancel func()
}

func (c *cancelAfter) Read(p []byte) (int, error) {
	if c.n <= 0 {
		c.cancel()
		return 0, context.Canceled
	}
	k := min(len(p), c.n)
	c.n -= k
	return k, nil
}

// A put killed with SIGKILL at any moment leaves the old object or nothing,
// never a torn one. The writer is this test binary re-run as a child.
func TestFilePutKilledMidwayLeavesNoTornObject(t *testing.T) {
	if dir := os.Getenv("STORAGE_CRASH_CHILD"); dir != "" {
		s, _ := storage.OpenFile(dir)
		// Write 64 MiB slowly enough to be killed in the middle.
		r := io.LimitReader(slowZeros{}, 64<<20)
		s.Put(context.Background(), "obj", r, -1)
		os.Exit(0)
	}
	dir := t.TempDir()
	s, err := storage.OpenFile(dir)
	if err != nil {
		t.Fatal(err)
	}
	put(t, s, "obj", "old complete content")
	for i := 0; i < 5; i++ {
		// A killed writer leaves its temp file (harmless, never listed);
		// clear it so this round waits for the new writer's data.
		old, _ := filepath.Glob(filepath.Join(dir, ".tmp-*"))
		for _, p := range old {
			os.Remove(p)
		}
		cmd := exec.Command(os.Args[0], "-test.run=^TestFilePutKilledMidwayLeavesNoTornObject$")
		cmd.Env = append(os.Environ(), "STORAGE_CRASH_CHILD="+dir)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Kill once the temp file has data in it.
		deadline := time.Now().Add(20 * time.Second)
		for {
			m, _ := filepath.Glob(filepath.Join(dir, ".tmp-*"))
			if len(m) > 0 {
				if fi, err := os.Stat(m[0]); err == nil && fi.Size() > 1<<20 {
					break
				}
			}
			if time.Now().After(deadline) {
				t.Fatal("the child writer never wrote a megabyte")
			}
			time.Sleep(5 * time.Millisecond)
		}
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		if got := get(t, s, "obj"); got != "old complete content" {
			t.Fatalf("after a killed put the object holds %d bytes, not the old content", len(got))
		}
		if got := list(t, s, ""); got != "obj" {
			t.Fatalf("listing shows a half-written object: %q", got)
		}
	}
}

type slowZeros struct{}

func (slowZeros) Read(p []byte) (int, error) {
	time.Sleep(time.Millisecond)
	n := min(len(p), 64<<10)
	clear(p[:n])
	return n, nil
}

func TestBadStoreURLs(t *testing.T) {
	ctx := context.Background()
	for url, want := range map[string]string{
		"ftp://x/y":                  `scheme "ftp" is not supported`,
		"/just/a/path":               "has no scheme",
		"file://host/x":              "a file URL has no host",
		"s3:///prefix":               "names no bucket",
		"s3://b/p?endpont=x":         `unknown parameter "endpont"`,
		"file://relative-looking/x":  "a file URL has no host",
		"s3://AKIA:hunter2@b:nope/p": `invalid port ":nope"`,
		// An unescaped "/" in the secret: the parser would quote
		// ":hunter2" as a port.
		"s3://AKIA:hunter2/xyz@host/b": "credentials in it are not URL-escaped",
		// A "?" in it: the parser would end the user info there.
		"s3://AKIA:hunter2?x@host/b": "credentials in it are not URL-escaped",
	} {
		_, err := storage.Open(ctx, url, storage.Options{})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err = %v, want %q", url, err, want)
		}
		if err != nil && strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%s: the error shows the password: %v", url, err)
		}
	}
}

func TestS3ErrorsAreClearAndKeepSecretsOut(t *testing.T) {
	m := testrig.StartMinIO(t)
	ctx := context.Background()
	secret := "wrong-secret-value-42"
	_, err := storage.Open(ctx, m.StoreURL("bkt", "p"), storage.Options{AccessKey: m.AccessKey, SecretKey: secret, CreateBucket: true})
	if err == nil || strings.Contains(err.Error(), secret) || !strings.Contains(err.Error(), "SignatureDoesNotMatch") {
		t.Fatalf("wrong secret: err = %v", err)
	}
	_, err = storage.Open(ctx, m.StoreURL("missing-bucket", "p"), storage.Options{AccessKey: m.AccessKey, SecretKey: m.SecretKey})
	if err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("missing bucket without create_bucket: %v", err)
	}
	// AWS_CA_BUNDLE that cannot be loaded: a clear error over TLS, ignored
	// for a plain-http (insecure) endpoint.
	t.Setenv("AWS_CA_BUNDLE", "/nonexistent/ca.pem")
	_, err = storage.Open(ctx, "s3://bkt/p?endpoint="+m.Endpoint, storage.Options{AccessKey: m.AccessKey, SecretKey: m.SecretKey})
	if err == nil || !strings.Contains(err.Error(), "cannot load the CA bundle /nonexistent/ca.pem") {
		t.Fatalf("bad AWS_CA_BUNDLE over TLS: %v", err)
	}
	if _, err := storage.Open(ctx, m.StoreURL("okbucket", "p"), storage.Options{AccessKey: m.AccessKey, SecretKey: m.SecretKey, CreateBucket: true}); err != nil {
		t.Fatalf("bad AWS_CA_BUNDLE must not matter for insecure=true: %v", err)
	}
	// Credentials from the AWS_* environment.
	for _, kv := range m.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	if _, err := storage.Open(ctx, m.StoreURL("envcreds", "p"), storage.Options{CreateBucket: true}); err != nil {
		t.Fatalf("credentials from env: %v", err)
	}
}

func TestS3SurvivesServerRestart(t *testing.T) {
	m := testrig.StartMinIO(t)
	ctx := context.Background()
	s, err := storage.Open(ctx, m.StoreURL("restart", ""), storage.Options{AccessKey: m.AccessKey, SecretKey: m.SecretKey, CreateBucket: true})
	if err != nil {
		t.Fatal(err)
	}
	put(t, s, "k", "v")
	m.Stop()
	m.Start(t)
	if got := get(t, s, "k"); got != "v" {
		t.Fatalf("after restart: %q", got)
	}
}
