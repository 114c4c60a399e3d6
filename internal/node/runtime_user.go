package node

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// switchUser makes this process (the node's init stage, inside the node)
// run as spec "user[:group]", each by name or number, names looked up in
// the node's own /etc/passwd and /etc/group; a user without a group gets
// its passwd entry's. It sets HOME from the entry (/ if the user has
// none) if env has none.
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
	if err := unix.Setgroups([]int{gid}); err != nil {
		return fmt.Errorf("user %s: setgroups: %w", spec, err)
	}
	if err := unix.Setgid(gid); err != nil {
		return fmt.Errorf("user %s: setgid: %w", spec, err)
	}
	if err := unix.Setuid(uid); err != nil {
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
