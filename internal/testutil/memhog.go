package testutil

import (
	"strconv"
	"strings"
	"time"
)

// LargestTickGap reads a log of testdata/memhog -tick (t=UNIXNANO lines)
// and returns the largest interval between two ticks, which is how long
// the workload stood still (a migration's downtime, from its own view),
// and the time (UNIXNANO) of the tick that ended it, when it ran again.
func LargestTickGap(logs string) (gap time.Duration, resumed int64) {
	var prev int64
	for _, l := range strings.Split(logs, "\n") {
		v, ok := strings.CutPrefix(l, "t=")
		if !ok {
			continue
		}
		t, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			continue
		}
		if prev != 0 && time.Duration(t-prev) > gap {
			gap, resumed = time.Duration(t-prev), t
		}
		prev = t
	}
	return gap, resumed
}
