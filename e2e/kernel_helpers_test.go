package e2e_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/e2e/lab"
	"github.com/wgmesh/wgmesh/e2e/uml"
)

// umlKernel builds (once, cached) and returns the UML kernel of variant v. It
// skips the test when the kernel source package is not installed (.ci/run
// installs it) and logs the build time when this call built it.
func umlKernel(t *testing.T, v uml.Variant) *uml.Kernel {
	t.Helper()
	labRequireRoot(t)
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("privileged kernel: make not installed (apt-get install build-essential)")
	}
	// A cold build of the full kernel takes tens of minutes on 2 loaded
	// cores; the e2e run's own timeout (60m) bounds it.
	ctx, cancel := context.WithTimeout(context.Background(), 55*time.Minute)
	defer cancel()
	k, err := uml.Build(ctx, v, t.Logf)
	if err != nil && strings.Contains(err.Error(), "is not installed") {
		t.Skipf("privileged kernel: %v", err)
	}
	if err != nil {
		t.Fatalf("build UML kernel %s: %v", v.Name, err)
	}
	if k.BuildTime > 0 {
		t.Logf("measured: UML kernel %s built in %s", v.Name, k.BuildTime.Round(time.Second))
	}
	return k
}

// kernelNode is a node of a mixed mesh: a UML guest (kernel WireGuard) or a
// namespace (userspace WireGuard).
type kernelNode struct {
	*lab.Node
	Guest *uml.Guest // nil for a namespace node
	Agent *lab.Agent // the namespace node's agent
	m     *kernelMesh
}

type kernelMesh struct {
	*lab.Lab
	Capture *lab.Capture
	Nodes   []*kernelNode
	Xfer    string
	wgmesh  string
}

type kernelMeshOptions struct {
	// Kernel lists the indexes (from 1) of the nodes that are UML guests.
	Kernel []int
	// Variant is the guests' kernel (uml.Full when empty).
	Variant uml.Variant
	// Nodes is the lab's node count (3 when zero).
	Nodes int
	// AgentArgs are extra agent flags for every node.
	AgentArgs []string
	// NoAgents leaves the agents to the test; NoWait skips waiting for
	// peers.
	NoAgents, NoWait bool
}

// startKernelMesh builds a lab whose listed nodes are UML guests, starts the
// capture, writes keys and peers files, starts every agent and waits until
// each has configured all peers.
//
// It marks the test parallel: a kernel scenario mostly waits on its guests
// (boots, agent restarts, paced pings), so the scenarios overlap after the
// package's other tests, as many at once as go test's -parallel (Makefile).
func startKernelMesh(t *testing.T, o kernelMeshOptions) *kernelMesh {
	t.Helper()
	t.Parallel()
	if o.Variant.Name == "" {
		o.Variant = uml.Full
	}
	k := umlKernel(t, o.Variant)
	wgmesh := labWgmeshBinary(t)
	l := newTestLab(t, lab.Options{Nodes: o.Nodes, Wgmesh: wgmesh})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	m := &kernelMesh{Lab: l}
	var err error
	// The guests and `status` on every node run this one.
	if m.wgmesh, err = uml.GuestBinary(wgmesh, l.Dir()); err != nil {
		t.Fatal(err)
	}
	if m.Xfer, err = uml.BuildXfer(ctx, l.Dir()); err != nil {
		t.Fatal(err)
	}
	if m.Capture, err = l.StartCapture(ctx); err != nil {
		t.Fatal(err)
	}
	if err := l.Keygen(ctx); err != nil {
		t.Fatal(err)
	}
	if err := l.WritePeersFiles(l.Entries()); err != nil {
		t.Fatal(err)
	}
	isKernel := map[int]bool{}
	for _, i := range o.Kernel {
		isKernel[i] = true
	}
	// The guests boot at once: a boot mostly waits on its own guest.
	type booted struct {
		g   *uml.Guest
		err error
	}
	boots := map[*lab.Node]chan booted{}
	for _, n := range l.Nodes {
		if isKernel[n.Index] {
			ch := make(chan booted, 1)
			boots[n] = ch
			go func() {
				g, err := uml.Boot(ctx, uml.Options{Kernel: k, Lab: l, Node: n, Wgmesh: m.wgmesh, Logf: t.Logf})
				ch <- booted{g, err}
			}()
		}
	}
	var bootErr error
	for _, n := range l.Nodes {
		kn := &kernelNode{Node: n, m: m}
		m.Nodes = append(m.Nodes, kn)
		if boots[n] == nil {
			continue
		}
		b := <-boots[n]
		if b.err != nil {
			bootErr = errors.Join(bootErr, b.err)
			continue
		}
		g := b.g
		t.Logf("measured: UML guest %s (kernel %s) booted in %s", n.Name, o.Variant.Name, g.BootTime.Round(time.Millisecond))
		kn.Guest = g
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("guest %s agent log tail:\n%s", n.Name, tailFile(g.AgentLog(), 40))
			}
			if err := g.Close(); err != nil {
				t.Errorf("close guest: %v", err)
			}
		})
	}
	if bootErr != nil {
		t.Fatal(bootErr)
	}
	if o.NoAgents {
		return m
	}
	for _, kn := range m.Nodes {
		if err := kn.startAgent(ctx, o.AgentArgs...); err != nil {
			t.Fatal(err)
		}
	}
	if !o.NoWait {
		for _, kn := range m.Nodes {
			if err := kn.waitPeers(ctx); err != nil {
				t.Fatalf("%v\n%s", err, kn.agentLogTail(30))
			}
		}
	}
	return m
}

func (kn *kernelNode) kind() string {
	if kn.Guest != nil {
		return "kernel"
	}
	return "userspace"
}

func (kn *kernelNode) startAgent(ctx context.Context, extra ...string) error {
	if kn.Guest != nil {
		_, err := kn.Guest.StartAgent(ctx, extra...)
		return err
	}
	if kn.Agent != nil {
		return kn.Agent.Restart()
	}
	a, err := kn.m.StartAgent(kn.Node, extra...)
	kn.Agent = a
	return err
}

func (kn *kernelNode) agentLogTail(n int) string {
	if kn.Guest != nil {
		return tailFile(kn.Guest.AgentLog(), n)
	}
	if kn.Agent != nil {
		return kn.Agent.LogTail(n)
	}
	return ""
}

// exec runs a shell command line on the node (guest or namespace).
func (kn *kernelNode) exec(ctx context.Context, cmdline string) (string, error) {
	if kn.Guest != nil {
		return kn.Guest.Run(ctx, cmdline)
	}
	return kn.Exec(ctx, "sh", "-c", cmdline)
}

// podExec runs a shell command line in the node's first pod.
func (kn *kernelNode) podExec(ctx context.Context, cmdline string) (string, error) {
	if kn.Guest != nil {
		return kn.Guest.Run(ctx, uml.InPod(1, "sh -c '"+cmdline+"'"))
	}
	return kn.Pods[0].Exec(ctx, "sh", "-c", cmdline)
}

// wgPeers reads `wg show` on the node.
func (kn *kernelNode) wgPeers(ctx context.Context) ([]lab.WGPeer, error) {
	if kn.Guest == nil {
		return kn.WGPeers(ctx)
	}
	var outs [3]string
	for i, what := range []string{"allowed-ips", "latest-handshakes", "endpoints"} {
		out, err := kn.Guest.Run(ctx, "wg show "+kn.Interface+" "+what)
		if err != nil {
			return nil, err
		}
		outs[i] = out
	}
	return lab.ParseWGPeers(outs[0], outs[1], outs[2]), nil
}

// waitPeers waits until the node's interface has every other node as a peer.
func (kn *kernelNode) waitPeers(ctx context.Context) error {
	want := map[string]bool{}
	for _, o := range kn.m.Nodes {
		if o != kn {
			want[o.PublicKey] = true
		}
	}
	return kn.pollAgent(ctx, func(ctx context.Context) error {
		peers, err := kn.wgPeers(ctx)
		if err != nil {
			return err
		}
		got := 0
		for _, p := range peers {
			if want[p.PublicKey] {
				got++
			}
		}
		if got != len(want) {
			return fmt.Errorf("node %s (%s): %d of %d peers configured", kn.Name, kn.kind(), got, len(want))
		}
		return nil
	})
}

// pollAgent retries f every 300 ms until it succeeds or ctx ends, like
// pollUntil, but on a guest whose agent has exited it fails at once: no
// retry can succeed then (an agent that cannot start would otherwise cost
// the whole timeout).
func (kn *kernelNode) pollAgent(ctx context.Context, f func(context.Context) error) error {
	var gone error
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	err := lab.Poll(pctx, 300*time.Millisecond, func(ctx context.Context) (bool, error) {
		err := f(ctx)
		if err == nil {
			return true, nil
		}
		if kn.Guest != nil {
			if _, running := kn.Guest.AgentPid(ctx); !running && ctx.Err() == nil {
				gone = fmt.Errorf("node %s: the agent exited (%v)", kn.Name, err)
				cancel()
			}
		}
		return false, err
	})
	if gone != nil {
		return gone
	}
	return err
}

// waitStatus polls the node's `wgmesh status` until cond accepts it and
// returns that status and the command's output (see pollAgent).
func (kn *kernelNode) waitStatus(ctx context.Context, cond func(kernelStatus) error) (kernelStatus, string, error) {
	var st kernelStatus
	var out string
	err := kn.pollAgent(ctx, func(ctx context.Context) error {
		var err error
		st, out, err = kn.status(ctx)
		if err == nil {
			err = cond(st)
		}
		return err
	})
	return st, out, err
}

// waitReady is waitStatus until the status says ready.
func (kn *kernelNode) waitReady(ctx context.Context) (kernelStatus, string, error) {
	return kn.waitStatus(ctx, func(st kernelStatus) error {
		if !st.Ready {
			return errorf("not ready: %+v", st.LastReconcile)
		}
		return nil
	})
}

// kernelStatus is the part of `wgmesh status -o json` these tests read.
type kernelStatus struct {
	Backend         string   `json:"backend"`
	Strict          bool     `json:"strict"`
	Ready           bool     `json:"ready"`
	AgentRunning    bool     `json:"agentRunning"`
	RoutingWarnings []string `json:"routingWarnings"`
	IngressDropped  uint64   `json:"ingressDroppedPackets"`
	EgressDropped   uint64   `json:"egressDroppedPackets"`
	LastReconcile   *struct {
		Error string `json:"error"`
	} `json:"lastReconcile"`
	Peers []json.RawMessage `json:"peers"`
}

func (kn *kernelNode) status(ctx context.Context) (kernelStatus, string, error) {
	var st kernelStatus
	out, err := kn.exec(ctx, kn.m.wgmesh+" status --interface "+kn.Interface+" -o json")
	if err != nil {
		return st, out, err
	}
	i := strings.Index(out, "{")
	if i < 0 {
		return st, out, fmt.Errorf("node %s: status printed no JSON: %q", kn.Name, out)
	}
	if err := json.Unmarshal([]byte(out[i:]), &st); err != nil {
		return st, out, fmt.Errorf("node %s: status JSON: %w", kn.Name, err)
	}
	return st, out, nil
}

// ping sends count pings at interval from kn's pod to dst's pod address of
// family and returns how many were answered.
func (kn *kernelNode) ping(ctx context.Context, dst *kernelNode, family, count int, interval time.Duration) (lab.PingResult, error) {
	addr := dst.Pods[0].Addr(family)
	out, err := kn.podExec(ctx, fmt.Sprintf("ping -n -q -c %d -i %.3f -W 2 %s", count, interval.Seconds(), addr))
	r, ok := lab.ParsePing(out)
	if !ok {
		return r, fmt.Errorf("ping %s -> %s: %v: %s", kn.Name, addr, err, out)
	}
	return r, nil
}

// waitPingNode pings until all of 3 pings are answered.
func (kn *kernelNode) waitPingNode(ctx context.Context, dst *kernelNode, family int) error {
	return lab.Poll(ctx, 300*time.Millisecond, func(ctx context.Context) (bool, error) {
		r, err := kn.ping(ctx, dst, family, 3, 200*time.Millisecond)
		if err != nil {
			return false, err
		}
		if r.Received != r.Sent {
			return false, fmt.Errorf("ping %s -> %s (IPv%d): %s", kn.Name, dst.Name, family, r)
		}
		return true, nil
	})
}

// transfer sends n bytes over TCP from kn's pod to dst's pod and compares the
// SHA-256 both ends computed.
func (kn *kernelNode) transfer(ctx context.Context, dst *kernelNode, family int, port int, n int64) (time.Duration, error) {
	addr := dst.Pods[0].Addr(family).String()
	var wg sync.WaitGroup
	var recvOut string
	var recvErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		recvOut, recvErr = dst.podExec(ctx, fmt.Sprintf("timeout 300 %s recv %s %d", kn.m.Xfer, addr, port))
	}()
	start := time.Now()
	sendOut, sendErr := kn.podExec(ctx, fmt.Sprintf("timeout 300 %s send %s %d %d", kn.m.Xfer, addr, port, n))
	wg.Wait()
	took := time.Since(start)
	if sendErr != nil || recvErr != nil {
		return took, fmt.Errorf("transfer %s -> %s (IPv%d): send %v %q, receive %v %q", kn.Name, dst.Name, family, sendErr, sendOut, recvErr, recvOut)
	}
	s, r := strings.Fields(sendOut), strings.Fields(recvOut)
	if len(s) != 2 || len(r) != 2 || s[0] != fmt.Sprint(n) || s[0] != r[0] || s[1] != r[1] {
		return took, fmt.Errorf("transfer %s -> %s (IPv%d): sent %q, received %q", kn.Name, dst.Name, family, sendOut, recvOut)
	}
	return took, nil
}

// stopCapture stops the capture; a capture that missed packets fails the test.
func (m *kernelMesh) stopCapture(t *testing.T) lab.CaptureResult {
	t.Helper()
	r, err := m.Capture.Stop()
	if err != nil {
		t.Fatalf("capture: %v", err)
	}
	if r.KernelDropped > 0 {
		t.Errorf("capture dropped %d packets: a zero plaintext count would not be trustworthy", r.KernelDropped)
	}
	return r
}

func tailFile(path string, n int) string {
	out, err := exec.Command("tail", "-n", fmt.Sprint(n), path).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("(%s: %v)", path, err)
	}
	return string(out)
}

// pollUntil retries f every 300 ms until it succeeds or ctx ends (then the
// last error is returned).
func pollUntil(ctx context.Context, f func() error) error {
	return lab.Poll(ctx, 300*time.Millisecond, func(ctx context.Context) (bool, error) {
		if err := f(); err != nil {
			return false, err
		}
		return true, nil
	})
}

func errorf(format string, a ...any) error { return fmt.Errorf(format, a...) }
