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

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{
		"1048576": 1 << 20, "64M": 64 << 20, "64m": 64 << 20, "64MiB": 64 << 20, "64MB": 64 << 20,
		"512K": 512 << 10, "2G": 2 << 30, "1T": 1 << 40,
		"": -1, "0": -1, "-1M": -1, "M": -1, "1.5G": -1, "64X": -1, "64 M": -1, "64MBi": -1, "64iB": -1, "64B": 64, "9999999999T": -1,
	} {
		got, err := parseSize(in)
		if want < 0 && err == nil || want >= 0 && (err != nil || got != want) {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
}
