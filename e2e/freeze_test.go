package e2e

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A process waiting for its vfork child (a shell running a command) is
// in uninterruptible sleep, which CRIU cannot seize: a freeze that
// catches the child before it has exec'd or exited left the parent so
// until the thaw, and the dump failed after CRIU's 10 s timeout
// ("Unseizable non-zombie ... state D"; TestScripts/migrate and
// migrate_cmd failed that way under load). The freeze now lets such a
// subtree run a moment and freezes it again. vforker is in that state
// 80% of the time; every dump must succeed.
func TestDumpVforkParent(t *testing.T) {
	h := newHost(t)
	h.must("run", "--bind", filepath.Join(binDir, "vforker")+":/vforker:ro", "/vf", "--", "/vforker")
	if !poll(10*time.Second, 50*time.Millisecond, func() bool { return strings.Contains(h.must("logs", "/vf"), "ready") }) {
		t.Fatal("vforker never got ready")
	}
	for i := 0; i < 4; i++ {
		if _, err := h.run("dump", "--leave-running", "/vf", "-o", filepath.Join(t.TempDir(), "vf.crtree")); err != nil {
			t.Fatalf("dump %d: %v", i+1, err)
		}
	}
}
