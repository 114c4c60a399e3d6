package criu

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestErrorQuotesLog(t *testing.T) {
	log := filepath.Join(t.TempDir(), "dump.log")
	os.WriteFile(log, []byte(`(00.045966) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted
(00.059639) unix: 	Runaway socket: ino 68429
(00.059641) Error (criu/sk-unix.c:874): unix: External socket is used. Consider using --ext-unix-sk option.
(00.059800) Error (criu/cr-dump.c:1975): Dumping FAILED.
`), 0o600)
	e := &Error{Op: "dump", Err: errors.New("Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self"), Log: log, Quoted: logErrors(log)}
	msg := e.Error()
	first := strings.SplitN(msg, "\n", 2)[0]
	if first != "criu dump: unix: External socket is used. Consider using --ext-unix-sk option." {
		t.Errorf("first line = %q", first)
	}
	if strings.Contains(msg, "RLIMIT") {
		t.Errorf("harmless rlimit error quoted:\n%s", msg)
	}
	if !strings.Contains(msg, "Runaway socket") || !strings.Contains(msg, "full log: "+log) {
		t.Errorf("context or log path missing:\n%s", msg)
	}
	// Without a log, CRIU's own message stands, unless it is the harmless one.
	if got := (&Error{Op: "restore", Err: errors.New("boom")}).Error(); got != "criu restore: boom" {
		t.Errorf("no log: %q", got)
	}
	if got := (&Error{Op: "dump", Err: errors.New("rlimit: Can't setup RLIMIT_NOFILE")}).Error(); got != "criu dump: failed" {
		t.Errorf("harmless only: %q", got)
	}
}
