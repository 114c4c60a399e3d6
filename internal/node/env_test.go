package node

import (
	"os"
	"reflect"
	"testing"
)

func TestMergeEnv(t *testing.T) {
	for _, tc := range []struct {
		base, extra, want []string
	}{
		{[]string{"A=1", "B=2"}, nil, []string{"A=1", "B=2"}},
		{[]string{"A=1", "B=2"}, []string{"B=3"}, []string{"A=1", "B=3"}},
		{[]string{"A=1"}, []string{"C=x=y", "A="}, []string{"A=", "C=x=y"}},
		{nil, []string{"K=V", "K=W"}, []string{"K=W"}},
	} {
		if got := MergeEnv(tc.base, tc.extra); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("MergeEnv(%v, %v) = %v, want %v", tc.base, tc.extra, got, tc.want)
		}
	}
}

func TestStartTimeAndAlive(t *testing.T) {
	pid := os.Getpid()
	st, err := StartTime(pid)
	if err != nil || st == 0 {
		t.Fatalf("StartTime(self) = %d, %v", st, err)
	}
	if !Alive(pid, st) {
		t.Error("Alive(self) = false")
	}
	if Alive(pid, st+1) {
		t.Error("Alive with another start time = true (PID reuse not detected)")
	}
	if Alive(0, 0) || Alive(1<<30, 0) {
		t.Error("Alive of no process = true")
	}
	info, err := ReadProc(pid)
	if err != nil || info.NSPid == 0 || info.Cmd == "" || info.RSS == 0 {
		t.Errorf("ReadProc(self) = %+v, %v", info, err)
	}
}

func TestRemoveStageRefusesOtherPaths(t *testing.T) {
	root := t.TempDir()
	for _, dir := range []string{"/", "/etc", root, root + "/nodes", "/dev/shm/not-ours", "/dev/shm/../etc"} {
		if err := RemoveStage(root, "", dir); err == nil {
			t.Errorf("RemoveStage(%q) accepted", dir)
		}
	}
	mine := "/dev/shm/" + stagePrefixFor(root) + "dump-test"
	if err := os.MkdirAll(mine+"/criu", 0o700); err != nil {
		t.Skip("no /dev/shm here")
	}
	if err := RemoveStage(root, "", mine); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(mine); err == nil {
		t.Error("staging directory still there")
	}
}
