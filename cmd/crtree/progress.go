package main

import (
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/crtree/crtree/internal/checkpoint"
)

// progressPrinter draws one status line on a terminal, at most ten times
// a second, and clears it when done. A nil printer prints nothing.
type progressPrinter struct {
	mu    sync.Mutex
	w     io.Writer
	start time.Time
	last  time.Time
	drawn bool
}

func newProgressPrinter(w io.Writer) *progressPrinter {
	return &progressPrinter{w: w, start: time.Now()}
}

// Update is a checkpoint.Options.Progress callback.
func (p *progressPrinter) Update(ev checkpoint.Progress) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	if now.Sub(p.last) < 100*time.Millisecond {
		return
	}
	p.last = now
	el := now.Sub(p.start).Seconds()
	rate := ""
	if ev.Bytes > 0 && el > 0 {
		rate = fmt.Sprintf(", %s at %s/s", humanBytes(ev.Bytes), humanBytes(int64(float64(ev.Bytes)/el)))
	}
	fmt.Fprintf(p.w, "\r\033[K%s: %d/%d nodes%s (%.1fs)", ev.Phase, ev.NodesDone, ev.NodesTotal, rate, el)
	p.drawn = true
}

// Done clears the status line, if one was drawn.
func (p *progressPrinter) Done() {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.drawn {
		fmt.Fprint(p.w, "\r\033[K")
	}
}
