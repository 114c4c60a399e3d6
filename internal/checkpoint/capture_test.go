package checkpoint

import (
	"bytes"
	"encoding/binary"
	"net"
	"os"
	"path/filepath"
	"testing"

	imgstreamer "github.com/checkpoint-restore/go-criu/v7/crit/images/img-streamer"
	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/crtree/crtree/internal/archive"
	"github.com/crtree/crtree/internal/criu"
	"github.com/crtree/crtree/internal/hier"
	"github.com/crtree/crtree/internal/node"
)

// criuWrites plays a CRIU dump with --stream: each image is a request, a
// pipe, its content; then CRIU hangs up, possibly before crtree has
// taken its last requests.
func criuWrites(t *testing.T, dir string, images map[string][]byte, order []string) {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: filepath.Join(dir, criu.CaptureSocket), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, name := range order {
		msg, _ := proto.Marshal(&imgstreamer.ImgStreamerRequestEntry{Filename: proto.String(name)})
		c.Write(binary.LittleEndian.AppendUint32(nil, uint32(len(msg))))
		c.Write(msg)
		r, w, _ := os.Pipe()
		c.WriteMsgUnix([]byte{0}, unix.UnixRights(int(r.Fd())), nil)
		r.Close()
		go func() {
			w.Write(images[name])
			w.Close()
		}()
	}
}

func TestCapture(t *testing.T) {
	stage := t.TempDir()
	m := &dumpNode{dir: filepath.Join(stage, "0"), status: node.Status{State: hier.Running}}
	os.MkdirAll(filepath.Join(m.dir, "criu"), 0o700)
	c, err := startCapture([]*dumpNode{m})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pages := bytes.Repeat([]byte("page"), 5<<20) // 20 MiB: three parts
	images := map[string][]byte{"pages-1.img": pages, "core-1.img": []byte("core"), "inventory.img": []byte("inv")}
	criuWrites(t, filepath.Join(m.dir, "criu"), images, []string{"pages-1.img", "core-1.img", "inventory.img"})

	var out bytes.Buffer
	w, err := archive.NewWriter(&out, zstd.SpeedFastest)
	if err != nil {
		t.Fatal(err)
	}
	// CRIU is gone at once: finish must still take every image.
	if err := c.finish(w); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"core-1.img", "inventory.img"} {
		if data, err := os.ReadFile(filepath.Join(m.dir, "criu", name)); err != nil || !bytes.Equal(data, images[name]) {
			t.Fatalf("%s: %q, %v", name, data, err)
		}
	}
	if _, err := os.Stat(filepath.Join(m.dir, "criu", "pages-1.img")); err == nil {
		t.Fatal("the page image was staged")
	}
	if c.pages[0] != int64(len(pages)) {
		t.Fatalf("archived %d page bytes, want %d", c.pages[0], len(pages))
	}
}
