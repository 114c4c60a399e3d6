package node

import (
	"fmt"
	"os"

	"github.com/moby/sys/mountinfo"
)

// TreeFSType is the type the kernel shows for the tree's mounts (crtree
// mount, internal/treefs) in mountinfo and df -T.
const TreeFSType = "fuse.crtree"

// TreeMountsIn returns the mount points of crtree trees in the mount
// namespace of process pid (a node's init), as that namespace names them:
// a dump leaves them out, as a restore could not bring them back.
func TreeMountsIn(pid int) ([]string, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		return nil, fmt.Errorf("read the node's mounts: %w", err)
	}
	defer f.Close()
	ms, err := mountinfo.GetMountsFromReader(f, mountinfo.FSTypeFilter(TreeFSType))
	if err != nil {
		return nil, fmt.Errorf("read the node's mounts: %w", err)
	}
	var out []string
	for _, m := range ms {
		out = append(out, m.Mountpoint)
	}
	return out, nil
}
