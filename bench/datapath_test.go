package bench

import (
	"crypto/rand"
	"testing"
	"time"

	"golang.org/x/crypto/chacha20poly1305"

	"github.com/wgmesh/wgmesh/device/devicetest"
)

// packetSize is a full WireGuard inner packet at the default 1420 MTU.
const packetSize = 1420

// BenchmarkChaCha20Poly1305 is the per-core crypto bound: one seal and one
// open of a full packet, the minimum work of any WireGuard implementation.
func BenchmarkChaCha20Poly1305(b *testing.B) {
	key := make([]byte, chacha20poly1305.KeySize)
	_, _ = rand.Read(key)
	aead, err := chacha20poly1305.New(key)
	if err != nil {
		b.Fatal(err)
	}
	plain := make([]byte, packetSize)
	buf := make([]byte, 0, packetSize+aead.Overhead())
	nonce := make([]byte, aead.NonceSize())
	b.SetBytes(packetSize)
	for b.Loop() {
		sealed := aead.Seal(buf[:0], nonce, plain, nil)
		if _, err := aead.Open(plain[:0], nonce, sealed, nil); err != nil {
			b.Fatal(err)
		}
	}
	reportGbps(b)
}

// BenchmarkInMemoryPair pushes 1420-byte packets through two wgmesh devices
// joined by a channel TUN and a channel bind: wireguard-go's full data path
// (encrypt, queue, decrypt, cryptokey routing) without the kernel, so it
// measures our configuration of the device and nothing of the machine's
// network stack.
func BenchmarkInMemoryPair(b *testing.B) {
	pair := devicetest.NewPair(b, devicetest.Options{})
	if err := pair.Ping(0, 10*time.Second); err != nil {
		b.Fatalf("handshake: %v", err)
	}
	src, dst := pair[0].Addr, pair[1].Addr
	pkt := devicetest.UDPPacket(src, dst, packetSize)
	in := pair[1].TUN.Inbound
	out := pair[0].TUN.Outbound

	b.SetBytes(packetSize)
	b.ResetTimer()
	done := make(chan int)
	go func() {
		// The receiver counts what arrives; a lost packet (none expected on
		// a channel bind) would stall the benchmark and fail it by timeout.
		got := 0
		timeout := time.NewTimer(30 * time.Second)
		defer timeout.Stop()
		for got < b.N {
			select {
			case <-in:
				got++
			case <-timeout.C:
				done <- got
				return
			}
		}
		done <- got
	}()
	for i := 0; i < b.N; i++ {
		p := make([]byte, len(pkt))
		copy(p, pkt)
		out <- p
	}
	if got := <-done; got != b.N {
		b.Fatalf("%d of %d packets arrived", got, b.N)
	}
	b.StopTimer()
	reportGbps(b)
}

func reportGbps(b *testing.B) {
	sec := b.Elapsed().Seconds()
	if sec > 0 {
		b.ReportMetric(float64(b.N)*packetSize*8/sec/1e9, "Gbit/s")
		b.ReportMetric(b.Elapsed().Seconds()*1e9/float64(b.N), "ns/packet")
	}
}
