package node

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseSetsid(t *testing.T) {
	for _, tc := range []struct {
		args []string
		cwd  string
		tty  bool
		user string
		argv []string
		err  string
	}{
		{args: []string{"--cwd=/work", "--", "sh", "-c", "exit 7"}, cwd: "/work", argv: []string{"sh", "-c", "exit 7"}},
		{args: []string{"--cwd=/", "--tty", "--", "sh"}, cwd: "/", tty: true, argv: []string{"sh"}},
		{args: []string{"--cwd=/", "--user=app:staff", "--", "id"}, cwd: "/", user: "app:staff", argv: []string{"id"}},
		// Everything after -- is the command, options included.
		{args: []string{"--", "env", "--tty", "--"}, cwd: "/", argv: []string{"env", "--tty", "--"}},
		{args: []string{"--cwd=/"}, err: "no command"},
		{args: []string{"--cwd=/", "--"}, err: "no command"},
		{args: []string{"--bogus", "--", "sh"}, err: `unknown option "--bogus"`},
	} {
		cwd, tty, user, argv, err := parseSetsid(tc.args)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("parseSetsid(%q) error = %v, want %q", tc.args, err, tc.err)
			}
			continue
		}
		if err != nil || cwd != tc.cwd || tty != tc.tty || user != tc.user || !reflect.DeepEqual(argv, tc.argv) {
			t.Errorf("parseSetsid(%q) = %q, %v, %q, %q, %v; want %q, %v, %q, %q", tc.args, cwd, tty, user, argv, err, tc.cwd, tc.tty, tc.user, tc.argv)
		}
	}
}

func TestExecCommandLine(t *testing.T) {
	for in, want := range map[string]string{
		"/usr/bin/nsenter --target 5 --pid --root -- /run/crtree/crtree __setsid --cwd=/ -- sh -c true": "sh -c true",
		"/run/crtree/crtree __setsid --cwd=/ --tty -- sh":                                               "sh",
		"sleep 1000":            "sleep 1000",
		strings.Repeat("x", 80): strings.Repeat("x", 57) + "...",
	} {
		if got := execCommandLine(in); got != want {
			t.Errorf("execCommandLine(%q) = %q, want %q", in, got, want)
		}
	}
}
