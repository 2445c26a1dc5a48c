package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// userAgent identifies wgmesh's requests in API server audit logs.
const userAgent = "wgmesh"

// restConfig loads kubeconfig, or the in-cluster configuration when
// kubeconfig is empty.
func restConfig(kubeconfig string) (*rest.Config, error) {
	var (
		cfg *rest.Config
		err error
	)
	if kubeconfig == "" {
		cfg, err = rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("in-cluster Kubernetes configuration: %w (outside a pod, pass --kubeconfig)", err)
		}
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
		}
	}
	cfg.UserAgent = userAgent
	return cfg, nil
}

// standardRestConfig loads the configuration the way kubectl does: the
// --kubeconfig file if given, else $KUBECONFIG (a list of files, merged),
// else ~/.kube/config, else the in-cluster configuration. The CLI commands
// (verify, cleanup --remove-annotations) use it; the agent keeps
// restConfig's explicit choice, so that a host's admin kubeconfig is never
// picked up by a daemon by accident.
func standardRestConfig(kubeconfig string) (*rest.Config, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = kubeconfig
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{})
	cfg, err := cc.ClientConfig()
	if err != nil {
		where := "--kubeconfig " + kubeconfig
		if kubeconfig == "" {
			where = "no --kubeconfig, $KUBECONFIG, ~/.kube/config or in-cluster configuration"
		}
		return nil, fmt.Errorf("Kubernetes configuration (%s): %w", where, err)
	}
	cfg.UserAgent = userAgent
	return cfg, nil
}

// kubeClient returns a clientset for kubeconfig (empty: in-cluster), the
// agent's rule.
func kubeClient(kubeconfig string) (*kubernetes.Clientset, *rest.Config, error) {
	cfg, err := restConfig(kubeconfig)
	if err != nil {
		return nil, nil, err
	}
	return clientFor(cfg)
}

// cliKubeClient returns a clientset with kubectl's loading rules
// (standardRestConfig), for the commands an operator runs.
func cliKubeClient(kubeconfig string) (*kubernetes.Clientset, *rest.Config, error) {
	cfg, err := standardRestConfig(kubeconfig)
	if err != nil {
		return nil, nil, err
	}
	return clientFor(cfg)
}

func clientFor(cfg *rest.Config) (*kubernetes.Clientset, *rest.Config, error) {
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("Kubernetes client for %s: %w", cfg.Host, err)
	}
	return cs, cfg, nil
}

// apiServerAddrs returns the addresses of the API server in cfg.Host: the
// IP itself, or what the host name resolves to. With host encryption these
// stay outside the tunnel so the agent can always reach the API server.
func apiServerAddrs(ctx context.Context, host string, log *slog.Logger) []netip.Addr {
	h := host
	if u, err := url.Parse(host); err == nil && u.Host != "" {
		h = u.Hostname()
	} else if hh, _, err := net.SplitHostPort(host); err == nil {
		h = hh
	}
	if a, err := netip.ParseAddr(h); err == nil {
		return []netip.Addr{a.Unmap()}
	}
	if h == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", h)
	if err != nil {
		log.Warn("cannot resolve the API server's host name; with --host-encryption its addresses are not kept outside the tunnel",
			"host", h, "err", err)
		return nil
	}
	out := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, a.Unmap())
	}
	return out
}
