package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
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

// ownAddrServer listens on its node's own address (not 0.0.0.0).
const ownAddrServer = `
import socket, time
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.connect(("10.0.0.1", 1))
ip = u.getsockname()[0]
u.close()
s = socket.socket()
s.bind((ip, 9000))
s.listen(1)
print("bound", ip, flush=True)
while True:
    time.sleep(1)
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
	// On the host's addresses (its own on the bridge, say), not on
	// 127.0.0.1 (which would need route_localnet: nodes could reach the
	// host's local services).
	hostAddr := strings.Join(append(strings.Split(web.IP, ".")[:3], "1"), ".")
	published := fmt.Sprintf("http://%s:%d/", hostAddr, port)
	if got := get(published); got != "2" {
		t.Fatalf("the published port answered %q, want 2", got)
	}
	// Ports: one a process of the host listens on, one another node
	// publishes, any from inside a node: refused, for why.
	busy, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	busyPort := busy.Addr().(*net.TCPAddr).Port
	for args, want := range map[string]string{
		fmt.Sprintf("-p %d:80 /x", busyPort):                       fmt.Sprintf("--publish %d/tcp: the port is in use on the host", busyPort),
		fmt.Sprintf("-p %d:80 /x", port):                           fmt.Sprintf("--publish %d/tcp: another node publishes that port", port),
		fmt.Sprintf("exec /web -- crtree run -p %d:80 /y", port+1): "--publish opens the host's ports and cannot be used inside a node",
	} {
		argv := strings.Fields(args)
		if argv[0] != "exec" {
			argv = append([]string{"run", "--net", "bridge"}, argv...)
		} else {
			argv = append(argv[:len(argv)-1], "--net", "bridge", argv[len(argv)-1])
		}
		if _, err := h.run(append(argv, "--", "sleep", "1e5")...); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", args, err, want)
		}
	}
	if ls := h.netLs(); len(ls) != 1 {
		t.Fatalf("refused runs left nodes: %v", ls)
	}
	archive := filepath.Join(t.TempDir(), "web.crtree")
	h.must("dump", "--leave-running", "/web", "-o", archive)
	// Another state root, with a bridge and subnet of its own: the node
	// gets an address there, at the first attempt.
	other := newHost(t)
	other.must("restore", archive)
	if o := other.netLs()["/web"]; o.IP == "" || o.IP == web.IP || get("http://"+o.IP+":8000/") != "3" {
		t.Fatalf("restored on another state root: %+v", o)
	}
	other.must("rm", "-r", "-f", "/web")
	h.must("restore", "--name", "web2", archive)
	web2 := h.netLs()["/web2"]
	if web2.IP == "" || web2.IP == web.IP || web2.MAC == web.MAC || len(web2.Ports) != 0 {
		t.Fatalf("a clone beside its original (ports not published again without --keep-ports): %+v, original %+v", web2, web)
	}
	// Each its own state: both go on from 2.
	if a, b := get(url), get("http://"+web2.IP+":8000/"); a != "3" || b != "3" {
		t.Fatalf("original answered %q, clone %q; want 3 and 3", a, b)
	}
	h.must("rm", "-r", "-f", "/web")
	h.must("restore", "--keep-ports", "--name", "web3", archive)
	web3 := h.netLs()["/web3"]
	if web3.IP != web.IP || web3.MAC != web.MAC || len(web3.Ports) != 1 {
		t.Fatalf("restored where the original was, with its port: %+v, original %+v", web3, web)
	}
	if got := get(url); got != "3" {
		t.Fatalf("the restored node answered %q on the original's address, want 3", got)
	}
	if got := get(published); got != "4" {
		t.Fatalf("the port published again answered %q, want 4", got)
	}
	h.must("rm", "-r", "-f", "/web2")
	h.must("rm", "-r", "-f", "/web3")
	if l := h.leases(); len(l) != 0 {
		t.Fatalf("addresses still held after rm: %v", l)
	}

	// A server bound to its node's own address: its clone beside it gets
	// a new address, the socket comes back bound to the old one, and the
	// restore says it gets no traffic.
	h.must("run", "--net", "bridge", "/own", "--", "python3", "-c", ownAddrServer)
	if !poll(10*time.Second, 100*time.Millisecond, func() bool { return strings.Contains(h.must("logs", "/own"), "bound") }) {
		t.Fatalf("the server never bound: %s", h.must("logs", "/own"))
	}
	own := h.netLs()["/own"]
	h.must("dump", "--leave-running", "/own", "-o", archive)
	cmd := h.cmd("restore", "--name", "own2", archive)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("restore of a clone bound to the old address: %v: %s", err, stderr.String())
	}
	if want := "warning: /own2: the node's address " + own.IP + " was in use, so it has a new one; its sockets bound to " + own.IP + " (tcp 9000) were restored but get no traffic"; !strings.Contains(stderr.String(), want) {
		t.Fatalf("restore said %q, want %q", stderr.String(), want)
	}
	// A restore that fails once it has an address releases it.
	leases := h.leases()
	data, err := os.ReadFile(archive)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)*9/10] ^= 0xff
	bad := filepath.Join(t.TempDir(), "bad.crtree")
	os.WriteFile(bad, data, 0o600)
	// The damage is in the page images, which a restore from a file
	// reads once CRIU runs in the node's namespace on the bridge.
	if _, err := h.run("restore", "--name", "bad", bad); err == nil || !strings.Contains(err.Error(), "corrupt archive") || !strings.Contains(err.Error(), "pages-") {
		t.Fatalf("a damaged archive: %v", err)
	}
	if l := h.leases(); len(l) != len(leases) {
		t.Fatalf("a failed restore left addresses: %v, before %v", l, leases)
	}
	h.must("rm", "-r", "-f", "/own")
	h.must("rm", "-r", "-f", "/own2")
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

// streamServer accepts one connection and streams a counter on it, a
// line every 20 ms, for ever.
const streamServer = `
import socket, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", 9000))
s.listen(1)
c, _ = s.accept()
i = 0
while True:
    i += 1
    c.sendall(b"%d\n" % i)
    time.sleep(0.02)
`

// netLab is three network namespaces made by the test: two "hosts", A
// and B, each linked to a client C, which routes to the nodes' subnet.
type netLab struct {
	t          *testing.T
	a, b, c    string // namespace names
	linkA      string // C's end of its link to A
	viaA, viaB string // A's and B's addresses on their links to C
}

func newNetLab(t *testing.T) *netLab {
	tag := fmt.Sprint(os.Getpid() % 100000)
	l := &netLab{t: t, a: "crta" + tag, b: "crtb" + tag, c: "crtc" + tag, linkA: "ca" + tag, viaA: "172.31.1.2", viaB: "172.31.2.2"}
	for _, ns := range []string{l.a, l.b, l.c} {
		l.ip("netns", "add", ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
		l.ip("-n", ns, "link", "set", "lo", "up")
		if out, err := exec.Command("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0").CombinedOutput(); err != nil {
			t.Fatalf("sysctl in %s: %v: %s", ns, err, out)
		}
	}
	for _, link := range []struct{ peer, c, h, cAddr, hAddr string }{
		{l.a, "ca" + tag, "ac" + tag, "172.31.1.1/30", l.viaA + "/30"},
		{l.b, "cb" + tag, "bc" + tag, "172.31.2.1/30", l.viaB + "/30"},
	} {
		l.ip("link", "add", link.c, "netns", l.c, "type", "veth", "peer", "name", link.h, "netns", link.peer)
		l.ip("-n", l.c, "addr", "add", link.cAddr, "dev", link.c)
		l.ip("-n", link.peer, "addr", "add", link.hAddr, "dev", link.h)
		l.ip("-n", l.c, "link", "set", link.c, "up")
		l.ip("-n", link.peer, "link", "set", link.h, "up")
	}
	// B answers the client's address on the A link through the client.
	l.ip("-n", l.b, "route", "add", "172.31.1.0/30", "via", "172.31.2.1")
	return l
}

func (l *netLab) ip(args ...string) {
	l.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		l.t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// dial connects to addr from the client's namespace: the socket is made
// by a thread that entered it (and is not used again).
func (l *netLab) dial(addr string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		f, err := os.Open("/run/netns/" + l.c)
		if err != nil {
			done <- result{nil, err}
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- result{nil, err}
			return
		}
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		done <- result{c, err}
	}()
	r := <-done
	return r.c, r.err
}

// routedSubnet gives the state root of h the node subnet subnet, routed
// rather than masqueraded: what moving a node with its address between
// hosts needs. The state root's config is made by a first node.
func routedSubnet(t *testing.T, h *host, subnet string) {
	h.must("run", "--net", "bridge", "/first", "--", "true")
	h.must("rm", "-r", "-f", "/first")
	h.must("gc")
	file := filepath.Join(h.root, "net", "crtree.conflist")
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var conf map[string]any
	if err := json.Unmarshal(data, &conf); err != nil {
		t.Fatal(err)
	}
	bridge := conf["plugins"].([]any)[0].(map[string]any)
	bridge["ipMasq"] = false
	bridge["ipam"].(map[string]any)["ranges"] = [][]map[string]string{{{"subnet": subnet}}}
	data, _ = json.Marshal(conf)
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// Migration with a live connection: two "hosts" (network namespaces, each
// with crtree, its own state root and its own bridge, on one routed node
// subnet) and a client in a third holding an established TCP connection
// to a node's server on A. dump --tcp-established on A piped into restore
// --tcp-established on B, the client's route moved to B meanwhile: the
// connection goes on streaming, no reconnect, no byte lost or repeated.
func TestBridgeMigrateTCP(t *testing.T) {
	l := newNetLab(t)
	a, b := newHost(t), newHost(t)
	a.netns, b.netns = l.a, l.b
	// Remove the nodes from inside their hosts, before the namespaces go.
	t.Cleanup(func() {
		for _, h := range []*host{a, b} {
			h.run("rm", "-r", "-f", "/srv")
			h.run("gc")
		}
	})
	const subnet = "10.89.77.0/24"
	routedSubnet(t, a, subnet)
	routedSubnet(t, b, subnet)
	a.must("run", "--net", "bridge", "/srv", "--", "python3", "-c", streamServer)
	ip := a.netLs()["/srv"].IP
	if !strings.HasPrefix(ip, "10.89.77.") {
		t.Fatalf("the node's address is %q, not in %s", ip, subnet)
	}
	l.ip("-n", l.c, "route", "add", ip+"/32", "via", l.viaA)
	var conn net.Conn
	if !poll(10*time.Second, 100*time.Millisecond, func() bool {
		c, err := l.dial(ip + ":9000")
		conn = c
		return err == nil
	}) {
		t.Fatalf("the client cannot reach %s:9000 on A: %s", ip, a.must("logs", "/srv"))
	}
	defer conn.Close()
	lines := make(chan int, 1<<16)
	readErr := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(conn)
		for sc.Scan() {
			n, err := strconv.Atoi(sc.Text())
			if err != nil {
				readErr <- fmt.Errorf("line %q", sc.Text())
				return
			}
			lines <- n
		}
		readErr <- fmt.Errorf("the connection ended: %v", sc.Err())
	}()
	next := 1
	expect := func(upTo int, limit time.Duration) {
		t.Helper()
		deadline := time.After(limit)
		for next <= upTo {
			select {
			case n := <-lines:
				if n != next {
					t.Fatalf("the client read %d after %d: lost or repeated data", n, next-1)
				}
				next++
			case err := <-readErr:
				t.Fatalf("after %d: %v", next-1, err)
			case <-deadline:
				t.Fatalf("the client read up to %d, want %d", next-1, upTo)
			}
		}
	}
	expect(20, 10*time.Second)

	// Migrate: A's dump into B's restore, through a pipe; the client's
	// route follows the node once A has let go of it.
	dump := a.cmd("dump", "--tcp-established", "/srv", "-o", "-")
	restore := b.cmd("restore", "--tcp-established", "-")
	pipe, err := dump.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	restore.Stdin = pipe
	var dumpErr, restoreErr strings.Builder
	dump.Stderr, restore.Stderr = &dumpErr, &restoreErr
	if err := restore.Start(); err != nil {
		t.Fatal(err)
	}
	if err := dump.Start(); err != nil {
		t.Fatal(err)
	}
	if err := dump.Wait(); err != nil {
		t.Fatalf("dump on A: %v: %s", err, dumpErr.String())
	}
	l.ip("-n", l.c, "route", "replace", ip+"/32", "via", l.viaB)
	if err := restore.Wait(); err != nil {
		t.Fatalf("restore on B: %v: %s", err, restoreErr.String())
	}
	if got := b.netLs()["/srv"]; got.IP != ip {
		t.Fatalf("restored on B at %q, not at its address %s", got.IP, ip)
	}
	if _, ok := a.netLs()["/srv"]; ok {
		t.Fatal("the node is still on A")
	}
	at := next - 1
	expect(at+50, 15*time.Second)
	t.Logf("the connection went on across the migration: read %d lines, %d of them from B", next-1, next-1-at)
}

// sshHost is an OpenSSH server started by a test in a network namespace
// of its own, playing another host: a key of the test's lets root in,
// whose sessions run crtree (from the test's build) on the state root
// root. ssh is a command that reaches it, for crtree migrate --ssh.
func sshHost(t *testing.T, root string) (target, ssh string) {
	t.Helper()
	sshd, err := exec.LookPath("sshd")
	if err != nil {
		if sshd, err = exec.LookPath("/usr/sbin/sshd"); err != nil {
			t.Fatalf("OpenSSH's sshd is needed (make test installs openssh-server): %v", err)
		}
	}
	l := &netLab{t: t}
	ns := fmt.Sprintf("crtssh%d", os.Getpid()%100000)
	l.ip("netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	l.ip("-n", ns, "link", "set", "lo", "up")
	dir := t.TempDir()
	for _, k := range []string{"host", "client"} {
		if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(dir, k)).CombinedOutput(); err != nil {
			t.Fatalf("ssh-keygen: %v: %s", err, out)
		}
	}
	pub, err := os.ReadFile(filepath.Join(dir, "client.pub"))
	if err != nil {
		t.Fatal(err)
	}
	env := fmt.Sprintf(`environment="CRTREE_ROOT=%s",environment="PATH=%s:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin" `, root, binDir)
	os.WriteFile(filepath.Join(dir, "authorized_keys"), append([]byte(env), pub...), 0o600)
	conf := fmt.Sprintf("Port 2222\nListenAddress 127.0.0.1\nHostKey %s/host\nAuthorizedKeysFile %s/authorized_keys\nPermitRootLogin prohibit-password\nPermitUserEnvironment yes\nStrictModes no\nUsePAM no\nPidFile %s/sshd.pid\n", dir, dir, dir)
	os.WriteFile(filepath.Join(dir, "sshd_config"), []byte(conf), 0o600)
	os.MkdirAll("/run/sshd", 0o755)
	cmd := exec.Command("nsenter", "--net=/run/netns/"+ns, "--", sshd, "-D", "-f", filepath.Join(dir, "sshd_config"), "-E", filepath.Join(dir, "sshd.log"))
	if err := cmd.Start(); err != nil {
		t.Fatalf("start sshd: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		// A far crtree of a session whose client was killed may still
		// be ending (it would create the state root again once the test
		// has removed it): wait for every process run with it.
		if left := waitNoProcessWithEnv(30*time.Second, "CRTREE_ROOT="+root); len(left) > 0 {
			t.Errorf("processes of the far side still run: %v", left)
		}
	})
	ssh = filepath.Join(dir, "ssh")
	script := fmt.Sprintf("#!/bin/sh\nexec nsenter --net=/run/netns/%s -- ssh -i %s/client -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR \"$@\"\n", ns, dir)
	os.WriteFile(ssh, []byte(script), 0o755)
	if !poll(10*time.Second, 100*time.Millisecond, func() bool {
		return exec.Command(ssh, "-p", "2222", "root@127.0.0.1", "crtree", "ls").Run() == nil
	}) {
		log, _ := os.ReadFile(filepath.Join(dir, "sshd.log"))
		t.Fatalf("cannot reach the test's sshd: %s", log)
	}
	return "ssh://root@127.0.0.1:2222", ssh
}

// waitNoProcessWithEnv waits until no process has kv in its environment,
// and returns the PIDs of those that still do after limit.
func waitNoProcessWithEnv(limit time.Duration, kv string) []int {
	var left []int
	poll(limit, 50*time.Millisecond, func() bool {
		left = nil
		procs, _ := filepath.Glob("/proc/[0-9]*/environ")
		for _, p := range procs {
			env, err := os.ReadFile(p)
			if err != nil {
				continue
			}
			for _, e := range strings.Split(string(env), "\x00") {
				if e == kv {
					pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
					left = append(left, pid)
					break
				}
			}
		}
		return len(left) == 0
	})
	return left
}

// crtree migrate over real ssh (OpenSSH's sshd in a network namespace
// playing host B): a memory workload whose memory is checked after the
// move, and a counter that goes on, neither restarted nor skipping; a
// far side that refuses leaves the source running.
func TestMigrateSSH(t *testing.T) {
	a, b := newHost(t), newHost(t)
	target, ssh := sshHost(t, b.root)
	a.must("run", "/m", "--", "sleep", "1e5")
	a.startHog("/m/hog", 64)
	a.must("run", "/m/c", "--", "sh", "-c", "i=0; while :; do i=$((i+1)); echo n=$i; sleep 0.05; done")
	b.must("run", "/pool", "--", "sleep", "1e5")
	out := a.must("migrate", "--keep-binds", "--ssh", ssh, "/m", target+"/pool")
	if !strings.HasPrefix(out, "migrated /m to "+target+"/pool: /pool/m (downtime ") {
		t.Fatalf("migrate said %q", out)
	}
	if _, ok := a.ls()["/m"]; ok {
		t.Fatal("/m is still here")
	}
	b.must("kill", "-s", "USR1", "/pool/m/hog")
	if !poll(10*time.Second, 100*time.Millisecond, func() bool { return strings.Contains(b.must("logs", "/pool/m/hog"), "check=ok") }) {
		t.Fatalf("the workload's memory after the move: %s", b.must("logs", "/pool/m/hog"))
	}
	var last int
	if !poll(10*time.Second, 100*time.Millisecond, func() bool {
		lines := strings.Fields(b.must("logs", "/pool/m/c"))
		for i, l := range lines {
			if l != fmt.Sprintf("n=%d", i+1) {
				t.Fatalf("the counter restarted or skipped at line %d: %q", i+1, l)
			}
		}
		last = len(lines)
		return last > 40
	}) {
		t.Fatalf("the counter does not go on after the move: %d lines", last)
	}
	// The far side refuses: /pool/m is there now. The source stays.
	a.must("run", "/m", "--", "sleep", "1e5")
	if _, err := a.run("migrate", "--ssh", ssh, "/m", target+"/pool"); err == nil || !strings.Contains(err.Error(), "far side: restore: /pool/m: node already exists") || !strings.Contains(err.Error(), "the subtree goes on here") {
		t.Fatalf("migrate onto a taken name: %v", err)
	}
	if e := a.ls()["/m"]; e.State != "running" {
		t.Fatalf("the source after a refused migration: %+v", e)
	}
	// A far side that cannot be reached is found before anything is
	// frozen.
	if _, err := a.run("migrate", "--ssh", ssh, "/m", "ssh://root@127.0.0.1:2223/"); err == nil || !strings.Contains(err.Error(), "cannot run crtree on root@127.0.0.1") || !strings.Contains(err.Error(), "nothing was done") {
		t.Fatalf("migrate to a closed port: %v", err)
	}
	if e := a.ls()["/m"]; e.State != "running" {
		t.Fatalf("the source after an unreachable target: %+v", e)
	}
	b.must("rm", "-r", "-f", "/pool")
}

// restoreChild returns the child of process pid that runs the far
// restore (not the preflight's crtree --version), 0 if it has none.
func restoreChild(pid int) int {
	data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	for _, f := range strings.Fields(string(data)) {
		n, _ := strconv.Atoi(f)
		if cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", n)); strings.Contains(string(cmdline), "restore") {
			return n
		}
	}
	return 0
}

// The ssh connection of a stop-and-copy migration killed at several
// moments of the transfer: the migration fails, the workload goes on
// here, unharmed, and the far side keeps nothing.
func TestMigrateSSHFaults(t *testing.T) {
	a, b := newHost(t), newHost(t)
	target, ssh := sshHost(t, b.root)
	a.startHog("/m", 256)
	kills := 0
	for _, after := range []time.Duration{100 * time.Millisecond, 400 * time.Millisecond, 900 * time.Millisecond} {
		cmd := a.cmd("migrate", "--keep-binds", "--ssh", ssh, "/m", target)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// The ssh client of the far restore (the wrapper execs nsenter,
		// which execs ssh), after the preflight, once it has run for
		// about after.
		var pid int
		poll(5*time.Second, 10*time.Millisecond, func() bool { pid = restoreChild(cmd.Process.Pid); return pid > 0 })
		time.Sleep(after)
		if pid > 0 && unix.Kill(pid, unix.SIGKILL) == nil {
			kills++
		}
		err := cmd.Wait()
		if err == nil {
			// The move completed before the kill: move it back for
			// the next round.
			t.Logf("killed after %v: the migration had completed", after)
			b.must("migrate", "--keep-binds", "/m", "local:"+a.root)
			continue
		}
		t.Logf("killed after %v: %s", after, strings.TrimSpace(stderr.String()))
		if !strings.Contains(stderr.String(), "the subtree goes on here") {
			t.Fatalf("killed after %v: %v: %s", after, err, stderr.String())
		}
		if e := a.ls()["/m"]; e.State != "running" {
			t.Fatalf("killed after %v: the source is %+v", after, e)
		}
		if f := a.frozen(); len(f) > 0 {
			t.Fatalf("killed after %v: still frozen: %v", after, f)
		}
		a.must("kill", "-s", "USR1", "/m")
		if !poll(10*time.Second, 100*time.Millisecond, func() bool {
			return strings.Count(a.must("logs", "/m"), "check=ok") > 0
		}) {
			t.Fatalf("killed after %v: the workload's memory: %s", after, a.must("logs", "/m"))
		}
		if !poll(15*time.Second, 200*time.Millisecond, func() bool { return len(b.ls()) == 0 }) {
			t.Fatalf("killed after %v: the far side kept %v", after, b.ls())
		}
	}
	if kills == 0 {
		t.Fatal("no round killed the connection: the test tested nothing")
	}
}
