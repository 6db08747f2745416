package process

import (
	"fmt"
	"os"
	"os/user"
	"strconv"
	"strings"
	"syscall"
)

// User is a resolved user to run a process as.
type User struct {
	Name   string // "" when given numerically and not in /etc/passwd
	Uid    uint32
	Gid    uint32
	Groups []uint32 // supplementary groups
	Home   string
}

// Credential is what a process started as u needs: nil when u is who
// lifeboat runs as already.
func (u *User) Credential() *syscall.Credential {
	if u.Uid == uint32(os.Geteuid()) && u.Gid == uint32(os.Getegid()) {
		return nil
	}
	return &syscall.Credential{Uid: u.Uid, Gid: u.Gid, Groups: u.Groups}
}

// LoginEnv is the HOME, USER and LOGNAME ("KEY=value") a login as u sets,
// as far as /etc/passwd knows them.
func (u *User) LoginEnv() []string {
	var env []string
	if u.Home != "" {
		env = append(env, "HOME="+u.Home)
	}
	if u.Name != "" {
		env = append(env, "USER="+u.Name, "LOGNAME="+u.Name)
	}
	return env
}

// LookupUser resolves "name", "uid", "name:group" or "uid:gid" through
// /etc/passwd and /etc/group. Numeric ids need not exist there; a name
// must. Supplementary groups are the user's groups from /etc/group.
func LookupUser(spec string) (*User, error) {
	name, group, hasGroup := strings.Cut(spec, ":")
	u := &User{}
	if id, err := strconv.ParseUint(name, 10, 32); err == nil {
		u.Uid, u.Gid = uint32(id), uint32(id)
		if pw, err := user.LookupId(name); err == nil {
			fill(u, pw)
		}
	} else {
		pw, err := user.Lookup(name)
		if err != nil {
			return nil, fmt.Errorf("user %q: not found in /etc/passwd", name)
		}
		fill(u, pw)
	}
	if hasGroup {
		gid, err := LookupGroup(group)
		if err != nil {
			return nil, err
		}
		u.Gid = gid
	}
	return u, nil
}

// LookupGroup resolves a group name or numeric gid through /etc/group. A
// numeric gid need not exist there; a name must.
func LookupGroup(name string) (uint32, error) {
	if id, err := strconv.ParseUint(name, 10, 32); err == nil {
		return uint32(id), nil
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return 0, fmt.Errorf("group %q: not found in /etc/group", name)
	}
	gid, err := strconv.ParseUint(g.Gid, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("group %q: gid %q in /etc/group is not a number", name, g.Gid)
	}
	return uint32(gid), nil
}

func fill(u *User, pw *user.User) {
	uid, _ := strconv.ParseUint(pw.Uid, 10, 32)
	gid, _ := strconv.ParseUint(pw.Gid, 10, 32)
	u.Name, u.Uid, u.Gid, u.Home = pw.Username, uint32(uid), uint32(gid), pw.HomeDir
	if ids, err := pw.GroupIds(); err == nil {
		for _, s := range ids {
			if g, err := strconv.ParseUint(s, 10, 32); err == nil {
				u.Groups = append(u.Groups, uint32(g))
			}
		}
	}
}
