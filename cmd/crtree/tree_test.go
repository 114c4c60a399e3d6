package main

import (
	"strings"
	"testing"

	"github.com/crtree/crtree/internal/node"
)

func TestDrawTree(t *testing.T) {
	e := func(name string, depth int) node.Entry {
		return node.Entry{Name: name, Depth: depth, Display: "running"}
	}
	var b strings.Builder
	drawTree(&b, []node.Entry{e("a", 0), e("a1", 1), e("a11", 2), e("a2", 1), e("b", 0), e("b1", 1)})
	want := `├── a  [running]
│   ├── a1  [running]
│   │   └── a11  [running]
│   └── a2  [running]
└── b  [running]
    └── b1  [running]
`
	if b.String() != want {
		t.Errorf("drawTree:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestParseSignal(t *testing.T) {
	for in, ok := range map[string]bool{"KILL": true, "SIGTERM": true, "term": true, "9": true, "0": false, "NOPE": false, "99": false} {
		if _, err := parseSignal(in); (err == nil) != ok {
			t.Errorf("parseSignal(%q) err=%v, want ok=%v", in, err, ok)
		}
	}
}
