package archive

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"
	"syscall"
)

// PieceSize is the unit of checksumming: every member has one SHA-256 per
// PieceSize bytes of content (at least one, for empty content). Pieces
// let large members be hashed on every core at once.
const PieceSize = 32 << 20

// Checksums is the trailer: the SHA-256 of each piece of each member, in
// archive order, the manifest first, and of each member's tar header.
type Checksums struct {
	PieceSize int64            `json:"pieceSize"`
	Members   []MemberChecksum `json:"members"`
	// Index is the index an archive written to a file ends with; nil
	// for an archive without one (and in format version 1, which does
	// not list it).
	Index *Index `json:"index,omitempty"`
	// Pages, from format version 4 on, says where each piece of each page
	// image member starts in the archive file, so that a restore can read
	// and verify the pieces it needs in any order (restore --lazy).
	Pages []PageMember `json:"pages,omitempty"`
	// version is the format version the trailer was read as
	// (version.decodeSums); 0 for one written.
	version int
}

// PageMember is where the pieces of one page image member start: Member
// is its position in Members, and Offsets[k] the offset in the archive of
// the zstd frame whose content starts with the member's piece k (its
// bytes from k*PieceSize on), one for each of its pieces.
type PageMember struct {
	Member  int     `json:"member"`
	Offsets []int64 `json:"offsets"`
}

// MemberChecksum is one member: its name, type ("file", "dir",
// "symlink", "hardlink" or "fifo"), content size and piece digests in hex,
// and the SHA-256 of its tar header blocks (Header): every byte of its
// metadata (mode, owner, times, link target, extended attributes, the
// sparse map); format version 1 has no Header. A CRIU image may be split
// into several members of the same name, whose contents are concatenated
// in archive order.
type MemberChecksum struct {
	Name   string   `json:"name"`
	Type   string   `json:"type"`
	Size   int64    `json:"size"`
	SHA256 []string `json:"sha256"`
	Header string   `json:"header,omitempty"`
}

// sameMember reports whether two records of a member agree in every field.
func sameMember(a, b *MemberChecksum) bool {
	return a.Name == b.Name && a.Type == b.Type && a.Size == b.Size && a.Header == b.Header && equalDigests(a.SHA256, b.SHA256)
}

// sumsDigestKey is the PAX record of checksums.json's own header that
// holds the SHA-256 of its content: no byte of the trailer can change
// unnoticed.
const sumsDigestKey = "CRTREE.sha256"

// sumsHeader is the tar header of checksums.json holding data.
func sumsHeader(data []byte) *tar.Header {
	sum := sha256.Sum256(data)
	return &tar.Header{Name: SumsName, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg, Format: tar.FormatPAX,
		PAXRecords: map[string]string{sumsDigestKey: hex.EncodeToString(sum[:])}}
}

// checkSums checks checksums.json: its header, whose digest is header,
// must be exactly the one crtree writes for data, the digest of data
// included. No byte of the trailer can change unnoticed.
func checkSums(header string, data []byte) error {
	out := &tarOutput{w: io.Discard, sum: newHeaderSum()}
	if err := tar.NewWriter(out).WriteHeader(sumsHeader(data)); err != nil || out.sum.take() != header {
		return corrupt("%s is damaged: its tar header does not match its content", SumsName)
	}
	return nil
}

// pieces returns how many pieces content of size bytes has.
func pieces(size int64) int {
	if size <= 0 {
		return 1
	}
	return int((size + PieceSize - 1) / PieceSize)
}

// digestBytes returns the piece digests of data.
func digestBytes(data []byte) []string {
	var out []string
	for i := 0; i < pieces(int64(len(data))); i++ {
		end := min(int64(len(data)), int64(i+1)*PieceSize)
		sum := sha256.Sum256(data[int64(i)*PieceSize : end])
		out = append(out, hex.EncodeToString(sum[:]))
	}
	return out
}

// hashPool computes piece digests of files on all cores, in the
// background, and records every member in the order it was added.
type hashPool struct {
	sem     chan struct{}
	wg      sync.WaitGroup
	mu      sync.Mutex
	members []*MemberChecksum
	err     error
}

func newHashPool() *hashPool {
	return &hashPool{sem: make(chan struct{}, runtime.NumCPU())}
}

func (p *hashPool) record(name, typ string, size int64, digests []string) {
	p.mu.Lock()
	p.members = append(p.members, &MemberChecksum{Name: name, Type: typ, Size: size, SHA256: digests})
	p.mu.Unlock()
}

// addBytes records a member whose hashed content is at hand.
func (p *hashPool) addBytes(name, typ string, size int64, data []byte) {
	p.record(name, typ, size, digestBytes(data))
}

// addFile hashes the spans of the file at path, one after the other,
// piece by piece, in parallel with whatever else runs. The file must not
// change meanwhile.
func (p *hashPool) addFile(name, path string, spans []Span) {
	p.addOpener(name, func() (*os.File, error) { return openDeep(path) }, spans)
}

// addFileIn is addFile for a file inside root (extraction): the file is
// opened through root, so no symlink can lead the hashing elsewhere.
// root must stay open until wait returns.
func (p *hashPool) addFileIn(name string, root *os.Root, rel string, spans []Span) {
	p.addOpener(name, func() (*os.File, error) { return openRegular(root, rel) }, spans)
}

// spansReader reads the spans of f one after the other; size is their
// total length.
func spansReader(f io.ReaderAt, spans []Span) (io.Reader, int64) {
	var rs []io.Reader
	var size int64
	for _, s := range spans {
		rs = append(rs, io.NewSectionReader(f, s.Off, max(s.Len, 0)))
		size += max(s.Len, 0)
	}
	return io.MultiReader(rs...), size
}

// cut returns the file ranges of bytes [off, off+n) of the spans' data.
func cut(spans []Span, off, n int64) []Span {
	var out []Span
	for _, s := range spans {
		if n <= 0 {
			break
		}
		if off >= s.Len {
			off -= s.Len
			continue
		}
		k := min(s.Len-off, n)
		out = append(out, Span{s.Off + off, k})
		off, n = 0, n-k
	}
	return out
}

// openRegular opens rel in root for reading, refusing anything but a
// regular file (O_NONBLOCK: opening a FIFO must not wait for a writer).
func openRegular(root *os.Root, rel string) (*os.File, error) {
	f, err := root.OpenFile(rel, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s is not a regular file", rel)
	}
	return f, nil
}

// addBuffer hashes data in the background, piece by piece, and calls
// done once it no longer reads it.
func (p *hashPool) addBuffer(name string, data []byte, done func()) {
	n := pieces(int64(len(data)))
	digests := make([]string, n)
	p.record(name, "file", int64(len(data)), digests)
	var left sync.WaitGroup
	for i := 0; i < n; i++ {
		piece := data[int64(i)*PieceSize : min(int64(len(data)), int64(i+1)*PieceSize)]
		p.wg.Add(1)
		left.Add(1)
		go func() {
			defer p.wg.Done()
			defer left.Done()
			p.sem <- struct{}{}
			defer func() { <-p.sem }()
			// An all-zero piece takes its digest from the cache.
			d := zeroDigest(int64(len(piece)))
			if !allZero(piece) {
				sum := sha256.Sum256(piece)
				d = hex.EncodeToString(sum[:])
			}
			p.mu.Lock()
			digests[i] = d
			p.mu.Unlock()
		}()
	}
	go func() {
		left.Wait()
		done()
	}()
}

func (p *hashPool) addOpener(name string, open func() (*os.File, error), spans []Span) {
	var size int64
	for _, s := range spans {
		size += s.Len
	}
	n := pieces(size)
	digests := make([]string, n)
	p.record(name, "file", size, digests)
	for i := 0; i < n; i++ {
		off := int64(i) * PieceSize
		length := min(PieceSize, size-off)
		piece := cut(spans, off, length)
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.sem <- struct{}{}
			defer func() { <-p.sem }()
			sum, err := hashRange(open, piece, length)
			p.mu.Lock()
			defer p.mu.Unlock()
			if err != nil && p.err == nil {
				p.err = fmt.Errorf("checksum %s: %w", name, err)
			}
			digests[i] = sum
		}()
	}
}

// hashRange hashes the ranges of a file, length bytes in all.
func hashRange(open func() (*os.File, error), ranges []Span, length int64) (string, error) {
	f, err := open()
	if err != nil {
		return "", err
	}
	defer f.Close()
	length = max(length, 0)
	r, _ := spansReader(f, ranges)
	h := sha256.New()
	buf := make([]byte, 1<<20)
	// Zero-filled memory is common in CRIU images and costs no hashing:
	// leading zeros are only counted, and hashed only if other bytes
	// follow; an all-zero piece takes its digest from a cache.
	var zeros, n int64
	for n < length {
		k, err := io.ReadFull(r, buf[:min(int64(len(buf)), length-n)])
		chunk := buf[:k]
		n += int64(k)
		switch {
		case zeros == n-int64(k) && allZero(chunk):
			zeros += int64(k)
		default:
			if zeros > 0 {
				writeZeros(h, zeros)
				zeros = -1 << 62 // never again: the piece is not all zero
			}
			h.Write(chunk)
		}
		if err != nil {
			if n < length {
				return "", fmt.Errorf("file changed size while being archived")
			}
			break
		}
	}
	if zeros == length {
		return zeroDigest(length), nil
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// writeZeros feeds n zero bytes to h.
func writeZeros(h io.Writer, n int64) {
	for n > 0 {
		k := min(n, int64(len(zeroChunk)))
		h.Write(zeroChunk[:k])
		n -= k
	}
}

var (
	zeroDigestsMu sync.Mutex
	zeroDigests   = map[int64]string{}
)

// zeroDigest returns the SHA-256 of n zero bytes, computed once per n.
func zeroDigest(n int64) string {
	zeroDigestsMu.Lock()
	defer zeroDigestsMu.Unlock()
	if d, ok := zeroDigests[n]; ok {
		return d
	}
	h := sha256.New()
	writeZeros(h, n)
	d := hex.EncodeToString(h.Sum(nil))
	zeroDigests[n] = d
	return d
}

// wait waits for every digest and returns the members in order.
func (p *hashPool) wait() (*Checksums, error) {
	p.wg.Wait()
	if p.err != nil {
		return nil, p.err
	}
	c := &Checksums{PieceSize: PieceSize}
	for _, m := range p.members {
		c.Members = append(c.Members, *m)
	}
	return c, nil
}

// decodeChecksums parses a trailer.
func decodeChecksums(data []byte) (*Checksums, error) {
	var c Checksums
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	err := dec.Decode(&c)
	if err == nil && dec.More() {
		err = fmt.Errorf("data after the JSON object")
	}
	if err != nil {
		return nil, fmt.Errorf("malformed %s: %v", SumsName, err)
	}
	if c.PieceSize != PieceSize {
		return nil, fmt.Errorf("%s: piece size %d, want %d", SumsName, c.PieceSize, PieceSize)
	}
	return &c, nil
}
