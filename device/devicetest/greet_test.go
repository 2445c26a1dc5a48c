package devicetest_test

import (
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/device/devicetest"
)

// A device handshakes with a newly configured peer without waiting for
// traffic. This is what lets a restarted agent (fresh wireguard-go state on a
// re-attached interface) replace the sessions its peers still hold at once,
// instead of after their 15 s rekey timeout; without it an idle pair never
// handshakes at all.
func TestNewPeersAreGreeted(t *testing.T) {
	p := devicetest.NewPair(t, devicetest.Options{})
	deadline := time.Now().Add(20 * time.Second)
	for {
		done := 0
		for i, e := range p {
			st, err := e.Device.Stats(t.Context())
			if err != nil {
				t.Fatalf("end %d stats: %v", i, err)
			}
			if len(st) == 1 && !st[0].LastHandshake.IsZero() {
				done++
			}
		}
		if done == 2 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no handshake without traffic after 20s: new peers are not greeted")
		}
		time.Sleep(100 * time.Millisecond)
	}
}
