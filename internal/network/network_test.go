package network

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
)

// /proc/net/route's addresses are little-endian hex.
func TestParseHexIP(t *testing.T) {
	for in, want := range map[string]string{"0100000A": "10.0.0.1", "00FFFFFF": "255.255.255.0", "0059800A": "10.128.89.0"} {
		ip, err := parseHexIP(in)
		if err != nil || ip.String() != want {
			t.Errorf("parseHexIP(%s) = %v, %v; want %s", in, ip, err, want)
		}
	}
	for _, bad := range []string{"", "0100000", "zz00000A", "0100000A00"} {
		if _, err := parseHexIP(bad); err == nil {
			t.Errorf("parseHexIP(%q) accepted", bad)
		}
	}
}

// A subnet is free only if no route covers it or lies in it.
func TestOverlaps(t *testing.T) {
	cidr := func(s string) *net.IPNet { _, n, _ := net.ParseCIDR(s); return n }
	routes := []*net.IPNet{cidr("10.128.5.0/24"), cidr("10.200.0.0/16"), cidr("192.168.1.0/24")}
	for s, want := range map[string]bool{"10.128.5.0/24": true, "10.128.6.0/24": false, "10.200.7.0/24": true, "10.0.0.0/8": true, "172.16.0.0/24": false} {
		if got := overlapsAny(cidr(s), routes); got != want {
			t.Errorf("overlapsAny(%s) = %v, want %v", s, got, want)
		}
	}
}

// Two state roots start from different subnets of 10.128.0.0/9, and the
// config names a bridge short enough for Linux (15 characters).
func TestConfList(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	sa, err := freeSubnet(filepath.Join(a, "net"))
	if err != nil {
		t.Fatal(err)
	}
	sb, _ := freeSubnet(filepath.Join(b, "net"))
	if sa.String() == sb.String() {
		t.Errorf("two state roots, one subnet %s", sa)
	}
	if _, all, _ := net.ParseCIDR("10.128.0.0/9"); !all.Contains(sa.IP) {
		t.Errorf("subnet %s outside 10.128.0.0/9", sa)
	}
	data, err := json.Marshal(confList(filepath.Join(a, "net"), sa))
	if err != nil {
		t.Fatal(err)
	}
	list, err := libcni.ConfListFromBytes(data)
	if err != nil {
		t.Fatal(err)
	}
	n := &Network{dir: filepath.Join(a, "net"), list: list}
	n.bridge, n.subnet = bridgeConf(list)
	if br := n.bridge; len(br) == 0 || len(br) > 15 || !strings.HasPrefix(br, "crt") {
		t.Errorf("bridge name %q", br)
	}
	base := strings.TrimSuffix(sa.IP.String(), ".0")
	for ip, want := range map[string]bool{base + ".2": true, base + ".254": true, base + ".0": false, base + ".1": false, base + ".255": false, "10.0.0.2": false, "bogus": false, "fe80::1": false} {
		if got := n.assignable(ip); got != want {
			t.Errorf("assignable(%s) = %v, want %v", ip, got, want)
		}
	}
}

// What libcni is given: ports for portmap, the address and MAC asked for.
func TestRuntimeConf(t *testing.T) {
	rt := runtimeConf("n7", "/ns", Want{IP: "10.128.0.5", MAC: "02:00:00:00:00:01", Ports: []Port{{Host: 8080, Node: 80}, {Host: 53, Node: 5353, Proto: "udp"}}})
	data, _ := json.Marshal(rt.CapabilityArgs)
	want := `{"ips":["10.128.0.5"],"mac":"02:00:00:00:00:01","portMappings":[{"containerPort":80,"hostPort":8080,"protocol":"tcp"},{"containerPort":5353,"hostPort":53,"protocol":"udp"}]}`
	if string(data) != want || rt.ContainerID != "n7" || rt.NetNS != "/ns" || rt.IfName != IfName {
		t.Errorf("runtime conf %s %+v, want %s", data, rt, want)
	}
	if rt := runtimeConf("n7", "", Want{}); len(rt.CapabilityArgs) != 0 {
		t.Errorf("nothing asked for, yet %v", rt.CapabilityArgs)
	}
}

// A namespace file that is not a namespace (after a reboot) is told
// from one; RemoveNS of a path that is not there is no error.
func TestNSFile(t *testing.T) {
	f := filepath.Join(t.TempDir(), "netns")
	os.WriteFile(f, nil, 0o600)
	if IsNS(f) {
		t.Error("a plain file taken for a namespace")
	}
	if !IsNS("/proc/self/ns/net") {
		t.Error("a namespace not taken for one")
	}
	if err := RemoveNS(filepath.Join(t.TempDir(), "none")); err != nil {
		t.Errorf("RemoveNS of nothing: %v", err)
	}
}
