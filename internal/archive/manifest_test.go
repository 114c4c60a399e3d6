package archive

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
)

// fullManifest sets every field of the manifest, its nodes and their
// specs: testdata/manifest-v2.json is what the crtree before the
// archive's own Spec and ExternalMount types (when Node.Spec was
// hier.Spec) wrote for it.
func fullManifest() *Manifest {
	created := time.Date(2026, 11, 29, 13, 16, 5, 123456789, time.UTC)
	return &Manifest{Format: FormatName, Version: 2, CrtreeVersion: "0.1.0-dev", CriuVersion: "4.2.1",
		Kernel: "6.18.44", Arch: "amd64", Created: created, PagesLast: true, TCPEstablished: true,
		Nodes: []Node{
			{Path: "", Name: "vserver1", Parent: -1, Running: true,
				Spec: Spec{Cmd: []string{"sh", "-c", "echo <&> \"x\""}, Env: []string{"K=V", "PATH=/bin"}, Cwd: "/srv",
					Hostname: "vs1", Binds: []Bind{{Source: "/data", Target: "/mnt/data", ReadOnly: true}, {Source: "/scratch", Target: "/scratch"}},
					Rootfs: "/images/debian", Net: "none", Init: true},
				Hostname: "vs1", Created: created, Procs: []Proc{{PID: 1, Cmd: "sleep 1e5"}, {PID: 7, Cmd: "sh"}},
				Memory: 1581056, ExtraMemory: 4096, Files: 240,
				ExternalMounts: []ExternalMount{{Mountpoint: "/usr", Key: "/usr", HostPath: "/usr"}, {Mountpoint: "/mnt/data", Key: "/mnt/data", HostPath: "/data"}}},
			{Path: "calculate_pi", Name: "calculate_pi", Parent: 0, Running: false, ExitCode: 3,
				Spec: Spec{Cmd: []string{"true"}}, Hostname: "calculate_pi", Created: created, Files: 0},
		}}
}

// The manifest's types write exactly the bytes format version 2 has, and
// read them back unchanged.
func TestManifestFormat(t *testing.T) {
	want, err := os.ReadFile("testdata/manifest-v2.json")
	if err != nil {
		t.Fatal(err)
	}
	got, err := encodeManifest(fullManifest())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("manifest written:\n%s\nformat version 2:\n%s", got, want)
	}
	m, err := decodeManifest(want)
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := encodeManifest(m); !bytes.Equal(again, want) {
		t.Errorf("manifest read and written again:\n%s\nformat version 2:\n%s", again, want)
	}
}

// The manifests of the known-good archives, of format versions 2 and 1,
// read and write back byte for byte.
func TestGoodArchiveManifests(t *testing.T) {
	files, _ := filepath.Glob("../../testdata/archives/good-*.crtree")
	if len(files) == 0 {
		t.Fatal("no known-good archive in testdata/archives")
	}
	files = append(files, "../../testdata/archives/format1-exited.crtree")
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			f, err := os.Open(file)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			zr, err := zstd.NewReader(f, decoderOptions()...)
			if err != nil {
				t.Fatal(err)
			}
			defer zr.Close()
			tr := tar.NewReader(zr)
			if hdr, err := tr.Next(); err != nil || hdr.Name != ManifestName {
				t.Fatalf("first member: %v %v", hdr, err)
			}
			var stored bytes.Buffer
			if _, err := stored.ReadFrom(tr); err != nil {
				t.Fatal(err)
			}
			m, err := decodeManifest(stored.Bytes())
			if err != nil {
				t.Fatal(err)
			}
			if len(m.Nodes[0].ExternalMounts) == 0 {
				t.Error("no external mounts read")
			}
			got, err := encodeManifest(m)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, stored.Bytes()) {
				t.Errorf("manifest read and written again:\n%s\nstored:\n%s", got, stored.Bytes())
			}
		})
	}
}

// A manifest's network fields: only the host's, none or bridge; ports
// and an address only on a bridge node, ports that are ports, an IPv4
// address, a unicast MAC.
func TestManifestNet(t *testing.T) {
	for name, tc := range map[string]struct {
		edit func(*Node)
		want string // "" for accepted
	}{
		"bridge": {func(n *Node) {
			n.Spec.Net = "bridge"
			n.Spec.Ports = []Port{{8080, 80, ""}}
			n.Addr = &Addr{"10.128.0.2", "02:42:ac:11:00:02"}
		}, ""},
		"unknown network": {func(n *Node) { n.Spec.Net = "host2" }, `unknown network "host2"`},
		"ports on host":   {func(n *Node) { n.Spec.Ports = []Port{{8080, 80, ""}} }, "no bridge network"},
		"port 0":          {func(n *Node) { n.Spec.Net = "bridge"; n.Spec.Ports = []Port{{0, 80, ""}} }, "bad published port"},
		"port 70000":      {func(n *Node) { n.Spec.Net = "bridge"; n.Spec.Ports = []Port{{8080, 70000, ""}} }, "bad published port"},
		"proto sctp":      {func(n *Node) { n.Spec.Net = "bridge"; n.Spec.Ports = []Port{{8080, 80, "sctp"}} }, "bad published port"},
		"IPv6 address":    {func(n *Node) { n.Spec.Net = "bridge"; n.Addr = &Addr{"fe80::1", ""} }, "not an IPv4 address"},
		"multicast MAC":   {func(n *Node) { n.Spec.Net = "bridge"; n.Addr = &Addr{"10.128.0.2", "01:00:5e:00:00:01"} }, "not a unicast Ethernet address"},
		"bad MAC":         {func(n *Node) { n.Spec.Net = "bridge"; n.Addr = &Addr{"10.128.0.2", "zz"} }, "not a unicast Ethernet address"},
	} {
		m := oneNode()
		m.Version = 3
		tc.edit(&m.Nodes[0])
		err := m.Validate()
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: %v, want %q", name, err, tc.want)
		}
	}
}
