package checkpoint

import (
	"bytes"
	"encoding/json"
	"os"
	"reflect"
	"testing"
	"time"

	"github.com/crtree/crtree/internal/archive"
	"github.com/crtree/crtree/internal/criu"
	"github.com/crtree/crtree/internal/hier"
	"github.com/crtree/crtree/internal/node"
)

// fullSpec sets every field of hier.Spec (TestArchiveSpec checks that it
// does).
func fullSpec() hier.Spec {
	return hier.Spec{Cmd: []string{"sh", "-c", "echo <&> \"x\""}, Env: []string{"K=V", "PATH=/bin"}, Cwd: "/srv",
		Hostname: "pi", Binds: []hier.Bind{{Source: "/data", Target: "/mnt/data", ReadOnly: true}, {Source: "/scratch", Target: "/scratch"}},
		Rootfs: "/images/debian", Image: "sha256:0123", ImageName: "localhost/py", User: "1000:100", Net: "none", Ports: []hier.Port{{Host: 8080, Node: 80}, {Host: 53, Node: 5353, Proto: "udp"}}, Init: true}
}

// specV3 is the JSON of fullSpec in a format version 3 manifest: as the
// crtree before archive.Spec (which wrote hier.Spec itself) wrote format
// version 2, with image, imageName and user, which version 3 added.
const specV3 = `{"cmd":["sh","-c","echo \u003c\u0026\u003e \"x\""],"env":["K=V","PATH=/bin"],"cwd":"/srv","hostname":"pi","binds":[{"source":"/data","target":"/mnt/data","readOnly":true},{"source":"/scratch","target":"/scratch"}],"rootfs":"/images/debian","image":"sha256:0123","imageName":"localhost/py","user":"1000:100","net":"none","ports":[{"host":8080,"node":80},{"host":53,"node":5353,"proto":"udp"}],"init":true}`

// A spec goes into an archive as format version 3 has it, and comes back
// whole.
func TestArchiveSpec(t *testing.T) {
	s := fullSpec()
	v := reflect.ValueOf(s)
	for i := 0; i < v.NumField(); i++ {
		if v.Field(i).IsZero() {
			t.Errorf("fullSpec leaves hier.Spec.%s unset: set it, and check that the archive carries it", v.Type().Field(i).Name)
		}
	}
	for i := 0; i < reflect.TypeFor[hier.Bind]().NumField(); i++ {
		set := false
		for _, b := range s.Binds {
			set = set || !reflect.ValueOf(b).Field(i).IsZero()
		}
		if !set {
			t.Errorf("fullSpec leaves hier.Bind.%s unset in every bind", reflect.TypeFor[hier.Bind]().Field(i).Name)
		}
	}
	got, err := json.Marshal(archiveSpec(s))
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != specV3 {
		t.Errorf("archived spec:\n%s\nformat version 3:\n%s", got, specV3)
	}
	if back := hierSpec(archiveSpec(s)); !reflect.DeepEqual(back, s) {
		t.Errorf("spec read back from the archive:\n%+v\nwant\n%+v", back, s)
	}
}

// archive.Spec knows every field of hier.Spec (and archive.Bind of
// hier.Bind): a field added to a node's spec must be added to the archive
// (or left out of it) on purpose.
func TestArchiveSpecFields(t *testing.T) {
	sameFields(t, reflect.TypeFor[hier.Spec](), reflect.TypeFor[archive.Spec]())
}

func sameFields(t *testing.T, h, a reflect.Type) {
	t.Helper()
	names := func(typ reflect.Type) map[string]reflect.Type {
		out := map[string]reflect.Type{}
		for i := 0; i < typ.NumField(); i++ {
			out[typ.Field(i).Name] = typ.Field(i).Type
		}
		return out
	}
	hf, af := names(h), names(a)
	for name, ht := range hf {
		at, ok := af[name]
		switch {
		case !ok:
			t.Errorf("%s.%s is not in %s: add it there (with the JSON name it is to have in archives), to archiveSpec and hierSpec, and to docs/ARCHIVE.md", h, name, a)
		case ht.Kind() != at.Kind():
			t.Errorf("%s.%s is a %s, %s.%s a %s", h, name, ht, a, name, at)
		case ht.Kind() == reflect.Slice && ht.Elem().Kind() == reflect.Struct:
			sameFields(t, ht.Elem(), at.Elem())
		case ht.Kind() == reflect.Slice && ht.Elem().Kind() != at.Elem().Kind():
			t.Errorf("%s.%s is a %s, %s.%s a %s", h, name, ht, a, name, at)
		}
	}
	for name := range af {
		if _, ok := hf[name]; !ok {
			t.Errorf("%s.%s is not in %s", a, name, h)
		}
	}
}

// The manifest node of a dumped node is byte for byte what format version
// 2 has (testdata/manifest-node-v2.json, written by the crtree before
// archive.Spec and archive.ExternalMount).
func TestManifestNodeFormat(t *testing.T) {
	want, err := os.ReadFile("testdata/manifest-node-v2.json")
	if err != nil {
		t.Fatal(err)
	}
	// A node of format version 2's time: nothing that version 3 added.
	spec := fullSpec()
	spec.Image, spec.ImageName, spec.User, spec.Ports = "", "", "", nil
	m := &dumpNode{
		n:   hier.Node{ID: "n7", Name: "calculate_pi", Created: time.Date(2026, 11, 29, 13, 16, 5, 123456789, time.UTC), Spec: spec},
		rel: "calculate_pi", parent: 0,
		status: node.Status{State: hier.Exited, ExitCode: 3},
		mounts: []criu.ExternalMount{{Mountpoint: "/usr", Key: "/usr", HostPath: "/usr"}, {Mountpoint: "/mnt/data", Key: "/mnt/data", HostPath: "/data"}},
		report: NodeReport{Files: 240},
	}
	got, err := json.MarshalIndent(manifestNode(m), "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("manifest node:\n%s\nformat version 2:\n%s", got, want)
	}
}

// The archive's rule for node names is crtree's: an archive holds the
// nodes crtree can have, and restores only those.
func TestArchiveNameRule(t *testing.T) {
	long := string(bytes.Repeat([]byte("a"), 64))
	for _, name := range []string{"a", "0", "vserver1", "calculate_pi", "a.b-c_d", "A9", long,
		"", long + "a", ".a", "-a", "_a", "a b", "a/b", "..", ".", "a\x00", "é", "a:b", "a*"} {
		m := &archive.Manifest{Format: archive.FormatName, Version: archive.FormatVersion,
			Nodes: []archive.Node{{Name: name, Parent: -1, Spec: archive.Spec{Cmd: []string{"x"}}}}}
		archiveErr, hierErr := m.Validate(), hier.ValidateName(name)
		if (archiveErr == nil) != (hierErr == nil) {
			t.Errorf("name %q: archive says %v, hier says %v", name, archiveErr, hierErr)
		}
	}
}
