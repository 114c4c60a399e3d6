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
}

// lazyRun is nrPages pages at vaddr, at off in the pages image.
type lazyRun struct {
	vaddr, nrPages, off uint64
}

// Pages is how many pages the index holds.
func (x *LazyIndex) Pages() uint64 {
	var n uint64
	for _, p := range x.procs {
		for _, r := range p.runs {
			n += r.nrPages
		}
	}
	return n
}

// Runs calls f with each run of lazy pages: its pages image (a path in
// dir), offset and length in bytes.
func (x *LazyIndex) Runs(f func(image string, off, length int64)) {
	for _, p := range x.procs {
		for _, r := range p.runs {
			f(p.src, int64(r.off), int64(r.nrPages*pageSize))
		}
	}
}

// IndexLazy reads where the lazy pages of the dump in dir are.
func IndexLazy(dir string) (*LazyIndex, error) {
	procs, err := decodeEntries[*pstree.PstreeEntry](filepath.Join(dir, "pstree.img"), &pstree.PstreeEntry{})
	if err != nil {
		return nil, err
	}
	x := &LazyIndex{procs: map[uint64]*lazyProc{}}
	for _, p := range procs {
		lp, err := indexProcess(dir, p.GetPid())
		if err != nil {
			return nil, fmt.Errorf("process %d: %w", p.GetPid(), err)
		}
		x.procs[uint64(p.GetPid())] = lp
	}
	return x, nil
}

// indexProcess reads the pagemap of process pid.
func indexProcess(dir string, pid uint32) (*lazyProc, error) {
	pm, err := decodeImage(filepath.Join(dir, fmt.Sprintf("pagemap-%d.img", pid)), &pagemap.PagemapEntry{})
	if err != nil {
		return nil, err
	}
	if len(pm.Entries) == 0 {
		return nil, fmt.Errorf("pagemap-%d.img is empty", pid)
	}
	head, ok := pm.Entries[0].Message.(*pagemap.PagemapHead)
	if !ok {
		return nil, fmt.Errorf("pagemap-%d.img has no head", pid)
	}
	lp := &lazyProc{src: filepath.Join(dir, fmt.Sprintf("pages-%d.img", head.GetPagesId()))}
	var off uint64
	for _, ce := range pm.Entries[1:] {
		e, ok := ce.Message.(*pagemap.PagemapEntry)
		if !ok {
			return nil, fmt.Errorf("pagemap-%d.img: an entry of another type", pid)
		}
		flags, n := e.GetFlags(), pageCount(e)
		if flags&pageParent != 0 || e.GetInParent() {
			return nil, errors.New("pages in a parent dump (pre-dump) cannot be served")
		}
		if flags&pagePresent == 0 {
			continue
		}
		if flags&pageLazy != 0 {
			lp.runs = append(lp.runs, lazyRun{vaddr: e.GetVaddr(), nrPages: n, off: off})
		}
		off += n * pageSize
	}
	sort.Slice(lp.runs, func(i, j int) bool { return lp.runs[i].vaddr < lp.runs[j].vaddr })
	return lp, nil
}

// pageCount is a pagemap entry's number of pages: nr_pages (field 5,
// unknown to go-criu) if set, else compat_nr_pages.
func pageCount(e *pagemap.PagemapEntry) uint64 {
	b := e.ProtoReflect().GetUnknown()
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			break
		}
		b = b[n:]
		if num == 5 && typ == protowire.VarintType {
			if v, k := protowire.ConsumeVarint(b); k > 0 {
				return v
			}
			break
		}
		if k := protowire.ConsumeFieldValue(num, typ, b); k >= 0 {
			b = b[k:]
		} else {
			break
		}
	}
	return uint64(e.GetNrPages())
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

// ServeLazyPages answers a lazy-pages daemon's page requests on conn
// (the upstream end of RestoreOptions.LazyPages) from the lazy pages of
// x, until the daemon's side asks to close, which it answers with
// success. A request for pages that are not lazy pages of x fails the
// transfer.
func ServeLazyPages(conn io.ReadWriter, x *LazyIndex) error {
	srcs := map[string]*os.File{}
	defer func() {
		for _, f := range srcs {
			f.Close()
		}
	}()
	req := make([]byte, PageRequestSize)
	for {
		if _, err := io.ReadFull(conn, req); err != nil {
			return fmt.Errorf("page request: %w", err)
		}
		switch binary.LittleEndian.Uint32(req) & psCmdMask {
		case psIovClose, psIovForceClose:
			_, err := conn.Write(make([]byte, 4))
			return err
		case psIovGet:
		default:
			return fmt.Errorf("page request %#x: not a request for pages", binary.LittleEndian.Uint32(req))
		}
		n := binary.LittleEndian.Uint64(req[8:])
		vaddr := binary.LittleEndian.Uint64(req[16:])
		pid := x.pidOf(binary.LittleEndian.Uint64(req[24:]))
		data, err := x.read(pid, vaddr, n, srcs)
		if err != nil {
			return err
		}
		binary.LittleEndian.PutUint32(req, psIovGet)
		if _, err := conn.Write(append(req[:PageRequestSize:PageRequestSize], data...)); err != nil {
			return err
		}
	}
}

// pidOf is the process a request's dst_id names: CRIU 4.2's lazy-pages
// daemon sends the PID itself; the page server protocol also knows it
// shifted by 8 bits above a type (1 for a process's pages).
func (x *LazyIndex) pidOf(dstID uint64) uint64 {
	if x.procs[dstID] == nil && dstID&0xff == 1 {
		return dstID >> 8
	}
	return dstID
}

// psIovGet asks for pages (the only request of a lazy-pages daemon,
// besides the close).
const psIovGet = 7

// read returns n pages of process pid from vaddr on, which must all be
// lazy pages of x.
func (x *LazyIndex) read(pid, vaddr, n uint64, srcs map[string]*os.File) ([]byte, error) {
	p := x.procs[pid]
	if p == nil {
		return nil, fmt.Errorf("pages of process %d, which has no lazy pages", pid)
	}
	f := srcs[p.src]
	if f == nil {
		var err error
		if f, err = os.Open(p.src); err != nil {
			return nil, err
		}
		srcs[p.src] = f
	}
	data := make([]byte, n*pageSize)
	for got := uint64(0); got < n; {
		at := vaddr + got*pageSize
		i := sort.Search(len(p.runs), func(i int) bool { return p.runs[i].vaddr+p.runs[i].nrPages*pageSize > at })
		if i == len(p.runs) || p.runs[i].vaddr > at {
			return nil, fmt.Errorf("process %d: page %#x is not a lazy page", pid, at)
		}
		r := p.runs[i]
		k := min(n-got, r.nrPages-(at-r.vaddr)/pageSize)
		if _, err := f.ReadAt(data[got*pageSize:(got+k)*pageSize], int64(r.off+(at-r.vaddr))); err != nil {
			return nil, err
		}
		got += k
	}
	return data, nil
}
