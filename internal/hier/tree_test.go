package hier

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestTreeAddLookup(t *testing.T) {
	tr := newTree()
	v1, err := tr.Add("", "vserver1")
	if err != nil {
		t.Fatal(err)
	}
	pi1, _ := tr.Add(v1.ID, "calculate_pi")
	v2, _ := tr.Add("", "vserver2")
	pi2, err := tr.Add(v2.ID, "calculate_pi")
	if err != nil {
		t.Fatalf("same name under another parent: %v", err)
	}
	if _, err := tr.Add(v1.ID, "calculate_pi"); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate name: err = %v, want ErrExists", err)
	}
	if _, err := tr.Add("", "bad name"); !errors.Is(err, ErrInvalidName) {
		t.Fatalf("bad name: err = %v", err)
	}
	for path, want := range map[string]*Node{"/vserver1/calculate_pi": pi1, "/vserver2/calculate_pi": pi2, "/vserver1": v1} {
		got, err := tr.Lookup(MustParse(path))
		if err != nil || got != want {
			t.Errorf("Lookup(%s) = %v, %v", path, got, err)
		}
		if tr.PathOf(got).String() != path {
			t.Errorf("PathOf = %s, want %s", tr.PathOf(got), path)
		}
	}
	if _, err := tr.Lookup(MustParse("/vserver3/x")); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing: err = %v", err)
	}
	if got := len(tr.Subtree(v1)); got != 2 {
		t.Errorf("Subtree(v1) has %d nodes", got)
	}
	if got := len(tr.Subtree(nil)); got != 4 {
		t.Errorf("Subtree(root) has %d nodes", got)
	}
	if err := tr.Remove(v1.ID); err == nil {
		t.Errorf("Remove of a node with children succeeded")
	}
}

func TestFreeUnnamed(t *testing.T) {
	tr := newTree()
	p, _ := tr.Add("", "p")
	for i, want := range []string{"unnamed1", "unnamed2", "unnamed3"} {
		name := tr.FreeUnnamed(p.ID)
		if name != want {
			t.Fatalf("step %d: FreeUnnamed = %s, want %s", i, name, want)
		}
		tr.Add(p.ID, name)
	}
	u2 := tr.Child(p.ID, "unnamed2")
	tr.Remove(u2.ID)
	if got := tr.FreeUnnamed(p.ID); got != "unnamed2" {
		t.Errorf("after removing unnamed2: FreeUnnamed = %s", got)
	}
	if got := tr.FreeUnnamed(""); got != "unnamed1" {
		t.Errorf("top level: %s", got)
	}
}

func TestStoreConcurrentUpdates(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := s.Update(func(tr *Tree) error {
				_, err := tr.Add("", tr.FreeUnnamed(""))
				return err
			})
			if err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	s.View(func(tr *Tree) error {
		if len(tr.Nodes) != 20 {
			t.Errorf("%d nodes after 20 concurrent adds", len(tr.Nodes))
		}
		seen := map[string]bool{}
		for _, n := range tr.Nodes {
			if seen[n.Name] {
				t.Errorf("name %s given twice", n.Name)
			}
			seen[n.Name] = true
		}
		return nil
	})
	// A failing update saves nothing.
	s.Update(func(tr *Tree) error { tr.Add("", "ghost"); return fmt.Errorf("fail") })
	s.View(func(tr *Tree) error {
		if tr.Child("", "ghost") != nil {
			t.Errorf("failed update was saved")
		}
		return nil
	})
}

func TestTryUpdate(t *testing.T) {
	s := &Store{Root: t.TempDir()}
	held, release := make(chan struct{}), make(chan struct{})
	go s.Update(func(*Tree) error {
		close(held)
		<-release
		return ErrUnchanged
	})
	<-held
	if err := s.TryUpdate(50*time.Millisecond, func(*Tree) error { return nil }); err != ErrBusy {
		t.Fatalf("TryUpdate while locked: %v, want ErrBusy", err)
	}
	close(release)
	if err := s.TryUpdate(time.Second, func(tr *Tree) error { return ErrUnchanged }); err != nil {
		t.Fatalf("TryUpdate once free: %v", err)
	}
}

// Under a node on an image, a child sees none of the host's files either:
// one without an image is refused, one on an image is not.
func TestIsolateFiles(t *testing.T) {
	tr := newTree()
	img, _ := tr.Add("", "img")
	img.Spec.Image = "sha256:00"
	for _, s := range []Spec{{}, {Rootfs: "/base"}} {
		spec := s
		if err := tr.Isolate(img.ID, &spec, false); !errors.Is(err, ErrIsolation) || !strings.Contains(err.Error(), "/img runs on an image and sees none of the host's files") {
			t.Errorf("%+v under an image node: %v", s, err)
		}
	}
	spec := Spec{Image: "sha256:11"}
	if err := tr.Isolate(img.ID, &spec, false); err != nil {
		t.Errorf("an image node under an image node: %v", err)
	}
}

// Under a bridge node a child gets a bridge network of its own unless it
// asks for none; the host's is refused; under a none node, bridge is
// refused; an unknown network is refused anywhere (it would otherwise
// count as the host's).
func TestIsolateNet(t *testing.T) {
	tr := newTree()
	br, _ := tr.Add("", "br")
	br.Spec.Net = NetBridge
	none, _ := tr.Add("", "none")
	none.Spec.Net = NetNone
	for _, tc := range []struct {
		parent   string
		net      string
		explicit bool
		want     string // the recorded net, or the error's text
	}{
		{br.ID, "", false, NetBridge},
		{br.ID, NetNone, false, NetNone},
		{br.ID, NetBridge, false, NetBridge},
		{br.ID, NetHost, false, "/br has no host network (--net bridge)"},
		{br.ID, "", true, "/br has no host network (--net bridge)"},
		{none.ID, NetBridge, false, "/none has no network (--net none)"},
		{none.ID, "", false, NetNone},
		{"", NetBridge, false, NetBridge},
		{"", "bogus", false, `unknown network "bogus"`},
		{br.ID, "bogus", true, `unknown network "bogus"`},
	} {
		spec := Spec{Net: tc.net}
		err := tr.Isolate(tc.parent, &spec, tc.explicit)
		switch {
		case err != nil && !strings.Contains(err.Error(), tc.want):
			t.Errorf("%+v: %v", tc, err)
		case err == nil && spec.Net != tc.want:
			t.Errorf("%+v: recorded %q", tc, spec.Net)
		}
	}
}
