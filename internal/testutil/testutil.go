// Package testutil holds what crtree's tests (and its benchmark) share:
// the one gate for the privileged tests, and reading the logs of the
// memhog workload.
package testutil

import (
	"os"
	"os/exec"
	"testing"
)

// E2EEnv is the variable that asks for the privileged end-to-end tests
// (make test sets it).
const E2EEnv = "CRTREE_E2E"

// RequireE2E skips t when the run did not ask for end-to-end tests, and
// fails it when the run asked for them but the machine cannot run them
// (not root, no CRIU): a run that asked can never pass by skipping.
func RequireE2E(t testing.TB) {
	t.Helper()
	if os.Getenv(E2EEnv) == "" {
		t.Skipf("end-to-end test: set %s=1 (make test does) to run it as root with CRIU", E2EEnv)
	}
	if os.Geteuid() != 0 {
		t.Fatalf("%s is set but the tests are not running as root", E2EEnv)
	}
	criu := os.Getenv("CRTREE_CRIU")
	if criu == "" {
		criu = "criu"
	}
	if _, err := exec.LookPath(criu); err != nil {
		t.Fatalf("%s is set but CRIU is not installed (run make deps): %v", E2EEnv, err)
	}
}
