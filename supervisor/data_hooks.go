package supervisor

// The data hooks (backup.hook "NAME"): pre_backup, post_backup,
// pre_restore, post_restore and init, run through the hooks runner with
// the PID 1 reaper as its starter.

import (
	"context"
	"strings"

	"github.com/lifeboat/lifeboat/hooks"
	"github.com/lifeboat/lifeboat/supervisor/config"
	"github.com/lifeboat/lifeboat/supervisor/process"
)

// Data hook names, as labels of backup.hook blocks.
const (
	hookPreBackup   = "pre_backup"
	hookPostBackup  = "post_backup"
	hookPreRestore  = "pre_restore"
	hookPostRestore = "post_restore"
	hookInit        = "init"
)

// hookPhase is LIFEBOAT_PHASE of each data hook.
var hookPhase = map[string]string{
	hookPreBackup: "backup", hookPostBackup: "backup",
	hookPreRestore: "restore", hookPostRestore: "restore",
	hookInit: "init",
}

// hook returns the configured hook name, or nil.
func (s *Supervisor) hook(name string) *config.Hook {
	return config.FindHook(s.cfg.Backup.Hooks, name)
}

// runHook runs the data hook name when it is configured and returns the
// metadata it printed. meta, when not nil, is a snapshot's metadata handed
// to the hook. A hook that is not configured succeeds with no metadata.
func (s *Supervisor) runHook(ctx context.Context, name string, vars, meta map[string]string) (map[string]string, error) {
	h := s.hook(name)
	if h == nil {
		return nil, nil
	}
	var opts []hooks.Option
	if meta != nil {
		opts = append(opts, hooks.WithMetadata(meta))
	}
	res, err := s.runConfigHook(ctx, h, vars, opts...)
	s.data.m.hookResult(name, err)
	if err != nil {
		return nil, err
	}
	if len(res.Metadata) == 0 {
		return nil, nil
	}
	return res.Metadata, nil
}

// runConfigHook runs a configured hook (data or election) through the
// hook runner, with the reaper as its starter once Run has started.
func (s *Supervisor) runConfigHook(ctx context.Context, h *config.Hook, vars map[string]string, opts ...hooks.Option) (hooks.Result, error) {
	r := hooks.Runner{Logger: s.log}
	if s.reaper != nil {
		r.Starter = process.CodeStarter{Reaper: s.reaper}
	}
	return r.Run(ctx, hooks.Hook{Name: h.Name, Command: h.Command, Timeout: config.Dur(h.Timeout),
		User: h.User, Env: s.hookEnv(h.Env)}, vars, opts...)
}

// hookEnv is a hook's environment on top of lifeboat's: the rendered env
// block (once rendered: backup hooks and streams get the same database
// password the app got from Vault), then the hook's own env, which wins.
func (s *Supervisor) hookEnv(own map[string]string) map[string]string {
	rendered := s.secretsEnv()
	if len(rendered) == 0 {
		return own
	}
	env := make(map[string]string, len(rendered)+len(own))
	for _, kv := range rendered {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = v
		}
	}
	for k, v := range own {
		env[k] = v
	}
	return env
}
