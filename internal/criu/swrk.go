package criu

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"

	"github.com/checkpoint-restore/go-criu/v7/rpc"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// swrk is one `criu swrk` process and the socket to talk to it.
type swrk struct {
	cmd    *exec.Cmd
	sock   *os.File
	notify func(action string) error
}

// swrkOptions says where the CRIU process runs.
type swrkOptions struct {
	// CgroupFD, if >= 0, starts CRIU in that cgroup (so that the processes
	// it restores are born there).
	CgroupFD int
	// OnStart is told CRIU's PID once it runs.
	OnStart func(pid int)
	// Notify, if set, answers CRIU's notifications (its action scripts,
	// when the request asks for them): an error answers failure. Without
	// it, every notification is answered with success.
	Notify func(action string) error
}

func startSwrk(bin string, o swrkOptions) (*swrk, error) {
	fds, err := unix.Socketpair(unix.AF_LOCAL, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("criu socketpair: %w", err)
	}
	cln := os.NewFile(uintptr(fds[0]), "criu-client")
	srv := os.NewFile(uintptr(fds[1]), "criu-server")
	defer srv.Close()
	cmd := exec.Command(bin, "swrk", "3")
	cmd.ExtraFiles = []*os.File{srv}
	cmd.SysProcAttr = ownGroup()
	if o.CgroupFD >= 0 {
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, o.CgroupFD
	}
	if err := cmd.Start(); err != nil {
		cln.Close()
		return nil, fmt.Errorf("start criu: %w", err)
	}
	if o.OnStart != nil {
		o.OnStart(cmd.Process.Pid)
	}
	return &swrk{cmd: cmd, sock: cln, notify: o.Notify}, nil
}

// call sends req and returns CRIU's final answer, answering every notify
// message on the way (with s.notify, or with success).
func (s *swrk) call(req *rpc.CriuReq) (*rpc.CriuResp, error) {
	buf := make([]byte, 64*1024)
	for {
		data, err := proto.Marshal(req)
		if err != nil {
			return nil, err
		}
		if _, err := s.sock.Write(data); err != nil {
			return nil, fmt.Errorf("send to criu: %w", err)
		}
		n, err := s.sock.Read(buf)
		if err != nil {
			return nil, fmt.Errorf("read from criu: %w", err)
		}
		resp := &rpc.CriuResp{}
		if err := proto.Unmarshal(buf[:n], resp); err != nil {
			return nil, fmt.Errorf("decode criu answer: %w", err)
		}
		if resp.GetType() != rpc.CriuReqType_NOTIFY {
			if !resp.GetSuccess() {
				msg := resp.GetCrErrmsg()
				if msg == "" && resp.GetCrErrno() != 0 {
					msg = syscall.Errno(resp.GetCrErrno()).Error()
				}
				if msg == "" {
					msg = "failed"
				}
				return resp, errors.New(msg)
			}
			return resp, nil
		}
		ok := s.notify == nil || s.notify(resp.GetNotify().GetScript()) == nil
		t := rpc.CriuReqType_NOTIFY
		req = &rpc.CriuReq{Type: &t, NotifySuccess: proto.Bool(ok)}
	}
}

// close ends the swrk process and waits for it.
func (s *swrk) close() error {
	s.sock.Close()
	err := s.cmd.Wait()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return fmt.Errorf("criu swrk exited: %s", strconv.Itoa(ee.ExitCode()))
	}
	return err
}

// Check has CRIU check the kernel, as `criu check` does (an RPC request).
func Check(bin string) error {
	s, err := startSwrk(bin, swrkOptions{CgroupFD: -1})
	if err != nil {
		return err
	}
	t := rpc.CriuReqType_CHECK
	_, err = s.call(&rpc.CriuReq{Type: &t})
	s.close()
	if err != nil {
		return fmt.Errorf("criu check: %w", err)
	}
	return nil
}
