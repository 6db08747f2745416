package testrig

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// MinIO is a `minio server` on loopback with its data in a temp dir. Data
// survives Stop/Start.
type MinIO struct {
	*Server
	Endpoint  string // "127.0.0.1:PORT"
	AccessKey string
	SecretKey string
}

// StartMinIO starts a server and waits until it is live.
func StartMinIO(t testing.TB) *MinIO {
	t.Helper()
	m := newMinIO(t)
	m.Start(t)
	t.Cleanup(m.Stop)
	return m
}

// StartMinIOInMemory is StartMinIO with the server's objects in a tmpfs
// of their own of size bytes (root only). A benchmark's object store is
// then not on the disk under test: MinIO creates and deletes a
// temporary directory for every object it stores, and on ext4 the inode
// allocator skips recently deleted inodes for minutes, which slowed
// down every restore that came after an upload of many objects.
func StartMinIOInMemory(t testing.TB, size int64) *MinIO {
	t.Helper()
	m := newMinIO(t)
	if err := os.MkdirAll(m.DataDir(), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", m.DataDir(), "tmpfs", 0, fmt.Sprintf("size=%d", size)); err != nil {
		t.Fatalf("tmpfs for MinIO's objects: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(m.DataDir(), syscall.MNT_DETACH) })
	m.Start(t)
	t.Cleanup(m.Stop) // before the unmount
	return m
}

func newMinIO(t testing.TB) *MinIO {
	bin := Binary(t, "minio")
	port, console := FreePort(t), FreePort(t)
	m := &MinIO{Endpoint: fmt.Sprintf("127.0.0.1:%d", port), AccessKey: "testrig-access", SecretKey: fmt.Sprintf("testrig-secret-%d", port)}
	m.Server = newServer(t, "minio", bin, nil, nil)
	m.Server.args = []string{"server", m.DataDir(),
		"--address", m.Endpoint, "--console-address", fmt.Sprintf("127.0.0.1:%d", console), "--quiet"}
	m.Server.env = []string{"MINIO_ROOT_USER=" + m.AccessKey, "MINIO_ROOT_PASSWORD=" + m.SecretKey,
		"MINIO_BROWSER=off", "MINIO_UPDATE=off", "HOME=" + m.Server.dir}
	return m
}

// Start starts the server, or starts it again after Stop, with its data.
func (m *MinIO) Start(t testing.TB) {
	t.Helper()
	m.startAndWait(t, expect200("http://"+m.Endpoint+"/minio/health/live"))
}

// DataDir is the directory the server keeps its buckets in, one
// subdirectory each.
func (m *MinIO) DataDir() string { return filepath.Join(m.Server.dir, "data") }

// StoreURL is a lifeboat store URL for bucket/prefix on this server.
// Credentials are not in the URL: pass Env() or set them in options.
func (m *MinIO) StoreURL(bucket, prefix string) string {
	q := url.Values{"endpoint": {m.Endpoint}, "insecure": {"true"}, "region": {"us-east-1"}}
	return fmt.Sprintf("s3://%s/%s?%s", bucket, prefix, q.Encode())
}

// Env is the AWS_* environment a client needs for this server.
func (m *MinIO) Env() []string {
	return []string{"AWS_ACCESS_KEY_ID=" + m.AccessKey, "AWS_SECRET_ACCESS_KEY=" + m.SecretKey, "AWS_REGION=us-east-1"}
}

// Client is a minio-go client for inspecting or tampering with the server's
// objects in tests.
func (m *MinIO) Client(t testing.TB) *minio.Client {
	t.Helper()
	c, err := minio.New(m.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(m.AccessKey, m.SecretKey, ""), Region: "us-east-1"})
	if err != nil {
		t.Fatalf("testrig: minio client: %v", err)
	}
	return c
}

// MakeBucket creates a bucket.
func (m *MinIO) MakeBucket(t testing.TB, bucket string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := m.Client(t).MakeBucket(ctx, bucket, minio.MakeBucketOptions{Region: "us-east-1"}); err != nil {
		t.Fatalf("testrig: make bucket %s: %v", bucket, err)
	}
}
