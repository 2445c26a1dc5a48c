package e2e_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/e2e/lab"
)

// TestPrivilegedLabPlainRouting checks the lab itself, without agents: pods
// reach each other over the nodes' plain routes, and the capture counts that
// traffic as plaintext. It is the proof that the plaintext counter of every
// other scenario can fail.
func TestPrivilegedLabPlainRouting(t *testing.T) {
	labRequireRoot(t)
	l := newTestLab(t, lab.Options{PodsPerNode: 2, ControlPlane: true})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// A capture stopped right after a few packets must hold exactly those
	// packets: nothing may be lost in tcpdump's buffers at the end.
	short, err := l.StartCaptureFile(ctx, filepath.Join(l.Dir(), "short.pcap"))
	if err != nil {
		t.Fatal(err)
	}
	if r, err := l.Nodes[0].Pods[0].Ping(ctx, l.Nodes[2].Pods[1].Addr4, 3, 20*time.Millisecond); err != nil || r.Received != 3 {
		t.Fatalf("ping before any agent: %v, %v", r, err)
	}
	sr, err := short.Stop()
	if err != nil {
		t.Fatal(err)
	}
	if sr.Plaintext != 6 {
		t.Errorf("short capture counted %d plaintext packets for 3 echo requests and 3 replies, want 6 (%s)", sr.Plaintext, sr.Counts)
	}

	capt, err := l.StartCapture(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Every pod reaches every pod on another node, both families.
	for _, a := range l.Pods() {
		for _, b := range l.Pods() {
			if a.Node == b.Node {
				continue
			}
			for _, fam := range families {
				r, err := a.Ping(ctx, b.Addr(fam), 2, 50*time.Millisecond)
				if err != nil {
					t.Fatal(err)
				}
				if r.Received == 0 {
					t.Errorf("plain routing: %s cannot reach %s (%s)", a.Name, b.Addr(fam), r)
				}
			}
		}
	}
	// The control plane reaches the nodes on the underlay.
	if out, err := l.Nodes[0].Exec(ctx, "ping", "-c", "1", "-W", "2", lab.ControlPlaneAddr.String()); err != nil {
		t.Errorf("node1 cannot reach the control plane: %v\n%s", err, out)
	}
	res, err := lab.Transfer(ctx, l.Nodes[0].Pods[0], l.Nodes[1].Pods[1], l.Nodes[1].Pods[1].Addr6, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("measured: plain transfer %s", res)

	r, err := capt.Stop()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("measured: capture without agents %s (%d dropped)", r.Counts, r.KernelDropped)
	// 12 pod pairs x 2 families x 2 pings x 2 directions, plus the transfer.
	if r.Plaintext < 96 {
		t.Errorf("capture counted %d plaintext pod packets, want at least 96: the counter misses plaintext", r.Plaintext)
	}
	if r.WireGuard != 0 {
		t.Errorf("capture counted %d WireGuard packets without any agent", r.WireGuard)
	}

	// Close removes every namespace and can be called again.
	ns := l.Namespaces()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	for _, n := range ns {
		if _, err := os.Stat(filepath.Join("/var/run/netns", n)); err == nil {
			t.Errorf("namespace %s survived Close", n)
		}
	}
}

// TestPrivilegedLabRemoveStale leaves a lab behind as a crashed process would
// (a name with a pid that no longer runs) and checks RemoveStale finds it,
// while a live process's lab is left alone.
func TestPrivilegedLabRemoveStale(t *testing.T) {
	labRequireRoot(t)
	prefix := "wgmstale"
	// A pid that certainly does not run: start and reap a short process.
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	dead := cmd.Process.Pid
	staleNS := prefix + "-" + strconv.Itoa(dead) + "-abcdef-n1"
	liveNS := prefix + "-" + strconv.Itoa(os.Getpid()) + "-fedcba-n1"
	ctx := context.Background()
	for _, ns := range []string{staleNS, liveNS} {
		if out, err := exec.CommandContext(ctx, "ip", "netns", "add", ns).CombinedOutput(); err != nil {
			t.Fatalf("ip netns add %s: %v %s", ns, err, out)
		}
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	}
	removed, err := lab.RemoveStale(prefix)
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 1 || removed[0] != staleNS {
		t.Errorf("RemoveStale removed %v, want [%s]", removed, staleNS)
	}
	if _, err := os.Stat(filepath.Join("/var/run/netns", liveNS)); err != nil {
		t.Errorf("live lab namespace %s was removed", liveNS)
	}
}
