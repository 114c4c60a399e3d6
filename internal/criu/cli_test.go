package criu

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"testing"
	"time"
)

// runAction runs a kill gate's script as CRIU would for action.
func runAction(t *testing.T, g *killGate, action string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, g.script)
	cmd.Env = append(os.Environ(), "CRTOOLS_SCRIPT_ACTION="+action)
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("the %s script still waits", action)
	}
	return err
}

func TestKillGate(t *testing.T) {
	refused := errors.New("archive failed")
	for _, tc := range []struct {
		name    string
		verdict error
		gone    bool // crtree's end of the answer goes away instead
	}{{"go", nil, false}, {"undo", refused, false}, {"crtree gone", nil, true}} {
		t.Run(tc.name, func(t *testing.T) {
			calls := 0
			self := make(chan *killGate, 1)
			g, err := openKillGate(t.TempDir(), func() error {
				calls++
				if g := <-self; tc.gone {
					g.answer[1].Close()
				}
				return tc.verdict
			})
			if err != nil {
				t.Fatal(err)
			}
			self <- g
			// Other actions pass at once.
			if err := runAction(t, g, "pre-dump"); err != nil {
				t.Fatalf("pre-dump: %v", err)
			}
			err = runAction(t, g, PostDump)
			if ok := tc.verdict == nil && !tc.gone; (err == nil) != ok {
				t.Fatalf("post-dump script: %v, want success %v", err, ok)
			}
			if held := g.close(); held != tc.verdict || calls != 1 {
				t.Fatalf("close = %v after %d calls", held, calls)
			}
		})
	}
}

// A CRIU that ends before post-dump (a failed dump) never asks.
func TestKillGateNotReached(t *testing.T) {
	g, err := openKillGate(t.TempDir(), func() error {
		t.Error("BeforeKill called")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if held := g.close(); held != nil {
		t.Fatal(held)
	}
}
