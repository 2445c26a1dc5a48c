package device

import "time"

// SetInflightStallForTest sets how long a full in-flight window waits
// before it presumes its count leaked (both bounds of the stall), for
// devices opened afterwards, and returns the function restoring it.
func SetInflightStallForTest(d time.Duration) (restore func()) {
	oldMin, oldMax := inflightMinStall, inflightMaxStall
	inflightMinStall, inflightMaxStall = d, d
	return func() { inflightMinStall, inflightMaxStall = oldMin, oldMax }
}
