// Package network gives nodes a network of their own (run --net bridge):
// each such node has a network namespace kept as a file under its
// storage (a bind mount of the namespace, so that it outlives the
// processes in it and a restore can put processes back into one made
// beforehand), attached to a bridge of the state root by the standard
// CNI plugins (bridge with host-local addresses, portmap for published
// ports), driven through libcni, as Podman and containerd drive them.
//
// Each state root has a network of its own, written once into
// net/crtree.conflist under it: its own bridge name (derived from the
// state root's path) and its own /24 subnet (chosen where the host has no
// route), so that two state roots on one machine do not collide, and the
// plugins keep their address leases (net/ipam) and libcni its cache
// (net/cache) there too.
package network

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/containernetworking/cni/libcni"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"golang.org/x/sys/unix"
)

// DefaultPluginDirs are where the CNI plugins are looked for: Debian's
// containernetworking-plugins, then the upstream default.
var DefaultPluginDirs = []string{"/usr/lib/cni", "/opt/cni/bin"}

// IfName is a node's interface on the bridge.
const IfName = "eth0"

// Network is the network of one state root.
type Network struct {
	dir        string
	pluginDirs []string

	once sync.Once
	list *libcni.NetworkConfigList
	cni  *libcni.CNIConfig
	err  error
	// bridge and subnet are what the config gives the bridge plugin.
	bridge string
	subnet *net.IPNet
}

// New returns the network of the state root at root; nothing is read or
// written before a node needs it. pluginDirs are where the CNI plugins
// are (DefaultPluginDirs if nil).
func New(root string, pluginDirs []string) *Network {
	if pluginDirs == nil {
		pluginDirs = DefaultPluginDirs
	}
	return &Network{dir: filepath.Join(root, "net"), pluginDirs: pluginDirs}
}

// Port is a published port: Host on the host's addresses forwards to
// Node on the node's address, for Proto ("tcp" or "udp").
type Port struct {
	Host  int    `json:"host"`
	Node  int    `json:"node"`
	Proto string `json:"proto,omitempty"`
}

// Want is what a node asks of the network: its address and MAC if it had
// them (a restore), and its published ports.
type Want struct {
	IP    string
	MAC   string
	Ports []Port
}

// Addr is a node's place on the bridge.
type Addr struct {
	IP      string `json:"ip"`
	MAC     string `json:"mac"`
	Gateway string `json:"gateway,omitempty"`
}

// ErrNoPlugins is returned when the CNI plugins are not installed.
var ErrNoPlugins = errors.New("the CNI plugins are not installed (Debian: apt-get install containernetworking-plugins; make deps installs them)")

// load reads the state root's network config, writing it first if there
// is none, and checks that the plugins it needs are there.
func (n *Network) load() error {
	n.once.Do(func() {
		n.err = n.loadOnce()
	})
	return n.err
}

// Plugins says where the CNI plugins crtree needs are (in pluginDirs, or
// DefaultPluginDirs if nil), or which is missing.
func Plugins(pluginDirs []string) (string, error) {
	if pluginDirs == nil {
		pluginDirs = DefaultPluginDirs
	}
	var where []string
	for _, p := range []string{"bridge", "host-local", "portmap"} {
		found := ""
		for _, d := range pluginDirs {
			if _, err := os.Stat(filepath.Join(d, p)); err == nil && found == "" {
				found = d
			}
		}
		if found == "" {
			return "", fmt.Errorf("plugin %s: %w", p, ErrNoPlugins)
		}
		if !slices.Contains(where, found) {
			where = append(where, found)
		}
	}
	if _, err := exec.LookPath("iptables"); err != nil {
		return "", fmt.Errorf("iptables, which the bridge and portmap plugins drive, is missing (apt-get install iptables; make deps installs it)")
	}
	return "bridge, host-local, portmap in " + strings.Join(where, ", "), nil
}

func (n *Network) loadOnce() error {
	if _, err := Plugins(n.pluginDirs); err != nil {
		return fmt.Errorf("network: %w", err)
	}
	if err := os.MkdirAll(n.dir, 0o700); err != nil {
		return fmt.Errorf("network: %w", err)
	}
	data, err := n.config()
	if err != nil {
		return fmt.Errorf("network: %w", err)
	}
	if n.list, err = libcni.ConfListFromBytes(data); err != nil {
		return fmt.Errorf("network: %s: %w", n.confFile(), err)
	}
	n.cni = libcni.NewCNIConfigWithCacheDir(n.pluginDirs, filepath.Join(n.dir, "cache"), nil)
	n.bridge, n.subnet = bridgeConf(n.list)
	return nil
}

// routedElsewhere refuses a state root whose subnet the host routes
// through an interface other than its bridge: another state root's
// bridge, made while this one had none up, or another network.
func (n *Network) routedElsewhere() error {
	if n.subnet == nil {
		return nil
	}
	routes, err := hostRoutes()
	if err != nil {
		return nil
	}
	for _, r := range routes {
		if r.dev != n.bridge && overlapsAny(n.subnet, []*net.IPNet{r.dst}) {
			return fmt.Errorf("network: this state root's subnet %s is routed through %s already (another state root's bridge?): give it another subnet in %s", n.subnet, r.dev, n.confFile())
		}
	}
	return nil
}

func (n *Network) confFile() string { return filepath.Join(n.dir, "crtree.conflist") }

// config returns the state root's CNI config, written under an exclusive
// lock on first use.
func (n *Network) config() ([]byte, error) {
	lock, err := os.OpenFile(filepath.Join(n.dir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return nil, err
	}
	if data, err := os.ReadFile(n.confFile()); err == nil {
		return data, nil
	}
	subnet, err := freeSubnet(n.dir)
	if err != nil {
		return nil, err
	}
	data, err := json.MarshalIndent(confList(n.dir, subnet), "", "  ")
	if err != nil {
		return nil, err
	}
	tmp := n.confFile() + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return nil, err
	}
	return data, os.Rename(tmp, n.confFile())
}

// names are the network and bridge names a new config of the state root
// of network directory dir gets: derived from the state root's path, so
// unique to it. A config, once written, says them (configNames).
func names(dir string) (name, bridge string) {
	sum := sha256.Sum256([]byte(filepath.Dir(dir)))
	h := hex.EncodeToString(sum[:])
	return "crtree-" + h[:8], "crt" + h[:8]
}

// confList is the CNI config of a state root whose network is subnet.
func confList(dir string, subnet *net.IPNet) map[string]any {
	name, bridge := names(dir)
	return map[string]any{
		"cniVersion": "1.0.0",
		"name":       name,
		"plugins": []any{
			map[string]any{
				"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": true, "hairpinMode": true,
				"ipam": map[string]any{
					"type":    "host-local",
					"ranges":  [][]map[string]string{{{"subnet": subnet.String()}}},
					"routes":  []map[string]string{{"dst": "0.0.0.0/0"}},
					"dataDir": filepath.Join(dir, "ipam"),
				},
				"capabilities": map[string]bool{"ips": true, "mac": true},
			},
			// No SNAT of published ports reached through 127.0.0.1: it
			// needs route_localnet on the bridge, which would let any
			// node reach the host's services bound to 127.0.0.1.
			map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}, "snat": false},
		},
	}
}

// freeSubnet picks a /24 of 10.128.0.0/9 that no route of the host
// covers or overlaps, starting from one derived from dir (so two state
// roots pick the same one with a chance of 1 in 32768 when neither has a
// bridge up).
func freeSubnet(dir string) (*net.IPNet, error) {
	routes, err := hostRoutes()
	if err != nil {
		return nil, err
	}
	var used []*net.IPNet
	for _, r := range routes {
		used = append(used, r.dst)
	}
	sum := sha256.Sum256([]byte(dir))
	start := int(sum[0])<<8 | int(sum[1])
	for i := 0; i < 1<<15; i++ {
		n := (start + i) % (1 << 15)
		cand := &net.IPNet{IP: net.IPv4(10, byte(128+n>>8), byte(n), 0).To4(), Mask: net.CIDRMask(24, 32)}
		if !overlapsAny(cand, used) {
			return cand, nil
		}
	}
	return nil, errors.New("no free /24 in 10.128.0.0/9 for the state root's bridge")
}

// route is a route of the host: its interface and destination.
type route struct {
	dev string
	dst *net.IPNet
}

// hostRoutes are the host's IPv4 routes, default route left out.
func hostRoutes() ([]route, error) {
	// This thread's namespace's: the main thread may be elsewhere.
	data, err := os.ReadFile("/proc/thread-self/net/route")
	if err != nil {
		return nil, err
	}
	var out []route
	for _, line := range strings.Split(string(data), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 8 {
			continue
		}
		dst, err1 := parseHexIP(f[1])
		mask, err2 := parseHexIP(f[7])
		if err1 != nil || err2 != nil {
			continue
		}
		if ones, _ := net.IPMask(mask).Size(); ones == 0 {
			continue
		}
		out = append(out, route{dev: f[0], dst: &net.IPNet{IP: dst, Mask: net.IPMask(mask)}})
	}
	return out, nil
}

// parseHexIP reads an address of /proc/net/route: 8 hex digits, in the
// machine's (little-endian) byte order.
func parseHexIP(s string) (net.IP, error) {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != 4 {
		return nil, fmt.Errorf("bad address %q", s)
	}
	return net.IPv4(b[3], b[2], b[1], b[0]).To4(), nil
}

func overlapsAny(a *net.IPNet, nets []*net.IPNet) bool {
	for _, b := range nets {
		if a.Contains(b.IP) || b.Contains(a.IP) {
			return true
		}
	}
	return false
}

// Attach puts the node id, whose network namespace is the file nsPath,
// on the bridge: the address and MAC it wants if it names them and they
// are free, else new ones (taken reports which). Published ports are
// forwarded to it.
func (n *Network) Attach(ctx context.Context, id, nsPath string, want Want) (addr *Addr, taken bool, err error) {
	if err := n.load(); err != nil {
		return nil, false, err
	}
	if err := n.routedElsewhere(); err != nil {
		return nil, false, err
	}
	if want.IP != "" && (!n.assignable(want.IP) || n.heldByOther(want.IP, id)) {
		// Another node has it (the one this one is a clone of), or it
		// is not an address of this state root's subnet (a restore
		// elsewhere): take another, and another MAC.
		want.IP, want.MAC = "", ""
		taken = true
	}
	addr, err = n.add(ctx, id, nsPath, want)
	if err != nil {
		n.Detach(ctx, id, nsPath, want.Ports)
		return nil, taken, err
	}
	return addr, taken, nil
}

// add runs the plugins' ADD.
func (n *Network) add(ctx context.Context, id, nsPath string, want Want) (*Addr, error) {
	res, err := n.cni.AddNetworkList(ctx, n.list, runtimeConf(id, nsPath, want))
	if err != nil {
		return nil, fmt.Errorf("network: attach: %w", err)
	}
	r, err := types100.NewResultFromResult(res)
	if err != nil {
		return nil, fmt.Errorf("network: attach: %w", err)
	}
	addr := &Addr{}
	for _, ip := range r.IPs {
		if ip.Address.IP.To4() != nil {
			addr.IP = ip.Address.IP.String()
			if ip.Gateway != nil {
				addr.Gateway = ip.Gateway.String()
			}
			break
		}
	}
	for _, i := range r.Interfaces {
		if i.Name == IfName && i.Sandbox != "" {
			addr.MAC = i.Mac
		}
	}
	if addr.IP == "" {
		return nil, errors.New("network: attach: the plugins gave no IPv4 address")
	}
	return addr, nil
}

// Detach takes the node id off the bridge: its address released, its
// ports no longer forwarded. It is idempotent, and works also when the
// namespace is gone.
func (n *Network) Detach(ctx context.Context, id, nsPath string, ports []Port) error {
	if err := n.load(); err != nil {
		return err
	}
	if !IsNS(nsPath) {
		// Gone, or a file that no longer holds it (after a reboot):
		// the plugins release what is not in a namespace.
		nsPath = ""
	}
	if _, cached, err := n.cni.GetNetworkListCachedConfig(n.list, runtimeConf(id, nsPath, Want{})); err == nil && cached != nil && len(ports) == 0 {
		// What the ADD was given (the ports, for portmap to remove
		// their rules), when the caller does not know it (gc).
		cached.NetNS = nsPath
		if err := n.cni.DelNetworkList(ctx, n.list, cached); err != nil {
			return fmt.Errorf("network: detach: %w", err)
		}
		return nil
	}
	if err := n.cni.DelNetworkList(ctx, n.list, runtimeConf(id, nsPath, Want{Ports: ports})); err != nil {
		return fmt.Errorf("network: detach: %w", err)
	}
	return nil
}

// runtimeConf is how libcni is told about the node id.
func runtimeConf(id, nsPath string, want Want) *libcni.RuntimeConf {
	caps := map[string]any{}
	if len(want.Ports) > 0 {
		var pm []map[string]any
		for _, p := range want.Ports {
			proto := p.Proto
			if proto == "" {
				proto = "tcp"
			}
			pm = append(pm, map[string]any{"hostPort": p.Host, "containerPort": p.Node, "protocol": proto})
		}
		caps["portMappings"] = pm
	}
	if want.IP != "" {
		caps["ips"] = []string{want.IP}
	}
	if want.MAC != "" {
		caps["mac"] = want.MAC
	}
	return &libcni.RuntimeConf{ContainerID: id, NetNS: nsPath, IfName: IfName, CapabilityArgs: caps}
}

// RemoveBridge deletes the state root's bridge, if it has one: what gc
// does once no node is left. It returns the bridge's name if it deleted
// one.
func (n *Network) RemoveBridge() (string, error) {
	if !n.configured() {
		return "", nil
	}
	if err := n.load(); err != nil {
		return "", err
	}
	bridge := n.bridge
	if _, err := net.InterfaceByName(bridge); bridge == "" || err != nil {
		return "", nil
	}
	if out, err := exec.Command("ip", "link", "delete", bridge).CombinedOutput(); err != nil {
		return "", fmt.Errorf("network: delete bridge %s: %v: %s", bridge, err, out)
	}
	return bridge, nil
}

// bridgeConf is the bridge's name and the node subnet a config gives
// (its first plugin, the bridge with host-local addresses).
func bridgeConf(list *libcni.NetworkConfigList) (bridge string, subnet *net.IPNet) {
	var conf struct {
		Bridge string `json:"bridge"`
		IPAM   struct {
			Ranges [][]struct {
				Subnet string `json:"subnet"`
			} `json:"ranges"`
		} `json:"ipam"`
	}
	if len(list.Plugins) == 0 || json.Unmarshal(list.Plugins[0].Bytes, &conf) != nil {
		return "", nil
	}
	if len(conf.IPAM.Ranges) > 0 && len(conf.IPAM.Ranges[0]) > 0 {
		_, subnet, _ = net.ParseCIDR(conf.IPAM.Ranges[0][0].Subnet)
	}
	return conf.Bridge, subnet
}

// assignable reports whether ip is a node address of the state root's
// subnet: in it, and neither its first two (network, gateway) nor its
// last (broadcast).
func (n *Network) assignable(ip string) bool {
	subnet := n.subnet
	addr := net.ParseIP(ip).To4()
	if subnet == nil || addr == nil || !subnet.Contains(addr) {
		return false
	}
	ones, bits := subnet.Mask.Size()
	host := binary.BigEndian.Uint32(addr) &^ binary.BigEndian.Uint32(net.CIDRMask(ones, bits))
	return host > 1 && host < 1<<(bits-ones)-1
}

// heldByOther reports whether ip is leased to a node other than id.
func (n *Network) heldByOther(ip, id string) bool {
	leases, _ := n.Leases()
	owner, ok := leases[ip]
	return ok && owner != id
}

// configured reports whether the state root has a network config yet.
func (n *Network) configured() bool {
	_, err := os.Stat(n.confFile())
	return err == nil
}

// Leases returns the node IDs that hold an address of the state root's
// network, by address: what gc compares with the tree.
func (n *Network) Leases() (map[string]string, error) {
	if !n.configured() {
		return nil, nil
	}
	if err := n.load(); err != nil {
		return nil, err
	}
	name := n.list.Name
	des, err := os.ReadDir(filepath.Join(n.dir, "ipam", name))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, d := range des {
		if net.ParseIP(d.Name()) == nil {
			continue
		}
		data, err := os.ReadFile(filepath.Join(n.dir, "ipam", name, d.Name()))
		if err != nil {
			continue
		}
		// host-local writes the container ID, then the interface.
		out[d.Name()] = strings.TrimSpace(strings.SplitN(string(data), "\n", 2)[0])
	}
	return out, nil
}
