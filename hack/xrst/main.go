package main

import (
	"fmt"
	"os"

	"github.com/crtree/crtree/internal/criu"
)

func main() {
	os.MkdirAll("/tmp/xrstwork", 0o700)
	pid, err := criu.Restore("criu", criu.RestoreOptions{ImagesDir: os.Args[1], WorkDir: "/tmp/xrstwork", CgroupFD: -1, Stream: os.Getenv("S") != "", Root: "/",
		BeforeResume: func() error { fmt.Println("gate"); return nil }})
	fmt.Println(pid, err)
}
