package checkpoint

import (
	"bytes"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/crtree/crtree/internal/archive"
)

// TestFeeder plays CRIU's side of a streamed restore: parts that arrive
// before CRIU asks are spilled and replayed, later ones go through the
// pipe (lent buffers), and CRIU reads exactly the image.
func TestFeeder(t *testing.T) {
	stage := t.TempDir()
	os.MkdirAll(filepath.Join(stage, "0", "criu"), 0o700)
	os.WriteFile(filepath.Join(stage, "0", "criu", "core-1.img"), []byte("core"), 0o600)
	parts := []int{3 << 20, 5<<20 + 123, 4096, 100, 2 << 20}
	var image []byte
	sums := &archive.Checksums{}
	for _, n := range parts {
		sums.Members = append(sums.Members, archive.MemberChecksum{Name: "nodes/0/criu/pages-1.img", Type: "file", Size: int64(n)})
	}
	rnd := rand.New(rand.NewSource(1))
	chunks := make([][]byte, len(parts))
	for i, n := range parts {
		chunks[i] = make([]byte, n)
		rnd.Read(chunks[i])
		image = append(image, chunks[i]...)
	}
	f := newFeeder(stage, sums)
	defer f.close()
	if !f.has(0, "pages-1.img") || !f.has(0, "core-1.img") || f.has(0, "pages-2.img") || f.has(0, "mm-1.img") {
		t.Fatal("has: wrong answer")
	}
	// The first part comes before CRIU asks: spilled.
	if err := f.Image(0, "pages-1.img", int64(parts[0]), bytes.NewReader(chunks[0])); err != nil {
		t.Fatal(err)
	}
	r, w, _ := os.Pipe()
	sent := make(chan error, 1)
	go func() {
		sent <- f.send(0, "pages-1.img", w)
		w.Close()
	}()
	got := make(chan []byte, 1)
	go func() {
		// A slow reader, so that lent buffers wait in the pipe.
		var out []byte
		buf := make([]byte, 64<<10)
		for {
			n, err := r.Read(buf)
			out = append(out, buf[:n]...)
			if err != nil {
				break
			}
			if len(out)%(1<<20) < 64<<10 {
				time.Sleep(time.Millisecond)
			}
		}
		got <- out
	}()
	// The rest comes once CRIU reads: through the pipe.
	p := f.page(0, "pages-1.img")
	for live := false; !live; time.Sleep(time.Millisecond) {
		p.mu.Lock()
		live = p.live != nil
		p.mu.Unlock()
	}
	for i := 1; i < len(parts); i++ {
		if err := f.Image(0, "pages-1.img", int64(parts[i]), bytes.NewReader(chunks[i])); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	if data := <-got; !bytes.Equal(data, image) {
		t.Fatalf("CRIU read %d bytes, not the %d-byte image", len(data), len(image))
	}
	// More than listed is refused.
	if err := f.Image(0, "pages-1.img", 1, bytes.NewReader([]byte{1})); err == nil {
		t.Fatal("a part beyond the listed size was taken")
	}
	// Other images are served from the staging directory.
	var core bytes.Buffer
	if err := f.send(0, "core-1.img", &core); err != nil || core.String() != "core" {
		t.Fatalf("core-1.img: %q, %v", core.String(), err)
	}
}

// TestFeederAbort: CRIU waiting for a page image is let go when the
// restore fails elsewhere.
func TestFeederAbort(t *testing.T) {
	sums := &archive.Checksums{Members: []archive.MemberChecksum{{Name: "nodes/0/criu/pages-1.img", Type: "file", Size: 10}}}
	f := newFeeder(t.TempDir(), sums)
	sent := make(chan error, 1)
	go func() { sent <- f.send(0, "pages-1.img", io.Discard) }()
	time.Sleep(10 * time.Millisecond)
	f.abort()
	if err := <-sent; err != errAborted {
		t.Fatalf("send after abort: %v", err)
	}
	if err := f.Image(0, "pages-1.img", 10, bytes.NewReader(make([]byte, 10))); err != errAborted {
		t.Fatalf("Image after abort: %v", err)
	}
}

// TestFeederInline: a stream written pages last, without a trailer ahead.
func TestFeederInline(t *testing.T) {
	stage := t.TempDir()
	os.MkdirAll(filepath.Join(stage, "0", "criu"), 0o700)
	f := newFeeder(stage, nil)
	defer f.close()
	if err := f.Image(0, "core-1.img", 4, bytes.NewReader([]byte("core"))); err != archive.ErrExtractImage {
		t.Fatalf("other image: %v, want ErrExtractImage", err)
	}
	select {
	case <-f.ready:
		t.Fatal("CRIU may start before the first page image")
	default:
	}
	image := bytes.Repeat([]byte("pg"), 3<<20)
	if err := f.Image(0, "pages-1.img", int64(len(image)), bytes.NewReader(image)); err != nil {
		t.Fatal(err)
	}
	<-f.ready
	var got bytes.Buffer
	if err := f.send(0, "pages-1.img", &got); err != nil || !bytes.Equal(got.Bytes(), image) {
		t.Fatalf("replayed %d bytes: %v", got.Len(), err)
	}
	if err := f.Image(0, "pages-1.img", 1, bytes.NewReader([]byte{1})); err == nil {
		t.Fatal("a page image twice was taken")
	}
	// CRIU asks for one the stream never brings: let go at its end.
	sent := make(chan error, 1)
	go func() { sent <- f.send(0, "pages-2.img", io.Discard) }()
	time.Sleep(10 * time.Millisecond)
	f.end()
	if err := <-sent; err == nil {
		t.Fatal("a page image that never came was served")
	}
}

// TestFeederPipeClosedEarly: a page image whose pipe CRIU closes before
// its end is not an error: the rest is read from the archive (and so
// still checked) but goes nowhere.
func TestFeederPipeClosedEarly(t *testing.T) {
	parts := []int{3 << 20, 2 << 20}
	sums := &archive.Checksums{}
	for _, n := range parts {
		sums.Members = append(sums.Members, archive.MemberChecksum{Name: "nodes/0/criu/pages-1.img", Type: "file", Size: int64(n)})
	}
	f := newFeeder(t.TempDir(), sums)
	defer f.close()
	r, w, _ := os.Pipe()
	r.Close()
	sent := make(chan error, 1)
	go func() {
		sent <- f.send(0, "pages-1.img", w)
		w.Close()
	}()
	p := f.page(0, "pages-1.img")
	for live := false; !live; time.Sleep(time.Millisecond) {
		p.mu.Lock()
		live = p.live != nil
		p.mu.Unlock()
	}
	for _, n := range parts {
		if err := f.Image(0, "pages-1.img", int64(n), bytes.NewReader(make([]byte, n))); err != nil {
			t.Fatalf("part of %d bytes: %v", n, err)
		}
	}
	select {
	case err := <-sent:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("send still waits")
	}
}
