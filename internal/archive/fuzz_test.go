package archive

import (
	"bytes"
	"encoding/json"
	"io"
	"testing"
)

// FuzzManifest feeds the manifest decoder arbitrary JSON: it must never
// panic, and what it accepts must satisfy Validate's promises.
func FuzzManifest(f *testing.F) {
	good, _ := json.Marshal(&Manifest{Format: FormatName, Version: FormatVersion,
		Nodes: []Node{{Name: "a", Parent: -1, Spec: Spec{Cmd: []string{"x"}}}, {Name: "b", Path: "b", Parent: 0, Spec: Spec{Cmd: []string{"x"}}}}})
	f.Add(good)
	f.Add([]byte(`{"format":"crtree-archive","version":1,"nodes":[{"name":"a","parent":-1,"spec":{"cmd":["x"]}}],"members":[{"name":"nodes/0/files/../../x","type":"file"}]}`))
	f.Add([]byte(`{"format":"crtree-archive","version":2}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := decodeManifest(data)
		if err != nil {
			return
		}
		for i, n := range m.Nodes {
			if i > 0 && (n.Parent < 0 || n.Parent >= i) {
				t.Fatalf("accepted parent %d for node %d", n.Parent, i)
			}
		}
	})
}

// FuzzExtract feeds arbitrary bytes to the reader and extractor: they
// must never panic, and never write outside the destination.
func FuzzExtract(f *testing.F) {
	f.Add(makeArchive(f))
	f.Add([]byte("not an archive"))
	// Keep each run small: a fuzzed archive may claim large members, which
	// the limit refuses early instead of writing them out.
	metadataAllowance = 1 << 20
	defer func() { metadataAllowance = 160 << 20 }()
	f.Fuzz(func(t *testing.T, data []byte) {
		outside := t.TempDir()
		d := dirs{files: []string{t.TempDir(), t.TempDir()}, images: []string{t.TempDir(), t.TempDir()}}
		r, err := NewReader(bytes.NewReader(data))
		if err != nil {
			return
		}
		defer r.Close()
		Extract(r, d, nil)
		if entries, _ := readDir(outside); len(entries) != 0 {
			t.Fatalf("wrote outside the destination: %v", entries)
		}
	})
}

// FuzzFrames feeds the frame reader arbitrary bytes after a valid mix of
// frames: it must never panic or hang, and never decode more than the
// input's blocks can say.
func FuzzFrames(f *testing.F) {
	var raw bytes.Buffer
	writeRawFrame(&raw, bytes.Repeat([]byte{1, 2, 3}, 50000))
	writeZeroFrame(&raw, 300000)
	f.Add(raw.Bytes())
	f.Add(Index{Meta: 1, MetaMember: 1, Sums: 2}.frame())
	f.Add(append(bytes.Clone(rawFrameHeader), 0xff, 0xff, 0xff))
	f.Fuzz(func(t *testing.T, data []byte) {
		fr := newFrameReader(bytes.NewReader(data))
		defer fr.Close()
		// An RLE block is 4 bytes for up to 128 KiB; read at most 16 MiB.
		limit := min(int64(len(data))*(rawBlockMax/4+1)+1, 16<<20)
		n, _ := io.Copy(io.Discard, io.LimitReader(fr, limit+1))
		if n > limit && limit < 16<<20 {
			t.Fatalf("%d input bytes decoded into more than %d", len(data), limit)
		}
	})
}
