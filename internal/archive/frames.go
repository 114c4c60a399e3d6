package archive

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
)

// frameReader decompresses an archive's zstd stream. The frames crtree
// writes for memory pages (rawFrameHeader: raw and RLE blocks only) are
// decoded here, each raw block read straight into the caller's buffer;
// they are most of an archive, and going through a general decoder would
// copy every byte twice more. Any other frame (compressed content, or
// frames of another writer) is handed whole to klauspost's decoder.
// Skippable frames (the index) are skipped.
type frameReader struct {
	in  *bufio.Reader
	dec *zstd.Decoder
	// state of the current frame
	inFrame  bool
	own      bool  // one of crtree's raw frames
	left     int64 // bytes left of the current block (own frames)
	rle      bool
	rleByte  byte
	last     bool // the current block is the frame's last
	sliced   *frameSlicer
	hdrCheck [6]byte
	// skipped holds the content of the skippable frames passed over
	// (up to maxSkipped bytes each), and lastSkipped whether the last
	// frame was one.
	skipped     []string
	lastSkipped bool
	// steps counts the frames and raw blocks begun; past maxSteps (if
	// not 0) reading fails: a piece read alone (ReadPiece) has a known
	// bound, and a hostile archive could otherwise make it decode
	// millions of empty frames.
	steps, maxSteps int
}

// maxSkipped is how much of a skippable frame is kept: an index fits.
const maxSkipped = 64

// zstd frame magic numbers (RFC 8878).
const (
	zstdMagic       = 0xFD2FB528
	skippableMask   = 0xFFFFFFF0
	skippableMagic0 = 0x184D2A50
)

func newFrameReader(r io.Reader) *frameReader {
	return &frameReader{in: bufio.NewReaderSize(r, 8<<10)}
}

// Close releases the decoder.
func (f *frameReader) Close() {
	if f.dec != nil {
		f.dec.Close()
	}
}

func (f *frameReader) Read(p []byte) (int, error) {
	for {
		if f.inFrame {
			n, err := f.readFrame(p)
			if n > 0 || err != nil {
				return n, err
			}
			continue
		}
		if err := f.nextFrame(); err != nil {
			return 0, err
		}
	}
}

// nextFrame reads up to the start of the next frame with content,
// skipping skippable frames; io.EOF at the clean end of the stream.
func (f *frameReader) nextFrame() error {
	for {
		if err := f.step(); err != nil {
			return err
		}
		var m [4]byte
		if _, err := io.ReadFull(f.in, m[:]); err != nil {
			if err == io.EOF {
				return io.EOF
			}
			return io.ErrUnexpectedEOF
		}
		magic := binary.LittleEndian.Uint32(m[:])
		switch {
		case magic&skippableMask == skippableMagic0:
			var sz [4]byte
			if _, err := io.ReadFull(f.in, sz[:]); err != nil {
				return io.ErrUnexpectedEOF
			}
			n := int64(binary.LittleEndian.Uint32(sz[:]))
			keep := make([]byte, min(n, maxSkipped))
			if _, err := io.ReadFull(f.in, keep); err != nil {
				return io.ErrUnexpectedEOF
			}
			rest := n - int64(len(keep))
			if c, _ := io.CopyN(io.Discard, f.in, rest); c != rest {
				return io.ErrUnexpectedEOF
			}
			f.skipped = append(f.skipped, string(m[:])+string(sz[:])+string(keep))
			f.lastSkipped = true
			continue
		case magic != zstdMagic:
			return errors.New("not a zstd frame")
		}
		f.lastSkipped = false
		hdr := f.hdrCheck[:]
		copy(hdr, m[:])
		if _, err := io.ReadFull(f.in, hdr[4:]); err != nil {
			return io.ErrUnexpectedEOF
		}
		f.inFrame = true
		if bytes.Equal(hdr, rawFrameHeader) {
			f.own, f.left, f.last = true, 0, false
			return nil
		}
		// Someone else's frame: the general decoder reads exactly it.
		f.own = false
		f.sliced = newFrameSlicer(f.in, hdr)
		if f.maxSteps > 0 {
			f.sliced.step = f.step
		}
		if f.dec == nil {
			dec, err := zstd.NewReader(nil, decoderOptions()...)
			if err != nil {
				return err
			}
			f.dec = dec
		}
		return f.dec.Reset(f.sliced)
	}
}

// step counts a frame or block begun, against maxSteps.
func (f *frameReader) step() error {
	f.steps++
	if f.maxSteps > 0 && f.steps > f.maxSteps {
		return fmt.Errorf("more than %d zstd frames and blocks", f.maxSteps)
	}
	return nil
}

// checkSkipped checks, at the end of the stream, that the skippable
// frames passed over are exactly the index x at the end (none if x is
// nil): the index is covered by the trailer that lists it.
func (f *frameReader) checkSkipped(x *Index) error {
	switch {
	case x == nil && len(f.skipped) == 0:
		return nil
	case x == nil:
		return corrupt("a skippable frame that %s does not list", SumsName)
	case len(f.skipped) != 1 || !f.lastSkipped || f.skipped[0] != string(x.frame()):
		return corrupt("the index at the end of the archive differs from the one %s lists", SumsName)
	}
	return nil
}

// readFrame reads content of the current frame; 0, nil at its end.
func (f *frameReader) readFrame(p []byte) (int, error) {
	if !f.own {
		n, err := f.dec.Read(p)
		if err == io.EOF {
			if f.sliced.err != nil {
				return n, f.sliced.err
			}
			if !f.sliced.done {
				return n, io.ErrUnexpectedEOF
			}
			f.inFrame = false
			return n, nil
		}
		return n, err
	}
	for f.left == 0 {
		if f.last {
			f.inFrame = false
			return 0, nil
		}
		if err := f.step(); err != nil {
			return 0, err
		}
		var b [3]byte
		if _, err := io.ReadFull(f.in, b[:]); err != nil {
			return 0, io.ErrUnexpectedEOF
		}
		h := uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16
		f.last = h&1 == 1
		size := int64(h >> 3)
		if size > rawBlockMax {
			return 0, fmt.Errorf("zstd block of %d bytes", size)
		}
		switch (h >> 1) & 3 {
		case 0:
			f.rle = false
		case 1:
			c, err := f.in.ReadByte()
			if err != nil {
				return 0, io.ErrUnexpectedEOF
			}
			f.rle, f.rleByte = true, c
		default:
			return 0, errors.New("compressed block in a raw frame")
		}
		f.left = size
	}
	n := int(min(int64(len(p)), f.left))
	if f.rle {
		fill(p[:n], f.rleByte)
	} else {
		var err error
		n, err = f.in.Read(p[:n])
		if err == io.EOF || (err == nil && n == 0) {
			return n, io.ErrUnexpectedEOF
		}
		if err != nil {
			return n, err
		}
	}
	f.left -= int64(n)
	return n, nil
}

// frameSlicer passes one zstd frame through to the general decoder and
// then reports the end of input: it follows the frame's structure
// (header fields, block headers and sizes, checksum) as the bytes go by.
type frameSlicer struct {
	in       *bufio.Reader
	checksum bool
	pending  []byte // bytes already read, to pass on first
	stage    int
	left     int64 // bytes of the current stage still to pass
	last     bool
	done     bool
	err      error
	// step, if set, is called at each block header (frameReader.step).
	step func() error
}

const (
	sliceHeader = iota
	sliceBlockHeader
	sliceBody
	sliceChecksum
	sliceDone
)

// newFrameSlicer starts after the first 6 bytes of the frame, hdr.
func newFrameSlicer(in *bufio.Reader, hdr []byte) *frameSlicer {
	fhd := hdr[4]
	return &frameSlicer{in: in, checksum: fhd&4 != 0, pending: bytes.Clone(hdr), left: headerRest(fhd) - 1}
}

func (s *frameSlicer) Read(p []byte) (int, error) {
	for {
		if len(s.pending) > 0 {
			n := copy(p, s.pending)
			s.pending = s.pending[n:]
			return n, nil
		}
		switch s.stage {
		case sliceHeader, sliceBody, sliceChecksum:
			if s.left > 0 {
				return s.pass(p)
			}
			switch {
			case s.stage == sliceBody && s.last && s.checksum:
				s.stage, s.left = sliceChecksum, 4
			case s.stage == sliceBody && s.last, s.stage == sliceChecksum:
				s.stage = sliceDone
			default:
				s.stage = sliceBlockHeader
			}
		case sliceBlockHeader:
			if s.step != nil {
				if s.err = s.step(); s.err != nil {
					return 0, s.err
				}
			}
			var b [3]byte
			if _, err := io.ReadFull(s.in, b[:]); err != nil {
				s.err = io.ErrUnexpectedEOF
				return 0, s.err
			}
			h := uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16
			s.last = h&1 == 1
			switch (h >> 1) & 3 {
			case 1: // RLE: one byte
				s.left = 1
			case 3:
				s.err = errors.New("reserved zstd block type")
				return 0, s.err
			default:
				s.left = int64(h >> 3)
			}
			s.stage, s.pending = sliceBody, b[:]
		default:
			s.done = true
			return 0, io.EOF
		}
	}
}

// pass passes on up to s.left bytes of the input.
func (s *frameSlicer) pass(p []byte) (int, error) {
	n, err := s.in.Read(p[:min(int64(len(p)), s.left)])
	s.left -= int64(n)
	if n == 0 {
		if err == nil || err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		s.err = err
		return 0, err
	}
	return n, nil
}

// headerRest is how many frame header bytes follow the descriptor byte
// fhd: the window descriptor, the dictionary ID and the content size.
func headerRest(fhd byte) int64 {
	single := fhd&0x20 != 0
	n := int64(0)
	if !single {
		n++
	}
	n += []int64{0, 1, 2, 4}[fhd&3]
	switch fhd >> 6 {
	case 0:
		if single {
			n++
		}
	case 1:
		n += 2
	case 2:
		n += 4
	case 3:
		n += 8
	}
	return n
}

// fill sets every byte of p to c (zero pages are RLE blocks of 0).
func fill(p []byte, c byte) {
	if c == 0 {
		clear(p)
		return
	}
	if len(p) == 0 {
		return
	}
	p[0] = c
	for n := 1; n < len(p); n *= 2 {
		copy(p[n:], p[:n])
	}
}
