package e2e

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"

	"github.com/rogpeppe/go-internal/testscript"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/crtree/crtree/internal/archive"
)

// locked ARCHIVE: CRIU's TCP lock of some node of ARCHIVE is in place (an
// nftables table; with !, none is). Other scripts' locks do not count.
func cmdLocked(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 1 {
		ts.Fatalf("usage: locked ARCHIVE")
	}
	out, err := exec.Command("nft", "list", "tables").Output()
	ts.Check(err)
	tables := lockTables(ts.MkAbs(args[0]))
	if len(tables) == 0 {
		ts.Fatalf("%s names no lock (no inventory image with a run ID)", args[0])
	}
	for _, table := range tables {
		if strings.Contains(string(out), "table inet "+table+"\n") != neg {
			continue
		}
		if neg {
			ts.Fatalf("%s is still locked (table inet %s)", args[0], table)
		}
		ts.Fatalf("%s is not locked (no table inet %s)", args[0], table)
	}
}

// liftLocks deletes the nftables tables with which CRIU locked the TCP
// connections of the archives in dir (a restore would have deleted them):
// a script that fails between dump and restore leaves none behind. Only
// those tables are touched; other tests may lock connections meanwhile.
func liftLocks(t logger, dir string) {
	out, err := exec.Command("nft", "list", "tables").Output()
	if err != nil {
		t.Log("teardown: nft list tables:", err)
		return
	}
	archives, _ := filepath.Glob(filepath.Join(dir, "*.crtree"))
	for _, a := range archives {
		for _, table := range lockTables(a) {
			if !strings.Contains(string(out), "table inet "+table+"\n") {
				continue
			}
			if err := deleteNftTable(table); err != nil {
				t.Log("teardown:", err)
			}
		}
	}
}

// lockTables returns the names of the nftables tables of CRIU's network
// lock for each node of an archive: "CRIU-" and the run ID of the node's
// dump (inventory.img, field dump_criu_run_id), cut as CRIU cuts it
// ("inet CRIU-<id>" in a 32-byte buffer, nftables_get_table in
// criu/netfilter.c).
func lockTables(archivePath string) []string {
	f, err := os.Open(archivePath)
	if err != nil {
		return nil
	}
	defer f.Close()
	r, err := archive.NewReader(f)
	if err != nil {
		return nil
	}
	defer r.Close()
	var tables []string
	for {
		hdr, body, err := r.Next()
		if err != nil {
			return tables
		}
		if path.Base(hdr.Name) != "inventory.img" {
			continue
		}
		data, _ := io.ReadAll(body)
		if id := dumpRunID(data); id != "" {
			name := "inet CRIU-" + id
			tables = append(tables, strings.TrimPrefix(name[:min(len(name), 31)], "inet "))
		}
	}
}

// dumpRunID reads dump_criu_run_id (field 13) from an inventory image:
// two magic numbers, then one length-prefixed InventoryEntry.
func dumpRunID(img []byte) string {
	if len(img) < 12 {
		return ""
	}
	n := int(binary.LittleEndian.Uint32(img[8:]))
	b := img[12:min(len(img), 12+n)]
	for len(b) > 0 {
		num, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			return ""
		}
		b = b[l:]
		if num == 13 && typ == protowire.BytesType {
			v, _ := protowire.ConsumeBytes(b)
			return string(v)
		}
		if l = protowire.ConsumeFieldValue(num, typ, b); l < 0 {
			return ""
		}
		b = b[l:]
	}
	return ""
}

// deleteNftTable deletes the inet table name with nft(8).
func deleteNftTable(name string) error {
	out, err := exec.Command("nft", "delete", "table", "inet", name).CombinedOutput()
	if err != nil {
		return fmt.Errorf("nft delete table inet %s: %v: %s", name, err, out)
	}
	return nil
}
