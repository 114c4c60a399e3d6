package e2e

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/crtree/crtree/internal/archive"
	"github.com/crtree/crtree/internal/node"
)

// testImageLayout writes an OCI layout of a small image built here: a
// static busybox with its applets, an os-release of its own, and a file
// /etc/doomed that the workload deletes, in a base layer; a marker in a
// second layer. The config sets PATH, the working directory and the
// command.
func testImageLayout(t *testing.T) string {
	t.Helper()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatalf("a static busybox is needed (make deps installs busybox-static): %v", err)
	}
	var base bytes.Buffer
	tw := tar.NewWriter(&base)
	add := func(hdr tar.Header, body []byte) {
		hdr.Size = int64(len(body))
		if hdr.Mode == 0 {
			hdr.Mode = 0o644
		}
		if err := tw.WriteHeader(&hdr); err != nil {
			t.Fatal(err)
		}
		tw.Write(body)
	}
	for _, d := range []string{"bin/", "etc/", "data/", "tmp/"} {
		add(tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	}
	add(tar.Header{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755}, bb)
	for _, a := range []string{"sh", "cat", "echo", "sleep", "rm", "ls", "test", "expr", "id"} {
		add(tar.Header{Name: "bin/" + a, Typeflag: tar.TypeSymlink, Linkname: "busybox"}, nil)
	}
	add(tar.Header{Name: "etc/os-release", Typeflag: tar.TypeReg}, []byte("ID=crtree-test-image\n"))
	add(tar.Header{Name: "etc/passwd", Typeflag: tar.TypeReg}, []byte("root:x:0:0:root:/root:/bin/sh\nworker:x:1234:1234:worker:/data:/bin/sh\n"))
	add(tar.Header{Name: "etc/group", Typeflag: tar.TypeReg}, []byte("root:x:0:\nstaff:x:50:\nextra:x:60:other,worker\n"))
	add(tar.Header{Name: "etc/doomed", Typeflag: tar.TypeReg}, []byte("delete me\n"))
	tw.Close()
	var top bytes.Buffer
	tw = tar.NewWriter(&top)
	add(tar.Header{Name: "etc/layer2", Typeflag: tar.TypeReg}, []byte("second layer\n"))
	tw.Close()
	var layers []v1.Layer
	for _, buf := range [][]byte{base.Bytes(), top.Bytes()} {
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf)), nil })
		if err != nil {
			t.Fatal(err)
		}
		layers = append(layers, l)
	}
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	img, err = mutate.Config(img, v1.Config{Env: []string{"PATH=/bin"}, WorkingDir: "/data",
		Cmd: []string{"sh", "-c", "rm /etc/doomed; echo kept > /data/written; i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done"}})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "layout")
	lp, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := lp.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": "test/busybox:1"})); err != nil {
		t.Fatal(err)
	}
	return dir
}

// count reads the workload's counter inside node p (which may be caught
// between the truncation and the write of "echo $i > /tmp/count").
func (h *host) count(p string) int {
	h.t.Helper()
	var out string
	for i := 0; i < 20; i++ {
		out = strings.TrimSpace(h.must("exec", p, "--", "cat", "/tmp/count"))
		if n, err := strconv.Atoi(out); err == nil {
			return n
		}
		time.Sleep(20 * time.Millisecond)
	}
	h.t.Fatalf("count in %s: %q", p, out)
	return 0
}

// An image built here runs as a node that sees the image's files, not
// the host's; its dump restores on its state root with what it wrote and
// deleted, and on another state root only once that has the image: the
// refusal names the image.
func TestImageNode(t *testing.T) {
	a, b := newHost(t), newHost(t)
	lay := testImageLayout(t)
	out := a.must("image", "import", lay)
	if !strings.HasPrefix(out, "test/busybox:1 sha256:") {
		t.Fatalf("import printed %q", out)
	}
	id := strings.Fields(out)[1]
	a.must("run", "--image", "test/busybox:1", "/n")
	if !poll(10*time.Second, 100*time.Millisecond, func() bool { _, err := a.run("exec", "/n", "--", "test", "-s", "/tmp/count"); return err == nil }) {
		t.Fatalf("the image's command never ran: %s", a.must("logs", "/n"))
	}
	if got := a.must("ls", "--json"); !strings.Contains(got, `"image": "test/busybox:1"`) {
		t.Fatalf("ls --json does not show the image:\n%s", got)
	}
	if got := a.must("exec", "/n", "--", "cat", "/etc/os-release", "/etc/layer2"); got != "ID=crtree-test-image\nsecond layer\n" {
		t.Fatalf("the node sees %q, not the image's files", got)
	}
	if _, err := a.run("exec", "/n", "--", "test", "-e", "/usr/bin/python3"); err == nil {
		t.Fatalf("the node sees the host's /usr")
	}
	if _, err := a.run("image", "rm", "test/busybox:1"); err == nil || !strings.Contains(err.Error(), "image test/busybox:1 is used by /n") {
		t.Fatalf("image rm of a used image: %v", err)
	}
	// Nothing under it sees the host's files either, not even a node it
	// starts itself; and crtree is on its PATH although the image's
	// PATH is /bin.
	if _, err := a.run("exec", "/n", "--", "crtree", "run", "/c", "--", "/bin/sh", "-c", "cat /etc/shadow"); err == nil || !strings.Contains(err.Error(), "crtree: run /c: / runs on an image and sees none of the host's files, and a node cannot have more than its parent: run it on an image too (--image)") {
		t.Fatalf("a host node under an image node: %v", err)
	}
	archive := filepath.Join(t.TempDir(), "n.crtree")
	before := a.count("/n")
	a.must("dump", "/n", "-o", archive)

	if got := a.must("inspect", archive); !strings.Contains(got, "    image test/busybox:1 ("+id+"): the restoring state root needs it (crtree image import, or dump --with-image)") {
		t.Fatalf("inspect does not name the image:\n%s", got)
	}
	// Another state root without the image: refused, naming it.
	_, err := b.run("restore", archive)
	if err == nil || !strings.Contains(err.Error(), "restore: /n runs on the image test/busybox:1 ("+id+"), which this state root does not have and the archive does not carry: import it (crtree image import FILE) and restore again, or dump with --with-image") {
		t.Fatalf("restore without the image: %v", err)
	}
	if ls := b.ls(); len(ls) != 0 {
		t.Fatalf("the refused restore left %v", ls)
	}
	b.must("image", "import", lay)
	for _, h := range []*host{a, b} {
		h.must("restore", archive)
		if got := h.must("exec", "/n", "--", "sh", "-c", "cat /etc/os-release /data/written; test -e /etc/doomed && echo doomed is back; pwd"); got != "ID=crtree-test-image\nkept\n/data\n" {
			t.Fatalf("restored node sees %q", got)
		}
		if !poll(10*time.Second, 100*time.Millisecond, func() bool { return h.count("/n") > before+2 }) {
			t.Fatalf("the restored workload does not go on from %d", before)
		}
	}
	a.must("rm", "-r", "-f", "/n")

	// --user, by name (the image's /etc/passwd gives its group and home)
	// and with a group by name.
	for user, want := range map[string]string{"worker": "1234 1234 /data 1234 60", "worker:staff": "1234 50 /data 50 60", "77": "77 77 / 77"} {
		a.must("run", "--image", "test/busybox:1", "--user", user, "/u", "--", "sh", "-c", "echo $(id -u) $(id -g) $HOME $(id -G) > /tmp/who; sleep 100000")
		if !poll(10*time.Second, 100*time.Millisecond, func() bool { _, err := a.run("exec", "/u", "--", "test", "-s", "/tmp/who"); return err == nil }) {
			t.Fatalf("--user %s: never ran: %s", user, a.must("logs", "/u"))
		}
		if got := strings.TrimRight(a.must("exec", "/u", "--", "cat", "/tmp/who"), "\n"); got != want {
			t.Errorf("--user %s: uid, gid, home %q, want %q", user, got, want)
		}
		// exec runs as the node's user, unless told otherwise.
		if got := strings.TrimSpace(a.must("exec", "/u", "--", "sh", "-c", "echo $(id -u) $(id -g) $HOME $(id -G)")); got != want {
			t.Errorf("exec in a --user %s node: %q, want %q", user, got, want)
		}
		if got := strings.TrimSpace(a.must("exec", "--user", "0", "/u", "--", "id", "-u")); got != "0" {
			t.Errorf("exec --user 0: uid %q", got)
		}
		a.must("rm", "-r", "-f", "/u")
	}
	// A node of another user dumps where root has CAP_SYS_RESOURCE, and
	// elsewhere is refused saying why.
	a.must("run", "--image", "test/busybox:1", "--user", "worker", "/u", "--", "sleep", "100000")
	_, err = a.run("dump", "/u", "-o", filepath.Join(t.TempDir(), "u.crtree"))
	switch {
	case node.HasCapSysResource() && err != nil:
		t.Errorf("dump of a --user node: %v", err)
	case !node.HasCapSysResource() && (err == nil || !strings.Contains(err.Error(), "a node that runs as another user (run --user, or its image's user) cannot be dumped here")):
		t.Errorf("dump of a --user node without CAP_SYS_RESOURCE: %v", err)
	}
	a.run("rm", "-r", "-f", "/u")
	if _, err := a.run("run", "--image", "test/busybox:1", "--user", "nosuch", "/u", "--", "true"); err == nil || !strings.Contains(err.Error(), `user nosuch: no user "nosuch" in the node's /etc/passwd`) {
		t.Errorf("--user nosuch: %v", err)
	}
	a.must("image", "rm", "test/busybox:1")
	if got := a.must("image", "ls", "--json"); strings.TrimSpace(got) != "[]" {
		t.Fatalf("image ls after rm: %s", got)
	}
}

// carriedMembers counts the members of an archive under images/config/
// and images/layers/.
func carriedMembers(t *testing.T, file string) (configs, layers int) {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := archive.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for {
		hdr, _, err := r.Next()
		if err == io.EOF {
			return configs, layers
		}
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case strings.HasPrefix(hdr.Name, "images/config/"):
			configs++
		case strings.HasPrefix(hdr.Name, "images/layers/"):
			layers++
		}
	}
}

// An archive dumped --with-image carries the image its nodes run on,
// each layer once however many nodes share it: a state root that never
// saw the image restores it from that one file, importing the image
// (same ID and name), and the node sees the image's files, its own writes
// and what it deleted still deleted; a second restore imports nothing; a
// state root where the image's name is another image's keeps it so; a
// restore that fails leaves no image behind.
func TestImageCarried(t *testing.T) {
	a, b := newHost(t), newHost(t)
	lay := testImageLayout(t)
	id := strings.Fields(a.must("image", "import", lay))[1]
	a.must("run", "--image", "test/busybox:1", "/n")
	a.must("run", "--image", "test/busybox:1", "/n/c", "--", "sleep", "100000")
	if !poll(10*time.Second, 100*time.Millisecond, func() bool { _, err := a.run("exec", "/n", "--", "test", "-s", "/data/written"); return err == nil }) {
		t.Fatalf("the image's command never ran: %s", a.must("logs", "/n"))
	}
	dir := t.TempDir()
	plain, carried := filepath.Join(dir, "plain.crtree"), filepath.Join(dir, "carried.crtree")
	a.must("dump", "--leave-running", "/n", "-o", plain)
	before := a.count("/n")
	var rep struct {
		CarriedBytes int64                 `json:"carriedBytes"`
		Imported     []struct{ ID string } `json:"imported"`
	}
	if err := json.Unmarshal([]byte(a.must("dump", "--with-image", "--json", "/n", "-o", carried)), &rep); err != nil || rep.CarriedBytes < 1<<20 {
		t.Fatalf("dump --with-image reports %d bytes carried (%v); busybox alone is more", rep.CarriedBytes, err)
	}
	if configs, layers := carriedMembers(t, carried); configs != 1 || layers != 2 {
		t.Fatalf("the archive carries %d configs and %d layers, want 1 and 2 (two nodes share one image of two layers)", configs, layers)
	}
	if configs, layers := carriedMembers(t, plain); configs != 0 || layers != 0 {
		t.Fatalf("an archive without --with-image carries %d configs and %d layers", configs, layers)
	}
	if got := a.must("inspect", carried); !strings.Contains(got, "    image test/busybox:1 ("+id+"): carried in the archive (") {
		t.Fatalf("inspect does not say the archive carries the image:\n%s", got)
	}

	// b never saw the image: the plain archive is refused, the carried
	// one restores, importing it.
	if _, err := b.run("restore", plain); err == nil || !strings.Contains(err.Error(), "which this state root does not have and the archive does not carry") {
		t.Fatalf("restore of the plain archive on b: %v", err)
	}
	cmd := b.cmd("restore", carried)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("restore --with-image archive on b: %v: %s", err, stderr.String())
	}
	if stdout.String() != "/n\n" || !strings.HasPrefix(stderr.String(), "imported image test/busybox:1 ("+id+") from the archive (") {
		t.Fatalf("restore printed %q and %q", stdout.String(), stderr.String())
	}
	var ims []struct{ Name, ID string }
	if err := json.Unmarshal([]byte(b.must("image", "ls", "--json")), &ims); err != nil || len(ims) != 1 || ims[0].Name != "test/busybox:1" || ims[0].ID != id {
		t.Fatalf("b's images after the restore: %+v (%v)", ims, err)
	}
	// /n deleted /etc/doomed, /n/c (a root of its own) did not.
	for p, want := range map[string]string{"/n": "", "/n/c": "doomed is here\n"} {
		want = "ID=crtree-test-image\nsecond layer\n" + want
		if got := b.must("exec", p, "--", "sh", "-c", "cat /etc/os-release /etc/layer2; test -e /etc/doomed && echo doomed is here; test -e /usr/bin/python3 && echo host files; true"); got != want {
			t.Fatalf("restored %s sees %q, want %q", p, got, want)
		}
	}
	if got := b.must("exec", "/n", "--", "cat", "/data/written"); got != "kept\n" {
		t.Fatalf("restored node lost its write: %q", got)
	}
	if !poll(10*time.Second, 100*time.Millisecond, func() bool { return b.count("/n") > before+2 }) {
		t.Fatalf("the restored workload does not go on from %d", before)
	}
	// Again: b has the image now, and the restore imports nothing.
	if err := json.Unmarshal([]byte(b.must("restore", "--json", "--name", "n2", carried)), &rep); err != nil || len(rep.Imported) != 0 {
		t.Fatalf("second restore imported %v (%v)", rep.Imported, err)
	}
	// The image is used: image rm refuses; gone with its nodes, it goes.
	if _, err := b.run("image", "rm", id); err == nil || !strings.Contains(err.Error(), "is used by") {
		t.Fatalf("image rm of the imported image: %v", err)
	}

	// c calls another image test/busybox:1: the carried one comes in
	// without that name.
	c := newHost(t)
	rootfs := t.TempDir()
	os.WriteFile(filepath.Join(rootfs, "mine"), []byte("c's own\n"), 0o644)
	mine := strings.Fields(c.must("image", "import", "--name", "test/busybox:1", rootfs))[1]
	// From a pipe, as a migration reads it.
	cmd = c.cmd("restore", "-")
	in, err := os.Open(carried)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	cmd.Stdin = in
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("restore - on c: %v: %s", err, out)
	}
	ims = nil
	if err := json.Unmarshal([]byte(c.must("image", "ls", "--json")), &ims); err != nil || len(ims) != 2 {
		t.Fatalf("c's images: %+v (%v)", ims, err)
	}
	for _, im := range ims {
		if im.ID == mine && im.Name != "test/busybox:1" || im.ID == id && im.Name != "" {
			t.Fatalf("c's images after the restore: %+v; its own should keep the name, the carried one have none", ims)
		}
	}
	if got := c.must("exec", "/n", "--", "cat", "/etc/os-release"); got != "ID=crtree-test-image\n" {
		t.Fatalf("restored node on c sees %q", got)
	}

	// From inside a node, the image comes in without a name: a node may
	// not name images for the host.
	e := newHost(t)
	e.must("run", "/outer", "--", "sleep", "100000")
	cmd = e.cmd("exec", "/outer", "--", "crtree", "restore", "-")
	in2, err := os.Open(carried)
	if err != nil {
		t.Fatal(err)
	}
	defer in2.Close()
	cmd.Stdin = in2
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("restore - inside /outer: %v: %s", err, out)
	}
	ims = nil
	if err := json.Unmarshal([]byte(e.must("image", "ls", "--json")), &ims); err != nil || len(ims) != 1 || ims[0].ID != id || ims[0].Name != "" {
		t.Fatalf("images after a restore inside a node: %+v (%v); want %s without a name", ims, err, id)
	}
	if got := e.must("exec", "/outer/n", "--", "cat", "/etc/os-release"); got != "ID=crtree-test-image\n" {
		t.Fatalf("node restored inside /outer sees %q", got)
	}

	// A restore that fails (the archive cut short) leaves no image, and
	// nothing unpacked.
	d := newHost(t)
	data, err := os.ReadFile(carried)
	if err != nil {
		t.Fatal(err)
	}
	cut := filepath.Join(dir, "cut.crtree")
	os.WriteFile(cut, data[:len(data)-200], 0o600)
	if _, err := d.run("restore", cut); err == nil || !strings.Contains(err.Error(), "truncated") {
		t.Fatalf("restore of a cut archive: %v", err)
	}
	if got := strings.TrimSpace(d.must("image", "ls", "--json")); got != "[]" {
		t.Fatalf("the failed restore left images: %s", got)
	}
	if des, _ := os.ReadDir(filepath.Join(d.root, "images", "tmp")); len(des) != 0 {
		t.Fatalf("the failed restore left %d entries in images/tmp", len(des))
	}
	if des, _ := os.ReadDir(filepath.Join(d.root, "images", "layers")); len(des) != 0 {
		t.Fatalf("the failed restore left %d layers", len(des))
	}
}
