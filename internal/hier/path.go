package hier

import (
	"errors"
	"fmt"
	"strings"
)

// MaxNameLen is the longest name a node may have.
const MaxNameLen = 64

// ErrInvalidName is returned for names that break the naming rules.
var ErrInvalidName = errors.New("invalid name")

// ValidateName reports whether name is a valid node name: 1 to 64
// characters of [A-Za-z0-9_.-], starting with a letter or a digit.
func ValidateName(name string) error {
	if name == "" {
		return fmt.Errorf("%w: empty name", ErrInvalidName)
	}
	if len(name) > MaxNameLen {
		return fmt.Errorf("%w %.20q...: longer than %d characters", ErrInvalidName, name, MaxNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if i == 0 && !alnum {
			return fmt.Errorf("%w %q: must start with a letter or digit", ErrInvalidName, name)
		}
		if !alnum && c != '_' && c != '.' && c != '-' {
			return fmt.Errorf("%w %q: only letters, digits, '_', '.' and '-' are allowed", ErrInvalidName, name)
		}
	}
	return nil
}

// Path is a parsed node path: the names from the top of the tree down.
// An empty Path is the root of the tree, "/".
type Path []string

// MaxPathLen bounds the length of a path string accepted by ParsePath.
const MaxPathLen = 4096

// ParsePath parses a path such as "/vserver1/calculate_pi". A leading
// slash is optional (paths are always taken from the top of the tree). dir
// is true when the path ends in a slash, which asks for a new unnamed child
// of the node it names ("/vserver1/").
func ParsePath(s string) (p Path, dir bool, err error) {
	if len(s) > MaxPathLen {
		return nil, false, fmt.Errorf("%w: path longer than %d bytes", ErrInvalidName, MaxPathLen)
	}
	if s == "" {
		return nil, false, fmt.Errorf("%w: empty path", ErrInvalidName)
	}
	trimmed := strings.TrimPrefix(s, "/")
	if trimmed == "" {
		return Path{}, true, nil
	}
	if strings.HasSuffix(trimmed, "/") {
		dir = true
		trimmed = strings.TrimSuffix(trimmed, "/")
	}
	for _, name := range strings.Split(trimmed, "/") {
		if err := ValidateName(name); err != nil {
			return nil, false, fmt.Errorf("path %q: %w", s, err)
		}
		p = append(p, name)
	}
	return p, dir, nil
}

// MustParse parses a path known to be valid and panics otherwise; for
// constants and tests.
func MustParse(s string) Path {
	p, _, err := ParsePath(s)
	if err != nil {
		panic(err)
	}
	return p
}

// String formats p as an absolute path.
func (p Path) String() string { return "/" + strings.Join(p, "/") }

// Parent returns the path of p's parent; the root is its own parent.
func (p Path) Parent() Path {
	if len(p) == 0 {
		return p
	}
	return p[:len(p)-1]
}

// Base returns the last name of p, or "/" for the root.
func (p Path) Base() string {
	if len(p) == 0 {
		return "/"
	}
	return p[len(p)-1]
}

// Join returns p with name appended.
func (p Path) Join(name ...string) Path {
	q := make(Path, 0, len(p)+len(name))
	return append(append(q, p...), name...)
}

// HasPrefix reports whether p is q or lies below q.
func (p Path) HasPrefix(q Path) bool {
	if len(p) < len(q) {
		return false
	}
	for i := range q {
		if p[i] != q[i] {
			return false
		}
	}
	return true
}
