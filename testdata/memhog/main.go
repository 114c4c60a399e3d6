// Command memhog is the benchmark workload: it holds N MiB of memory,
// random (incompressible) or zero-filled but touched, reports "ready" and
// sleeps until killed; on SIGUSR1 it checks its memory is unchanged (the
// end-to-end tests use it after restores). Built static (CGO_ENABLED=0),
// it runs in any node.
//
//	memhog -mib 1024 -kind random
//	memhog -mib 2048 -touch-and-exit   # fault in and free memory, then exit
//	memhog -mib 1024 -tick 10ms        # also print t=UNIXNANO every 10 ms
//	memhog -mib 1024 -scan 100ms       # walk the memory, print its speed every 100 ms
//
// With -tick, the largest gap between two t= lines is how long the
// workload stood still (a migration's downtime, from its own view). With
// -scan, one goroutine reads a word of every page, over and over, and
// prints scan=UNIXNANO,PAGES: how many pages it read since the line
// before (the workload's speed, while its pages arrive after a post-copy
// migration, say).
package main

import (
	"crypto/sha256"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	mib := flag.Int("mib", 64, "MiB of memory to hold")
	kind := flag.String("kind", "random", "random or zero")
	touchExit := flag.Bool("touch-and-exit", false, "touch the memory once and exit (warms the host's free memory)")
	tick := flag.Duration("tick", 0, "print t=UNIXNANO this often once ready (0: never)")
	scanEvery := flag.Duration("scan", 0, "walk the memory once ready, printing scan=UNIXNANO,PAGES this often (0: never)")
	flag.Parse()
	debug.SetGCPercent(-1)
	buf := make([]byte, *mib<<20)
	switch {
	case *touchExit:
		for i := 0; i < len(buf); i += 4096 {
			buf[i] = 1
		}
		return
	case *kind == "random":
		// xorshift64*: fast, incompressible to zstd.
		x := uint64(time.Now().UnixNano()) | 1
		for i := 0; i+8 <= len(buf); i += 8 {
			x ^= x >> 12
			x ^= x << 25
			x ^= x >> 27
			v := x * 2685821657736338717
			buf[i], buf[i+1], buf[i+2], buf[i+3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
			buf[i+4], buf[i+5], buf[i+6], buf[i+7] = byte(v>>32), byte(v>>40), byte(v>>48), byte(v>>56)
		}
	case *kind == "zero":
		// Touch every page with a zero write, so the pages exist.
		for i := 0; i < len(buf); i += 4096 {
			buf[i] = 0
		}
	default:
		fmt.Fprintln(os.Stderr, "memhog: -kind must be random or zero")
		os.Exit(2)
	}
	// SIGUSR1 checks that the memory still holds what it was given (after
	// a restore, say): the answer is check=ok or check=BAD.
	sum := sha256.Sum256(buf)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGUSR1)
	fmt.Println("ready")
	if *tick > 0 {
		go func() {
			for range time.Tick(*tick) {
				fmt.Printf("t=%d\n", time.Now().UnixNano())
			}
		}()
	}
	if *scanEvery > 0 {
		go scan(buf, *scanEvery)
	}
	for range sig {
		if sha256.Sum256(buf) == sum {
			fmt.Println("check=ok")
		} else {
			fmt.Println("check=BAD")
		}
	}
}

// scanSum is what the last walk of scan read, summed.
var scanSum byte

// scan reads one byte of every page of buf, round and round, and prints
// every period how many pages it read since the last line.
func scan(buf []byte, period time.Duration) {
	var pages atomic.Int64
	go func() {
		for {
			var sum byte
			for i := 0; i < len(buf); i += 4096 {
				sum += buf[i]
				pages.Add(1)
			}
			scanSum = sum // so that the reads are not optimised away
		}
	}()
	for range time.Tick(period) {
		fmt.Printf("scan=%d,%d\n", time.Now().UnixNano(), pages.Swap(0))
	}
}
