package archive

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
)

// TestHashRangeZeros: the zero-skipping hash gives plain SHA-256 digests.
func TestHashRangeZeros(t *testing.T) {
	mib := 1 << 20
	data := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	zeros := make([]byte, 3*mib+17)
	ones := bytes.Repeat([]byte{1}, mib+5)
	for name, content := range map[string][]byte{
		"all zero":          zeros,
		"zeros then data":   data(zeros, ones),
		"data then zeros":   data(ones, zeros),
		"zeros data zeros":  data(zeros, ones, zeros),
		"empty":             {},
		"one zero byte":     {0},
		"less than a chunk": make([]byte, 1000),
	} {
		path := filepath.Join(t.TempDir(), "f")
		os.WriteFile(path, content, 0o600)
		open := func() (*os.File, error) { return os.Open(path) }
		got, err := hashRange(open, []Span{{0, int64(len(content))}}, int64(len(content)))
		sum := sha256.Sum256(content)
		if err != nil || got != hex.EncodeToString(sum[:]) {
			t.Errorf("%s: hashRange = %s, %v; want %x", name, got, err, sum)
		}
		if len(content) > 10 {
			got, _ := hashRange(open, []Span{{5, int64(len(content) - 10)}}, int64(len(content)-10))
			sum := sha256.Sum256(content[5 : len(content)-5])
			if got != hex.EncodeToString(sum[:]) {
				t.Errorf("%s: inner range digest wrong", name)
			}
			// Two ranges, hashed as one stream (a sparse file's data).
			got, _ = hashRange(open, []Span{{1, 3}, {8, 2}}, 5)
			sum = sha256.Sum256(append(bytes.Clone(content[1:4]), content[8:10]...))
			if got != hex.EncodeToString(sum[:]) {
				t.Errorf("%s: two ranges digest wrong", name)
			}
		}
	}
}
