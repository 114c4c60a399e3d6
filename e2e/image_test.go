package e2e

import (
	"archive/tar"
	"bytes"
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

	if got := a.must("inspect", archive); !strings.Contains(got, "    image test/busybox:1 ("+id+"): the restoring state root needs it (crtree image import)") {
		t.Fatalf("inspect does not name the image:\n%s", got)
	}
	// Another state root without the image: refused, naming it.
	_, err := b.run("restore", archive)
	if err == nil || !strings.Contains(err.Error(), "restore: /n runs on the image test/busybox:1 ("+id+"), which this state root does not have: import it (crtree image import FILE) and restore again") {
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
	if _, err := a.run("run", "--image", "test/busybox:1", "--user", "nosuch", "/u", "--", "true"); err == nil || !strings.Contains(err.Error(), `user nosuch: no user "nosuch" in the node's /etc/passwd`) {
		t.Errorf("--user nosuch: %v", err)
	}
	a.must("image", "rm", "test/busybox:1")
	if got := a.must("image", "ls", "--json"); strings.TrimSpace(got) != "[]" {
		t.Fatalf("image ls after rm: %s", got)
	}
}
