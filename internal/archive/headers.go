package archive

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"hash"
	"io"
)

// The checksums cover every byte of the tar stream up to checksums.json:
// member content by its piece digests, and everything else (the tar
// header blocks of a member, with its PAX records, GNU long names and
// their padding) by the member's header digest, the SHA-256 of the bytes
// between the end of the previous member's padding and the start of the
// member's content. The zero padding that ends each member's content is
// checked to be zero.

// padding returns how many zero bytes follow content of size bytes in a
// tar stream.
func padding(size int64) int64 { return -size & 511 }

// errPadding is the damage of non-zero padding.
var errPadding = errors.New("tar padding is not zero")

// headerSum hashes the header bytes of one member at a time, skipping
// the padding of the member before.
type headerSum struct {
	h   hash.Hash
	pad int64 // padding still to pass before the header
}

func newHeaderSum() *headerSum { return &headerSum{h: sha256.New()} }

// feed takes bytes read or written outside member content; it returns
// errPadding if padding bytes are not zero.
func (s *headerSum) feed(b []byte) error {
	if s.pad > 0 {
		k := min(int64(len(b)), s.pad)
		s.pad -= k
		if !allZero(b[:k]) {
			return errPadding
		}
		b = b[k:]
	}
	s.h.Write(b)
	return nil
}

// take returns the digest of the header fed since the last take.
func (s *headerSum) take() string {
	d := hex.EncodeToString(s.h.Sum(nil))
	s.h.Reset()
	return d
}

// endContent says that content of size bytes ended: its padding comes
// before the next header.
func (s *headerSum) endContent(size int64) { s.pad = padding(size) }

// tarOutput is what a tar.Writer writes to: it hashes every byte written
// outside member content (content says when content is written).
type tarOutput struct {
	w       io.Writer
	sum     *headerSum
	content bool
}

func (t *tarOutput) Write(p []byte) (int, error) {
	if !t.content {
		t.sum.feed(p)
	}
	return t.w.Write(p)
}

// tarInput is what a tar.Reader reads from: while headers are read
// (headers is set), it checks the padding before them and hashes them.
type tarInput struct {
	r       io.Reader
	sum     *headerSum
	headers bool
}

func (t *tarInput) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if t.headers && n > 0 {
		if ferr := t.sum.feed(p[:n]); ferr != nil {
			return n, ferr
		}
	}
	return n, err
}
