package config

// Defaults of every key; docs/configuration.md lists the same values.
const (
	DefaultStopTimeout    = "10s"
	DefaultRestartPolicy  = "never"
	DefaultMaxRestarts    = 5
	DefaultBackoffInitial = "1s"
	DefaultBackoffMax     = "30s"

	DefaultDataPath  = "/data"
	DefaultRestore   = "if-empty"
	DefaultOnCorrupt = "previous"

	DefaultStoreURL = "file:///var/lib/lifeboat/store"

	DefaultFinalTimeout  = "5m"
	DefaultWatchDebounce = "1s"
	DefaultWatchMaxDelay = "1m"
	DefaultRetryInitial  = "1s"
	DefaultRetryMax      = "5m"
	DefaultHookTimeout   = "5m"

	DefaultElectionKey       = "lifeboat/leader"
	DefaultElectionTTL       = "10s"
	DefaultElectionLockDelay = "1s"

	DefaultPrimaryTag    = "primary"
	DefaultReplicaTag    = "replica"
	DefaultCheckInterval = "10s"
	DefaultCheckTimeout  = "5s"

	DefaultSocket    = "/run/lifeboat.sock"
	DefaultLogFormat = "auto"
	DefaultLogLevel  = "info"
)

// applyDefaults makes every always-present block non-nil and fills unset keys.
// Blocks whose presence turns a capability on (consul, vault, election,
// service) stay nil when absent.
func applyDefaults(c *Config) {
	if c.App == nil {
		c.App = &App{}
	}
	setStr(&c.App.StopTimeout, DefaultStopTimeout)
	if c.App.Restart == nil {
		c.App.Restart = &Restart{}
	}
	r := c.App.Restart
	setStr(&r.Policy, DefaultRestartPolicy)
	if r.MaxRestarts == nil {
		n := DefaultMaxRestarts
		r.MaxRestarts = &n
	}
	setStr(&r.BackoffInitial, DefaultBackoffInitial)
	setStr(&r.BackoffMax, DefaultBackoffMax)

	if c.Data == nil {
		c.Data = &Data{}
	}
	setStr(&c.Data.Path, DefaultDataPath)
	setStr(&c.Data.Restore, DefaultRestore)
	setStr(&c.Data.OnCorrupt, DefaultOnCorrupt)

	if c.Store == nil {
		c.Store = &Store{}
	}
	setStr(&c.Store.URL, DefaultStoreURL)
	setBool(&c.Store.CreateBucket, true)

	if c.Backup == nil {
		c.Backup = &Backup{}
	}
	b := c.Backup
	setBool(&b.Notify, true)
	setBool(&b.Final, true)
	setBool(&b.OnlyLeader, true)
	setStr(&b.FinalTimeout, DefaultFinalTimeout)
	if b.Watch == nil {
		b.Watch = &Watch{}
	}
	setBool(&b.Watch.Enabled, false)
	setStr(&b.Watch.Debounce, DefaultWatchDebounce)
	setStr(&b.Watch.MaxDelay, DefaultWatchMaxDelay)
	if b.Keep == nil {
		b.Keep = &Keep{}
	}
	if b.Retry == nil {
		b.Retry = &Retry{}
	}
	setStr(&b.Retry.Initial, DefaultRetryInitial)
	setStr(&b.Retry.Max, DefaultRetryMax)
	for i := range b.Hooks {
		setStr(&b.Hooks[i].Timeout, DefaultHookTimeout)
	}

	if c.Vault != nil {
		setBool(&c.Vault.RevokeOnExit, true)
		if c.Vault.Auth == nil {
			c.Vault.Auth = &VaultAuth{}
		}
		setStr(&c.Vault.Auth.Method, "token")
	}
	if c.Election != nil {
		e := c.Election
		setStr(&e.Key, DefaultElectionKey)
		setStr(&e.TTL, DefaultElectionTTL)
		setStr(&e.LockDelay, DefaultElectionLockDelay)
		for i := range e.Hooks {
			setStr(&e.Hooks[i].Timeout, DefaultHookTimeout)
		}
	}
	if c.Service != nil {
		setStr(&c.Service.PrimaryTag, DefaultPrimaryTag)
		setStr(&c.Service.ReplicaTag, DefaultReplicaTag)
		if ch := c.Service.Check; ch != nil {
			setStr(&ch.Interval, DefaultCheckInterval)
			setStr(&ch.Timeout, DefaultCheckTimeout)
		}
	}
	for i := range c.Templates {
		if len(c.Templates[i].OnChange) == 0 {
			c.Templates[i].OnChange = []string{"none"}
		}
	}

	if c.Telemetry == nil {
		c.Telemetry = &Telemetry{}
	}
	if c.Control == nil {
		c.Control = &Control{}
	}
	setStr(&c.Control.Socket, DefaultSocket)
	if c.Log == nil {
		c.Log = &Log{}
	}
	setStr(&c.Log.Format, DefaultLogFormat)
	setStr(&c.Log.Level, DefaultLogLevel)
}

func setStr(p *string, def string) {
	if *p == "" {
		*p = def
	}
}

func setBool(p **bool, def bool) {
	if *p == nil {
		v := def
		*p = &v
	}
}
