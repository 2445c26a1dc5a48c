package bench

import (
	"crypto/rand"
	"testing"

	"golang.org/x/crypto/chacha20poly1305"
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

func reportGbps(b *testing.B) {
	sec := b.Elapsed().Seconds()
	if sec > 0 {
		b.ReportMetric(float64(b.N)*packetSize*8/sec/1e9, "Gbit/s")
		b.ReportMetric(b.Elapsed().Seconds()*1e9/float64(b.N), "ns/packet")
	}
}
