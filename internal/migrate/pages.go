package migrate

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/crtree/crtree/internal/criu"
)

// A post-copy migration (--lazy) moves each running node's memory after
// the subtree runs on the far side: the node's CRIU dump serves it as a
// page server, the far side's lazy-pages daemon fetches it. Neither talks
// to the network: the dump's CRIU gets one end of a socket pair, and
// pageRelay carries what goes through its other end over a connection
// that the far side opens to pageRelay's listener, through ssh's
// forwarding of a Unix socket (ssh -R) on the ssh connection that
// carries the archive: the memory travels on the same authenticated
// channel as everything else, and no port is opened on either host.
//
// The relay decides when the transfer has succeeded here: CRIU's page
// server ends the processes it serves once it reads PS_IOV_FORCE_CLOSE,
// which the far side's proxy (criu's pageProxy) sends once its lazy-pages
// daemon has ended well, that is with every page. The relay holds each
// node's until every node has sent its own and the far side has reported
// the subtree running (arm), then passes them all on, so that the whole
// subtree is ended here at once; CRIU's answers go back, and a far node
// counts as arrived only once it has its answer. If any connection breaks
// before, the relay sends every CRIU still serving a command it does not
// know instead, which fails the dump and resumes the processes here (CRIU
// takes a plain end of the connection for success, so an end is never
// passed on), and closes every far connection, so that the far side kills
// its copy, even of nodes whose memory had all arrived. A connection that
// breaks between CRIU's answer and its arrival there loses the subtree on
// both sides: the one window left.

// helloPrefix starts the line a far side's connection opens with; the
// node's index in the archive follows.
const helloPrefix = "crtree-pages "

// pageRelay is the near side of a post-copy migration's memory transfer.
type pageRelay struct {
	dir string
	ln  *net.UnixListener

	mu      sync.Mutex
	nodes   map[int]*relayNode
	armed   bool
	passed  bool  // every FORCE_CLOSE passed on: the transfer succeeded
	failure error // why the transfer failed, once it has
	sent    atomic.Int64
	wg      sync.WaitGroup
}

// relayNode is one node's page server: CRIU's socket pair, and the far
// side's connection once it has come.
type relayNode struct {
	criu  *os.File // CRIU's end, given to the dump
	ours  *os.File // our end
	wmu   sync.Mutex
	far   net.Conn
	close []byte // its FORCE_CLOSE, held
	done  bool   // FORCE_CLOSE passed on, or a refusal sent
}

// newPageRelay listens on a Unix socket in dir, a new private directory,
// which Close removes.
func newPageRelay(dir string) (*pageRelay, error) {
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, "pages.sock"), Net: "unix"})
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("page relay: %w", err)
	}
	r := &pageRelay{dir: dir, ln: ln, nodes: map[int]*relayNode{}}
	r.wg.Add(1)
	go r.accept()
	return r, nil
}

// Path is where the far side connects (directly for a local: target,
// through ssh -R for ssh://).
func (r *pageRelay) Path() string { return r.ln.Addr().String() }

// Socket is checkpoint.PageServers.Socket: the end of a new socket pair
// on which node i's CRIU serves its memory.
func (r *pageRelay) Socket(i int) (*os.File, error) {
	criuEnd, ours, err := criu.SocketPair()
	if err != nil {
		return nil, fmt.Errorf("page relay: %w", err)
	}
	n := &relayNode{criu: criuEnd, ours: ours}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.nodes[i] != nil || r.failure != nil {
		n.criu.Close()
		n.ours.Close()
		return nil, fmt.Errorf("page relay: node %d asked twice, or the transfer is over", i)
	}
	r.nodes[i] = n
	return n.criu, nil
}

// Abort is checkpoint.PageServers.Abort.
func (r *pageRelay) Abort() { r.fail(errors.New("the migration was abandoned")) }

// arm says the far side runs the subtree: the transfer may succeed now.
func (r *pageRelay) arm() {
	r.mu.Lock()
	r.armed = true
	passed := r.passOnLocked()
	r.mu.Unlock()
	r.passOn(passed)
}

// switched says whether the far side runs the subtree (arm).
func (r *pageRelay) switched() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.armed
}

// accept takes the far side's connections, one per running node.
func (r *pageRelay) accept() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			defer c.Close()
			n, in, err := r.hello(c)
			if err != nil {
				// Not one of the far side's page connections (the
				// socket is root's only): it ends, nothing else.
				return
			}
			if err := r.serve(n, in); err != nil {
				r.fail(err)
			}
		}()
	}
}

// hello reads a connection's hello and takes it as its node's far side;
// an error for anything else (another node's, one that has a connection
// already, or none).
func (r *pageRelay) hello(c net.Conn) (*relayNode, *bufio.Reader, error) {
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	in := bufio.NewReader(c)
	line, err := in.ReadString('\n')
	if err != nil {
		return nil, nil, err
	}
	c.SetReadDeadline(time.Time{})
	i, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(line, helloPrefix), "\n"))
	if !strings.HasPrefix(line, helloPrefix) || err != nil {
		return nil, nil, fmt.Errorf("a page connection opened with %q", line)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.nodes[i]
	if n == nil || n.far != nil || r.failure != nil {
		return nil, nil, fmt.Errorf("a page connection for node %d, which has no page server or has one connection already", i)
	}
	n.far = c
	return n, in, nil
}

// serve relays node n's far side's connection (read through in) to its
// CRIU.
func (r *pageRelay) serve(n *relayNode, in *bufio.Reader) error {
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		r.toFar(n)
	}()
	err := r.fromFar(n, in)
	if err == nil {
		// CRIU's answer to FORCE_CLOSE goes out before the connection
		// closes.
		<-sent
	}
	return err
}

// toFar carries the pages CRIU sends to the far side. Once that fails, it
// goes on reading them, so that CRIU, which may be in the middle of a
// reply, gets to the refusal behind it.
func (r *pageRelay) toFar(n *relayNode) {
	buf := make([]byte, 1<<20)
	broken := false
	for {
		k, err := n.ours.Read(buf)
		if k > 0 && !broken {
			r.sent.Add(int64(k))
			if _, werr := n.far.Write(buf[:k]); werr != nil {
				broken = true
				r.fail(fmt.Errorf("send pages: %w", werr))
			}
		}
		if err != nil {
			// CRIU is done: it answered FORCE_CLOSE, or failed.
			r.fail(errors.New("a page server (CRIU) here ended before all memory had arrived"))
			return
		}
	}
}

// fromFar carries the far side's requests to CRIU, whole, holding back
// its FORCE_CLOSE; the connection's end before that fails the transfer.
func (r *pageRelay) fromFar(n *relayNode, in io.Reader) error {
	for {
		req := make([]byte, criu.PageRequestSize)
		if _, err := io.ReadFull(in, req); err != nil {
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				err = errors.New("the far side closed it")
			}
			return fmt.Errorf("the page connection broke before all memory had arrived: %w", err)
		}
		if criu.IsCloseRequest(req) {
			r.mu.Lock()
			n.close = req
			passed := r.passOnLocked()
			r.mu.Unlock()
			r.passOn(passed)
			// The far side waits for CRIU's answer, then closes.
			io.Copy(io.Discard, in)
			return nil
		}
		n.wmu.Lock()
		_, err := n.ours.Write(req)
		n.wmu.Unlock()
		if err != nil {
			return fmt.Errorf("pass a page request to CRIU: %w", err)
		}
	}
}

// passOnLocked decides, r.mu held, whether every node's FORCE_CLOSE goes
// to its CRIU now: once armed and every node has sent its own. It returns
// the nodes to pass them to (passOn), nil if not now.
func (r *pageRelay) passOnLocked() []*relayNode {
	if !r.armed || r.passed || r.failure != nil || len(r.nodes) == 0 {
		return nil
	}
	for _, n := range r.nodes {
		if n.close == nil {
			return nil
		}
	}
	r.passed = true
	var out []*relayNode
	for _, n := range r.nodes {
		n.done = true
		out = append(out, n)
	}
	return out
}

// passOn writes each node's FORCE_CLOSE to its CRIU (not holding r.mu: a
// CRIU busy writing waits for toFar, which may need r.mu to fail).
func (r *pageRelay) passOn(nodes []*relayNode) {
	for _, n := range nodes {
		n.wmu.Lock()
		n.ours.Write(n.close)
		n.wmu.Unlock()
	}
}

// fail ends the transfer as failed, unless it has succeeded already:
// every CRIU still serving is refused (it resumes its processes), every
// far connection closed.
func (r *pageRelay) fail(err error) {
	r.mu.Lock()
	if r.passed || r.failure != nil {
		r.mu.Unlock()
		return
	}
	r.failure = err
	var refuse []*relayNode
	for _, n := range r.nodes {
		if !n.done {
			n.done = true
			refuse = append(refuse, n)
		}
		if n.far != nil {
			n.far.Close()
		}
	}
	r.mu.Unlock()
	for _, n := range refuse {
		n.wmu.Lock()
		n.ours.Write(criu.RefuseRequest())
		n.wmu.Unlock()
	}
}

// outcome says whether the transfer succeeded, and why not.
func (r *pageRelay) outcome() (passed bool, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.passed, r.failure
}

// Sent is how many bytes of pages (and their headers) went to the far
// side so far.
func (r *pageRelay) Sent() int64 { return r.sent.Load() }

// Close stops listening, closes every connection and removes the
// listener's directory.
func (r *pageRelay) Close() {
	r.ln.Close()
	r.mu.Lock()
	for _, n := range r.nodes {
		if n.far != nil {
			n.far.Close()
		}
		n.ours.Close()
		n.criu.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
	os.RemoveAll(r.dir)
}

// pageDialer is the far side's checkpoint.PageServers: it connects to
// the near side's relay at path, once per running node.
type pageDialer struct {
	path string
}

// NewPageDialer returns the page servers of a post-copy restore whose
// near side's relay listens at path (restore --lazy-pages-from).
func NewPageDialer(path string) *pageDialer { return &pageDialer{path: path} }

// Socket connects to the relay for the archive's node i.
func (d *pageDialer) Socket(i int) (*os.File, error) {
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: d.path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("connect to the migration's page relay: %w", err)
	}
	defer c.Close()
	if _, err := fmt.Fprintf(c, "%s%d\n", helloPrefix, i); err != nil {
		return nil, fmt.Errorf("connect to the migration's page relay: %w", err)
	}
	return c.File()
}

// Abort: the connections were handed to the supervisors, which end them
// as their nodes are removed.
func (d *pageDialer) Abort() {}

// RemoveForwardedSocket removes, at the end of a post-copy restore, the
// socket that ssh made for it on the far side (sshd leaves it behind):
// only a socket of the names command gives them.
func RemoveForwardedSocket(path string) {
	base := filepath.Base(path)
	if filepath.Dir(path) != "/tmp" || !strings.HasPrefix(base, "crtree-pages-") || !strings.HasSuffix(base, ".sock") {
		return
	}
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		os.Remove(path)
	}
}
