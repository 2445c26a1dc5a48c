package uml

import (
	"os/exec"
	"strings"
	"testing"
)

// The cache key changes with the source version and the options turned off
// or on (in any order the same), so a variant never reuses another's kernel.
func TestBuildKey(t *testing.T) {
	a := buildKey("6.1.1-1", Full)
	if a != buildKey("6.1.1-1", Variant{Name: "other name"}) {
		t.Error("the key depends on the variant's name, not only its options")
	}
	if a == buildKey("6.1.1-2", Full) {
		t.Error("the key ignores the source version")
	}
	x := buildKey("6.1.1-1", Variant{Disable: []string{"XFRM_USER", "NFT_OBJREF"}})
	if x == a || x != buildKey("6.1.1-1", Variant{Disable: []string{"NFT_OBJREF", "XFRM_USER"}}) {
		t.Error("the key must change with the options turned off and ignore their order")
	}
	y := buildKey("6.1.1-1", Variant{Disable: []string{"XFRM_USER", "NFT_OBJREF"}, Enable: []string{"NET_KEY"}})
	if y == x || y == a {
		t.Error("the key must change with the options turned on")
	}
	if buildKey("6.1.1-1", Variant{Disable: []string{"NET_KEY"}}) == buildKey("6.1.1-1", Variant{Enable: []string{"NET_KEY"}}) {
		t.Error("turning an option on and off must not share a key")
	}
	if !strings.Contains(string(baseConfig), "\nCONFIG_WIREGUARD=y\n") || !strings.Contains(string(baseConfig), "\nCONFIG_NFT_OBJREF=y\n") {
		t.Error("the embedded base config lacks WireGuard or objref")
	}
}

// shellJoin must survive words with spaces and quotes.
func TestShellJoin(t *testing.T) {
	words := []string{"a b", "it's", "$HOME", ""}
	out, err := exec.Command("sh", "-c", "for w in "+shellJoin(words)+`; do printf '[%s]' "$w"; done`).Output()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(out), "[a b][it's][$HOME][]"; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}

// A binary under the guest's own tmpfs mounts is invisible to it, except in
// the lab directory, which the guest mounts back.
func TestHiddenInGuest(t *testing.T) {
	for path, want := range map[string]bool{
		"/tmp/old/bin/wgmesh":  true,
		"/run/x":               true,
		"/var/tmp/x":           true,
		"/tmp/lab1/wgmesh":     false,
		"/work/bin/wgmesh":     false,
		"/tmpfoo/wgmesh":       false,
		"/root/rvk-old/wgmesh": false,
		"/tmp/lab10/wgmesh":    true,
	} {
		if got := hiddenInGuest(path, "/tmp/lab1"); got != want {
			t.Errorf("hiddenInGuest(%s, /tmp/lab1) = %v, want %v", path, got, want)
		}
	}
}
