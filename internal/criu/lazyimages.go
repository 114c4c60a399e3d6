package criu

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"github.com/checkpoint-restore/go-criu/v7/crit"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/pagemap"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/pstree"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// A plain dump flags the pages its processes may run without as lazy
// (PE_LAZY, as well as PE_PRESENT: they are in the pages image too), by
// CRIU's own rule: private anonymous memory, not locked, not the vDSO,
// not the page under a thread's stack pointer. A restore with
// --lazy-pages reads only the other present pages from the pages image
// (at their offsets: the lazy ones may be a hole there) and leaves the
// lazy ones to its lazy-pages daemon, which asks its page server for
// them. IndexLazy finds where the lazy pages are in the pages images;
// ServeLazyPages is such a page server, serving them from there. (CRIU
// 4.2 records a pagemap entry's page count in nr_pages, field 5, which
// go-criu's pagemap_entry lacks: it is read from the unknown fields.)

// Pagemap entry flags (criu/include/pagemap.h).
const (
	pageParent  = 1 << 0
	pageLazy    = 1 << 1
	pagePresent = 1 << 2
)

const pageSize = 4096

// LazyIndex says where the lazy pages of a dump are: for each process
// (by its PID in the images), runs of pages in its pages image.
type LazyIndex struct {
	procs map[uint64]*lazyProc
}

// lazyProc is one process's lazy pages.
type lazyProc struct {
	src  string    // its pages image
	runs []lazyRun // by address
	// eager are its pages in the pages image that are not lazy: the ones
	// a restore with --lazy-pages reads from the image itself.
	eager []lazyRun
}

// lazyRun is nrPages pages at vaddr, at off in the pages image.
type lazyRun struct {
	vaddr, nrPages, off uint64
}

// length is the run's length in bytes.
func (r lazyRun) length() uint64 { return r.nrPages * pageSize }

// Pages is how many pages the index holds.
func (x *LazyIndex) Pages() uint64 {
	var n uint64
	x.Runs(func(_ string, _, length int64) { n += uint64(length) / pageSize })
	return n
}

// Runs calls f with each run of lazy pages: its pages image (a path in
// dir), offset and length in bytes.
func (x *LazyIndex) Runs(f func(image string, off, length int64)) {
	for _, p := range x.procs {
		for _, r := range p.runs {
			f(p.src, int64(r.off), int64(r.length()))
		}
	}
}

// Eager calls f with each run of pages that a restore reads from the
// pages images itself, the pages that are not lazy: its pages image (a
// path in dir), offset and length in bytes.
func (x *LazyIndex) Eager(f func(image string, off, length int64)) {
	for _, p := range x.procs {
		for _, r := range p.eager {
			f(p.src, int64(r.off), int64(r.length()))
		}
	}
}

// IndexLazy reads where the lazy pages of the dump in dir are. It
// refuses what it does not understand rather than serve a page from the
// wrong place: parent (pre-dump) pages, lazy pages not in the images
// (a post-copy dump's), fields of a pagemap entry it does not know,
// runs that overlap, a pages image of two processes.
func IndexLazy(dir string) (*LazyIndex, error) {
	procs, err := decodeEntries[*pstree.PstreeEntry](filepath.Join(dir, "pstree.img"), &pstree.PstreeEntry{})
	if err != nil {
		return nil, err
	}
	x := &LazyIndex{procs: map[uint64]*lazyProc{}}
	images := map[string]bool{}
	for _, p := range procs {
		pm := filepath.Join(dir, fmt.Sprintf("pagemap-%d.img", p.GetPid()))
		if _, err := os.Stat(pm); errors.Is(err, os.ErrNotExist) {
			continue // a zombie: CRIU dumps only its core
		}
		lp, err := indexProcess(dir, pm)
		if err != nil {
			return nil, fmt.Errorf("process %d: %w", p.GetPid(), err)
		}
		if images[lp.src] {
			return nil, fmt.Errorf("process %d: %s is another process's too", p.GetPid(), filepath.Base(lp.src))
		}
		images[lp.src] = true
		x.procs[uint64(p.GetPid())] = lp
	}
	return x, nil
}

// indexProcess reads the pagemap image pm of one process.
func indexProcess(dir, pm string) (*lazyProc, error) {
	img, err := decodeImage(pm, &pagemap.PagemapEntry{})
	if err != nil {
		return nil, err
	}
	if len(img.Entries) == 0 {
		return nil, fmt.Errorf("%s is empty", filepath.Base(pm))
	}
	head, ok := img.Entries[0].Message.(*pagemap.PagemapHead)
	if !ok {
		return nil, fmt.Errorf("%s has no head", filepath.Base(pm))
	}
	lp := &lazyProc{src: filepath.Join(dir, fmt.Sprintf("pages-%d.img", head.GetPagesId()))}
	var off uint64
	for _, ce := range img.Entries[1:] {
		e, ok := ce.Message.(*pagemap.PagemapEntry)
		if !ok {
			return nil, fmt.Errorf("%s: an entry of another type", filepath.Base(pm))
		}
		r, present, lazy, err := pagemapRun(e, off)
		if err != nil {
			return nil, fmt.Errorf("%s: entry at %#x: %w", filepath.Base(pm), e.GetVaddr(), err)
		}
		switch {
		case lazy:
			lp.runs = append(lp.runs, r)
		case present:
			lp.eager = append(lp.eager, r)
		}
		if present {
			if off += r.length(); off > maxImageSize {
				return nil, fmt.Errorf("%s: its pages would be %d bytes into the pages image", filepath.Base(pm), off)
			}
		}
	}
	sort.Slice(lp.runs, func(i, j int) bool { return lp.runs[i].vaddr < lp.runs[j].vaddr })
	for i := 1; i < len(lp.runs); i++ {
		if lp.runs[i-1].vaddr+lp.runs[i-1].length() > lp.runs[i].vaddr {
			return nil, fmt.Errorf("%s: lazy pages at %#x overlap", filepath.Base(pm), lp.runs[i].vaddr)
		}
	}
	return lp, nil
}

// maxImageSize bounds where a pagemap may say a process's pages are in
// its pages image (no machine has that much memory to dump).
const maxImageSize = 1 << 50

// pagemapRun reads one pagemap entry, whose pages, if present, are at
// off in the pages image: its run, whether its pages are in the pages
// image, and whether they are lazy.
func pagemapRun(e *pagemap.PagemapEntry, off uint64) (r lazyRun, present, lazy bool, err error) {
	n, err := pageCount(e)
	if err != nil {
		return r, false, false, err
	}
	// An entry without flags is present (CRIU's init_compat_pagemap_entry).
	flags := uint32(pagePresent)
	if e.Flags != nil {
		flags = e.GetFlags()
	}
	r = lazyRun{vaddr: e.GetVaddr(), nrPages: n, off: off}
	present, lazy = flags&pagePresent != 0, flags&pageLazy != 0
	switch {
	case flags&pageParent != 0 || e.GetInParent():
		return r, false, false, errors.New("pages in a parent dump (pre-dump) cannot be served")
	case n == 0 || n > 1<<36 || r.vaddr%pageSize != 0 || r.vaddr+r.length() < r.vaddr:
		return r, false, false, fmt.Errorf("%d pages: not a range of memory", n)
	case lazy && !present:
		return r, false, false, errors.New("lazy pages not in the images (a post-copy dump's)")
	}
	return r, present, lazy, nil
}

// pageCount is a pagemap entry's number of pages: nr_pages (field 5,
// unknown to go-criu; the last one, as protobuf decodes a repeated
// scalar) if set, else compat_nr_pages. Any other field go-criu does not
// know is refused: it might change where the pages are.
func pageCount(e *pagemap.PagemapEntry) (uint64, error) {
	n := uint64(e.GetNrPages())
	b := e.ProtoReflect().GetUnknown()
	for len(b) > 0 {
		num, typ, k := protowire.ConsumeTag(b)
		if k < 0 {
			return 0, errors.New("a damaged field")
		}
		b = b[k:]
		if num != 5 || typ != protowire.VarintType {
			return 0, fmt.Errorf("field %d, which crtree does not know", num)
		}
		v, k := protowire.ConsumeVarint(b)
		if k < 0 {
			return 0, errors.New("a damaged field")
		}
		b, n = b[k:], v
	}
	return n, nil
}

// decodeImage reads a CRIU image whose entries are of entry's type.
func decodeImage(path string, entry proto.Message) (*crit.CriuImage, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	img, err := crit.New(f, nil, "", false, false).Decode(entry)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Base(path), err)
	}
	return img, nil
}

// decodeEntries reads the entries of a CRIU image of T.
func decodeEntries[T proto.Message](path string, entry T) ([]T, error) {
	img, err := decodeImage(path, entry)
	if err != nil {
		return nil, err
	}
	var out []T
	for _, e := range img.Entries {
		m, ok := e.Message.(T)
		if !ok {
			return nil, fmt.Errorf("%s: an entry of another type", filepath.Base(path))
		}
		out = append(out, m)
	}
	return out, nil
}

// PageSource reads the pages images of a dump: len(p) bytes at off of
// the image at path (a path in the images directory).
type PageSource interface {
	ReadPages(path string, p []byte, off int64) error
}

// ImageFiles is the PageSource of a dump's own files.
type ImageFiles struct {
	files map[string]*os.File
}

// ReadPages reads from the file at path, kept open until Close.
func (s *ImageFiles) ReadPages(path string, p []byte, off int64) error {
	f := s.files[path]
	if f == nil {
		var err error
		if f, err = os.Open(path); err != nil {
			return err
		}
		if s.files == nil {
			s.files = map[string]*os.File{}
		}
		s.files[path] = f
	}
	if _, err := f.ReadAt(p, off); err != nil {
		if err == io.EOF {
			err = fmt.Errorf("%s ends before them", filepath.Base(path))
		}
		return err
	}
	return nil
}

// Close closes the files read.
func (s *ImageFiles) Close() {
	for _, f := range s.files {
		f.Close()
	}
}

// ServeLazyPages answers a lazy-pages daemon's page requests on conn
// (the upstream end of RestoreOptions.LazyPages) with the lazy pages of
// x, read from src, until the daemon's side asks to close, which it
// answers with success. It returns an error at a request it cannot
// answer (pages that are not lazy pages of x, more than
// maxRequestPages, pages src fails to read): the caller then closes
// conn, which fails the daemon.
func ServeLazyPages(conn io.ReadWriter, x *LazyIndex, src PageSource) error {
	req := make([]byte, PageRequestSize)
	buf := make([]byte, 1<<20)
	for {
		if _, err := io.ReadFull(conn, req); err != nil {
			return fmt.Errorf("page request: %w", err)
		}
		switch {
		case IsCloseRequest(req):
			_, err := conn.Write(make([]byte, 4))
			return err
		case binary.LittleEndian.Uint32(req)&psCmdMask != psIovGet:
			return fmt.Errorf("page request %#x: not a request for pages", binary.LittleEndian.Uint32(req))
		}
		n := binary.LittleEndian.Uint64(req[8:])
		vaddr := binary.LittleEndian.Uint64(req[16:])
		pid := x.pidOf(binary.LittleEndian.Uint64(req[24:]))
		parts, err := x.locate(pid, vaddr, n)
		if err != nil {
			return err
		}
		// The answer is the request's header, as CRIU's page server
		// makes it, then the pages.
		binary.LittleEndian.PutUint32(req, psIovAddF|pagePresent<<16)
		if _, err := conn.Write(req); err != nil {
			return err
		}
		if err := x.send(conn, pid, parts, buf, src); err != nil {
			return err
		}
	}
}

// The page server's answer to PS_IOV_GET, and the most pages a request
// may ask for (CRIU's daemon asks for at most 4 MiB at once).
const (
	psIovGet        = 7
	psIovAddF       = 6
	maxRequestPages = 1 << 14
)

// pidOf is the process a request's dst_id names: CRIU 4.2's lazy-pages
// daemon sends the PID itself; the page server protocol also knows it
// shifted by 8 bits above a type (1 for a process's pages).
func (x *LazyIndex) pidOf(dstID uint64) uint64 {
	if x.procs[dstID] == nil && dstID&0xff == 1 {
		return dstID >> 8
	}
	return dstID
}

// part is a piece of a request: length bytes at off in the pages image.
type part struct{ off, length uint64 }

// locate checks that the n pages of process pid from vaddr on are all
// lazy pages of x, and returns where they are.
func (x *LazyIndex) locate(pid, vaddr, n uint64) ([]part, error) {
	p := x.procs[pid]
	switch {
	case p == nil:
		return nil, fmt.Errorf("pages of process %d, which has no lazy pages", pid)
	case n == 0 || n > maxRequestPages || vaddr%pageSize != 0 || vaddr+n*pageSize < vaddr:
		return nil, fmt.Errorf("process %d: a request for %d pages at %#x", pid, n, vaddr)
	}
	var parts []part
	for at, end := vaddr, vaddr+n*pageSize; at < end; {
		i := sort.Search(len(p.runs), func(i int) bool { return p.runs[i].vaddr+p.runs[i].length() > at })
		if i == len(p.runs) || p.runs[i].vaddr > at {
			return nil, fmt.Errorf("process %d: page %#x is not a lazy page", pid, at)
		}
		r := p.runs[i]
		k := min(end-at, r.vaddr+r.length()-at)
		parts = append(parts, part{off: r.off + (at - r.vaddr), length: k})
		at += k
	}
	return parts, nil
}

// send writes the parts of process pid's pages image to w, read from
// src through buf.
func (x *LazyIndex) send(w io.Writer, pid uint64, parts []part, buf []byte, src PageSource) error {
	image := x.procs[pid].src
	for _, pt := range parts {
		for done := uint64(0); done < pt.length; {
			n := min(uint64(len(buf)), pt.length-done)
			err := src.ReadPages(image, buf[:n], int64(pt.off+done))
			if err == nil {
				_, err = w.Write(buf[:n])
			}
			if err != nil {
				return fmt.Errorf("send pages of process %d: %w", pid, err)
			}
			done += n
		}
	}
	return nil
}
