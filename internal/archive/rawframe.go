package archive

import (
	"bytes"
	"encoding/binary"
	"io"

	"github.com/klauspost/compress/zstd"
)

// Random memory pages do not compress, and compressing them anyway is the
// most expensive part of writing an archive. So the writer samples each
// chunk of file content and stores incompressible chunks as zstd frames
// of raw (stored) blocks: valid zstd that any decoder reads, at the cost
// of a copy. Compressible chunks go through the zstd encoder as usual.

// rawBlockMax is the size of a raw block, and the window the raw frames
// declare (128 KiB, the largest block zstd allows).
const rawBlockMax = 128 << 10

// sampleSize is how much of a chunk is test-compressed.
const sampleSize = 16 << 10

// incompressibleRatio: a sample that does not shrink below this fraction
// is stored raw.
const incompressibleRatio = 0.97

// rawFrameHeader is a zstd frame header without content size, checksum or
// dictionary, and a 128 KiB window (exponent 7, mantissa 0).
var rawFrameHeader = []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, 7 << 3}

// writeRawFrame writes p as one zstd frame of raw blocks.
func writeRawFrame(w io.Writer, p []byte) error {
	if _, err := w.Write(rawFrameHeader); err != nil {
		return err
	}
	var hdr [4]byte
	for {
		n := min(len(p), rawBlockMax)
		last := uint32(0)
		if n == len(p) {
			last = 1
		}
		// Block header: Last_Block (1 bit), Block_Type 0 = raw (2 bits),
		// Block_Size (21 bits), little-endian in 3 bytes.
		binary.LittleEndian.PutUint32(hdr[:], last|uint32(n)<<3)
		if _, err := w.Write(hdr[:3]); err != nil {
			return err
		}
		if _, err := w.Write(p[:n]); err != nil {
			return err
		}
		p = p[n:]
		if last == 1 {
			return nil
		}
	}
}

// writeZeroFrame writes n zero bytes as one zstd frame of RLE blocks
// (a block of one repeated byte costs 4 bytes): zero-filled memory pages
// take no compression work at all.
func writeZeroFrame(w io.Writer, n int) error {
	if _, err := w.Write(rawFrameHeader); err != nil {
		return err
	}
	var blk [4]byte
	for {
		size := min(n, rawBlockMax)
		last := uint32(0)
		if size == n {
			last = 1
		}
		// Block_Type 1 = RLE; the block's content is the one byte (0).
		binary.LittleEndian.PutUint32(blk[:], last|1<<1|uint32(size)<<3)
		blk[3] = 0
		if _, err := w.Write(blk[:4]); err != nil {
			return err
		}
		n -= size
		if last == 1 {
			return nil
		}
	}
}

// zeroChunk is compared against to find all-zero chunks.
var zeroChunk = make([]byte, 1<<20)

// allZero reports whether p holds only zero bytes.
func allZero(p []byte) bool {
	for len(p) > 0 {
		n := min(len(p), len(zeroChunk))
		if !bytes.Equal(p[:n], zeroChunk[:n]) {
			return false
		}
		p = p[n:]
	}
	return true
}

// sampler decides whether a chunk is worth compressing.
type sampler struct {
	enc *zstd.Encoder
	dst []byte
}

func newSampler() *sampler {
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1), zstd.WithLowerEncoderMem(true))
	return &sampler{enc: enc}
}

// incompressible samples the start and the middle of p.
func (s *sampler) incompressible(p []byte) bool {
	if len(p) < 2*sampleSize {
		return false
	}
	for _, off := range []int{0, len(p)/2 - sampleSize/2} {
		s.dst = s.enc.EncodeAll(p[off:off+sampleSize], s.dst[:0])
		if float64(len(s.dst)) < incompressibleRatio*sampleSize {
			return false
		}
	}
	return true
}

// switchWriter is what the tar writer writes to: the zstd encoder, or raw
// frames for incompressible content.
type switchWriter struct {
	out     io.Writer
	zw      *zstd.Encoder
	open    bool // zw has an unfinished frame on out
	sampler *sampler
	raw     bool
	zero    bool // the next writes are all zeros: RLE frames
}

func (s *switchWriter) Write(p []byte) (int, error) {
	if s.zero {
		if s.open {
			if err := s.zw.Close(); err != nil {
				return 0, err
			}
			s.open = false
		}
		if err := writeZeroFrame(s.out, len(p)); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	if !s.raw {
		if !s.open {
			s.zw.Reset(s.out)
			s.open = true
		}
		return s.zw.Write(p)
	}
	if s.open {
		if err := s.zw.Close(); err != nil {
			return 0, err
		}
		s.open = false
	}
	if err := writeRawFrame(s.out, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// close ends the last compressed frame, if one is open.
func (s *switchWriter) close() error {
	if s.open {
		s.open = false
		return s.zw.Close()
	}
	return nil
}
