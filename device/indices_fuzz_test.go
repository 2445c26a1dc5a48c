package device

import (
	"encoding/binary"
	"testing"
	"time"
)

// FuzzLocalIndices feeds the receiver-index filter what the network can
// send: any datagrams, learnt from and counted. It must never panic, never
// count more than the datagrams given, and count exactly the transport
// messages with a payload whose index it learnt from a handshake.
func FuzzLocalIndices(f *testing.F) {
	f.Add([]byte{1, 0, 0, 0, 7, 0, 0, 0}, []byte{4, 0, 0, 0, 7, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26}, uint8(3))
	f.Add([]byte{2, 0, 0, 0, 9, 9, 9, 9}, []byte{4, 0, 0, 0, 9, 9, 9, 8}, uint8(1))
	f.Add([]byte{}, []byte{4}, uint8(0))
	f.Fuzz(func(t *testing.T, sent, received []byte, copies uint8) {
		l := newLocalIndices()
		l.now = func() time.Time { return time.Unix(1e9, 0) }
		l.learn([][]byte{sent})
		bufs := make([][]byte, int(copies)%130)
		sizes := make([]int, len(bufs))
		for i := range bufs {
			// The receive path hands over whole buffers and the sizes
			// of what was read into them.
			bufs[i] = append(received, make([]byte, 64)...)
			sizes[i] = len(received)
		}
		n := l.dataPackets(bufs, sizes)
		want := 0
		if len(received) > messageKeepaliveSize && received[0] == messageTransportType &&
			len(sent) >= 8 && (sent[0] == messageInitiationType || sent[0] == messageResponseType) &&
			binary.LittleEndian.Uint32(sent[4:8]) == binary.LittleEndian.Uint32(received[4:8]) {
			want = len(bufs)
		}
		if n != want {
			t.Fatalf("counted %d of %d datagrams %x after sending %x, want %d", n, len(bufs), received, sent, want)
		}
	})
}
