package vault

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/hashicorp/vault/api/auth/approle"
	"github.com/hashicorp/vault/api/auth/kubernetes"
)

// login obtains a token with the configured method and records it.
func (c *Client) login(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
	defer cancel()
	a := c.opts.Auth
	var (
		sec *api.Secret
		err error
	)
	switch a.Method {
	case MethodToken:
		sec, err = c.loginToken(ctx)
	case MethodAppRole:
		sec, err = c.loginAppRole(ctx)
	case MethodKubernetes:
		sec, err = c.loginKubernetes(ctx)
	case MethodJWT:
		sec, err = c.loginJWT(ctx)
	default:
		return configErrorf("vault: unknown auth method %q (want token, approle, kubernetes or jwt)", a.Method)
	}
	if err == nil && (sec == nil || sec.Auth == nil || sec.Auth.ClientToken == "") {
		err = fmt.Errorf("vault: %s login returned no token", a.Method)
	}
	if err != nil {
		c.noteError(err)
		return err
	}
	if a.Method != MethodToken {
		c.api.SetToken(sec.Auth.ClientToken)
	}
	c.mu.Lock()
	// Secrets leased under the old token are read again only when the
	// token changed: the token method re-reads the same token file on
	// every re-auth, and new leases then would be new credentials for
	// nothing.
	if c.auth == nil || c.auth.Auth.ClientToken != sec.Auth.ClientToken {
		if c.relogin != nil {
			close(c.relogin)
		}
		c.relogin = make(chan struct{})
	}
	c.auth = sec
	c.status.Logins++
	c.status.LoggedInAt = time.Now()
	c.status.TokenExpiry = time.Time{}
	if sec.Auth.LeaseDuration > 0 {
		c.status.TokenExpiry = time.Now().Add(time.Duration(sec.Auth.LeaseDuration) * time.Second)
	}
	c.mu.Unlock()
	c.noteOK()
	c.m.logins.Inc()
	c.log.Info("logged in to vault", "method", a.Method, "ttl", (time.Duration(sec.Auth.LeaseDuration) * time.Second).String(), "renewable", sec.Auth.Renewable)
	return nil
}

// loginToken uses a token from TokenFile or VAULT_TOKEN and looks it up,
// so its TTL and renewability drive renewal like a login's would.
func (c *Client) loginToken(ctx context.Context) (*api.Secret, error) {
	if f := c.opts.Auth.TokenFile; f != "" {
		tok, err := readFileTrim("token_file", f)
		if err != nil {
			return nil, err
		}
		c.api.SetToken(tok)
	}
	if c.api.Token() == "" {
		return nil, configErrorf("vault: no token: set vault.auth.token_file or VAULT_TOKEN, or choose another auth method")
	}
	look, err := c.api.Auth().Token().LookupSelfWithContext(ctx)
	if err != nil {
		return nil, fmt.Errorf("vault: looking up the configured token: %w", err)
	}
	ttl, _ := look.TokenTTL()
	renewable, _ := look.TokenIsRenewable()
	return &api.Secret{Auth: &api.SecretAuth{
		ClientToken:   c.api.Token(),
		LeaseDuration: int(ttl / time.Second),
		Renewable:     renewable,
	}}, nil
}

func (c *Client) loginAppRole(ctx context.Context) (*api.Secret, error) {
	a := c.opts.Auth
	if a.RoleIDFile == "" || a.SecretIDFile == "" {
		return nil, configErrorf("vault: approle auth needs role_id_file and secret_id_file")
	}
	roleID, err := readFileTrim("role_id_file", a.RoleIDFile)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(a.SecretIDFile); err != nil {
		return nil, fmt.Errorf("vault: reading secret_id_file: %w", err)
	}
	var opts []approle.LoginOption
	if a.Mount != "" {
		opts = append(opts, approle.WithMountPath(a.Mount))
	}
	if a.SecretIDWrapped {
		opts = append(opts, approle.WithWrappingToken())
	}
	ar, err := approle.NewAppRoleAuth(roleID, &approle.SecretID{FromFile: a.SecretIDFile}, opts...)
	if err != nil {
		return nil, fmt.Errorf("vault: approle auth: %w", err)
	}
	sec, err := ar.Login(ctx, c.api)
	if err != nil {
		return nil, fmt.Errorf("vault: approle login (role_id_file %s, mount %s): %w", a.RoleIDFile, orDefault(a.Mount, "approle"), err)
	}
	return sec, nil
}

func (c *Client) loginKubernetes(ctx context.Context) (*api.Secret, error) {
	a := c.opts.Auth
	if a.Role == "" {
		return nil, configErrorf("vault: kubernetes auth needs role")
	}
	jwtFile := orDefault(a.JWTFile, DefaultKubernetesJWTFile)
	opts := []kubernetes.LoginOption{kubernetes.WithServiceAccountTokenPath(jwtFile)}
	if a.Mount != "" {
		opts = append(opts, kubernetes.WithMountPath(a.Mount))
	}
	k, err := kubernetes.NewKubernetesAuth(a.Role, opts...)
	if err != nil {
		return nil, fmt.Errorf("vault: kubernetes auth: %w", err)
	}
	sec, err := k.Login(ctx, c.api)
	if err != nil {
		return nil, fmt.Errorf("vault: kubernetes login (role %s, jwt_file %s): %w", a.Role, jwtFile, err)
	}
	return sec, nil
}

// loginJWT is the jwt auth method's plain login: role plus a JWT read from
// a file (re-read on every login, since such tokens are rotated on disk).
func (c *Client) loginJWT(ctx context.Context) (*api.Secret, error) {
	a := c.opts.Auth
	if a.Role == "" || a.JWTFile == "" {
		return nil, configErrorf("vault: jwt auth needs role and jwt_file")
	}
	jwt, err := readFileTrim("jwt_file", a.JWTFile)
	if err != nil {
		return nil, err
	}
	mount := orDefault(a.Mount, "jwt")
	sec, err := c.api.Logical().WriteWithContext(ctx, "auth/"+mount+"/login", map[string]any{"role": a.Role, "jwt": jwt})
	if err != nil {
		return nil, fmt.Errorf("vault: jwt login (role %s, mount %s): %w", a.Role, mount, err)
	}
	return sec, nil
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
