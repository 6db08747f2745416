package config

// The schema: one Go struct per HCL block. Durations, signals, modes and
// enums are strings in the file and are checked by Validate, which keeps
// the source range of every attribute so errors can name file:line:column.
// Defaults are the named constants in defaults.go; docs/configuration.md
// describes every key.

// Config is a whole lifeboat configuration.
type Config struct {
	App       *App       `hcl:"app,block"`
	Data      *Data      `hcl:"data,block"`
	Store     *Store     `hcl:"store,block"`
	Backup    *Backup    `hcl:"backup,block"`
	Consul    *Consul    `hcl:"consul,block"`
	Vault     *Vault     `hcl:"vault,block"`
	Templates []Template `hcl:"template,block"`
	EnvBlock  *envBlock  `hcl:"env,block"`
	Election  *Election  `hcl:"election,block"`
	Service   *Service   `hcl:"service,block"`
	Telemetry *Telemetry `hcl:"telemetry,block"`
	Control   *Control   `hcl:"control,block"`
	Log       *Log       `hcl:"log,block"`

	// Env is the env block: NAME -> template text, rendered before the app
	// starts. Filled from EnvBlock by Load.
	Env map[string]string

	// File is the path the config was loaded from; "" when none.
	File string
}

// App is how the app is started and stopped.
type App struct {
	Command     []string          `hcl:"command,optional"`
	User        string            `hcl:"user,optional"`
	Workdir     string            `hcl:"workdir,optional"`
	Env         map[string]string `hcl:"env,optional"`
	SignalGroup bool              `hcl:"signal_group,optional"`
	StopSignal  string            `hcl:"stop_signal,optional"`
	StopTimeout string            `hcl:"stop_timeout,optional"`
	Restart     *Restart          `hcl:"restart,block"`
}

// Restart is the restart policy of the app.
type Restart struct {
	Policy         string `hcl:"policy,optional"`
	MaxRestarts    *int   `hcl:"max_restarts,optional"`
	BackoffInitial string `hcl:"backoff_initial,optional"`
	BackoffMax     string `hcl:"backoff_max,optional"`
}

// Data is the app's data directory and how it is restored.
type Data struct {
	Path      string   `hcl:"path,optional"`
	Restore   string   `hcl:"restore,optional"`
	OnCorrupt string   `hcl:"on_corrupt,optional"`
	Exclude   []string `hcl:"exclude,optional"`
}

// Store is where snapshots live.
type Store struct {
	URL               string      `hcl:"url,optional"`
	AccessKey         string      `hcl:"access_key,optional"`
	SecretKey         string      `hcl:"secret_key,optional"`
	SessionToken      string      `hcl:"session_token,optional"`
	Region            string      `hcl:"region,optional"`
	CAFile            string      `hcl:"ca_file,optional"`
	PathStyle         *bool       `hcl:"path_style,optional"`
	CreateBucket      *bool       `hcl:"create_bucket,optional"`
	EncryptionKey     string      `hcl:"encryption_key,optional"`
	EncryptionKeyFile string      `hcl:"encryption_key_file,optional"`
	Vault             *StoreVault `hcl:"vault,block"`
}

// StoreVault takes the store's credentials and encryption key from Vault
// secrets, written "PATH#FIELD" (for example "secret/data/lifeboat#access_key").
type StoreVault struct {
	AccessKey     string `hcl:"access_key,optional"`
	SecretKey     string `hcl:"secret_key,optional"`
	SessionToken  string `hcl:"session_token,optional"`
	EncryptionKey string `hcl:"encryption_key,optional"`
}

// Backup is when and how snapshots are taken.
type Backup struct {
	Schedule     string   `hcl:"schedule,optional"`
	Notify       *bool    `hcl:"notify,optional"`
	Signal       string   `hcl:"signal,optional"`
	Final        *bool    `hcl:"final,optional"`
	FinalTimeout string   `hcl:"final_timeout,optional"`
	OnlyLeader   *bool    `hcl:"only_leader,optional"`
	Tags         []string `hcl:"tags,optional"`
	Watch        *Watch   `hcl:"watch,block"`
	Keep         *Keep    `hcl:"keep,block"`
	Retry        *Retry   `hcl:"retry,block"`
	Hooks        []Hook   `hcl:"hook,block"`
	Streams      []Stream `hcl:"stream,block"`
}

// Watch triggers backups on file-system activity in the data directory.
type Watch struct {
	Enabled  *bool  `hcl:"enabled,optional"`
	Debounce string `hcl:"debounce,optional"`
	MaxDelay string `hcl:"max_delay,optional"`
}

// Keep is the retention policy; zero keeps everything.
type Keep struct {
	Last    int `hcl:"last,optional"`
	Hourly  int `hcl:"hourly,optional"`
	Daily   int `hcl:"daily,optional"`
	Weekly  int `hcl:"weekly,optional"`
	Monthly int `hcl:"monthly,optional"`
	Yearly  int `hcl:"yearly,optional"`
}

// Retry is the backoff after a failed backup.
type Retry struct {
	Initial string `hcl:"initial,optional"`
	Max     string `hcl:"max,optional"`
}

// Hook is a command run at a lifecycle point, named by its label.
type Hook struct {
	Name    string            `hcl:"name,label"`
	Command []string          `hcl:"command"`
	Timeout string            `hcl:"timeout,optional"`
	User    string            `hcl:"user,optional"`
	Env     map[string]string `hcl:"env,optional"`
}

// Stream is a named stream in every snapshot: the stdout of Command at
// backup, piped into RestoreCommand's stdin at restore.
type Stream struct {
	Name           string   `hcl:"name,label"`
	Command        []string `hcl:"command"`
	RestoreCommand []string `hcl:"restore_command,optional"`
}

// TLS is client TLS for Consul and Vault.
type TLS struct {
	CAFile             string `hcl:"ca_file,optional"`
	CertFile           string `hcl:"cert_file,optional"`
	KeyFile            string `hcl:"key_file,optional"`
	ServerName         string `hcl:"server_name,optional"`
	InsecureSkipVerify bool   `hcl:"insecure_skip_verify,optional"`
}

// Consul is the Consul client.
type Consul struct {
	Address    string `hcl:"address,optional"`
	Scheme     string `hcl:"scheme,optional"`
	Token      string `hcl:"token,optional"`
	TokenFile  string `hcl:"token_file,optional"`
	Datacenter string `hcl:"datacenter,optional"`
	TLS        *TLS   `hcl:"tls,block"`
}

// Vault is the Vault client.
type Vault struct {
	Address      string     `hcl:"address,optional"`
	Namespace    string     `hcl:"namespace,optional"`
	RevokeOnExit *bool      `hcl:"revoke_on_exit,optional"`
	TLS          *TLS       `hcl:"tls,block"`
	Auth         *VaultAuth `hcl:"auth,block"`
}

// VaultAuth is how lifeboat logs in to Vault.
type VaultAuth struct {
	Method          string `hcl:"method,optional"`
	Mount           string `hcl:"mount,optional"`
	Role            string `hcl:"role,optional"`
	TokenFile       string `hcl:"token_file,optional"`
	RoleIDFile      string `hcl:"role_id_file,optional"`
	SecretIDFile    string `hcl:"secret_id_file,optional"`
	SecretIDWrapped bool   `hcl:"secret_id_wrapped,optional"`
	JWTFile         string `hcl:"jwt_file,optional"`
}

// Template renders a file from Consul and Vault data.
type Template struct {
	Name        string    `hcl:"name,label"`
	Source      string    `hcl:"source,optional"`
	Contents    string    `hcl:"contents,optional"`
	Destination string    `hcl:"destination"`
	Perms       string    `hcl:"perms,optional"`
	User        string    `hcl:"user,optional"`
	Group       string    `hcl:"group,optional"`
	OnChange    []string  `hcl:"on_change,optional"`
	Wait        *WaitSpec `hcl:"wait,block"`
}

// WaitSpec debounces re-renders: wait at least Min after a change, at most Max.
type WaitSpec struct {
	Min string `hcl:"min,optional"`
	Max string `hcl:"max,optional"`
}

// Election is primary election through a Consul session lock.
type Election struct {
	Key         string `hcl:"key,optional"`
	TTL         string `hcl:"ttl,optional"`
	LockDelay   string `hcl:"lock_delay,optional"`
	DemoteAfter string `hcl:"demote_after,optional"`
	Advertise   string `hcl:"advertise,optional"`
	Port        int    `hcl:"port,optional"`
	Hooks       []Hook `hcl:"hook,block"`
}

// Service registers the app with the local Consul agent.
type Service struct {
	Name       string            `hcl:"name"`
	ID         string            `hcl:"id,optional"`
	Port       int               `hcl:"port,optional"`
	Address    string            `hcl:"address,optional"`
	Tags       []string          `hcl:"tags,optional"`
	Meta       map[string]string `hcl:"meta,optional"`
	PrimaryTag string            `hcl:"primary_tag,optional"`
	ReplicaTag string            `hcl:"replica_tag,optional"`
	Check      *Check            `hcl:"check,block"`
}

// Check is the health check lifeboat runs and reports as a TTL check.
type Check struct {
	Command         []string `hcl:"command,optional"`
	HTTP            string   `hcl:"http,optional"`
	TCP             string   `hcl:"tcp,optional"`
	Interval        string   `hcl:"interval,optional"`
	Timeout         string   `hcl:"timeout,optional"`
	DeregisterAfter string   `hcl:"deregister_after,optional"`
}

// Telemetry is the optional TCP listener for /metrics.
type Telemetry struct {
	Listen string `hcl:"listen,optional"`
}

// Control is the control socket.
type Control struct {
	Socket string `hcl:"socket,optional"`
	Group  string `hcl:"group,optional"`
}

// Log is lifeboat's own logging.
type Log struct {
	Format string `hcl:"format,optional"`
	Level  string `hcl:"level,optional"`
}
