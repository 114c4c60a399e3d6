package criu

import (
	"errors"
	"fmt"
	"os/exec"

	gocriu "github.com/checkpoint-restore/go-criu/v7"
	"github.com/checkpoint-restore/go-criu/v7/rpc"
)

// MinVersion is the oldest CRIU crtree accepts without a warning, as
// go-criu encodes versions (major*10000 + minor*100 + sublevel). Older
// CRIU cannot dump TCP or UDP sockets on recent kernels.
const MinVersion = 40200

// ErrNotFound is returned when no criu binary can be found.
var ErrNotFound = errors.New("criu not found: install CRIU >= 4.2 (run `make deps`), or pass --criu PATH or set CRTREE_CRIU")

// Find returns the criu binary to use: path if set (from --criu or
// CRTREE_CRIU), else criu on PATH.
func Find(path string) (string, error) {
	if path == "" {
		path = "criu"
	}
	p, err := exec.LookPath(path)
	if err != nil {
		return "", fmt.Errorf("%w (%v)", ErrNotFound, err)
	}
	return p, nil
}

// Version returns CRIU's version, encoded as major*10000+minor*100+sub.
// It asks a `criu swrk` of its own (startSwrk), in a process group of its
// own like every CRIU crtree starts, so that a Ctrl-C meant for crtree
// does not kill it.
func Version(bin string) (int, error) {
	s, err := startSwrk(bin, swrkOptions{CgroupFD: -1})
	if err != nil {
		return 0, fmt.Errorf("criu version: %w", err)
	}
	resp, err := s.call(&rpc.CriuReq{Type: rpc.CriuReqType_VERSION.Enum()})
	s.close()
	if err != nil {
		return 0, fmt.Errorf("criu version: %w", err)
	}
	v := resp.GetVersion()
	if !resp.GetSuccess() || v == nil {
		return 0, fmt.Errorf("criu version: CRIU did not say")
	}
	return int(v.GetMajorNumber()*10000 + v.GetMinorNumber()*100 + v.GetSublevel()), nil
}

// FormatVersion turns an encoded version into "4.2.1".
func FormatVersion(v int) string {
	return fmt.Sprintf("%d.%d.%d", v/10000, v/100%100, v%100)
}

// Features reports which optional kernel features CRIU can use here.
type Features struct {
	// MemTrack is soft-dirty memory tracking, needed for pre-dump and
	// iterative migration.
	MemTrack bool
	// LazyPages is userfaultfd support for post-copy restore.
	LazyPages bool
}

// CheckFeatures asks CRIU which optional features work on this machine.
func CheckFeatures(bin string) (Features, error) {
	c := gocriu.MakeCriu()
	c.SetCriuPath(bin)
	t := true
	f, err := c.FeatureCheck(&rpc.CriuFeatures{MemTrack: &t, LazyPages: &t})
	if err != nil {
		return Features{}, fmt.Errorf("criu feature check: %w", err)
	}
	// The RPC's answer for memory tracking only says the kernel was built
	// with soft-dirty bits; whether tracking works (pre-dump accepts
	// --track-mem) is what `criu check --feature mem_dirty_track` says. On
	// machines where it is off, the RPC still says yes.
	memTrack := f.GetMemTrack() && exec.Command(bin, "check", "--feature", "mem_dirty_track").Run() == nil
	return Features{MemTrack: memTrack, LazyPages: f.GetLazyPages()}, nil
}
