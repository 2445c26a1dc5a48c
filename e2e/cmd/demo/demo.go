package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/wgmesh/wgmesh/e2e/lab"
)

// demo narrates one run. Checks that fail are counted and reported at the
// end; steps that cannot continue return an error.
type demo struct {
	out    io.Writer
	o      options
	start  time.Time
	step   int
	checks int
	failed []string
	lab    *lab.Lab
	total  int // steps announced in headers
}

const totalSteps = 11

func (d *demo) header(format string, args ...any) {
	d.step++
	fmt.Fprintf(d.out, "\n[%d/%d] %s\n", d.step, d.total, fmt.Sprintf(format, args...))
}

func (d *demo) say(format string, args ...any) {
	fmt.Fprintf(d.out, "      %s\n", fmt.Sprintf(format, args...))
}

// check records one verifiable claim.
func (d *demo) check(ok bool, format string, args ...any) {
	d.checks++
	msg := fmt.Sprintf(format, args...)
	mark := "ok  "
	if !ok {
		mark = "FAIL"
		d.failed = append(d.failed, msg)
	}
	fmt.Fprintf(d.out, "      %s %s\n", mark, msg)
}

func (d *demo) run(ctx context.Context) (err error) {
	if d.o.K8s {
		return d.runCluster(ctx)
	}
	d.total = totalSteps
	fmt.Fprintf(d.out, "wgmesh demo: %d machines, each with a pod, joined by one virtual switch.\n", d.o.Nodes)
	fmt.Fprintf(d.out, "Goal: every pod reaches every other pod, and not one pod packet crosses the switch unencrypted.\n")

	d.header("Removing leftovers of earlier demo runs that did not finish")
	removed, err := lab.RemoveStale(d.o.Prefix)
	if err != nil {
		return err
	}
	if len(removed) == 0 {
		d.say("nothing left over")
	} else {
		d.say("removed %d stale namespaces: %s", len(removed), strings.Join(removed, " "))
	}

	d.header("Building the lab out of network namespaces")
	l, err := lab.New(ctx, lab.Options{Prefix: d.o.Prefix, Nodes: d.o.Nodes, Wgmesh: d.o.Wgmesh})
	if err != nil {
		return err
	}
	d.lab = l
	defer func() {
		fmt.Fprintf(d.out, "\nCleaning up: stopping agents and the capture, removing %d namespaces.\n", len(l.Namespaces()))
		if cerr := l.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	for _, n := range l.Nodes {
		d.say("%-6s switch address %-12s  pod network %-14s %-20s  pod %s, %s",
			n.Name, n.Underlay, n.PodCIDR4, n.PodCIDR6, n.Pods[0].Addr4, n.Pods[0].Addr6)
	}
	d.say("Each node already routes the other nodes' pod networks over the switch — in plaintext,")
	d.say("as a simple CNI would. wgmesh must move that traffic into WireGuard.")

	d.header("Recording every packet on the switch with tcpdump")
	capt, err := l.StartCapture(ctx)
	if err != nil {
		return err
	}
	d.say("writing %s", capt.Path)

	d.header("Generating a WireGuard key pair per node (wgmesh keygen)")
	if err := l.Keygen(ctx); err != nil {
		return err
	}
	for _, n := range l.Nodes {
		d.say("%-6s public key %s", n.Name, n.PublicKey)
	}
	d.say("private keys stay in %s/<node>/private.key (mode 0600)", l.Dir())

	d.header("Writing the peers file: who is who, where to reach them, which pod networks they own")
	d.say("every agent reads this file and watches it for changes (on Kubernetes, Node objects play its part)")
	if err := l.WritePeersFiles(l.Entries()); err != nil {
		return err
	}
	for _, line := range strings.Split(strings.TrimSpace(string(lab.RenderPeersFile(l.Entries()))), "\n") {
		d.say("| %s", line)
	}

	d.header("Starting one wgmesh agent per node")
	agents := map[string]*lab.Agent{}
	for _, n := range l.Nodes {
		var a *lab.Agent
		a, err = l.StartAgent(n, d.o.AgentArgs...)
		if err != nil {
			return err
		}
		agents[n.Name] = a
		d.say("%-6s wgmesh %s", n.Name, strings.ReplaceAll(strings.Join(a.Args, " "), l.Dir(), "$LAB"))
	}
	d.say("($LAB is %s; each agent runs inside its node's namespace)", l.Dir())

	d.header("Waiting for every agent to set up its peers, then for the WireGuard handshakes")
	t0 := time.Now()
	for _, n := range l.Nodes {
		var others []*lab.Node
		for _, m := range l.Nodes {
			if m != n {
				others = append(others, m)
			}
		}
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := n.WaitPeers(wctx, others...)
		cancel()
		if err != nil {
			return fmt.Errorf("%w\nagent log of %s:\n%s", err, n.Name, agents[n.Name].LogTail(20))
		}
	}
	d.say("all agents configured their peers after %s", time.Since(t0).Round(time.Millisecond))
	rctx, rcancel := context.WithTimeout(ctx, 20*time.Second)
	for _, n := range l.Nodes {
		err := n.WaitReady(rctx)
		d.check(err == nil, "%s agent ready (routes, rules and interface applied cleanly)%s", n.Name, errSuffix(err))
	}
	rcancel()
	// A handshake happens when there is something to send: one ping from
	// each pod to every other node's pod starts them.
	for _, a := range l.Nodes {
		for _, b := range l.Nodes {
			if a != b {
				_, _ = a.Pods[0].Ping(ctx, b.Pods[0].Addr4, 1, 100*time.Millisecond)
			}
		}
	}
	for _, n := range l.Nodes {
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := n.WaitHandshakes(wctx, t0)
		cancel()
		d.check(err == nil, "%s completed a handshake with each of its %d peers", n.Name, len(l.Nodes)-1)
	}
	d.say("encrypted sessions up %s after the agents started", time.Since(t0).Round(time.Millisecond))

	d.header("What node1's agent reports (wgmesh status)")
	n1 := l.Nodes[0]
	status, err := n1.Wgmesh(ctx, "status", "--interface", n1.Interface)
	if err != nil {
		d.check(false, "wgmesh status on %s: %v", n1.Name, err)
	}
	for _, line := range strings.Split(strings.TrimRight(status, "\n"), "\n") {
		d.say("| %s", line)
	}

	d.header("Pinging from every pod to every other node's pod, IPv4 and IPv6")
	d.say("path: pod -> its node -> wgmesh routing table -> WireGuard -> switch -> other node -> pod")
	for _, a := range l.Nodes {
		for _, b := range l.Nodes {
			if a == b {
				continue
			}
			for _, dst := range []string{"4", "6"} {
				addr := b.Pods[0].Addr4
				if dst == "6" {
					addr = b.Pods[0].Addr6
				}
				r, err := a.Pods[0].Ping(ctx, addr, 3, 50*time.Millisecond)
				if err != nil {
					return err
				}
				d.check(r.Received == r.Sent, "%s -> %-18s %s", a.Pods[0].Name, addr, r)
			}
		}
	}

	d.header("Sending %d MiB over TCP from node1's pod to node2's pod and comparing sha256", d.o.TransferBytes>>20)
	tctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	res, err := lab.Transfer(tctx, n1.Pods[0], l.Nodes[min(1, len(l.Nodes)-1)].Pods[0], l.Nodes[min(1, len(l.Nodes)-1)].Pods[0].Addr4, d.o.TransferBytes)
	cancel()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	d.check(err == nil, "transfer: %s%s", res, errSuffix(err))

	if err := d.wire(capt); err != nil {
		return err
	}
	return d.verdict(func() {
		for _, a := range agents {
			fmt.Fprintf(d.out, "\nagent log of %s (last lines):\n%s\n", a.Node.Name, a.LogTail(15))
		}
	})
}

// wire stops the capture and checks what crossed the switch: WireGuard
// packets, no plaintext pod packet, no frame missed.
func (d *demo) wire(capt *lab.Capture) error {
	d.header("What crossed the switch")
	d.say("a pod packet in plaintext shows a pod address (10.244.x.x, fd00:10:244:...) on the wire;")
	d.say("an encrypted one shows only node addresses and WireGuard's UDP header")
	cr, err := capt.Stop()
	if err != nil {
		return err
	}
	d.say("%d packets captured; %d were WireGuard; %d were pod traffic in plaintext", cr.Frames, cr.WireGuard, cr.Plaintext)
	d.check(cr.WireGuard > 0, "%d WireGuard UDP packets carried the pod traffic", cr.WireGuard)
	d.check(cr.Plaintext == 0, "%d plaintext pod packets on the wire%s", cr.Plaintext, samples(cr.PlaintextSamples))
	d.check(cr.KernelDropped == 0, "capture complete (%d packets dropped by the kernel)", cr.KernelDropped)
	return nil
}

// verdict prints PASS or FAIL over every check; on failure it runs logs
// (the last lines of what ran) and returns an error naming the failed
// checks.
func (d *demo) verdict(logs func()) error {
	elapsed := time.Since(d.start).Round(100 * time.Millisecond)
	if len(d.failed) > 0 {
		fmt.Fprintf(d.out, "\nResult: FAIL — %d of %d checks failed (%s)\n", len(d.failed), d.checks, elapsed)
		logs()
		return fmt.Errorf("%d of %d checks failed: %s", len(d.failed), d.checks, strings.Join(d.failed, "; "))
	}
	fmt.Fprintf(d.out, "\nResult: PASS — all %d checks passed in %s\n", d.checks, elapsed)
	return nil
}

func errSuffix(err error) string {
	if err == nil {
		return ""
	}
	return " — " + err.Error()
}

func samples(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return " (e.g. " + strings.Join(s, "; ") + ")"
}
