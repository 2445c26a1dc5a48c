package device

import "time"

// SetInflightStallForTest sets how long a full in-flight window waits
// before it presumes its count leaked, for devices opened afterwards, and
// returns the function restoring it.
func SetInflightStallForTest(d time.Duration) (restore func()) {
	old := inflightStall
	inflightStall = d
	return func() { inflightStall = old }
}
