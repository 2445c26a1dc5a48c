package mesh

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"

	"golang.org/x/crypto/curve25519"
)

// KeyLen is the length of a Curve25519 key in bytes.
const KeyLen = 32

// Key is a Curve25519 key, public or private. Its text form is standard
// base64, the format of `wg genkey` and `wg pubkey`.
type Key [KeyLen]byte

// ErrInvalidKey is wrapped by every ParseKey error.
var ErrInvalidKey = errors.New("invalid WireGuard key")

// ParseKey decodes a base64 key as written by `wg genkey`/`wg pubkey`.
// The error never contains the input, which may be a private key.
func ParseKey(s string) (Key, error) {
	var k Key
	if len(s) != base64.StdEncoding.EncodedLen(KeyLen) {
		return k, fmt.Errorf("%w: want %d base64 characters, got %d", ErrInvalidKey, base64.StdEncoding.EncodedLen(KeyLen), len(s))
	}
	b, err := base64.StdEncoding.Strict().DecodeString(s)
	if err != nil || len(b) != KeyLen {
		return k, fmt.Errorf("%w: not canonical base64 of %d bytes", ErrInvalidKey, KeyLen)
	}
	copy(k[:], b)
	return k, nil
}

// String returns the base64 form. Never log the String of a private key.
func (k Key) String() string { return base64.StdEncoding.EncodeToString(k[:]) }

// IsZero reports whether k is the zero key ("no key").
func (k Key) IsZero() bool { return k == Key{} }

// GeneratePrivateKey returns a new clamped Curve25519 private key read from
// crypto/rand, as `wg genkey` does.
func GeneratePrivateKey() (Key, error) {
	var k Key
	if _, err := rand.Read(k[:]); err != nil {
		return Key{}, fmt.Errorf("generate private key: %w", err)
	}
	k.clamp()
	return k, nil
}

func (k *Key) clamp() {
	k[0] &= 248
	k[31] = (k[31] & 127) | 64
}

// PublicKey derives the public key of private key k, equal to `wg pubkey`.
func (k Key) PublicKey() Key {
	var pub Key
	priv := k
	priv.clamp()
	out, err := curve25519.X25519(priv[:], curve25519.Basepoint)
	if err != nil {
		// X25519 with the base point fails only for an all-zero result, which
		// a clamped scalar cannot produce.
		panic("wgmesh: curve25519 base point multiplication failed: " + err.Error())
	}
	copy(pub[:], out)
	return pub
}
