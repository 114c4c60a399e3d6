package criu

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// runScript runs the gate's action script as CRIU would at pre-resume.
func runScript(t *testing.T, g *resumeGate) error {
	t.Helper()
	cmd := exec.Command("/bin/sh", "-c", g.script)
	cmd.Env = append(os.Environ(), "CRTOOLS_SCRIPT_ACTION=pre-resume")
	return cmd.Run()
}

func TestResumeGate(t *testing.T) {
	refusal := errors.New("not these processes")
	for _, c := range []struct {
		name      string
		runScript bool
		check     error
		want      string // "" for no error
	}{
		{"go-ahead", true, nil, ""},
		{"refused", true, refusal, "not these processes"},
		// CRIU resumes the processes even if its script fails or never
		// reaches crtree: the restore must fail, not pass.
		{"script never reached crtree", false, nil, "resumed without crtree's go-ahead"},
	} {
		t.Run(c.name, func(t *testing.T) {
			checked := 0
			g, err := openResumeGate(t.TempDir(), -1, func(pid int) error {
				checked++
				if pid != 4242 {
					t.Errorf("check got CRIU's PID %d, want 4242", pid)
				}
				return c.check
			})
			if err != nil {
				t.Fatal(err)
			}
			g.started(4242)
			go g.serve()
			if c.runScript {
				scriptErr := runScript(t, g)
				if (scriptErr == nil) != (c.check == nil) {
					t.Errorf("script: %v, check: %v", scriptErr, c.check)
				}
			}
			err = g.finish(nil)
			switch {
			case c.want == "" && err != nil:
				t.Errorf("finish: %v", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Errorf("finish: %v, want %q", err, c.want)
			}
			if c.runScript != (checked == 1) {
				t.Errorf("check ran %d times", checked)
			}
		})
	}
}
