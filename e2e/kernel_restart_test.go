package e2e_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/e2e/lab"
)

// Scenario 2 of issue 13: restarting the agent on a kernel node — SIGTERM,
// then kill -9 — under a 20 Hz ping from a userspace node's pod loses no
// packet, does not re-send the peer (its handshake stays the one from before
// and its transfer counters keep growing), and rebuilds no route, rule or
// nftables object (an `ip monitor` in the guest sees no change, and every nft
// handle is the same afterwards).
func TestPrivilegedKernelAgentRestart(t *testing.T) {
	m := startKernelMesh(t, kernelMeshOptions{Kernel: []int{1}, Nodes: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	kern, user := m.Nodes[0], m.Nodes[1]
	if _, _, err := kern.waitReady(ctx); err != nil {
		t.Fatalf("kernel node not ready: %v\n%s", err, kern.agentLogTail(30))
	}
	for _, f := range families {
		if err := user.waitPingNode(ctx, kern, f); err != nil {
			t.Fatal(err)
		}
	}
	table := "wgmesh_" + kern.Interface // lab interface names need no escaping
	for _, how := range []string{"TERM", "KILL"} {
		t.Run("SIG"+how, func(t *testing.T) {
			before, err := kernelDataPlane(ctx, kern, table)
			if err != nil {
				t.Fatal(err)
			}
			mon := filepath.Join(kern.Dir, "monitor-"+how+".txt")
			if _, err := kern.exec(ctx, fmt.Sprintf("ip -o monitor route rule > %s 2>&1 & echo $! > %s.pid", mon, mon)); err != nil {
				t.Fatal(err)
			}
			// 20 Hz for 20 s, from the userspace node's pod to the
			// kernel node's pod; the restart happens in the middle.
			type pingRes struct {
				r   lab.PingResult
				err error
			}
			pinged := make(chan pingRes, 1)
			go func() {
				r, err := user.ping(ctx, kern, 4, 400, 50*time.Millisecond)
				pinged <- pingRes{r, err}
			}()
			time.Sleep(2 * time.Second)
			stopped := time.Now()
			if err := kern.Guest.SignalAgent(ctx, how, 30*time.Second); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Second)
			if _, err := kern.Guest.StartAgent(ctx); err != nil {
				t.Fatal(err)
			}
			if _, _, err := kern.waitReady(ctx); err != nil {
				t.Fatalf("agent not ready after restart: %v\n%s", err, kern.agentLogTail(30))
			}
			t.Logf("measured: agent down and back to ready in %s", time.Since(stopped).Round(time.Millisecond))
			// Let a reconcile or two run after ready before comparing.
			time.Sleep(3 * time.Second)
			pr := <-pinged
			if pr.err != nil {
				t.Fatal(pr.err)
			}
			t.Logf("measured: ping at 20 Hz across the restart: %s", pr.r)
			if pr.r.Sent < 400 || pr.r.Received != pr.r.Sent {
				t.Errorf("ping lost packets across the SIG%s restart: %s", how, pr.r)
			}
			if _, err := kern.exec(ctx, fmt.Sprintf("kill $(cat %s.pid)", mon)); err != nil {
				t.Error(err)
			}
			after, err := kernelDataPlane(ctx, kern, table)
			if err != nil {
				t.Fatal(err)
			}
			if before.nft != after.nft {
				t.Errorf("nft table %s changed across the restart (rebuilt):\nbefore:\n%s\nafter:\n%s", table, before.nft, after.nft)
			}
			if before.peer.LastHandshake.IsZero() || !after.peer.LastHandshake.Equal(before.peer.LastHandshake) &&
				after.peer.LastHandshake.Sub(before.peer.LastHandshake) < 100*time.Second {
				t.Errorf("the peer's handshake changed from %s to %s: the peer was re-sent", before.peer.LastHandshake, after.peer.LastHandshake)
			}
			if after.rx < before.rx || after.tx < before.tx {
				t.Errorf("the peer's transfer counters went back (rx %d -> %d, tx %d -> %d): the peer was re-created", before.rx, after.rx, before.tx, after.tx)
			}
			changes, _ := os.ReadFile(mon)
			if s := strings.TrimSpace(string(changes)); s != "" {
				t.Errorf("routes or rules changed across the restart (ip monitor):\n%s", s)
			}
			t.Logf("measured: handshake kept (%s), rx %d -> %d bytes, nft handles unchanged, no route/rule event", before.peer.LastHandshake.Format(time.TimeOnly), before.rx, after.rx)
		})
	}
	requireNoPlaintext(t, m.stopCapture(t))
}

type dataPlane struct {
	nft    string // nft -a list table, without counter values
	peer   lab.WGPeer
	rx, tx int64
}

var counterValues = regexp.MustCompile(`packets \d+ bytes \d+`)

func kernelDataPlane(ctx context.Context, kn *kernelNode, table string) (dataPlane, error) {
	var d dataPlane
	out, err := kn.exec(ctx, "nft -a list table inet "+table)
	if err != nil {
		return d, err
	}
	d.nft = counterValues.ReplaceAllString(out, "packets - bytes -")
	peers, err := kn.wgPeers(ctx)
	if err != nil || len(peers) != 1 {
		return d, fmt.Errorf("wg peers of %s: %v %v", kn.Name, peers, err)
	}
	d.peer = peers[0]
	tr, err := kn.exec(ctx, "wg show "+kn.Interface+" transfer")
	if err != nil {
		return d, err
	}
	if _, err := fmt.Sscan(strings.Fields(tr)[1]+" "+strings.Fields(tr)[2], &d.rx, &d.tx); err != nil {
		return d, fmt.Errorf("wg show transfer: %q: %w", tr, err)
	}
	return d, nil
}
