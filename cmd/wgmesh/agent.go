package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/vishvananda/netlink"

	"github.com/wgmesh/wgmesh/device"
	"github.com/wgmesh/wgmesh/instance"
	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/agent"
	"github.com/wgmesh/wgmesh/mesh/file"
	"github.com/wgmesh/wgmesh/mesh/kube"
	"github.com/wgmesh/wgmesh/mesh/metrics"
	"github.com/wgmesh/wgmesh/routing"
)

func (a *app) agentCommand() *cobra.Command {
	var f agentFlags
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the mesh agent on this node",
		Long: `agent owns this node's WireGuard interface: it publishes the node's public key
and endpoint, learns every other node's key, endpoint and pod CIDRs (from Node
objects, or from --peers-file on bare hosts), configures one peer per node and
routes remote pod CIDRs into the interface through its own routing table.

Nodes come from --kubeconfig, --peers-file, or (with neither) the in-cluster
configuration. SIGTERM and SIGINT stop the agent and leave the data plane up:
traffic stays encrypted or is dropped until the next agent takes over (remove
everything with 'wgmesh cleanup'). SIGHUP re-reads the key file and the peers
file.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := f.validate(a.inCluster())
			if err != nil {
				return err
			}
			return a.runAgent(cmd.Context(), cfg)
		},
	}
	f.register(cmd.Flags(), a.getenv)
	return cmd
}

// runAgent wires the parts together and runs them until SIGTERM/SIGINT.
func (a *app) runAgent(ctx context.Context, cfg agentConfig) (err error) {
	log := a.log
	sigCtx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// After the first signal, restore the default action so that a second
	// one ends a stuck shutdown at once (the data plane stays either way).
	go func() {
		<-sigCtx.Done()
		stop()
	}()
	ctx = sigCtx
	a.tuneMemory(log)
	ver, rev := buildVersion()
	log.Info("starting wgmesh agent", "version", ver, "commit", rev, "node", cfg.NodeName, "source", cfg.Source,
		"interface", cfg.Interface, "backend", cfg.Backend, "strict", !cfg.Derive.AllowUnencrypted)
	if cfg.Derive.AllowUnencrypted {
		log.Warn("--allow-unencrypted: pod traffic to nodes without a key is sent in PLAINTEXT")
	}
	if cfg.Unmanaged != nil {
		log.Info("nodes outside the mesh (plaintext, reported)", "unmanagedNodes", cfg.Unmanaged.String())
	}
	if len(cfg.Derive.ClusterCIDRs) > 0 {
		log.Info("cluster pod ranges: pod traffic to nodes this agent does not know is never left to the main table", "clusterCIDRs", cfg.Derive.ClusterCIDRs)
	}

	// Claim the instance before anything is changed (key file included):
	// a running agent for the interface, another wgmesh instance with the
	// same table or port, or another WireGuard on the port is refused here.
	inst := instance.Params{Interface: cfg.Interface, Table: cfg.Table, HostTable: cfg.HostTable, Priority: cfg.Priority, FwMark: cfg.FwMark, ListenPort: cfg.ListenPort}
	claim, err := instance.Begin(ctx, inst)
	if err != nil {
		return fmt.Errorf("refusing to start wgmesh instance %s: %w", cfg.Interface, err)
	}
	defer claim.Close()
	// The metrics address is bound now and held until the server uses it,
	// so that a clash (another agent's address, usually) is refused before
	// the host changes, and nothing can take the port in between.
	var metricsLn net.Listener
	if cfg.MetricsAddr != "" {
		ln, err := net.Listen("tcp", cfg.MetricsAddr)
		if err != nil {
			return fmt.Errorf("refusing to start wgmesh instance %s: metrics address %s is in use (another wgmesh agent?): pick another --metrics-addr: %w", cfg.Interface, cfg.MetricsAddr, err)
		}
		metricsLn = ln
		defer func() {
			if metricsLn != nil {
				metricsLn.Close()
			}
		}()
	}
	// A peers file that is not there at all is a wrong path far more
	// often than a file about to appear: say so instead of waiting forever
	// (a file that exists but is invalid is waited for, and reported).
	if cfg.Source == sourcePeersFile {
		if _, err := os.Stat(cfg.PeersFile); err != nil {
			why := err
			if errors.Is(err, fs.ErrNotExist) {
				why = errors.New("no such file")
			}
			return fmt.Errorf("refusing to start wgmesh instance %s: peers file %s (--peers-file): %v; create it (README, \"Bare hosts with a peers file\") or correct the path", cfg.Interface, cfg.PeersFile, why)
		}
	}
	warnPreviousRun(log, inst)

	// The key is read here, once, before anything else can be published;
	// failing here leaves the host untouched. From then on the reconciler
	// holds the key in use and follows the file's rotations.
	keys := agent.NewKeyStore(cfg.KeyFile)
	key, createdKey, err := keys.LoadOrCreate()
	if err != nil {
		return fmt.Errorf("private key (--key-file): %w; fix or remove the key file (removing it gives this node a new identity)", err)
	}
	if createdKey {
		log.Info("created a new private key", "keyFile", keys.Path(), "publicKey", key.PublicKey().String())
	} else {
		log.Info("loaded the private key", "keyFile", keys.Path(), "publicKey", key.PublicKey().String())
	}

	src, err := a.newSource(ctx, cfg, log)
	if err != nil {
		return err
	}
	derive := cfg.Derive
	derive.KeepOutside = src.KeepOutside

	// An interface this run creates is removed again if the start fails
	// before the reconciler runs: a failed start leaves nothing behind. An
	// interface a previous agent left stays (it keeps traffic encrypted or
	// dropped).
	_, lerr := netlink.LinkByName(cfg.Interface)
	created := lerr != nil
	devOpts := cfg.deviceOptions()
	devOpts.Alias, devOpts.Logger = inst.Alias(), log
	dev, err := device.Open(ctx, devOpts)
	if err != nil {
		return fmt.Errorf("open WireGuard interface %s (--interface, --backend): %w", cfg.Interface, err)
	}
	// The interface now carries this instance's alias: the next agent's
	// check sees it.
	claim.Started()
	running := false
	// Close, never Remove once running: the interface, its peers and
	// routes stay so that traffic stays encrypted (or dropped) until the
	// next agent.
	defer func() {
		if !running && created {
			if derr := errors.Join(dev.Close(), device.Remove(cfg.Interface)); derr != nil {
				err = errors.Join(err, fmt.Errorf("remove interface %s after the failed start: %w", cfg.Interface, derr))
			} else {
				log.Info("start failed; removed the interface this run created", "interface", cfg.Interface)
			}
			return
		}
		if cerr := dev.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("release interface %s: %w", cfg.Interface, cerr))
		}
	}()
	log.Info("WireGuard interface ready", "interface", dev.Name(), "backend", dev.Backend())

	routerOpts := cfg.routingOptions()
	routerOpts.Logger = log
	router, err := routing.New(routerOpts)
	if err != nil {
		return fmt.Errorf("routing for %s (--route-table, --host-route-table, --rule-priority, --fwmark, --mtu): %w", cfg.Interface, err)
	}

	var rec *agent.Reconciler
	m := metrics.New(metrics.Options{
		NodeName:   cfg.NodeName,
		Interface:  cfg.Interface,
		Backend:    dev.Backend(),
		ListenPort: cfg.ListenPort,
		Strict:     !cfg.Derive.AllowUnencrypted,
		Version:    ver,
		Commit:     rev,
		// What /status reports as encrypted.
		HostEncryption: cfg.Derive.HostEncryption,
		Stats:          dev.Stats,
		Offloads:       dev.Offloads,
		Inflight:       dev.Inflight,
		Router:         router.Status,
		// The key in use, which the reconciler holds (not a fresh read
		// of the file, which may hold a rotation not yet applied).
		PublicKey: func() (mesh.Key, error) {
			if rec == nil {
				return key.PublicKey(), nil
			}
			return rec.PublicKey(), nil
		},
		Ready: func() bool { return rec != nil && rec.Ready() },
		Conditions: func() []agent.Condition {
			if rec == nil {
				return nil
			}
			return rec.Conditions()
		},
		ClusterRangesPending: func() (bool, string) {
			if ks, ok := src.Source.(*kube.Source); ok {
				st := ks.ClusterRanges()
				return st.Pending, st.Detail
			}
			return false, ""
		},
		SourceState: func() (agent.SourceState, bool) {
			if sr, ok := src.Source.(agent.StateReporter); ok {
				return sr.State(), true
			}
			return agent.SourceState{}, false
		},
		Logger: log.With("component", "metrics"),
	})

	rec, err = agent.New(agent.Options{
		NodeName:   cfg.NodeName,
		Nodes:      src.Source,
		Publisher:  src.Source,
		Device:     dev,
		Router:     router,
		Sink:       m,
		Key:        key,
		Keys:       keys,
		Derive:     derive,
		ListenPort: cfg.ListenPort,
		FwMark:     cfg.FwMark,
		Endpoint:   cfg.Endpoint,
		Backend:    dev.Backend(),
		Logger:     log,
	})
	if err != nil {
		return err
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 2)
	parts := 0
	if metricsLn != nil {
		srv := m.Serve(metricsLn)
		metricsLn = nil // the server closes it
		log.Info("serving metrics, health and status", "addr", srv.Addr().String())
		parts++
		go func() { errc <- srv.Run(ctx) }()
	}
	parts++
	running = true
	go func() { errc <- rec.Run(ctx) }()

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	var errs []error
	for parts > 0 {
		select {
		case <-hup:
			log.Info("SIGHUP: re-reading the key file and the source")
			rec.Reload()
		case err := <-errc:
			parts--
			if err != nil {
				errs = append(errs, err)
			}
			// One part ending ends the agent: without the reconciler the
			// metrics would lie, without metrics the probes fail anyway.
			cancel()
		}
	}
	log.Info("agent stopped; the interface and routes stay in place", "interface", cfg.Interface)
	return errors.Join(errs...)
}

// startedSource is the source of nodes cfg selects, with the facts about
// this node it learned while starting.
type startedSource struct {
	agent.Source
	// KeepOutside are addresses that must never be routed into the tunnel
	// (the API server's: the agent needs it to learn the peers); nil for the
	// peers file.
	KeepOutside []netip.Addr
}

// newSource builds the source of nodes cfg selects. It reads cfg and
// returns what it learned; the caller builds the other parts' options
// from both (agentConfig.routingOptions, the reconciler's Derive options).
func (a *app) newSource(ctx context.Context, cfg agentConfig, log *slog.Logger) (startedSource, error) {
	if cfg.Source == sourcePeersFile {
		s, err := file.New(file.Options{Path: cfg.PeersFile, NodeName: cfg.NodeName, Logger: log})
		if err != nil {
			return startedSource{}, fmt.Errorf("--peers-file: %w", err)
		}
		return startedSource{Source: s}, nil
	}
	client, rc, err := kubeClient(cfg.Kubeconfig)
	if err != nil {
		return startedSource{}, err
	}
	keep := apiServerAddrs(ctx, rc.Host, log)
	log.Info("Kubernetes API server", "host", rc.Host, "keptOutsideTunnel", keep)
	s, err := newKubeSource(client, cfg, log)
	if err != nil {
		return startedSource{}, err
	}
	return startedSource{Source: s, KeepOutside: keep}, nil
}

// warnPreviousRun warns when the instance's interface records (in its alias)
// another route table from a previous run: that run's rules and routes are
// in a table this run does not touch (it could be another instance's by
// now). The warning says how to remove them.
func warnPreviousRun(log *slog.Logger, p instance.Params) {
	l, err := netlink.LinkByName(p.Interface)
	if err != nil {
		return
	}
	old, ours := instance.ParseAlias(l.Attrs().Alias)
	// Rules on the same table with another priority or mark are still
	// this instance's: the router replaces them.
	if !ours || old.Table == 0 || old.Table == p.Table {
		return
	}
	log.Warn("the interface was last used with other routing options; the previous run's rules and routes stay until removed",
		"interface", p.Interface, "previous", old.Alias(), "now", p.Alias(),
		"remove", fmt.Sprintf("ip rule del pref %d lookup %d; ip -6 rule del pref %d lookup %d; ip route flush table %d proto 87; ip -6 route flush table %d proto 87",
			old.Priority, old.Table, old.Priority, old.Table, old.Table, old.Table))
}
