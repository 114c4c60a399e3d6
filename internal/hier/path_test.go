package hier

import (
	"errors"
	"strings"
	"testing"
)

func TestValidateName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"vserver1", true},
		{"calculate_pi", true},
		{"a.b-c_d", true},
		{"9lives", true},
		{strings.Repeat("x", 64), true},
		{strings.Repeat("x", 65), false},
		{"", false},
		{".", false},
		{"..", false},
		{".hidden", false},
		{"-dash", false},
		{"_under", false},
		{"has space", false},
		{"sla/sh", false},
		{"tab\t", false},
		{"nul\x00", false},
		{"unicodé", false},
	} {
		err := ValidateName(tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("ValidateName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalidName) {
			t.Errorf("ValidateName(%q) error %v is not ErrInvalidName", tc.name, err)
		}
	}
}

func TestParsePath(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string
		dir  bool
		bad  bool
	}{
		{in: "/", want: "/", dir: true},
		{in: "/vserver1", want: "/vserver1"},
		{in: "vserver1", want: "/vserver1"},
		{in: "/vserver1/calculate_pi", want: "/vserver1/calculate_pi"},
		{in: "/vserver1/", want: "/vserver1", dir: true},
		{in: "", bad: true},
		{in: "//", bad: true},
		{in: "/a//b", bad: true},
		{in: "/..", bad: true},
		{in: "/a/../b", bad: true},
		{in: "/a/./b", bad: true},
		{in: "/a b", bad: true},
		{in: "/" + strings.Repeat("a/", 3000), bad: true},
	} {
		p, dir, err := ParsePath(tc.in)
		if tc.bad {
			if err == nil {
				t.Errorf("ParsePath(%q) = %v, want error", tc.in, p)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParsePath(%q): %v", tc.in, err)
			continue
		}
		if p.String() != tc.want || dir != tc.dir {
			t.Errorf("ParsePath(%q) = %q dir=%v, want %q dir=%v", tc.in, p, dir, tc.want, tc.dir)
		}
	}
}

func TestPathHelpers(t *testing.T) {
	p := MustParse("/a/b/c")
	if got := p.Parent().String(); got != "/a/b" {
		t.Errorf("Parent = %s", got)
	}
	if p.Base() != "c" || (Path{}).Base() != "/" {
		t.Errorf("Base wrong")
	}
	if !p.HasPrefix(MustParse("/a")) || p.HasPrefix(MustParse("/b")) || !p.HasPrefix((Path{})) {
		t.Errorf("HasPrefix wrong")
	}
	if got := MustParse("/a").Join("x").String(); got != "/a/x" {
		t.Errorf("Join = %s", got)
	}
}
