package hier

import (
	"strings"
	"testing"
)

// FuzzScopedPath checks what scoping relies on: a parsed path, joined
// below a scope, always stays below it.
func FuzzScopedPath(f *testing.F) {
	for _, s := range []string{"/", "/a", "a/b/", "/..", "/a/../../b", "//x", "/a/./b", "/\x00", strings.Repeat("/a", 100)} {
		f.Add(s)
	}
	scope := MustParse("/sergesvserver")
	f.Fuzz(func(t *testing.T, s string) {
		p, _, err := ParsePath(s)
		if err != nil {
			return
		}
		full := scope.Join(p...)
		if !full.HasPrefix(scope) {
			t.Fatalf("%q escapes the scope: %s", s, full)
		}
		for _, name := range p {
			if ValidateName(name) != nil || name == "." || name == ".." {
				t.Fatalf("%q: parsed name %q is invalid", s, name)
			}
		}
		if back, _, err := ParsePath(p.String()); err == nil && back.String() != p.String() {
			t.Fatalf("%q: %s does not round-trip", s, p)
		}
	})
}
