package e2e

import (
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
)

// Bytes of an archive flipped one at a time (a spread sample: every byte
// of it is flipped by internal/archive's TestEveryByteFlipped through the
// same code): the real crtree either refuses the flipped archive both in
// inspect --verify and in restore, leaving nothing, or restores exactly
// the same files.
func TestFlippedBytesThroughCrtree(t *testing.T) {
	h := newHost(t)
	good, err := os.ReadFile("../testdata/archives/good-exited.crtree")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	want := restored(t, h, filepath.Join(dir, "good.crtree"), good, "base")
	if len(want) < 5 {
		t.Fatalf("the good archive restored too little: %v", want)
	}
	stride := max(1, len(good)/120)
	for pos := 0; pos < len(good); pos += stride {
		flipped := append([]byte(nil), good...)
		flipped[pos] ^= 0x01
		name := filepath.Join(dir, "flipped.crtree")
		if err := os.WriteFile(name, flipped, 0o600); err != nil {
			t.Fatal(err)
		}
		_, verr := h.run("inspect", "--verify", name)
		node := fmt.Sprintf("f%d", pos)
		_, rerr := h.run("restore", "--name", node, name)
		switch {
		case verr != nil && rerr != nil:
			if _, ok := h.ls()["/"+node]; ok {
				t.Errorf("byte %d: the refused restore left /%s", pos, node)
			}
		case verr == nil && rerr == nil:
			if got := tree(t, h, node); !equal(got, want) {
				t.Errorf("byte %d: accepted, and restored other files:\n%v\nwant\n%v", pos, got, want)
			}
			h.must("rm", "-r", "/"+node)
		default:
			t.Errorf("byte %d: inspect --verify and restore disagree: %v / %v", pos, verr, rerr)
			h.run("rm", "-r", "-f", "/"+node)
		}
	}
}

// restored writes data to name, restores it as node and returns its files.
func restored(t *testing.T, h *host, name string, data []byte, node string) []string {
	t.Helper()
	if err := os.WriteFile(name, data, 0o600); err != nil {
		t.Fatal(err)
	}
	h.must("restore", "--name", node, name)
	return tree(t, h, node)
}

// tree lists the files of the node called node: path, type, mode, owner,
// size, time (not a symlink's own), link target or content digest.
func tree(t *testing.T, h *host, node string) []string {
	t.Helper()
	root := filepath.Join(h.root, "nodes", h.ls()["/"+node].ID, "rootfs")
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		what := ""
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			what, _ = os.Readlink(p)
		case fi.Mode().IsRegular():
			data, _ := os.ReadFile(p)
			what = fmt.Sprintf("%x", sha256.Sum256(data))
		}
		rel, _ := filepath.Rel(root, p)
		mtime := fi.ModTime().Unix()
		if fi.Mode()&fs.ModeSymlink != 0 {
			mtime = 0 // a symlink's own time is not restored
		}
		out = append(out, fmt.Sprintf("%s %v %d:%d %d %d %s", rel, fi.Mode(), st.Uid, st.Gid, fi.Size(), mtime, what))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

func equal(a, b []string) bool { return strings.Join(a, "\n") == strings.Join(b, "\n") }
