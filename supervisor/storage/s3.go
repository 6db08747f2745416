package storage

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// S3 is a store in a bucket (and key prefix) of any S3-compatible service.
// S3 PUTs are atomic, so every Put is all-or-nothing; minio-go retries
// transient failures (network errors, 5xx, throttling) with backoff.
type S3 struct {
	client   *minio.Client
	bucket   string
	prefix   string // "" or ends with "/"
	endpoint string
}

var _ Store = (*S3)(nil)

// partSize bounds the memory of an upload of unknown size (minio-go would
// otherwise buffer parts of hundreds of MiB).
const partSize = 16 << 20

func openS3(ctx context.Context, u *url.URL, opts Options) (*S3, error) {
	q := u.Query()
	bucket := u.Host
	if bucket == "" {
		return nil, configError{fmt.Errorf("store URL %q names no bucket: s3://BUCKET/PREFIX", u.Redacted())}
	}
	for k := range q {
		switch k {
		case "endpoint", "region", "insecure", "path_style", "ca_file":
		default:
			return nil, configError{fmt.Errorf("store URL: unknown parameter %q (known: endpoint, region, insecure, path_style, ca_file)", k)}
		}
	}
	endpoint := q.Get("endpoint")
	custom := endpoint != ""
	if !custom {
		endpoint = "s3.amazonaws.com"
	}
	insecure, _ := strconv.ParseBool(q.Get("insecure"))
	region := opts.Region
	if region == "" {
		region = q.Get("region")
	}
	if region == "" {
		region = os.Getenv("AWS_REGION")
	}
	if region == "" && custom {
		region = "us-east-1"
	}
	pathStyle := custom
	if v := q.Get("path_style"); v != "" {
		pathStyle, _ = strconv.ParseBool(v)
	}
	if opts.PathStyle != nil {
		pathStyle = *opts.PathStyle
	}
	lookup := minio.BucketLookupDNS
	if pathStyle {
		lookup = minio.BucketLookupPath
	}

	var creds *credentials.Credentials
	if opts.AccessKey != "" || opts.SecretKey != "" {
		creds = credentials.NewStaticV4(opts.AccessKey, opts.SecretKey, opts.SessionToken)
	} else {
		creds = credentials.NewChainCredentials([]credentials.Provider{&credentials.EnvAWS{}, &credentials.EnvMinio{}})
	}

	transport, err := minio.DefaultTransport(!insecure)
	if err != nil {
		return nil, err
	}
	if !insecure {
		caFile := opts.CAFile
		if caFile == "" {
			caFile = q.Get("ca_file")
		}
		if caFile == "" {
			caFile = os.Getenv("AWS_CA_BUNDLE") // as the AWS SDKs do
		}
		if caFile != "" {
			pool, err := loadCA(caFile)
			if err != nil {
				return nil, err
			}
			transport.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		}
	}

	client, err := minio.New(endpoint, &minio.Options{
		Creds:        creds,
		Secure:       !insecure,
		Region:       region,
		BucketLookup: lookup,
		Transport:    transport,
	})
	if err != nil {
		return nil, fmt.Errorf("s3 store %s: %w", endpoint, err)
	}
	s := &S3{client: client, bucket: bucket, prefix: strings.Trim(u.Path, "/"), endpoint: endpoint}
	if s.prefix != "" {
		s.prefix += "/"
	}
	exists, err := client.BucketExists(ctx, bucket)
	if err != nil {
		return nil, fmt.Errorf("%s: cannot reach the bucket: %w", s, cleanErr(err))
	}
	if !exists {
		if !opts.CreateBucket {
			return nil, fmt.Errorf("%s: bucket %q does not exist (create it, or set store.create_bucket = true)", s, bucket)
		}
		if err := client.MakeBucket(ctx, bucket, minio.MakeBucketOptions{Region: region}); err != nil {
			if resp := minio.ToErrorResponse(err); resp.Code != "BucketAlreadyOwnedByYou" && resp.Code != "BucketAlreadyExists" {
				return nil, fmt.Errorf("%s: create bucket: %w", s, cleanErr(err))
			}
		}
	}
	return s, nil
}

func loadCA(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, configError{fmt.Errorf("cannot load the CA bundle %s (from store.ca_file or AWS_CA_BUNDLE): %w", path, err)}
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, configError{fmt.Errorf("CA bundle %s holds no PEM certificates", path)}
	}
	return pool, nil
}

func (s *S3) String() string {
	return fmt.Sprintf("s3://%s/%s (%s)", s.bucket, strings.TrimSuffix(s.prefix, "/"), s.endpoint)
}

func (s *S3) Close() error { return nil }

func (s *S3) key(key string) (string, error) {
	if err := checkKey(key); err != nil {
		return "", err
	}
	return s.prefix + key, nil
}

func (s *S3) put(ctx context.Context, key string, r io.Reader, size int64, opts minio.PutObjectOptions) error {
	k, err := s.key(key)
	if err != nil {
		return err
	}
	opts.ContentType = "application/octet-stream"
	if size < 0 {
		opts.PartSize = partSize
	}
	_, err = s.client.PutObject(ctx, s.bucket, k, r, size, opts)
	if err != nil {
		resp := minio.ToErrorResponse(err)
		if resp.StatusCode == http.StatusPreconditionFailed || resp.Code == "PreconditionFailed" {
			return fmt.Errorf("put %s: %w", key, ErrExist)
		}
		return fmt.Errorf("put %s: %w", key, cleanErr(err))
	}
	return nil
}

func (s *S3) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	return s.put(ctx, key, r, size, minio.PutObjectOptions{})
}

func (s *S3) PutIfAbsent(ctx context.Context, key string, r io.Reader, size int64) error {
	opts := minio.PutObjectOptions{}
	opts.SetMatchETagExcept("*") // If-None-Match: *
	return s.put(ctx, key, r, size, opts)
}

func (s *S3) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	return s.get(ctx, key, minio.GetObjectOptions{})
}

func (s *S3) GetRange(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	opts := minio.GetObjectOptions{}
	switch {
	case length == 0:
		return io.NopCloser(strings.NewReader("")), nil
	case length > 0:
		if err := opts.SetRange(offset, offset+length-1); err != nil {
			return nil, err
		}
	case offset > 0:
		if err := opts.SetRange(offset, 0); err != nil {
			return nil, err
		}
	}
	return s.get(ctx, key, opts)
}

func (s *S3) get(ctx context.Context, key string, opts minio.GetObjectOptions) (io.ReadCloser, error) {
	k, err := s.key(key)
	if err != nil {
		return nil, err
	}
	obj, err := s.client.GetObject(ctx, s.bucket, k, opts)
	if err != nil {
		return nil, s.mapErr(key, err)
	}
	// The request is sent on first use; Stat makes a missing object an
	// error here rather than on the caller's first Read.
	if _, err := obj.Stat(); err != nil {
		obj.Close()
		return nil, s.mapErr(key, err)
	}
	return s3Reader{Object: obj, s: s, key: key}, nil
}

// s3Reader maps errors of the body's reads like those of the request: an
// object deleted between Stat and a later read (a prune rewriting the
// index while a verify reads it) is ErrNotExist, not a raw S3 message.
type s3Reader struct {
	*minio.Object
	s   *S3
	key string
}

func (r s3Reader) Read(p []byte) (int, error) {
	n, err := r.Object.Read(p)
	if err != nil && err != io.EOF {
		err = r.s.mapErr(r.key, err)
	}
	return n, err
}

func (s *S3) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	k, err := s.key(key)
	if err != nil {
		return ObjectInfo{}, err
	}
	info, err := s.client.StatObject(ctx, s.bucket, k, minio.StatObjectOptions{})
	if err != nil {
		return ObjectInfo{}, s.mapErr(key, err)
	}
	return ObjectInfo{Key: key, Size: info.Size, ModTime: info.LastModified}, nil
}

func (s *S3) List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // stops the listing goroutine when fn fails
	for obj := range s.client.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: s.prefix + prefix, Recursive: true}) {
		if obj.Err != nil {
			return fmt.Errorf("list %s: %w", prefix, cleanErr(obj.Err))
		}
		if err := fn(ObjectInfo{Key: strings.TrimPrefix(obj.Key, s.prefix), Size: obj.Size, ModTime: obj.LastModified}); err != nil {
			return err
		}
	}
	return ctx.Err()
}

func (s *S3) Delete(ctx context.Context, key string) error {
	k, err := s.key(key)
	if err != nil {
		return err
	}
	if err := s.client.RemoveObject(ctx, s.bucket, k, minio.RemoveObjectOptions{}); err != nil {
		if s.isNotFound(err) {
			return nil
		}
		return fmt.Errorf("delete %s: %w", key, cleanErr(err))
	}
	return nil
}

func (s *S3) isNotFound(err error) bool {
	resp := minio.ToErrorResponse(err)
	return resp.Code == "NoSuchKey" || resp.StatusCode == http.StatusNotFound
}

func (s *S3) mapErr(key string, err error) error {
	if s.isNotFound(err) {
		return fmt.Errorf("%s: %w", key, ErrNotExist)
	}
	return fmt.Errorf("%s: %w", key, cleanErr(err))
}

// cleanErr keeps S3 errors short and free of request signatures.
func cleanErr(err error) error {
	var resp minio.ErrorResponse
	if errors.As(err, &resp) && resp.Code != "" {
		return fmt.Errorf("%s: %s", resp.Code, resp.Message)
	}
	return err
}
