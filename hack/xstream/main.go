package main

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	dir := os.Args[1]
	sock := filepath.Join(dir, "streamer-serve.sock")
	os.Remove(sock)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		panic(err)
	}
	fmt.Println("ready")
	c, err := l.AcceptUnix()
	if err != nil {
		panic(err)
	}
	t0 := time.Now()
	for {
		var lb [4]byte
		if _, err := io.ReadFull(c, lb[:]); err != nil {
			fmt.Println("eof", err, time.Since(t0))
			return
		}
		n := binary.LittleEndian.Uint32(lb[:])
		msg := make([]byte, n)
		io.ReadFull(c, msg)
		// field 1, string
		name := string(msg[2:])
		p := filepath.Join(dir, name)
		f, err := os.Open(p)
		exists := err == nil
		reply := []byte{8, 0}
		if exists {
			reply[1] = 1
		}
		binary.LittleEndian.PutUint32(lb[:], 2)
		c.Write(append(lb[:], reply...))
		fmt.Printf("%8.3f %s exists=%v\n", time.Since(t0).Seconds(), name, exists)
		if !exists {
			continue
		}
		buf := make([]byte, 1)
		oob := make([]byte, unix.CmsgSpace(4))
		_, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
		if err != nil {
			panic(err)
		}
		msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
		fds, _ := unix.ParseUnixRights(&msgs[0])
		pw := os.NewFile(uintptr(fds[0]), "pipe")
		n2, err := io.Copy(pw, f)
		pw.Close()
		f.Close()
		fmt.Printf("%8.3f   sent %d %v\n", time.Since(t0).Seconds(), n2, err)
	}
}
