package storage

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"path"
	"strings"
)

// Options are the settings of a store that do not belong in its URL:
// credentials (never put those in URLs, which end up in logs) and choices
// the config file makes.
type Options struct {
	// S3 credentials; when empty, the AWS_ACCESS_KEY_ID,
	// AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN environment variables.
	AccessKey    string
	SecretKey    string
	SessionToken string
	// Region overrides the URL's region parameter.
	Region string
	// CAFile is a PEM bundle to trust for the S3 endpoint's TLS; when empty,
	// AWS_CA_BUNDLE, then the system roots.
	CAFile string
	// PathStyle forces path-style bucket addressing (MinIO and most
	// self-hosted services need it); nil means the URL's path_style, or
	// path style whenever a custom endpoint is given.
	PathStyle *bool
	// CreateBucket creates a missing bucket instead of failing.
	CreateBucket bool
}

// Open opens the store at rawURL:
//
//	file:///ABS/PATH
//	s3://BUCKET/PREFIX?endpoint=HOST:PORT&region=R&insecure=true&path_style=true
func Open(ctx context.Context, rawURL string, opts Options) (Store, error) {
	u, err := ParseURL(rawURL)
	if err != nil {
		return nil, configError{fmt.Errorf("store URL: %w", err)}
	}
	switch u.Scheme {
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return nil, configError{fmt.Errorf("store URL %q: a file URL has no host; write file:///abs/path", u.Redacted())}
		}
		return OpenFile(u.Path)
	case "s3":
		return openS3(ctx, u, opts)
	case "":
		return nil, configError{fmt.Errorf("store URL %q has no scheme; use s3://BUCKET/PREFIX or file:///ABS/PATH", u.Redacted())}
	}
	return nil, configError{fmt.Errorf("store URL %q: scheme %q is not supported; use s3:// or file://", u.Redacted(), u.Scheme)}
}

// configError marks a mistake in the store's settings (URL, parameters,
// CA bundle): no retry fixes it. Its text is the wrapped error's.
type configError struct{ error }

func (e configError) Unwrap() error { return e.error }

// IsConfigError reports whether err is a mistake in the store's settings
// rather than a store that cannot be reached.
func IsConfigError(err error) bool {
	var ce configError
	return errors.As(err, &ce)
}

// checkKey rejects keys that could escape the store's location.
func checkKey(key string) error {
	if key == "" || strings.HasPrefix(key, "/") || strings.Contains(key, "\\") || strings.ContainsRune(key, 0) {
		return fmt.Errorf("invalid object key %q", key)
	}
	for _, el := range strings.Split(key, "/") {
		if el == "" || el == "." || el == ".." {
			return fmt.Errorf("invalid object key %q", key)
		}
	}
	if path.Clean(key) != key {
		return fmt.Errorf("invalid object key %q", key)
	}
	return nil
}

// ParseURL parses a store URL. Its error never holds a piece of the
// credentials: *url.Error repeats the whole URL, and the parser's own
// reason can quote part of an unescaped user:password@ (a secret key with
// a "/" is read as a port). The reason given is that of the URL with its
// credentials replaced.
func ParseURL(rawURL string) (*url.URL, error) {
	u, err := url.Parse(rawURL)
	if err == nil {
		return u, nil
	}
	if scheme, rest, ok := strings.Cut(rawURL, "://"); ok {
		// The last "@" anywhere: a password may hold "?" or "#", which
		// would end the user info for the parser.
		if i := strings.LastIndex(rest, "@"); i >= 0 {
			if _, err := url.Parse(scheme + "://user:xxxxx@" + rest[i+1:]); err != nil {
				return nil, unwrapURLError(err)
			}
			return nil, errors.New("the credentials in it are not URL-escaped (/ as %2F, + as %2B, @ as %40, ? as %3F); " +
				"lifeboat does not take S3 credentials from the URL: set store.access_key and store.secret_key, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
		}
	}
	return nil, unwrapURLError(err)
}

func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
