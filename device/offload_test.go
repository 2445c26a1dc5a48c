package device

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"
)

// gsoRefusingTUN is a tun.Device whose "kernel" refuses every Write that
// carries more than one packet with EINVAL, as a kernel that rejects
// wireguard-go's coalesced (virtio-net GSO) writes does, and takes single
// packets. Its error has the shape of NativeTun.Write's: the joined
// *os.PathError of the failed file writes.
type gsoRefusingTUN struct {
	tun.Device
	batch   int
	calls   int
	written []string
	// fail, when set, is returned for batches instead of EINVAL.
	fail error
}

func (t *gsoRefusingTUN) BatchSize() int { return t.batch }

func (t *gsoRefusingTUN) Write(bufs [][]byte, offset int) (int, error) {
	t.calls++
	if len(bufs) > 1 {
		err := t.fail
		if err == nil {
			err = &os.PathError{Op: "write", Path: tunPath, Err: unix.EINVAL}
		}
		return 0, errors.Join(err)
	}
	t.written = append(t.written, string(bufs[0][offset:]))
	return len(bufs[0]) - offset, nil
}

func packets(offset int, names ...string) [][]byte {
	var bufs [][]byte
	for _, n := range names {
		bufs = append(bufs, append(make([]byte, offset), n...))
	}
	return bufs
}

func TestOffloadTUNFallsBackOnEINVAL(t *testing.T) {
	var logs bytes.Buffer
	inner := &gsoRefusingTUN{batch: 128}
	off := newOffloadTracker(tunOffloadAtOpen(Options{}, inner), OffloadState{Active: true})
	when := time.Date(2026, 11, 30, 15, 0, 0, 0, time.UTC)
	off.now = func() time.Time { return when }
	d := newOffloadTUN(inner, slog.New(slog.NewTextHandler(&logs, nil)), off, nil, nil)
	const offset = 16 // wireguard-go's MessageTransportOffsetContent

	if got := off.snapshot()[0]; !got.Active || got.Reason != "" || got.Fallbacks != 0 {
		t.Fatalf("at open: %+v, want active", got)
	}
	// A single packet is never coalesced: passed through.
	if _, err := d.Write(packets(offset, "p0"), offset); err != nil || inner.calls != 1 {
		t.Fatalf("single packet: err %v, %d calls", err, inner.calls)
	}
	// The first refused batch is lost and switches the device over.
	_, err := d.Write(packets(offset, "a1", "a2", "a3"), offset)
	if !errors.Is(err, unix.EINVAL) {
		t.Fatalf("refused batch: err %v, want the kernel's EINVAL passed on", err)
	}
	want := OffloadState{Kind: OffloadTUNGSO, Fallbacks: 1, Since: when}
	got := off.snapshot()[0]
	if got.Active || got.Fallbacks != 1 || !got.Since.Equal(when) || !strings.Contains(got.Reason, "invalid argument") {
		t.Errorf("after the refusal: %+v, want %+v with the error as reason", got, want)
	}
	// From now on batches go out packet by packet, and all arrive.
	inner.calls, inner.written = 0, nil
	n, err := d.Write(packets(offset, "b1", "b2", "b3", "b4"), offset)
	if err != nil || inner.calls != 4 || strings.Join(inner.written, ",") != "b1,b2,b3,b4" || n != 8 {
		t.Errorf("batch after fallback: n %d err %v, %d calls writing %q; want 4 single writes", n, err, inner.calls, inner.written)
	}
	if _, err := d.Write(packets(offset, "c1", "c2"), offset); err != nil {
		t.Errorf("second batch after fallback: %v", err)
	}
	if got := off.snapshot()[0]; got.Fallbacks != 1 || got.Active {
		t.Errorf("later batches changed the state: %+v", got)
	}
	if n := strings.Count(logs.String(), "refused a coalesced (GSO) write"); n != 1 {
		t.Errorf("logged %d times, want once:\n%s", n, logs.String())
	}
}

func TestOffloadTUNKeepsBatchesOnOtherErrors(t *testing.T) {
	inner := &gsoRefusingTUN{batch: 128, fail: &os.PathError{Op: "write", Path: tunPath, Err: unix.EIO}}
	off := newOffloadTracker(tunOffloadAtOpen(Options{}, inner), OffloadState{})
	d := newOffloadTUN(inner, slog.New(slog.DiscardHandler), off, nil, nil)
	for range 2 {
		inner.calls = 0
		if _, err := d.Write(packets(0, "a", "b"), 0); !errors.Is(err, unix.EIO) || inner.calls != 1 {
			t.Errorf("EIO batch: err %v, %d calls; want the error passed on, one call", err, inner.calls)
		}
	}
	if got := off.snapshot()[0]; !got.Active || got.Fallbacks != 0 {
		t.Errorf("an error other than EINVAL switched the offload off: %+v", got)
	}
}

func TestOffloadStateAtOpen(t *testing.T) {
	for _, c := range []struct {
		name     string
		o        Options
		tunBatch int
		tun      bool
		reason   string
	}{
		{"offloads on", Options{}, 128, true, ""},
		{"offloads off", Options{DisableOffloads: true}, 1, false, "--offloads=false"},
		{"kernel without TSO", Options{}, 1, false, "TUNSETOFFLOAD"},
	} {
		got := tunOffloadAtOpen(c.o, &gsoRefusingTUN{batch: c.tunBatch})
		if got.Active != c.tun || !strings.Contains(got.Reason, c.reason) || (c.tun && got.Reason != "") {
			t.Errorf("%s: TUN %+v, want active %v, reason with %q", c.name, got, c.tun, c.reason)
		}
	}
	if got := udpOffloadAtOpen(Options{DisableOffloads: true}, conn.NewStdNetBind()); got.Active || !strings.Contains(got.Reason, "--offloads=false") {
		t.Errorf("UDP with offloads off: %+v", got)
	}
	// This host's kernel decides; the state must say what the probe says.
	got := udpOffloadAtOpen(Options{}, conn.NewStdNetBind())
	if perr := probeUDPSegment(); got.Active != (perr == nil) {
		t.Errorf("UDP with offloads on: %+v, probe error %v", got, perr)
	}
}

// gsoBind is a conn.Bind whose "kernel" fails batches of more than one
// datagram with err (nil: takes everything), and records what leaves.
type gsoBind struct {
	conn.Bind
	err   error
	calls int
	sent  []string
}

func (b *gsoBind) Open(uint16) ([]conn.ReceiveFunc, uint16, error) { return nil, 51820, nil }
func (b *gsoBind) BatchSize() int                                  { return 128 }

func (b *gsoBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	b.calls++
	if len(bufs) > 1 && b.err != nil {
		return b.err
	}
	for _, buf := range bufs {
		b.sent = append(b.sent, string(buf))
	}
	return nil
}

func TestOffloadBindFallsBackOnEINVAL(t *testing.T) {
	var logs bytes.Buffer
	inner := &gsoBind{err: &os.SyscallError{Syscall: "sendmmsg", Err: unix.EINVAL}}
	off := newOffloadTracker(OffloadState{Active: true}, OffloadState{Active: true})
	b := newOversizeBind(inner, slog.New(slog.NewTextHandler(&logs, nil)), off)
	v4 := endpoint(t, "198.18.0.2:51820")

	if err := b.Send([][]byte{[]byte("a"), []byte("b")}, v4); err != nil {
		t.Fatalf("refused batch: %v, want it sent again datagram by datagram", err)
	}
	if inner.calls != 3 || strings.Join(inner.sent, ",") != "a,b" {
		t.Errorf("refused batch: %d calls sending %q; want 1+2 calls sending a,b", inner.calls, inner.sent)
	}
	got := off.snapshot()[1]
	if got.Kind != OffloadUDPGSO || got.Active || got.Fallbacks != 1 || !strings.Contains(got.Reason, "EINVAL") {
		t.Errorf("after the refusal: %+v", got)
	}
	if tunState := off.snapshot()[0]; !tunState.Active {
		t.Errorf("the UDP fallback touched the TUN state: %+v", tunState)
	}
	inner.calls = 0
	if err := b.Send([][]byte{[]byte("c"), []byte("d")}, v4); err != nil || inner.calls != 2 {
		t.Errorf("later batch: err %v, %d calls; want 2 single sends", err, inner.calls)
	}
	// A new socket tries again: active until refused, the count stays.
	if _, _, err := b.Open(0); err != nil {
		t.Fatal(err)
	}
	if got := off.snapshot()[1]; !got.Active || got.Reason != "" || got.Fallbacks != 1 {
		t.Errorf("after Open: %+v, want active again with the count kept", got)
	}
	if err := b.Send([][]byte{[]byte("e"), []byte("f")}, v4); err != nil {
		t.Fatal(err)
	}
	if got := off.snapshot()[1]; got.Active || got.Fallbacks != 2 {
		t.Errorf("refused again after Open: %+v", got)
	}
}

// TestOffloadBindRecordsLibraryFallback: wireguard-go's StdNetBind handles
// EIO itself (stops coalescing, resends, returns conn.ErrUDPGSODisabled,
// which its send routine unwraps); the wrapper passes that on unchanged and
// records it.
func TestOffloadBindRecordsLibraryFallback(t *testing.T) {
	var logs bytes.Buffer
	libErr := conn.ErrUDPGSODisabled{RetryErr: nil}
	inner := &gsoBind{err: libErr}
	off := newOffloadTracker(OffloadState{Active: true}, OffloadState{Active: true})
	b := newOversizeBind(inner, slog.New(slog.NewTextHandler(&logs, nil)), off)
	err := b.Send([][]byte{[]byte("a"), []byte("b")}, endpoint(t, "198.18.0.2:51820"))
	var got conn.ErrUDPGSODisabled
	if !errors.As(err, &got) || inner.calls != 1 {
		t.Errorf("err %v after %d calls, want the library's ErrUDPGSODisabled passed on after one call", err, inner.calls)
	}
	if st := off.snapshot()[1]; st.Active || st.Fallbacks != 1 || !strings.Contains(st.Reason, "disabled UDP GSO") {
		t.Errorf("state %+v, want the library's fallback recorded", st)
	}
	if !strings.Contains(logs.String(), "refused a UDP GSO send") {
		t.Errorf("no warning logged:\n%s", logs.String())
	}
}
