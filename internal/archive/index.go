package archive

import (
	"archive/tar"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
)

// An archive written to a file ends with an index: a zstd skippable frame
// (which every zstd decoder ignores) giving where the CRIU images that a
// restore needs before the page images start, and where the checksums
// trailer starts. Both places begin a zstd frame and a tar header, so a
// reader that can seek reads them first and can hand CRIU the page images
// as they come off the disk, instead of waiting for the whole archive.

// Index is the end-of-archive index.
type Index struct {
	// Meta is the offset of the frame that starts the images written
	// after CRIU finished (every image except the pages), and MetaMember
	// that member's position in the checksums trailer.
	Meta       int64 `json:"meta"`
	MetaMember int64 `json:"metaMember"`
	// Sums is the offset of the frame that starts checksums.json.
	Sums int64 `json:"sums"`
}

// indexTag identifies crtree's skippable frame.
const indexTag = "crtree-index-v1\n"

// indexFrameSize is the whole frame: magic, size, tag and three offsets.
const indexFrameSize = 8 + len(indexTag) + 3*8

// skippableMagic is the first of zstd's skippable frame magic numbers.
const skippableMagic = 0x184D2A50

// ErrNoIndex means an archive has no index: it was written to a pipe, or
// by a crtree without one.
var ErrNoIndex = errors.New("archive has no index")

func (x Index) frame() []byte {
	b := make([]byte, 0, indexFrameSize)
	b = binary.LittleEndian.AppendUint32(b, skippableMagic)
	b = binary.LittleEndian.AppendUint32(b, uint32(indexFrameSize-8))
	b = append(b, indexTag...)
	b = binary.LittleEndian.AppendUint64(b, uint64(x.Meta))
	b = binary.LittleEndian.AppendUint64(b, uint64(x.MetaMember))
	b = binary.LittleEndian.AppendUint64(b, uint64(x.Sums))
	return b
}

// ReadIndex reads the index at the end of an archive of size bytes. It
// returns ErrNoIndex if there is none, and an ErrCorrupt error if the
// index points outside the archive.
func ReadIndex(ra io.ReaderAt, size int64) (*Index, error) {
	if size < int64(indexFrameSize) {
		return nil, ErrNoIndex
	}
	b := make([]byte, indexFrameSize)
	if _, err := ra.ReadAt(b, size-int64(indexFrameSize)); err != nil {
		return nil, fmt.Errorf("read index: %w", err)
	}
	x := parseIndexFrame(b)
	if x == nil {
		return nil, ErrNoIndex
	}
	end := size - int64(indexFrameSize)
	if x.Meta <= 0 || x.Meta > x.Sums || x.Sums >= end || x.MetaMember <= 0 || x.MetaMember > 1<<30 {
		return nil, corrupt("index points outside the archive")
	}
	return x, nil
}

// parseIndexFrame returns the index the frame b is, nil if b is not one.
func parseIndexFrame(b []byte) *Index {
	if len(b) != indexFrameSize || binary.LittleEndian.Uint32(b) != skippableMagic || int(binary.LittleEndian.Uint32(b[4:])) != indexFrameSize-8 || string(b[8:8+len(indexTag)]) != indexTag {
		return nil
	}
	v := b[8+len(indexTag):]
	return &Index{
		Meta:       int64(binary.LittleEndian.Uint64(v)),
		MetaMember: int64(binary.LittleEndian.Uint64(v[8:])),
		Sums:       int64(binary.LittleEndian.Uint64(v[16:])),
	}
}

// sectionReader decodes the tar stream that starts at off; in hashes its
// headers.
func sectionReader(ra io.ReaderAt, off, end int64) (*tar.Reader, *tarInput, *frameReader) {
	zr := newFrameReader(io.NewSectionReader(ra, off, end-off))
	in := &tarInput{r: zr, sum: newHeaderSum()}
	return tar.NewReader(in), in, zr
}

// ReadTrailer reads the checksums trailer the index points at, before the
// rest of the archive, in the format version its tar header shows
// (trailerVersion), which ExtractMeta holds to the manifest's. What it
// says is only trusted once a Reader has matched it against every member
// (Reader.Expect).
func ReadTrailer(ra io.ReaderAt, size int64, x *Index) (*Checksums, error) {
	tr, in, zr := sectionReader(ra, x.Sums, size-int64(indexFrameSize))
	defer zr.Close()
	in.headers = true
	hdr, err := tr.Next()
	in.headers = false
	if err != nil || hdr.Name != SumsName || hdr.Typeflag != tar.TypeReg {
		return nil, corrupt("the index does not point at %s", SumsName)
	}
	if hdr.Size > MaxSumsSize {
		return nil, corrupt("%s of %d bytes is larger than the %d allowed", SumsName, hdr.Size, MaxSumsSize)
	}
	data, err := io.ReadAll(io.LimitReader(tr, hdr.Size))
	if err != nil || int64(len(data)) != hdr.Size {
		return nil, corrupt("read %s: archive is truncated", SumsName)
	}
	v := trailerVersion(hdr)
	sums, err := v.decodeSums(in.sum.take(), data)
	if err != nil {
		return nil, err
	}
	if v.listedIndex && (sums.Index == nil || *sums.Index != *x) {
		return nil, corrupt("the index differs from the one %s lists", SumsName)
	}
	if x.MetaMember >= int64(len(sums.Members)) {
		return nil, corrupt("index points outside %s", SumsName)
	}
	return sums, nil
}

// IsPageImage reports whether a CRIU image file (or member) name is a
// page image, the one kind of image written in parts and read by CRIU
// after all others.
func IsPageImage(name string) bool {
	base := path.Base(name)
	return strings.HasPrefix(base, "pages-") && strings.HasSuffix(base, ".img")
}

// VerifyIndex checks the index at the end of an archive file as a
// restore uses it (ReadIndex, ReadTrailer, ExtractMeta), extracting
// nothing. An archive without index passes: Verify checks that its
// trailer lists none.
func VerifyIndex(ra io.ReaderAt, size int64, m *Manifest) error {
	x, err := ReadIndex(ra, size)
	if errors.Is(err, ErrNoIndex) {
		return nil
	}
	if err != nil {
		return err
	}
	sums, err := ReadTrailer(ra, size, x)
	if err != nil {
		return err
	}
	return ExtractMeta(ra, size, x, m, sums, nil)
}

// ExtractMeta extracts the CRIU images that follow the index's Meta
// offset, up to the first page image, into dst's image directories (or
// only checks them, if dst is nil). sums must be of the manifest's format
// version, and each image the member sums lists at its place, with the
// same header (in a version with header digests) and checksums; anything
// else is an ErrCorrupt error.
func ExtractMeta(ra io.ReaderAt, size int64, x *Index, m *Manifest, sums *Checksums, dst Destination) error {
	v := versions[m.Version]
	if v == nil || sums.version != v.trailer {
		return corrupt("the index points at a %s of format version %d, the manifest is of version %d", SumsName, sums.version, m.Version)
	}
	if err := v.checkPages(sums); err != nil {
		return err
	}
	tr, in, zr := sectionReader(ra, x.Meta, x.Sums)
	defer zr.Close()
	ex := &extractor{dst: dst, roots: map[string]*os.Root{}, limit: ExpansionLimit(m)}
	defer ex.close()
	for pos := x.MetaMember; ; pos++ {
		in.headers = true
		hdr, err := tr.Next()
		in.headers = false
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return corrupt("images after the index: %v", readErr(err))
		}
		digest := in.sum.take()
		if IsCarried(hdr.Name) {
			// The images the archive carries follow every node's.
			return nil
		}
		if err := checkMemberName(hdr.Name, len(m.Nodes)); err != nil {
			return corrupt("%v", err)
		}
		if err := v.checkRecords(hdr); err != nil {
			return corrupt("%v", err)
		}
		if isImage(hdr.Name) && IsPageImage(hdr.Name) {
			return nil
		}
		want, err := metaListed(v, sums, pos, hdr, digest)
		if err != nil {
			return err
		}
		h := &hashingReader{name: hdr.Name, r: tr, left: hdr.Size, size: hdr.Size, hash: true}
		if dst == nil {
			_, err = io.Copy(io.Discard, h)
		} else {
			err = ex.member(hdr, h)
		}
		if err != nil {
			return fmt.Errorf("extract %s: %w", hdr.Name, err)
		}
		h.wait()
		if h.left != 0 {
			return corrupt("member %q: archive is truncated", hdr.Name)
		}
		in.sum.endContent(hdr.Size)
		if !equalDigests(h.digests(), want.SHA256) {
			return corrupt("checksum mismatch for %q", hdr.Name)
		}
	}
}

// metaListed returns what the trailer sums lists at position pos for the
// member after the index whose header is hdr (of digest digest), which
// must be a CRIU image with that name, size and header.
func metaListed(v *version, sums *Checksums, pos int64, hdr *tar.Header, digest string) (MemberChecksum, error) {
	if pos >= int64(len(sums.Members)) {
		return MemberChecksum{}, corrupt("%s ends before the images after the index", SumsName)
	}
	want := sums.Members[pos]
	if !isImage(hdr.Name) || hdr.Typeflag != tar.TypeReg || hdr.Name != want.Name || want.Type != "file" || hdr.Size != want.Size {
		return MemberChecksum{}, corrupt("member %q after the index is not what %s lists", hdr.Name, SumsName)
	}
	if !v.headerMatches(want.Header, digest) {
		return MemberChecksum{}, corrupt("the tar header of %q differs from %s", hdr.Name, SumsName)
	}
	return want, nil
}

func equalDigests(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
