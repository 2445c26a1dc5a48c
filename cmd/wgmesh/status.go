package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/vishvananda/netlink"

	"github.com/wgmesh/wgmesh/device"
	"github.com/wgmesh/wgmesh/instance"
	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/metrics"
)

// statusTimeout bounds the query of the local agent.
const statusTimeout = 5 * time.Second

// inspectFunc reads an interface without an agent (device.Inspect; tests
// replace it).
type inspectFunc func(name string) (device.Info, error)

func (a *app) statusCommand() *cobra.Command {
	var (
		iface       string
		output      string
		metricsAddr string
	)
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the local interface and its peers by node name",
		Long: `status asks the local agent (at --metrics-addr) for its status: peers by node
name with endpoint, allowed IPs, last handshake and bytes, the backend, MTU and
the MTU pods should use, strict mode, unencrypted nodes and problems. When no
agent answers it reads the interface directly (peers by public key; a
userspace interface without its agent has no WireGuard state and says so).
With -o json, a failure prints {"kind": "Error", "error": ...} and exits 1.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return usagef("-o %q: want table or json", output)
			}
			if err := checkInterfaceFlag(iface); err != nil {
				return err
			}
			base, err := metricsURL(metricsAddr)
			if err != nil {
				return usagef("--metrics-addr %q: %v", metricsAddr, err)
			}
			st, err := a.readStatus(cmd.Context(), base, iface, device.Inspect)
			if err != nil {
				if output == "json" {
					// Scripts parse standard output: give them a
					// document in every case.
					writeStatusError(a.out, err)
					fmt.Fprintf(a.err, "wgmesh: %v\n", err)
					return exitCodeError{exitFailure, err}
				}
				return err
			}
			if output == "json" {
				enc := json.NewEncoder(a.out)
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			return printStatus(a.out, st, time.Now())
		},
	}
	f := cmd.Flags()
	f.StringVar(&iface, "interface", device.DefaultName, "WireGuard interface")
	f.StringVarP(&output, "output", "o", "table", "output format: table or json")
	f.StringVar(&metricsAddr, "metrics-addr", fmt.Sprintf(":%d", metrics.DefaultPort), "the agent's --metrics-addr")
	return cmd
}

// readStatus asks the agent; without an agent it falls back to inspecting
// the interface. An agent that serves another interface is not asked.
func (a *app) readStatus(ctx context.Context, base, iface string, inspect inspectFunc) (metrics.Status, error) {
	ctx, cancel := context.WithTimeout(ctx, statusTimeout)
	defer cancel()
	st, agentErr := metrics.FetchStatus(ctx, &http.Client{Timeout: statusTimeout}, base)
	if agentErr == nil && st.Interface == iface {
		return st, nil
	}
	if agentErr == nil {
		agentErr = fmt.Errorf("the agent at %s serves interface %s, not %s (for it, pass --interface %s)", base, st.Interface, iface, st.Interface)
	}
	a.log.Debug("agent status unavailable, reading the interface", "err", agentErr)
	info, err := inspect(iface)
	if err != nil {
		if errors.Is(err, device.ErrNotFound) {
			if st, ok := userspaceWithoutAgent(iface); ok {
				return st, nil
			}
			return metrics.Status{}, fmt.Errorf("interface %s: %w; and no agent answered: %v (is 'wgmesh agent' running?)", iface, err, agentErr)
		}
		return metrics.Status{}, fmt.Errorf("read interface %s: %w (agent: %v)", iface, err, agentErr)
	}
	st = metrics.Status{
		APIVersion:  metrics.APIVersion,
		Kind:        metrics.KindStatus,
		Interface:   info.Name,
		Backend:     info.Backend,
		ListenPort:  info.ListenPort,
		Peers:       []metrics.PeerStatus{},
		Unencrypted: []string{},
		Problems:    []metrics.ProblemStatus{},
	}
	if !info.PublicKey.IsZero() {
		st.PublicKey = info.PublicKey.String()
	}
	for _, p := range info.Peers {
		st.Peers = append(st.Peers, metrics.NewPeerStatus("", p))
	}
	metrics.SortPeers(st.Peers)
	return st, nil
}

// lookupLink finds an interface (netlink.LinkByName; tests replace it).
var lookupLink = netlink.LinkByName

// userspaceWithoutAgent describes a wgmesh userspace (TUN) interface whose
// agent is not running: wireguard-go ran inside the agent, so there is no
// WireGuard state to read, and the interface drops what is routed into it.
func userspaceWithoutAgent(iface string) (metrics.Status, bool) {
	l, err := lookupLink(iface)
	if err != nil || l.Type() != "tuntap" {
		return metrics.Status{}, false
	}
	if _, ours := instance.ParseAlias(l.Attrs().Alias); !ours {
		return metrics.Status{}, false
	}
	return metrics.Status{
		APIVersion:  metrics.APIVersion,
		Kind:        metrics.KindStatus,
		Interface:   iface,
		Backend:     mesh.BackendUserspace,
		LinkMTU:     l.Attrs().MTU,
		Peers:       []metrics.PeerStatus{},
		Unencrypted: []string{},
		Problems:    []metrics.ProblemStatus{},
		Conditions: []metrics.ConditionStatus{{Reason: "AgentNotRunning",
			Message: "userspace interface " + iface + " without its agent: no WireGuard runs on it, so traffic routed into it is dropped (never sent in plaintext) until 'wgmesh agent' re-attaches"}},
	}, true
}

// statusError is what `status -o json` prints when it fails.
type statusError struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Error      string `json:"error"`
}

// writeStatusError prints err as a JSON document of kind Error.
func writeStatusError(w io.Writer, err error) {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(statusError{APIVersion: metrics.APIVersion, Kind: "Error", Error: err.Error()})
}

// offloadText is one offload's line in `wgmesh status`.
func offloadText(o metrics.OffloadStatus, now time.Time) string {
	v := "on"
	if !o.Active {
		v = "OFF: " + o.Reason
	}
	if o.Fallbacks > 0 {
		v += fmt.Sprintf(" (the kernel refused it %d time(s)", o.Fallbacks)
		if o.LastFallback != nil {
			v += ", last " + age(now.Sub(*o.LastFallback)) + " ago"
		}
		v += ")"
	}
	return v
}

// printStatus writes the kubectl-like view of st.
func printStatus(w io.Writer, st metrics.Status, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	kv := func(k string, v any) { fmt.Fprintf(tw, "%s:\t%v\n", k, v) }
	if st.Node != "" {
		kv("Node", st.Node)
	}
	kv("Interface", st.Interface)
	kv("Backend", orDash(string(st.Backend)))
	kv("Public key", orDash(st.PublicKey))
	if st.ListenPort != 0 {
		kv("Listen port", st.ListenPort)
	}
	if !st.AgentRunning {
		kv("Agent", "not running (read from the interface; node names unknown)")
		for _, c := range st.Conditions {
			kv(c.Reason, c.Message)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	} else {
		kv("MTU", orDash(itoa(st.LinkMTU)))
		kv("Pod MTU", orDash(itoa(st.PodMTU))+" (the CNI's MTU must not exceed it)")
		if st.Strict {
			kv("Strict mode", "on (nodes without a key are unreachable, never plaintext)")
		} else {
			kv("Strict mode", "OFF (--allow-unencrypted: nodes without a key get plaintext)")
		}
		switch {
		case len(st.ClusterCIDRs) > 0 && st.Strict:
			kv("Cluster ranges", strings.Join(st.ClusterCIDRs, ", ")+" (pod traffic to nodes unknown here is dropped)")
		case len(st.ClusterCIDRs) > 0:
			kv("Cluster ranges", strings.Join(st.ClusterCIDRs, ", ")+" (pod traffic to nodes unknown here is PLAINTEXT: --allow-unencrypted)")
		case st.ClusterCIDRsPending != "":
			kv("Cluster ranges", "none yet: kubeadm's podSubnet pending ("+st.ClusterCIDRsPending+")")
		case st.LastReconcile != nil:
			kv("Cluster ranges", "none: "+metrics.NoClusterCIDRs)
		}
		if len(st.ClusterCIDRs) > 0 && st.ClusterCIDRsPending != "" {
			kv("Cluster ranges pending", "kubeadm's podSubnet: "+st.ClusterCIDRsPending)
		}
		kv("Ready", st.Ready)
		for _, c := range st.Conditions {
			v := c.Reason + ": " + c.Message
			if c.Since != nil {
				v += " (for " + age(now.Sub(*c.Since)) + ")"
			}
			kv("STALE", v)
		}
		if st.LastReconcile != nil {
			r := fmt.Sprintf("%s ago, took %s", age(now.Sub(st.LastReconcile.Time)), time.Duration(st.LastReconcile.DurationSeconds*float64(time.Second)).Round(time.Millisecond))
			if st.LastReconcile.Error != "" {
				r += ", FAILED: " + st.LastReconcile.Error
			}
			kv("Last reconcile", r)
		}
		kv("Dropped plaintext", fmt.Sprintf("%d packets (strict ingress filter)", st.IngressDropped))
		kv("Dropped egress", fmt.Sprintf("%d packets (to remote pods outside the tunnel: egress guard)", st.EgressDropped))
		for _, o := range st.Offloads {
			kv("Offload "+o.Kind, offloadText(o, now))
		}
		if len(st.Unencrypted) > 0 {
			kv("UNENCRYPTED nodes", strings.Join(st.Unencrypted, ", "))
		} else {
			kv("Unencrypted nodes", "none")
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		if len(st.Coverage) > 0 {
			fmt.Fprintln(w, "Encrypted traffic:")
			ctw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			for _, c := range st.Coverage {
				state := "encrypted"
				if !c.Encrypted {
					state = "NOT encrypted"
				}
				fmt.Fprintf(ctw, "  %s -> %s:\t%s\t(%s)\n", c.From, c.To, state, c.Detail)
			}
			if err := ctw.Flush(); err != nil {
				return err
			}
		}
		if len(st.RoutingWarnings) > 0 {
			fmt.Fprintln(w, "Routing warnings:")
			for _, warn := range st.RoutingWarnings {
				fmt.Fprintf(w, "  %s\n", warn)
			}
		}
		// Warnings leave every node programmed; they are listed apart so
		// that "Problems" keeps meaning something is left out.
		for _, section := range []struct {
			title   string
			warning bool
		}{{"Problems:", false}, {"Warnings (nothing left out):", true}} {
			first := true
			for _, p := range st.Problems {
				if p.Warning != section.warning {
					continue
				}
				if first {
					fmt.Fprintln(w, section.title)
					first = false
				}
				fmt.Fprintf(w, "  %s: %s: %s\n", p.Node, p.Reason, p.Detail)
			}
		}
	}
	fmt.Fprintln(w)

	tw = tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
	fmt.Fprintln(tw, "NODE\tENDPOINT\tALLOWED IPS\tHANDSHAKE\tRX\tTX")
	for _, p := range st.Peers {
		node := p.Node
		if node == "" {
			node = p.PublicKey
		}
		hs := "never"
		if d, ok := p.HandshakeAge(now); ok {
			hs = age(d) + " ago"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", node, orDash(p.Endpoint), orDash(strings.Join(p.AllowedIPs, ",")),
			hs, bytesHuman(p.ReceiveBytes), bytesHuman(p.TransmitBytes))
	}
	if len(st.Peers) == 0 {
		fmt.Fprintln(tw, "(no peers)\t\t\t\t\t")
	}
	return tw.Flush()
}

func orDash(s string) string {
	if s == "" || s == "0" {
		return "-"
	}
	return s
}

func itoa(i int) string { return fmt.Sprint(i) }

// age formats a duration the way kubectl does: the two largest units.
func age(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

// bytesHuman formats a byte count with binary units.
func bytesHuman(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
