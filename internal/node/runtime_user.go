package node

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/crtree/crtree/internal/api"
	"github.com/crtree/crtree/internal/hier"
)

// switchUser makes this process (the node's init stage, inside the node;
// every thread of it: the syscall package's calls, not x/sys/unix's,
// which change one thread) run as spec "user[:group]", each by name or
// number, names looked up in the node's own /etc/passwd and /etc/group; a
// user without a group gets its passwd entry's, and every user the groups
// that list it. It sets HOME from the entry (/ if the user has none) if
// env has none.
func switchUser(spec string, env *[]string) error {
	userPart, groupPart, hasGroup := strings.Cut(spec, ":")
	uid, gid, home, err := lookupUser(userPart)
	if err != nil {
		return fmt.Errorf("user %s: %w", spec, err)
	}
	if hasGroup {
		if gid, err = lookupGroup(groupPart); err != nil {
			return fmt.Errorf("user %s: %w", spec, err)
		}
	}
	if err := syscall.Setgroups(append([]int{gid}, memberOf(userPart)...)); err != nil {
		return fmt.Errorf("user %s: setgroups: %w", spec, err)
	}
	if err := syscall.Setgid(gid); err != nil {
		return fmt.Errorf("user %s: setgid: %w", spec, err)
	}
	if err := syscall.Setuid(uid); err != nil {
		return fmt.Errorf("user %s: setuid: %w", spec, err)
	}
	if !hasEnv(*env, "HOME") {
		if home == "" {
			home = "/"
		}
		*env = append(*env, "HOME="+home)
	}
	return nil
}

// lookupUser returns the UID, primary GID and home of a user name or
// number (a number need not be in /etc/passwd: its group is then the
// same number).
func lookupUser(u string) (uid, gid int, home string, err error) {
	n, numErr := strconv.Atoi(u)
	found := false
	err = eachEntry("/etc/passwd", func(f []string) bool {
		if len(f) < 6 || (f[0] != u && (numErr != nil || f[2] != u)) {
			return false
		}
		uid, _ = strconv.Atoi(f[2])
		gid, _ = strconv.Atoi(f[3])
		home, found = f[5], true
		return true
	})
	switch {
	case found:
		return uid, gid, home, nil
	case numErr == nil && n >= 0:
		return n, n, "", nil
	case err != nil:
		return 0, 0, "", err
	}
	return 0, 0, "", fmt.Errorf("no user %q in the node's /etc/passwd", u)
}

// lookupGroup returns the GID of a group name or number.
func lookupGroup(g string) (int, error) {
	if n, err := strconv.Atoi(g); err == nil && n >= 0 {
		return n, nil
	}
	gid, found := 0, false
	err := eachEntry("/etc/group", func(f []string) bool {
		if len(f) < 3 || f[0] != g {
			return false
		}
		gid, _ = strconv.Atoi(f[2])
		found = true
		return true
	})
	if !found {
		if err == nil {
			err = fmt.Errorf("no group %q in the node's /etc/group", g)
		}
		return 0, err
	}
	return gid, nil
}

// eachEntry calls f with the colon-separated fields of each line of file
// until f returns true.
func eachEntry(file string, f func([]string) bool) error {
	fh, err := os.Open(file)
	if err != nil {
		return err
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		if f(strings.Split(sc.Text(), ":")) {
			return nil
		}
	}
	return sc.Err()
}

// withoutEnv returns env without key.
func withoutEnv(env []string, key string) []string {
	var out []string
	for _, kv := range env {
		if !strings.HasPrefix(kv, key+"=") {
			out = append(out, kv)
		}
	}
	return out
}

func hasEnv(env []string, key string) bool {
	for _, kv := range env {
		if strings.HasPrefix(kv, key+"=") {
			return true
		}
	}
	return false
}

// withPath returns env with dir at the end of its PATH, unless PATH has it.
func withPath(env []string, dir string) []string {
	out := append([]string{}, env...)
	for i, kv := range out {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			for _, d := range strings.Split(v, ":") {
				if d == dir {
					return out
				}
			}
			out[i] = kv + ":" + dir
			return out
		}
	}
	return append(out, "PATH="+dir)
}

// memberOf returns the GIDs of the groups of the node's /etc/group that
// list user (by name) as a member.
func memberOf(user string) []int {
	var out []int
	eachEntry("/etc/group", func(f []string) bool {
		if len(f) < 4 {
			return false
		}
		for _, m := range strings.Split(f[3], ",") {
			if m == user {
				if gid, err := strconv.Atoi(f[2]); err == nil {
					out = append(out, gid)
				}
			}
		}
		return false
	})
	return out
}

// nodeEnv is the environment of a node's commands run as user: DefaultEnv
// under the spec's, with crtree's directory on PATH whatever an image's
// PATH says, and, for a user other than root, no HOME unless the spec
// sets one (switchUser sets the user's).
func nodeEnv(spec hier.Spec, user string) []string {
	env := withPath(MergeEnv(DefaultEnv, spec.Env), api.MountPoint)
	if user != "" && !hasEnv(spec.Env, "HOME") {
		env = withoutEnv(env, "HOME")
	}
	return env
}

// HasCapSysResource reports whether this process has CAP_SYS_RESOURCE,
// which CRIU needs to read the resource limits of processes of another
// user (a node run --user): without it, such a node cannot be dumped.
func HasCapSysResource() bool {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		if hex, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(hex), 16, 64)
			return err == nil && caps&(1<<unix.CAP_SYS_RESOURCE) != 0
		}
	}
	return false
}
