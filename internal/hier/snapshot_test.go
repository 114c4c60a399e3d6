package hier

import (
	"fmt"
	"testing"
)

// Snapshots sees every change, however fast they come (each is a new file
// whose inode number may be an old one's), and parses nothing when nothing
// changed.
func TestSnapshotsSeeEveryChange(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	sn := NewSnapshots(s)
	t0, err := sn.Get()
	if err != nil || len(t0.Nodes) != 0 {
		t.Fatalf("empty state root: %v %v", t0, err)
	}
	for i := 0; i < 200; i++ {
		name := fmt.Sprintf("n%d", i)
		if err := s.Update(func(tr *Tree) error {
			_, err := tr.Add("", name)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		tr, err := sn.Get()
		if err != nil {
			t.Fatal(err)
		}
		if len(tr.Nodes) != i+1 || tr.Child("", name) == nil {
			t.Fatalf("after adding %s: %d nodes", name, len(tr.Nodes))
		}
		if again, _ := sn.Get(); again != tr {
			t.Fatal("parsed again with nothing changed")
		}
	}
}
