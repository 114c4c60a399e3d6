package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"time"

	"github.com/crtree/crtree/internal/archive"
	"github.com/crtree/crtree/internal/checkpoint"
)

type dst struct{ d string }

func (d dst) FilesDir(i int) string  { return filepath.Join(d.d, strconv.Itoa(i), "files") }
func (d dst) ImagesDir(i int) string { return filepath.Join(d.d, strconv.Itoa(i), "criu") }

func main() {
	f, _ := os.Open(os.Args[1])
	out := os.Args[2]
	os.RemoveAll(out)
	for i := 0; i < 4; i++ {
		os.MkdirAll(filepath.Join(out, strconv.Itoa(i), "files"), 0o700)
		os.MkdirAll(filepath.Join(out, strconv.Itoa(i), "criu"), 0o700)
	}
	pf, _ := os.Create("/tmp/x.prof")
	pprof.StartCPUProfile(pf)
	t := time.Now()
	pre := checkpoint.Prefetch(f)
	ar, err := archive.NewReader(pre)
	if err != nil {
		panic(err)
	}
	err = archive.Extract(ar, dst{out}, nil)
	fmt.Println(time.Since(t), err)
	pprof.StopCPUProfile()
}
