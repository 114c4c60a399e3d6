package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// counterServer is an HTTP server that answers each GET with how many it
// has answered, its state.
const counterServer = `
import http.server
n = [0]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(s):
        n[0] += 1
        s.send_response(200); s.end_headers(); s.wfile.write(b"%d\n" % n[0])
    def log_message(s, *a): pass
http.server.HTTPServer(("", 8000), H).serve_forever()
`

// netEntry is what ls --json says of a node's network.
type netEntry struct {
	Path  string `json:"path"`
	Net   string `json:"net"`
	IP    string `json:"ip"`
	MAC   string `json:"mac"`
	Ports []struct {
		Host int `json:"host"`
		Node int `json:"node"`
	} `json:"ports"`
}

func (h *host) netLs() map[string]netEntry {
	h.t.Helper()
	var es []netEntry
	if err := json.Unmarshal([]byte(h.must("ls", "-r", "--json")), &es); err != nil {
		h.t.Fatal(err)
	}
	out := map[string]netEntry{}
	for _, e := range es {
		out[e.Path] = e
	}
	return out
}

// get fetches url, "" if it does not answer within a second.
func get(url string) string {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return strings.TrimSpace(string(b))
}

// freePort is a TCP port nothing listens on now.
func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// leases are the addresses the state root's network holds.
func (h *host) leases() []string {
	var out []string
	dirs, _ := filepath.Glob(filepath.Join(h.root, "net", "ipam", "*"))
	for _, d := range dirs {
		des, _ := os.ReadDir(d)
		for _, e := range des {
			if net.ParseIP(e.Name()) != nil {
				out = append(out, e.Name())
			}
		}
	}
	return out
}

// bridgePorts are the interfaces attached to the state root's bridge.
func (h *host) bridgePorts(t *testing.T) []string {
	data, err := os.ReadFile(filepath.Join(h.root, "net", "crtree.conflist"))
	if err != nil {
		return nil
	}
	var conf struct {
		Plugins []struct {
			Bridge string `json:"bridge"`
		} `json:"plugins"`
	}
	json.Unmarshal(data, &conf)
	out, _ := exec.Command("ip", "-o", "link", "show", "master", conf.Plugins[0].Bridge).Output()
	return strings.Fields(string(out))
}

// A --net bridge node has its own address, reachable from the host, and
// its published port answers on the host's; ls --json shows them. Its
// clones, restored while it runs, get addresses of their own and keep
// state of their own; restored once it is gone, a clone gets its address
// and MAC back. Removing the nodes releases every address.
func TestBridgeClones(t *testing.T) {
	h := newHost(t)
	port := freePort(t)
	h.must("run", "--net", "bridge", "-p", fmt.Sprintf("%d:8000", port), "/web", "--", "python3", "-c", counterServer)
	web := h.netLs()["/web"]
	if web.Net != "bridge" || net.ParseIP(web.IP) == nil || web.MAC == "" || len(web.Ports) != 1 || web.Ports[0].Host != port || web.Ports[0].Node != 8000 {
		t.Fatalf("ls --json of a bridge node: %+v", web)
	}
	url := "http://" + web.IP + ":8000/"
	if !poll(10*time.Second, 100*time.Millisecond, func() bool { return get(url) != "" }) {
		t.Fatalf("the node's server never answered on %s: %s", url, h.must("logs", "/web"))
	}
	if got := get(fmt.Sprintf("http://127.0.0.1:%d/", port)); got != "2" {
		t.Fatalf("the published port answered %q, want 2", got)
	}
	archive := filepath.Join(t.TempDir(), "web.crtree")
	h.must("dump", "--leave-running", "/web", "-o", archive)
	h.must("restore", "--name", "web2", archive)
	web2 := h.netLs()["/web2"]
	if web2.IP == "" || web2.IP == web.IP || web2.MAC == web.MAC {
		t.Fatalf("a clone beside its original: %+v, original %+v", web2, web)
	}
	// Each its own state: both go on from 2.
	if a, b := get(url), get("http://"+web2.IP+":8000/"); a != "3" || b != "3" {
		t.Fatalf("original answered %q, clone %q; want 3 and 3", a, b)
	}
	h.must("rm", "-r", "-f", "/web")
	h.must("restore", "--name", "web3", archive)
	web3 := h.netLs()["/web3"]
	if web3.IP != web.IP || web3.MAC != web.MAC {
		t.Fatalf("restored where the original was: %+v, original %+v", web3, web)
	}
	if got := get(url); got != "3" {
		t.Fatalf("the restored node answered %q on the original's address, want 3", got)
	}
	h.must("rm", "-r", "-f", "/web2")
	h.must("rm", "-r", "-f", "/web3")
	if l := h.leases(); len(l) != 0 {
		t.Fatalf("addresses still held after rm: %v", l)
	}
	if p := h.bridgePorts(t); len(p) != 0 {
		t.Fatalf("interfaces still on the bridge after rm: %v", p)
	}
}

// Run and remove bridge nodes 50 times, by rm and by kill -r then rm, with
// and without published ports, and under a bridge parent: no address,
// bridge port, network namespace or forwarding rule is left.
func TestBridgeCycles(t *testing.T) {
	h := newHost(t)
	rules := func() int {
		out, _ := exec.Command("iptables-save", "-t", "nat").Output()
		return strings.Count(string(out), "\n")
	}
	// The first node creates the bridge and the plugins' shared chains.
	h.must("run", "--net", "bridge", "-p", fmt.Sprintf("%d:80", freePort(t)), "/warm", "--", "sleep", "1e5")
	h.must("rm", "-r", "-f", "/warm")
	before := rules()
	for i := 0; i < 50; i++ {
		args := []string{"run", "--net", "bridge"}
		if i%3 == 0 {
			args = append(args, "-p", fmt.Sprintf("%d:80", freePort(t)))
		}
		h.must(append(args, "/c", "--", "sleep", "1e5")...)
		if i%5 == 0 {
			// A child takes its parent's kind of network: an address of
			// its own.
			h.must("run", "/c/k", "--", "sleep", "1e5")
			if ls := h.netLs(); ls["/c/k"].Net != "bridge" || ls["/c/k"].IP == "" || ls["/c/k"].IP == ls["/c"].IP {
				t.Fatalf("a child of a bridge node: %+v, parent %+v", ls["/c/k"], ls["/c"])
			}
		}
		if i%2 == 0 {
			h.must("kill", "-r", "-s", "KILL", "/c")
		}
		h.must("rm", "-r", "-f", "/c")
	}
	if l := h.leases(); len(l) != 0 {
		t.Fatalf("addresses still held: %v", l)
	}
	if p := h.bridgePorts(t); len(p) != 0 {
		t.Fatalf("interfaces still on the bridge: %v", p)
	}
	if after := rules(); after != before {
		t.Fatalf("%d NAT rules before, %d after", before, after)
	}
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mounts), h.root) {
		t.Fatalf("mounts left under the state root")
	}
	// The host's network under a bridge node is refused, with why.
	h.must("run", "--net", "bridge", "/p", "--", "sleep", "1e5")
	if _, err := h.run("run", "--net", "host", "/p/h", "--", "true"); err == nil || !strings.Contains(err.Error(), "/p has no host network (--net bridge), and a node cannot have more than its parent") {
		t.Fatalf("host network under a bridge node: %v", err)
	}
}
