package templates

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"

	"github.com/lifeboat/lifeboat/supervisor/vault"
)

// renderCtx is one execution of one template: its functions look data up
// in the Manager and note what is not there yet.
type renderCtx struct {
	m          *Manager
	missing    []string
	usesSecret bool
}

func (rc *renderCtx) miss(st *depState) {
	reason := st.d.describe() + " not read yet"
	if st.err != nil {
		reason = st.d.describe() + ": " + st.err.Error()
	}
	rc.missing = append(rc.missing, reason)
}

// get returns the value of d, or ok=false (noted as missing) when it is
// not read yet or does not exist.
func (rc *renderCtx) get(d dep, absentOK bool) (any, bool) {
	st, have := rc.m.lookup(d)
	if !have {
		rc.m.mu.Lock()
		rc.miss(st)
		rc.m.mu.Unlock()
		return nil, false
	}
	rc.m.mu.Lock()
	v := st.value
	rc.m.mu.Unlock()
	if a, isAbsent := v.(absent); isAbsent {
		if !absentOK {
			rc.missing = append(rc.missing, a.reason)
		}
		return nil, false
	}
	return v, true
}

func (rc *renderCtx) funcs() template.FuncMap {
	return template.FuncMap{
		"key": func(k string) string {
			v, _ := rc.get(keyDep{k}, false)
			s, _ := v.(string)
			return s
		},
		"keyOrDefault": func(k, def string) string {
			st, have := rc.m.lookup(keyDep{k})
			if !have {
				rc.m.mu.Lock()
				rc.miss(st)
				rc.m.mu.Unlock()
				return def
			}
			v, ok := rc.get(keyDep{k}, true)
			if !ok {
				return def
			}
			return v.(string)
		},
		"ls": func(prefix string) []KV {
			v, _ := rc.get(listDep{prefix: prefix}, false)
			kvs, _ := v.([]KV)
			return kvs
		},
		"tree": func(prefix string) []KV {
			v, _ := rc.get(listDep{prefix: prefix, deep: true}, false)
			kvs, _ := v.([]KV)
			return kvs
		},
		"service": func(name string, tag ...string) ([]Service, error) {
			if len(tag) > 1 {
				return nil, fmt.Errorf("service %q: at most one tag", name)
			}
			d := serviceDep{name: name}
			if len(tag) == 1 {
				d.tag = tag[0]
			}
			v, _ := rc.get(d, false)
			s, _ := v.([]Service)
			return s, nil
		},
		// secret "PATH" returns the secret's fields (a map); secret "PATH"
		// "FIELD" one field as a string.
		"secret": func(path string, field ...string) (any, error) {
			rc.usesSecret = true
			if len(field) > 1 {
				return nil, fmt.Errorf("secret %q: at most one field", path)
			}
			v, ok := rc.get(secretDep{path: strings.Trim(path, "/")}, false)
			if !ok {
				if len(field) == 1 {
					return "", nil
				}
				return map[string]any{}, nil
			}
			s := v.(*vault.Secret)
			if len(field) == 0 {
				return s.Data, nil
			}
			f, err := s.Field(field[0])
			if err != nil {
				rc.missing = append(rc.missing, err.Error())
				return "", nil
			}
			return f, nil
		},
		"env": os.Getenv,
		"leader": func() string {
			if rc.m == nil || rc.m.opts.Leader == nil {
				return ""
			}
			return rc.m.opts.Leader()
		},
		// String helpers.
		"toUpper":    strings.ToUpper,
		"toLower":    strings.ToLower,
		"trimSpace":  strings.TrimSpace,
		"trim":       func(cut, s string) string { return strings.Trim(s, cut) },
		"split":      func(sep, s string) []string { return strings.Split(s, sep) },
		"join":       func(sep string, a []string) string { return strings.Join(a, sep) },
		"replaceAll": func(old, new, s string) string { return strings.ReplaceAll(s, old, new) },
		"contains":   func(sub, s string) bool { return strings.Contains(s, sub) },
		"hasPrefix":  func(p, s string) bool { return strings.HasPrefix(s, p) },
		"hasSuffix":  func(p, s string) bool { return strings.HasSuffix(s, p) },
		"indent": func(n int, s string) string {
			pad := strings.Repeat(" ", n)
			return pad + strings.ReplaceAll(s, "\n", "\n"+pad)
		},
		"base64Encode": func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) },
		"base64Decode": func(s string) (string, error) {
			b, err := base64.StdEncoding.DecodeString(s)
			if err != nil {
				return "", fmt.Errorf("base64Decode: input is not base64") // no input in the error: it may be a secret
			}
			return string(b), nil
		},
		"toJSON": func(v any) (string, error) {
			b, err := json.Marshal(v)
			return string(b), err
		},
		"parseJSON": func(s string) (any, error) {
			var v any
			if err := json.Unmarshal([]byte(s), &v); err != nil {
				return nil, fmt.Errorf("parseJSON: input is not JSON")
			}
			return v, nil
		},
	}
}
