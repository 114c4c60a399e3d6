package archive

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"
)

// PieceSize is the unit of checksumming: every member has one SHA-256 per
// PieceSize bytes of content (at least one, for empty content). Pieces
// let large members be hashed on every core at once.
const PieceSize = 32 << 20

// Checksums is the trailer: the SHA-256 of each piece of each member, in
// archive order, the manifest first.
type Checksums struct {
	PieceSize int64            `json:"pieceSize"`
	Members   []MemberChecksum `json:"members"`
}

// MemberChecksum is one member's piece digests, in hex.
type MemberChecksum struct {
	Name   string   `json:"name"`
	SHA256 []string `json:"sha256"`
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
// background, and collects them in the order members were added.
type hashPool struct {
	sem   chan struct{}
	wg    sync.WaitGroup
	mu    sync.Mutex
	names []string
	sums  map[string][]string
	err   error
}

func newHashPool() *hashPool {
	return &hashPool{sem: make(chan struct{}, runtime.NumCPU()), sums: map[string][]string{}}
}

// addBytes records the digests of a member whose content is at hand.
func (p *hashPool) addBytes(name string, data []byte) {
	p.mu.Lock()
	p.names = append(p.names, name)
	p.sums[name] = digestBytes(data)
	p.mu.Unlock()
}

// addFile hashes size bytes of the file at path, piece by piece, in
// parallel with whatever else runs. The file must not change meanwhile.
func (p *hashPool) addFile(name, path string, size int64) {
	p.addOpener(name, func() (*os.File, error) { return os.Open(path) }, size)
}

// addFileIn is addFile for a file inside root (extraction): the file is
// opened through root, so no symlink can lead the hashing elsewhere.
// root must stay open until wait returns.
func (p *hashPool) addFileIn(name string, root *os.Root, rel string, size int64) {
	p.addOpener(name, func() (*os.File, error) { return root.Open(rel) }, size)
}

func (p *hashPool) addOpener(name string, open func() (*os.File, error), size int64) {
	n := pieces(size)
	digests := make([]string, n)
	p.mu.Lock()
	p.names = append(p.names, name)
	p.sums[name] = digests
	p.mu.Unlock()
	for i := 0; i < n; i++ {
		off := int64(i) * PieceSize
		length := min(PieceSize, size-off)
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.sem <- struct{}{}
			defer func() { <-p.sem }()
			sum, err := hashRange(open, off, length)
			p.mu.Lock()
			defer p.mu.Unlock()
			if err != nil && p.err == nil {
				p.err = fmt.Errorf("checksum %s: %w", name, err)
			}
			digests[i] = sum
		}()
	}
}

func hashRange(open func() (*os.File, error), off, length int64) (string, error) {
	f, err := open()
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.CopyBuffer(h, io.NewSectionReader(f, off, max(length, 0)), make([]byte, 1<<20))
	if err != nil {
		return "", err
	}
	if n != max(length, 0) {
		return "", fmt.Errorf("file changed size while being archived")
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// wait waits for every digest and returns them in order.
func (p *hashPool) wait() (*Checksums, error) {
	p.wg.Wait()
	if p.err != nil {
		return nil, p.err
	}
	c := &Checksums{PieceSize: PieceSize}
	for _, name := range p.names {
		c.Members = append(c.Members, MemberChecksum{Name: name, SHA256: p.sums[name]})
	}
	return c, nil
}

// decodeChecksums parses a trailer.
func decodeChecksums(data []byte) (*Checksums, error) {
	var c Checksums
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, fmt.Errorf("malformed %s: %v", SumsName, err)
	}
	if c.PieceSize != PieceSize {
		return nil, fmt.Errorf("%s: piece size %d, want %d", SumsName, c.PieceSize, PieceSize)
	}
	return &c, nil
}
