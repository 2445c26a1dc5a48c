package e2e_test

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/e2e/lab"
)

// Scenario 5 of issue 13: the kernel node rotates its key while a 20 Hz ping
// from a userspace node's pod flows to it; once the other node learns the
// new key from its peers file, traffic resumes. Nothing crosses the wire in
// plaintext meanwhile; the gap (longest run of lost pings) is measured.
func TestPrivilegedKernelKeyRotation(t *testing.T) {
	m := startKernelMesh(t, kernelMeshOptions{Kernel: []int{1}, Nodes: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	kern, user := m.Nodes[0], m.Nodes[1]
	if err := user.waitPingNode(ctx, kern, 4); err != nil {
		t.Fatal(err)
	}
	const count, interval = 600, 50 * time.Millisecond
	type pingOut struct {
		out string
		err error
	}
	pinged := make(chan pingOut, 1)
	go func() {
		out, err := user.podExec(ctx, fmt.Sprintf("ping -n -c %d -i %.3f -W 2 %s", count, interval.Seconds(), kern.Pods[0].Addr4))
		pinged <- pingOut{out, err}
	}()
	time.Sleep(3 * time.Second)
	oldKey := kern.PublicKey
	rotated := time.Now()
	if _, err := kern.Guest.Wgmesh(ctx, "rotate-key", "--key-file", kern.KeyFile); err != nil {
		t.Fatal(err)
	}
	out, err := kern.Guest.Wgmesh(ctx, "pubkey", "--key-file", kern.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	newKey := strings.TrimSpace(out[strings.LastIndex(strings.TrimSpace(out), "\n")+1:])
	if len(newKey) != 44 || newKey == oldKey {
		t.Fatalf("rotate-key: public key %q (was %q)", newKey, oldKey)
	}
	if err := pollUntil(withTimeout(ctx, 30*time.Second), func() error {
		got, err := kern.exec(ctx, "wg show "+kern.Interface+" public-key")
		if err == nil && strings.TrimSpace(got) != newKey {
			err = errorf("interface still has public key %s", strings.TrimSpace(got))
		}
		return err
	}); err != nil {
		t.Fatalf("agent on the kernel node did not take the rotated key: %v\n%s", err, kern.agentLogTail(20))
	}
	t.Logf("measured: kernel agent applied the rotated key after %s", time.Since(rotated).Round(time.Millisecond))
	kern.PublicKey = newKey
	data := lab.RenderPeersFile(m.Entries())
	if err := user.WritePeersFile(m.Entries()); err != nil {
		t.Fatal(err)
	}
	if err := kern.Guest.WriteFile(ctx, kern.PeersFile, data); err != nil {
		t.Fatal(err)
	}
	if err := user.waitPeers(withTimeout(ctx, 30*time.Second)); err != nil {
		t.Fatalf("the userspace node did not learn the new key: %v", err)
	}
	p := <-pinged
	gap, lost, sent := pingGap(p.out, count)
	if sent < count {
		t.Fatalf("ping ended early (%v): %s", p.err, lastLinesOf(p.out, 5))
	}
	t.Logf("measured: key rotation on the kernel node: %d of %d pings lost, longest gap %s", lost, sent, (time.Duration(gap) * interval).Round(time.Millisecond))
	if err := user.waitPingNode(withTimeout(ctx, 30*time.Second), kern, 6); err != nil {
		t.Error(err)
	}
	requireNoPlaintext(t, m.stopCapture(t))
}

var icmpSeq = regexp.MustCompile(`bytes from .* icmp_seq=(\d+)`)

// pingGap reads ping's per-reply lines: the longest run of missing
// sequence numbers among 1..count, the number missing, and how many were
// sent (from the summary).
func pingGap(out string, count int) (gap, lost, sent int) {
	got := map[int]bool{}
	for _, m := range icmpSeq.FindAllStringSubmatch(out, -1) {
		if n, err := strconv.Atoi(m[1]); err == nil {
			got[n] = true
		}
	}
	if r, ok := lab.ParsePing(out); ok {
		sent = r.Sent
	}
	run := 0
	for i := 1; i <= count; i++ {
		if got[i] {
			run = 0
			continue
		}
		lost++
		run++
		gap = max(gap, run)
	}
	return gap, lost, sent
}

func lastLinesOf(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}
