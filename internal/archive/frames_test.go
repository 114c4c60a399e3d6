package archive

import (
	"bytes"
	"errors"
	"io"
	"math/rand"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// mixedStream is zstd as crtree and others write it: raw and RLE frames,
// encoder frames with and without checksum and content size, and a
// skippable frame.
func mixedStream(t *testing.T) ([]byte, []byte) {
	t.Helper()
	var out, want bytes.Buffer
	rnd := make([]byte, 300<<10)
	rand.New(rand.NewSource(3)).Read(rnd)
	writeRawFrame(&out, rnd)
	want.Write(rnd)
	writeZeroFrame(&out, 200<<10)
	want.Write(make([]byte, 200<<10))
	text := bytes.Repeat([]byte("compressible text "), 20000)
	for _, opts := range [][]zstd.EOption{
		{zstd.WithEncoderCRC(true)},
		{zstd.WithEncoderCRC(false), zstd.WithWindowSize(4 << 20)},
		{zstd.WithSingleSegment(true)},
	} {
		enc, err := zstd.NewWriter(nil, opts...)
		if err != nil {
			t.Fatal(err)
		}
		out.Write(enc.EncodeAll(text, nil))
		want.Write(text)
		// The streaming encoder: no content size, several blocks.
		w, _ := zstd.NewWriter(&out, opts...)
		w.Write(rnd[:100<<10])
		w.Write(text)
		w.Close()
		want.Write(rnd[:100<<10])
		want.Write(text)
	}
	// An RLE block of another byte than zero.
	out.Write(rawFrameHeader)
	h := uint32(1 | 1<<1 | 1000<<3) // last, RLE, 1000 bytes
	out.Write([]byte{byte(h), byte(h >> 8), byte(h >> 16), 7})
	want.Write(bytes.Repeat([]byte{7}, 1000))
	out.Write(Index{Meta: 1, MetaMember: 1, Sums: 2}.frame())
	writeRawFrame(&out, []byte("tail"))
	want.WriteString("tail")
	return out.Bytes(), want.Bytes()
}

func readAllFrames(data []byte) ([]byte, error) {
	fr := newFrameReader(bytes.NewReader(data))
	defer fr.Close()
	return io.ReadAll(fr)
}

func TestFrameReader(t *testing.T) {
	data, want := mixedStream(t)
	got, err := readAllFrames(data)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("decoded %d bytes, want %d (or content differs)", len(got), len(want))
	}
	// What klauspost's decoder reads, the frame reader reads the same.
	zr, _ := zstd.NewReader(bytes.NewReader(data))
	ref, err := io.ReadAll(zr)
	if err != nil || !bytes.Equal(ref, want) {
		t.Fatalf("reference decoder: %v", err)
	}
	// Cut anywhere inside a frame: an error, never a hang or short success.
	for cut := 1; cut < len(data); cut += 997 {
		got, err := readAllFrames(data[:cut])
		if err == nil && !bytes.Equal(got, want) {
			// A cut between frames is a shorter valid stream.
			if !bytes.HasPrefix(want, got) {
				t.Fatalf("cut at %d: wrong content", cut)
			}
			continue
		}
		if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && err.Error() == "" {
			t.Fatalf("cut at %d: %v", cut, err)
		}
	}
	// Garbage is not a frame.
	if _, err := readAllFrames(append(bytes.Clone(data), 1, 2, 3, 4, 5)); err == nil {
		t.Fatal("trailing garbage read without error")
	}
}
