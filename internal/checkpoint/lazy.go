package checkpoint

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/crtree/crtree/internal/node"
)

// Post-copy restore (Options.Lazy): every running node's supervisor
// restores it without its memory and runs a lazy-pages daemon that
// fetches it from the dump's page server while the node runs; each
// supervisor reports on a pipe how its transfer ended.

// lazyNode gives node i's supervisor its page server connection and the
// write end of the pipe its result comes back on, keeping the read end.
func (rs *restoring) lazyNode(i int, from *node.FromImages) error {
	conn, err := rs.o.Lazy.Socket(i)
	if err != nil {
		return err
	}
	r, w, err := os.Pipe()
	if err != nil {
		conn.Close()
		return err
	}
	from.LazyPages, from.LazyDone = conn, w
	rs.lazyDone[i] = r // each node's own element: no lock
	return nil
}

// lazyStarted closes this process's copies of what lazyNode gave node i's
// supervisor, once it has started (or failed to).
func lazyStarted(from *node.FromImages) {
	if from.LazyPages != nil {
		from.LazyPages.Close()
		from.LazyDone.Close()
	}
}

// MemoryTransfer is the memory of a post-copy restore still arriving
// after Restore has returned with the subtree running.
type MemoryTransfer struct {
	rs    *restoring
	start time.Time
}

// Wait waits until the memory of every node has arrived: nil then. If
// any node's transfer failed, the whole restored subtree is killed (the
// failed node's supervisor has killed its processes already, before any
// of them could see a page that did not come) and removed, and Wait says
// why. Either way, the staging directory goes.
func (t *MemoryTransfer) Wait() error {
	rs := t.rs
	defer rs.cleanUp()
	var errs []error
	for i, r := range rs.lazyDone {
		if r == nil {
			continue
		}
		var res node.LazyResult
		if err := json.NewDecoder(r).Decode(&res); err != nil {
			res.Error = "its supervisor ended without saying how the transfer went"
		}
		r.Close()
		if res.Error != "" {
			errs = append(errs, fmt.Errorf("%s: %s", rs.res.Paths[i], res.Error))
		}
	}
	if err := errors.Join(errs...); err != nil {
		rs.h.Destroy(rs.res.IDs[0])
		return fmt.Errorf("restore: the memory of the subtree did not all arrive, so it was killed and removed: %w", err)
	}
	rs.rep.Memory = Duration(time.Since(t.start))
	return nil
}
