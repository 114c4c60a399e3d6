package checkpoint

import (
	"strconv"
	"time"
)

// Report is what a dump or restore did and how long each phase took; the
// text output and --json print the same struct.
type Report struct {
	// Path is the dumped node, or the top of the restored subtree.
	Path  string       `json:"path"`
	Nodes []NodeReport `json:"nodes"`
	// Frozen is how long the workload was stopped (dump only).
	Frozen Duration `json:"frozen,omitempty"`
	// Criu is the wall time of the CRIU phase (all nodes in parallel).
	Criu Duration `json:"criu"`
	// Pack is, for a dump, the time from starting the archive to its
	// commit (it overlaps Criu: images are streamed while CRIU writes
	// them); for a restore, the time spent reading, extracting and
	// verifying the archive (from a file it overlaps Criu too: CRIU reads
	// the page images as they come).
	Pack         Duration `json:"pack"`
	Total        Duration `json:"total"`
	ArchiveBytes int64    `json:"archiveBytes"`
	// ImageBytes and FileBytes are the uncompressed sizes.
	ImageBytes int64 `json:"imageBytes"`
	FileBytes  int64 `json:"fileBytes"`
	// CarriedBytes is the size of the container images' configs and
	// layers the archive carries (dump --with-image), uncompressed.
	CarriedBytes int64 `json:"carriedBytes,omitempty"`
	// Imported are the images a restore took from the archive into the
	// image store; ImportTime how long receiving and recording them took
	// (part of Pack).
	Imported   []Imported `json:"imported,omitempty"`
	ImportTime Duration   `json:"importTime,omitempty"`
	// Memory is, for a post-copy restore, the time from its start until
	// every node's memory had arrived (set by Transfer.Wait).
	Memory Duration `json:"memory,omitempty"`
	// Transfer, for a post-copy restore, is its memory still arriving.
	Transfer *MemoryTransfer `json:"-"`
}

// Imported is an image a restore imported: its ID, the name the archive
// gives it, and whether it got that name (not if another image of the
// state root has it, or the restore ran inside a node).
type Imported struct {
	ID    string `json:"id"`
	Name  string `json:"name,omitempty"`
	Named bool   `json:"named"`
}

// NodeReport is one node's part of a Report.
type NodeReport struct {
	Path    string   `json:"path"`
	Running bool     `json:"running"`
	Pid     int      `json:"pid,omitempty"`
	Criu    Duration `json:"criu"`
	Images  int64    `json:"imageBytes"`
	Files   int64    `json:"fileBytes"`
	// Warning is what the user should know of the restored node: it had
	// to take a new address, and sockets bound to its old one get no
	// traffic.
	Warning string `json:"warning,omitempty"`
}

// Duration is a time.Duration shown in JSON as seconds.
type Duration time.Duration

// MarshalJSON writes d as fractional seconds.
func (d Duration) MarshalJSON() ([]byte, error) {
	return []byte(fmtSeconds(time.Duration(d))), nil
}

func fmtSeconds(d time.Duration) string {
	return strconv.FormatFloat(d.Seconds(), 'f', 3, 64)
}

// Seconds returns d in seconds.
func (d Duration) Seconds() float64 { return time.Duration(d).Seconds() }

// Progress is reported while a dump or restore runs.
type Progress struct {
	Phase      string // "freeze", "criu", "pack", "extract", "restore"
	NodesDone  int
	NodesTotal int
	Bytes      int64
}
