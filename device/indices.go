package device

import (
	"encoding/binary"
	"sync"
	"time"
)

// localIndices are the receiver indices of this device's recent handshakes,
// learnt from the handshake messages it sends. A transport data message
// carries the index its receiver chose in the handshake (the WireGuard
// protocol's receiver index, bytes 4-7 of the message), so a datagram whose
// index is not among them cannot decrypt here: wireguard-go drops it on
// the lookup. The rx window counts only datagrams with a known index, so a
// flood of garbage from anyone who is not on the path does not fill the
// window with packets that never reach the TUN.
//
// An index is kept for indexTTL after the handshake that chose it, longer
// than wireguard-go uses it (a session is refused after RejectAfterTime,
// 180 s, and the previous session is dropped at the next handshake).
type localIndices struct {
	mu   sync.RWMutex
	seen map[uint32]int64 // index -> when the handshake left, Unix ns
	// pruned is when seen was last swept of expired indices.
	pruned int64
	now    func() time.Time
}

// indexTTL is how long an index learnt from a handshake counts as ours.
const indexTTL = 10 * time.Minute

// WireGuard message types (the protocol's): a handshake initiation and a
// handshake response each carry the sender's index at bytes 4-7; a
// transport data message carries the receiver's index there.
const (
	messageInitiationType = 1
	messageResponseType   = 2
)

func newLocalIndices() *localIndices {
	return &localIndices{seen: map[uint32]int64{}, now: time.Now}
}

// learn records the sender index of every handshake initiation or
// response in bufs (datagrams this device sends).
func (l *localIndices) learn(bufs [][]byte) {
	var now int64
	for _, b := range bufs {
		if len(b) < 8 || (b[0] != messageInitiationType && b[0] != messageResponseType) {
			continue
		}
		if now == 0 {
			now = l.now().UnixNano()
			l.mu.Lock()
			defer l.mu.Unlock()
		}
		l.seen[binary.LittleEndian.Uint32(b[4:8])] = now
	}
	if now != 0 && now-l.pruned > int64(indexTTL) {
		l.pruned = now
		for i, at := range l.seen {
			if now-at > int64(indexTTL) {
				delete(l.seen, i)
			}
		}
	}
}

// dataPackets counts the datagrams in bufs that wireguard-go will write to
// the TUN if they decrypt: transport messages with a payload addressed to
// one of this device's indices. Handshake messages and keepalives never
// reach the TUN, and a datagram with an unknown index is dropped unseen,
// so counting them in the rx window would leak.
func (l *localIndices) dataPackets(bufs [][]byte, sizes []int) int {
	var (
		n             int
		last          uint32
		looked, known bool
	)
	for i, b := range bufs {
		if sizes[i] <= messageKeepaliveSize || len(b) < 8 || b[0] != messageTransportType {
			continue
		}
		// The datagrams of one batch mostly come from one session: an
		// index is looked up once for a run of datagrams carrying it.
		if idx := binary.LittleEndian.Uint32(b[4:8]); !looked || idx != last {
			last, known, looked = idx, l.has(idx), true
		}
		if known {
			n++
		}
	}
	return n
}

func (l *localIndices) has(idx uint32) bool {
	l.mu.RLock()
	at, ok := l.seen[idx]
	l.mu.RUnlock()
	return ok && l.now().UnixNano()-at <= int64(indexTTL)
}
