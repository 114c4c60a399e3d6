package archive

import (
	"archive/tar"
	"fmt"
	"strings"
)

// version is what the archives of one format version carry beyond the
// members and their content digests, and so what a reader can check of
// them. It holds every difference between the versions a reader accepts:
// all else is read and checked alike, every rule against hostile
// archives included (member names, types and sizes, the once-only rule,
// the expansion bound, the manifest's validation, the images after the
// index, extraction inside the destination).
type version struct {
	number int
	// trailer is the version whose checksums.json this version writes:
	// versions that differ only in what members may be share a trailer.
	trailer int
	// headers: checksums.json has the SHA-256 of each member's tar
	// header ("header": mode, owner, times, link target, PAX records),
	// and its own tar header the SHA-256 of its content (CRTREE.sha256).
	// Without them, modes, owners and times are covered by nothing, nor
	// is checksums.json itself beyond being matched member by member.
	headers bool
	// listedIndex: checksums.json lists the index ("index") and no other
	// skippable frame is allowed. Without it, the stream may end with one
	// index that nothing covers: a restore checks what it reads through
	// it against checksums.json, and checksums.json against the archive.
	listedIndex bool
	// records: members may carry sparse maps and extended attributes
	// (PAX records). Without them, a member that has one is refused.
	records bool
	// overlay: the files of a node that runs on an image or a --rootfs
	// base may hold overlayfs's whiteouts (a member of type "whiteout", a
	// character device 0/0) and opaque directories (the extended
	// attribute trusted.overlay.opaque).
	overlay bool
	// pages: checksums.json may have a page table ("pages"), where
	// each piece of each page image starts (see checkPages).
	pages bool
	// unchecked says what the version's checksums do not cover of what
	// a restore restores, "" for nothing.
	unchecked string
}

// versions are the format versions a reader accepts. The writer writes
// FormatVersion only.
var versions = map[int]*version{
	1: {number: 1, trailer: 1, unchecked: "file modes, owners and times are not checksummed"},
	2: {number: 2, trailer: 2, headers: true, listedIndex: true, records: true},
	3: {number: 3, trailer: 2, headers: true, listedIndex: true, records: true, overlay: true},
	4: {number: 4, trailer: 2, headers: true, listedIndex: true, records: true, overlay: true, pages: true},
}

// Unchecked says what the checksums of an archive of m's format version
// do not cover of what a restore restores: "" for the current version,
// whose checksums cover every byte restored.
func (m *Manifest) Unchecked() string {
	if v := versions[m.Version]; v != nil {
		return v.unchecked
	}
	return ""
}

// trailerVersion is the version of a checksums.json read before the
// manifest (ReadTrailer), told by its tar header: only a version with
// header digests has the digest of its content there. ExtractMeta and
// the Reader refuse a trailer whose version is not the manifest's
// (version.trailer).
func trailerVersion(hdr *tar.Header) *version {
	if _, ok := hdr.PAXRecords[sumsDigestKey]; ok {
		return versions[FormatVersion]
	}
	return versions[1]
}

// decodeSums checks and parses checksums.json, whose tar header has the
// digest header, as version v has it.
func (v *version) decodeSums(header string, data []byte) (*Checksums, error) {
	if v.headers {
		if err := checkSums(header, data); err != nil {
			return nil, err
		}
	}
	c, err := decodeChecksums(data)
	if err != nil {
		return nil, corrupt("%v", err)
	}
	for _, m := range c.Members {
		if !v.headers && m.Header != "" {
			return nil, corrupt("%s of format version %d has header digests", SumsName, v.number)
		}
	}
	if !v.listedIndex && c.Index != nil {
		return nil, corrupt("%s of format version %d lists an index", SumsName, v.number)
	}
	if err := v.checkPages(c); err != nil {
		return nil, err
	}
	c.version = v.trailer
	return c, nil
}

// checkPages refuses a page table in a version without one, and checks
// one where it may be.
func (v *version) checkPages(c *Checksums) error {
	if c.Pages == nil {
		return nil
	}
	if !v.pages {
		return corrupt("%s of format version %d has a page table", SumsName, v.number)
	}
	if err := checkPages(c); err != nil {
		return corrupt("%v", err)
	}
	return nil
}

// headerMatches reports whether the header digest read matches the one
// listed (always, in a version without header digests).
func (v *version) headerMatches(listed, read string) bool {
	return !v.headers || listed == read
}

// checkRecords refuses a member's extended attributes other than those
// crtree archives, on anything but a file or directory, and a malformed
// sparse map or one on a CRIU image; in a version without them, any
// extended attribute or sparse map.
func (v *version) checkRecords(hdr *tar.Header) error {
	for k := range hdr.PAXRecords {
		name, xattr := strings.CutPrefix(k, xattrPrefix)
		switch {
		case !v.records && (xattr || k == sparseMapKey || k == sparseSizeKey):
			return fmt.Errorf("member %q: PAX record %q is not allowed in format version %d", hdr.Name, k, v.number)
		case xattr && name == opaqueXattr && v.overlay && hdr.Typeflag == tar.TypeDir:
			// checked against the node's spec by the Reader
		case xattr && (!archivedXattr(name) || hdr.Typeflag != tar.TypeReg && hdr.Typeflag != tar.TypeDir):
			return fmt.Errorf("member %q: extended attribute %q is not allowed", hdr.Name, name)
		}
	}
	spans, _, err := sparseSpans(hdr)
	if err == nil && spans != nil && isImage(hdr.Name) {
		err = fmt.Errorf("member %q: a CRIU image cannot be sparse", hdr.Name)
	}
	return err
}

// checkSkipped checks, at the end of the stream, the skippable frames f
// passed over: exactly the index listed, if the version lists it; else
// none, or one well-formed index, last.
func (v *version) checkSkipped(f *frameReader, listed *Index) error {
	if v.listedIndex {
		return f.checkSkipped(listed)
	}
	switch {
	case len(f.skipped) == 0:
		return nil
	case len(f.skipped) == 1 && f.lastSkipped && parseIndexFrame([]byte(f.skipped[0])) != nil:
		return nil
	}
	return corrupt("a skippable frame that is not an index at the end of the archive")
}
