package device

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
)

// mtuBind is a conn.Bind whose "kernel" refuses a batch of more than one
// datagram larger than mtu with EMSGSIZE, as UDP GSO does, and records
// every datagram that leaves.
type mtuBind struct {
	conn.Bind
	mtu   int
	calls int
	sent  []string
}

func (b *mtuBind) Open(uint16) ([]conn.ReceiveFunc, uint16, error) { return nil, 51820, nil }

func (b *mtuBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	b.calls++
	if len(bufs) > 1 && len(bufs[0]) > b.mtu {
		return &os.SyscallError{Syscall: "sendmmsg", Err: unix.EMSGSIZE}
	}
	for _, buf := range bufs {
		b.sent = append(b.sent, fmt.Sprintf("%s %s", ep.DstIP(), buf))
	}
	return nil
}

func endpoint(t *testing.T, s string) conn.Endpoint {
	t.Helper()
	ep, err := conn.NewStdNetBind().ParseEndpoint(s)
	if err != nil {
		t.Fatal(err)
	}
	return ep
}

func TestOversizeBind(t *testing.T) {
	var logs bytes.Buffer
	inner := &mtuBind{mtu: 4}
	b := newOversizeBind(inner, slog.New(slog.NewTextHandler(&logs, nil)), newOffloadTracker(OffloadState{}, OffloadState{Active: true}))
	v4, v6 := endpoint(t, "198.18.0.2:51820"), endpoint(t, "[2001:db8::2]:51820")
	big := [][]byte{[]byte("aaaaa"), []byte("bbbbb"), []byte("ccccc")}
	small := [][]byte{[]byte("aa"), []byte("bb")}

	// Batches that fit go through whole; the first oversized batch is
	// refused and sent again datagram by datagram.
	for _, c := range []struct {
		bufs  [][]byte
		ep    conn.Endpoint
		calls int
	}{
		{small, v4, 1},
		{big, v4, 1 + 3},
		{big, v4, 3}, // split from now on, without trying the batch
		{big[:1], v4, 1},
		{big, v6, 1 + 3}, // the other family learns for itself
		{small, v6, 2},
	} {
		inner.calls, inner.sent = 0, nil
		if err := b.Send(c.bufs, c.ep); err != nil {
			t.Fatalf("Send(%q, %s): %v", c.bufs, c.ep.DstIP(), err)
		}
		var want []string
		for _, buf := range c.bufs {
			want = append(want, fmt.Sprintf("%s %s", c.ep.DstIP(), buf))
		}
		if inner.calls != c.calls || !slices.Equal(inner.sent, want) {
			t.Errorf("Send(%q, %s): %d calls sending %q; want %d sending %q", c.bufs, c.ep.DstIP(), inner.calls, inner.sent, c.calls, want)
		}
	}
	if n := strings.Count(logs.String(), "exceed the underlay's MTU"); n != 2 {
		t.Errorf("logged %d times, want once per family:\n%s", n, logs.String())
	}
	// A new socket tries whole batches again.
	if _, _, err := b.Open(0); err != nil {
		t.Fatal(err)
	}
	inner.calls = 0
	if err := b.Send(big, v4); err != nil || inner.calls != 1+3 {
		t.Errorf("after Open: err %v, %d calls; want the batch tried once, then 3 sends", err, inner.calls)
	}
	// Other errors are returned as they are, without a retry.
	b2 := newOversizeBind(errBind{&mtuBind{mtu: 4}}, slog.New(slog.DiscardHandler), newOffloadTracker(OffloadState{}, OffloadState{Active: true}))
	if err := b2.Send(big, v4); err == nil || !strings.Contains(err.Error(), "network is unreachable") {
		t.Errorf("Send with ENETUNREACH: err %v", err)
	}
}

// errBind fails every send with ENETUNREACH.
type errBind struct{ *mtuBind }

func (errBind) Send([][]byte, conn.Endpoint) error {
	return &os.SyscallError{Syscall: "sendmmsg", Err: unix.ENETUNREACH}
}
