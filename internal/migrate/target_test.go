package migrate

import (
	"strings"
	"testing"
)

// Remote arguments are quoted for the far shell, whatever they hold.
func TestShellQuote(t *testing.T) {
	for in, want := range map[string]string{"/pool": "'/pool'", "a'b": `'a'\''b'`, "": "''"} {
		if got := shellQuote(in); got != want {
			t.Errorf("shellQuote(%q) = %s, want %s", in, got, want)
		}
	}
}

// TARGET's two forms, and what is refused for what reason; a local:
// path is split at the longest prefix that is a state root.
func TestParseTarget(t *testing.T) {
	roots := map[string]bool{"/var/lib/crtree-b": true}
	isRoot := func(d string) bool { return roots[d] }
	for in, want := range map[string]Target{
		"ssh://hostB":                     {Host: "hostB", Parent: "/"},
		"ssh://hostB/pool":                {Host: "hostB", Parent: "/pool"},
		"ssh://admin@hostB:2222/pool/a/":  {Host: "admin@hostB", Port: 2222, Parent: "/pool/a"},
		"local:/var/lib/crtree-b":         {Root: "/var/lib/crtree-b", Parent: "/"},
		"local:/var/lib/crtree-b/pool":    {Root: "/var/lib/crtree-b", Parent: "/pool"},
		"local:/var/lib/crtree-b/pool/x/": {Root: "/var/lib/crtree-b", Parent: "/pool/x"},
		"local:/var/lib/crtree-new":       {Root: "/var/lib/crtree-new", Parent: "/"},
	} {
		got, err := ParseTarget(in, isRoot)
		if err != nil || got != want {
			t.Errorf("ParseTarget(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for in, why := range map[string]string{
		"hostB":                   "want ssh://",
		"ssh://":                  "want ssh://",
		"ssh://-oProxyCommand=x/": "cannot start with '-'",
		"ssh://u:secret@hostB/":   "no password in the target",
		"ssh://hostB:0/":          "bad port",
		"ssh://hostB:99999/":      "bad port",
		"ssh://hostB/pool?x=1":    "want ssh://",
		"local:relative":          "absolute state root",
		"local:":                  "absolute state root",
		"ftp://hostB/":            "want ssh://",
	} {
		if _, err := ParseTarget(in, isRoot); err == nil || !strings.Contains(err.Error(), why) {
			t.Errorf("ParseTarget(%q): %v, want %q", in, err, why)
		}
	}
}
