package api

import (
	"errors"
	"strings"
	"testing"
)

func FuzzDecodeRequest(f *testing.F) {
	f.Add([]byte(`{"args":["ls","-r"],"cwd":"/"}`))
	f.Add([]byte(`{"args":["run","/","--","sleep","1"],"cwd":"/tmp","term":"xterm"}`))
	f.Add([]byte(`{"args":["__init"],"cwd":"/"}`))
	f.Add([]byte(`{"args":["ls"],"cwd":"/","scope":"n1"}`))
	f.Add([]byte(`{"args":["ls"],"cwd":"../.."}`))
	f.Add([]byte(`{"args":["ls"]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := DecodeRequest(data)
		if err != nil {
			if !errors.Is(err, ErrBadRequest) {
				t.Fatalf("error %v is not ErrBadRequest", err)
			}
			return
		}
		if !Commands[r.Args[0]] || !strings.HasPrefix(r.Cwd, "/") || len(r.Args) > MaxArgs {
			t.Fatalf("accepted a bad request: %+v", r)
		}
	})
}

func TestDecodeRequest(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{`{"args":["ls"],"cwd":"/"}`, true},
		{`{"args":["dump","/x","-o","-"],"cwd":"/tmp"}`, true},
		{`{"args":["__supervise","n1"],"cwd":"/"}`, false},
		{`{"args":["ls"],"cwd":"/a/../b"}`, false},
		{`{"args":["ls"],"cwd":"/","extra":1}`, false},
		{`{"args":["ls"],"cwd":"/"} {}`, false},
		{`{"args":["ls\u0000"],"cwd":"/"}`, false},
		{`{"args":["ls"],"cwd":"/","term":"a=b"}`, false},
	} {
		_, err := DecodeRequest([]byte(tc.in))
		if (err == nil) != tc.ok {
			t.Errorf("DecodeRequest(%s) = %v, want ok=%v", tc.in, err, tc.ok)
		}
	}
}
