package node

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/crtree/crtree/internal/hier"
	"github.com/crtree/crtree/internal/network"
)

// NetnsPath is where the network namespace of a NetBridge node is kept.
func (h *Host) NetnsPath(id string) string { return filepath.Join(h.Store.NodeDir(id), "netns") }

// netnsOf is the network namespace file a node's processes start in: its
// own for a NetBridge node, "" otherwise.
func (h *Host) netnsOf(n *hier.Node) string {
	if n.Spec.Net != hier.NetBridge {
		return ""
	}
	return h.NetnsPath(n.ID)
}

// joinNetwork gives a NetBridge node its network namespace, if it has
// none yet, and its place on the bridge: the address it had (a restore)
// if that is free, else a new one, which it records.
func (h *Host) joinNetwork(id string) error {
	var n hier.Node
	err := h.Store.View(func(t *hier.Tree) error {
		m := t.Nodes[id]
		if m == nil {
			return fmt.Errorf("node %s: %w", id, hier.ErrNotFound)
		}
		n = *m
		return nil
	})
	if err != nil || n.Spec.Net != hier.NetBridge {
		return err
	}
	path := h.NetnsPath(id)
	if !network.IsNS(path) {
		os.Remove(path)
		if err := network.NewNS(path); err != nil {
			return err
		}
	}
	want := network.Want{Ports: netPorts(n.Spec.Ports)}
	if n.Addr != nil {
		want.IP, want.MAC = n.Addr.IP, n.Addr.MAC
	}
	addr, _, err := h.Net.Attach(context.Background(), id, path, want)
	if err != nil {
		return err
	}
	return h.Store.Update(func(t *hier.Tree) error {
		if m := t.Nodes[id]; m != nil {
			m.Addr = &hier.Addr{IP: addr.IP, MAC: addr.MAC}
		}
		return nil
	})
}

// leaveNetwork takes a node off the bridge and lets go of its network
// namespace: what removing a node does. A node without either is no
// error.
func (h *Host) leaveNetwork(n *hier.Node) error {
	path := h.NetnsPath(n.ID)
	if n.Spec.Net != hier.NetBridge {
		return nil
	}
	err := h.Net.Detach(context.Background(), n.ID, path, netPorts(n.Spec.Ports))
	if rerr := network.RemoveNS(path); err == nil {
		err = rerr
	}
	return err
}

// netPorts are a spec's published ports as the network takes them.
func netPorts(ps []hier.Port) []network.Port {
	var out []network.Port
	for _, p := range ps {
		out = append(out, network.Port(p))
	}
	return out
}

// gcNetwork releases the addresses the state root's network holds for
// nodes the tree t does not know, and returns what it released.
func (h *Host) gcNetwork(t *hier.Tree) []string {
	leases, err := h.Net.Leases()
	if err != nil {
		return nil
	}
	var removed []string
	for ip, id := range leases {
		if t.Nodes[id] != nil {
			continue
		}
		if h.Net.Detach(context.Background(), id, h.NetnsPath(id), nil) == nil {
			removed = append(removed, "address "+ip+" of "+id)
		}
	}
	return removed
}
