package mesh

import (
	"encoding/base64"
	"errors"
	"os/exec"
	"strings"
	"testing"
)

// Pairs produced by `wg genkey | tee /dev/stderr | wg pubkey` (and, for the
// unclamped inputs, by feeding the raw bytes to `wg pubkey`, which clamps).
var keyVectors = []struct{ priv, pub string }{
	{"2POeogxgDFSEvluf+v1KS9HLiyiJeMeIpVL9Wcho7H4=", "XuJc3jW/4bJb6kVoROnwqaVZ+crhC1YcYGEHiDsfOEk="},
	{"GOV4+OLf/tlnneeUP42RsnmOZlY7osuKRoKjN6h3tl4=", "djpKU0V+UxSVDRPcumOYaDiINZaEbfAqJ0Eb/oi/ukE="},
	{"//////////////////////////////////////////8=", "hHwNLDdSNPNl5mCVUYejc1oPdhPRYJ06ak2MU66qWiI="},
	{"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", "j0DFrbaPJWJK5bIU6nZ6bslNgp09e14a0bpvPiE4KF8="},
}

func TestPublicKeyVectors(t *testing.T) {
	for _, v := range keyVectors {
		priv, err := ParseKey(v.priv)
		if err != nil {
			t.Fatalf("ParseKey(vector): %v", err)
		}
		if got := priv.PublicKey().String(); got != v.pub {
			t.Errorf("PublicKey of vector %s… = %s, want %s", v.pub[:8], got, v.pub)
		}
	}
}

func TestGeneratePrivateKeyIsClampedAndRandom(t *testing.T) {
	a, err := GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	b, err := GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	if a == b || a.IsZero() {
		t.Fatal("two generated keys are equal or zero")
	}
	if a[0]&7 != 0 || a[31]&128 != 0 || a[31]&64 == 0 {
		t.Errorf("generated key is not clamped: first byte %08b, last byte %08b", a[0], a[31])
	}
}

// TestPublicKeyMatchesWg compares with the installed wg tool on fresh keys.
func TestPublicKeyMatchesWg(t *testing.T) {
	if _, err := exec.LookPath("wg"); err != nil {
		t.Skip("wg not installed")
	}
	for range 3 {
		priv, err := GeneratePrivateKey()
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("wg", "pubkey")
		cmd.Stdin = strings.NewReader(priv.String() + "\n")
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("wg pubkey: %v", err)
		}
		if got, want := priv.PublicKey().String(), strings.TrimSpace(string(out)); got != want {
			t.Errorf("PublicKey = %s, wg pubkey = %s", got, want)
		}
	}
}

func TestParseKeyErrors(t *testing.T) {
	for _, s := range []string{
		"",
		"short",
		strings.Repeat("A", 43) + "!",
		strings.Repeat("A", 44), // 33 bytes worth of characters, no padding
		"2POeogxgDFSEvluf+v1KS9HLiyiJeMeIpVL9Wcho7H5=", // non-canonical trailing bits
		" 2POeogxgDFSEvluf+v1KS9HLiyiJeMeIpVL9Wcho7H4",
		"2POeogxgDFSEvluf-v1KS9HLiyiJeMeIpVL9Wcho7H4=", // URL alphabet
	} {
		_, err := ParseKey(s)
		if !errors.Is(err, ErrInvalidKey) {
			t.Errorf("ParseKey(%q) error = %v, want ErrInvalidKey", s, err)
			continue
		}
		if s != "" && strings.Contains(err.Error(), s) {
			t.Errorf("ParseKey error %q contains the input", err)
		}
	}
}

func FuzzParseKey(f *testing.F) {
	for _, v := range keyVectors {
		f.Add(v.priv)
		f.Add(v.pub)
	}
	f.Add("")
	f.Add("====")
	f.Add(strings.Repeat("A", 43) + "=")
	f.Add(strings.Repeat("/", 44))
	f.Fuzz(func(t *testing.T, s string) {
		k, err := ParseKey(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidKey) {
				t.Fatalf("error %v does not wrap ErrInvalidKey", err)
			}
			// Short inputs ("A", "=") occur in any message by chance; a
			// key-sized secret must never be echoed, nor any sizeable part.
			if len(s) >= 8 && strings.Contains(err.Error(), s) {
				t.Fatalf("error %q contains the input", err)
			}
			return
		}
		if got := k.String(); got != s {
			t.Fatalf("round trip: ParseKey(%q).String() = %q", s, got)
		}
		raw, derr := base64.StdEncoding.DecodeString(s)
		if derr != nil || string(raw) != string(k[:]) {
			t.Fatalf("ParseKey(%q) accepted a string base64 does not decode to the key", s)
		}
		_ = k.PublicKey() // must not panic for any 32 bytes
	})
}
