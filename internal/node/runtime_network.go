package node

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

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
// if that is free, else a new one, which it records. moved is the old
// address the node had to leave ("" if none): its namespace then lets
// sockets bind to addresses it does not have, so that those bound to the
// old one are restored (they get no traffic; boundToOld says so).
func (h *Host) joinNetwork(id string) (moved string, err error) {
	var n hier.Node
	macUsed := false
	var others []hier.Port // published by the other nodes
	err = h.Store.View(func(t *hier.Tree) error {
		m := t.Nodes[id]
		if m == nil {
			return fmt.Errorf("node %s: %w", id, hier.ErrNotFound)
		}
		n = *m
		for _, o := range t.Nodes {
			if o.ID == id {
				continue
			}
			macUsed = macUsed || (o.Addr != nil && m.Addr != nil && o.Addr.MAC == m.Addr.MAC)
			others = append(others, o.Spec.Ports...)
		}
		return nil
	})
	if err != nil || n.Spec.Net != hier.NetBridge {
		return "", err
	}
	path := h.NetnsPath(id)
	if !network.IsNS(path) {
		os.Remove(path)
		if err := network.NewNS(path); err != nil {
			return "", err
		}
	}
	want := network.Want{Ports: netPorts(n.Spec.Ports)}
	if n.Addr != nil {
		want.IP, want.MAC = n.Addr.IP, n.Addr.MAC
	}
	if err := portsFree(n.Spec.Ports, others); err != nil {
		return "", err
	}
	if macUsed {
		// Another node of the tree has that MAC: two on one bridge
		// would take each other's traffic.
		want.MAC = ""
	}
	addr, taken, err := h.Net.Attach(context.Background(), id, path, want)
	if err != nil {
		return "", err
	}
	if taken {
		moved = want.IP
		if err := network.AllowNonlocalBind(path); err != nil {
			return "", err
		}
	}
	return moved, h.Store.Update(func(t *hier.Tree) error {
		if m := t.Nodes[id]; m != nil {
			m.Addr = &hier.Addr{IP: addr.IP, MAC: addr.MAC}
		}
		return nil
	})
}

// portsFree refuses to publish a port another node of the state root
// publishes, or one a process of the host listens on: the node's rule
// would take its traffic away.
func portsFree(ports, others []hier.Port) error {
	for _, p := range ports {
		proto := p.Proto
		if proto == "" {
			proto = "tcp"
		}
		for _, o := range others {
			if o.Host == p.Host && (o.Proto == p.Proto || o.Proto == "" && proto == "tcp") {
				return fmt.Errorf("--publish %d/%s: another node publishes that port", p.Host, proto)
			}
		}
		addr := fmt.Sprintf(":%d", p.Host)
		if proto == "udp" {
			c, err := net.ListenPacket("udp", addr)
			if err != nil {
				return fmt.Errorf("--publish %d/udp: the port is in use on the host: %w", p.Host, err)
			}
			c.Close()
			continue
		}
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("--publish %d/tcp: the port is in use on the host: %w", p.Host, err)
		}
		l.Close()
	}
	return nil
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

// boundToOld says which sockets of the network namespace of process pid
// are bound to old, an address its node no longer has, "" if none (or
// old is "").
func boundToOld(pid int, old string) string {
	if old == "" {
		return ""
	}
	ip := net.ParseIP(old).To4()
	if ip == nil {
		return ""
	}
	// /proc/net/{tcp,udp} give local addresses as hex, in the machine's
	// (little-endian) byte order.
	hexIP := fmt.Sprintf("%02X%02X%02X%02X", ip[3], ip[2], ip[1], ip[0])
	var ports []string
	for _, proto := range []string{"tcp", "udp"} {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, proto))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 2 {
				continue
			}
			addr, port, ok := strings.Cut(f[1], ":")
			if ok && addr == hexIP {
				if p, err := strconv.ParseUint(port, 16, 16); err == nil {
					ports = append(ports, fmt.Sprintf("%s %d", proto, p))
				}
			}
		}
	}
	if len(ports) == 0 {
		return ""
	}
	return fmt.Sprintf("the node's address %s was in use, so it has a new one; its sockets bound to %s (%s) were restored but get no traffic: restart what listens there, or restore where %s is free", old, old, strings.Join(ports, ", "), old)
}
