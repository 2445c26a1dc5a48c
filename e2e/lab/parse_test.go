package lab

import (
	"strings"
	"testing"
	"time"
)

func TestParseWGPeers(t *testing.T) {
	const (
		keyA = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
		keyB = "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB="
	)
	got := parseWGPeers(
		keyB+"\t10.244.2.0/24 fd00:10:244:2::/64\n"+keyA+"\t(none)\n",
		keyB+"\t1700000000\n"+keyA+"\t0\nnonsense\n",
		keyB+"\t198.18.0.12:51820\n"+keyA+"\t(none)\n",
	)
	if len(got) != 2 || got[0].PublicKey != keyA || got[1].PublicKey != keyB {
		t.Fatalf("peers = %+v", got)
	}
	if got[0].AllowedIPs != nil || !got[0].LastHandshake.IsZero() || got[0].Endpoint != "" {
		t.Errorf("peer without data = %+v", got[0])
	}
	b := got[1]
	if strings.Join(b.AllowedIPs, ",") != "10.244.2.0/24,fd00:10:244:2::/64" || !b.LastHandshake.Equal(time.Unix(1700000000, 0)) || b.Endpoint != "198.18.0.12:51820" {
		t.Errorf("peer = %+v", b)
	}
}

func FuzzParseWGPeers(f *testing.F) {
	f.Add("k\t10.244.2.0/24\n", "k\t1700000000\n", "k\t198.18.0.12:51820\n")
	f.Add("", "", "")
	f.Add("k (none)\nk\n", "k x y\n", "k\n")
	f.Fuzz(func(t *testing.T, allowed, hs, eps string) {
		peers := parseWGPeers(allowed, hs, eps)
		for i := 1; i < len(peers); i++ {
			if peers[i-1].PublicKey >= peers[i].PublicKey {
				t.Fatalf("not sorted or duplicate: %q", peers)
			}
		}
	})
}

func TestParsePing(t *testing.T) {
	for _, tc := range []struct {
		out        string
		sent, recv int
		ok         bool
	}{
		{"--- 10.244.2.2 ping statistics ---\n3 packets transmitted, 3 received, 0% packet loss, time 2ms\n", 3, 3, true},
		{"5 packets transmitted, 0 received, +5 errors, 100% packet loss, time 4ms\n", 5, 0, true},
		{"ping: connect: Network is unreachable\n", 0, 0, false},
		{"99999999999999999999 packets transmitted, 1 received", 0, 0, false},
	} {
		r, ok := parsePing(tc.out)
		if ok != tc.ok || r.Sent != tc.sent || r.Received != tc.recv {
			t.Errorf("parsePing(%q) = %+v, %v; want %d/%d, %v", tc.out, r, ok, tc.recv, tc.sent, tc.ok)
		}
	}
}

func FuzzParsePing(f *testing.F) {
	f.Add("3 packets transmitted, 3 received, 0% packet loss")
	f.Add("1 packets transmitted, 0 packets received")
	f.Add("")
	f.Fuzz(func(t *testing.T, out string) {
		if r, ok := parsePing(out); ok && (r.Sent < 0 || r.Received < 0) {
			t.Fatalf("negative counts %+v", r)
		}
	})
}
