package metrics

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// The HTTP paths served by Handler. deploy/kubernetes probes use them.
const (
	PathMetrics = "/metrics"
	PathHealthz = "/healthz"
	PathReadyz  = "/readyz"
	PathStatus  = "/status"
)

// DefaultPort is the default port of --metrics-addr. 9587 is unassigned by
// IANA and not taken by a well-known Prometheus exporter.
const DefaultPort = 9587

// Handler serves /metrics, /healthz, /readyz and /status.
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET "+PathMetrics, promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		// A failing collector must not hide every other metric.
		ErrorHandling: promhttp.ContinueOnError,
		Registry:      m.reg,
	}))
	mux.HandleFunc("GET "+PathHealthz, func(w http.ResponseWriter, _ *http.Request) {
		// Alive means the process serves HTTP; the data plane's health is
		// /readyz's business, so a broken apply never gets the agent killed
		// (a restart would not fix it and would only churn).
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET "+PathReadyz, func(w http.ResponseWriter, _ *http.Request) {
		// The routing warnings follow the verdict, one "warning: " line
		// each: they do not make the agent unready (probes read only the
		// status code), but whoever reads the body learns why the data
		// plane is short of ideal (an MTU raised for IPv6, for example).
		var warns []string
		if m.o.Router != nil {
			warns = m.o.Router().Warnings
		}
		conds := m.conditions()
		switch {
		case m.o.Ready != nil && !m.o.Ready():
			w.WriteHeader(http.StatusServiceUnavailable)
			msg := "not ready: waiting for the device, the first complete view of the nodes or a successful apply"
			if last, ok := m.Last(); ok && last.Err != nil {
				msg = "not ready: last apply failed: " + last.Err.Error()
			}
			fmt.Fprintln(w, msg)
		case len(conds) > 0:
			// The data plane runs the last good configuration, but not
			// what the input asks for: alertable, and a rollout stops.
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "not ready: the configuration in force is stale")
		default:
			fmt.Fprintln(w, "ok")
		}
		for _, c := range conds {
			fmt.Fprintf(w, "stale: %s: %s\n", c.Reason, c.Message)
		}
		for _, warn := range warns {
			fmt.Fprintln(w, "warning: "+warn)
		}
	})
	mux.HandleFunc("GET "+PathStatus, func(w http.ResponseWriter, r *http.Request) {
		st, err := m.Status(r.Context())
		if err != nil {
			// The document is still useful without live peer statistics.
			m.log.Warn("status: read device", "err", err)
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if err := enc.Encode(st); err != nil {
			m.log.Debug("status: write response", "err", err)
		}
	})
	return mux
}

// Server serves a Metrics handler on an address.
type Server struct {
	ln  net.Listener
	srv *http.Server
}

// Listen binds addr (host:port; an empty host means every address) so that
// a port conflict is reported at start-up rather than from a goroutine.
func (m *Metrics) Listen(addr string) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on metrics address %s (--metrics-addr): %w", addr, err)
	}
	return m.Serve(ln), nil
}

// Serve returns a Server on a listener the caller bound (the agent binds
// its address before it changes the host); Run closes ln.
func (m *Metrics) Serve(ln net.Listener) *Server {
	return &Server{ln: ln, srv: &http.Server{
		Handler:           m.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
	}}
}

// Addr is the bound address (useful with port 0).
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Run serves until ctx is done, then shuts down gracefully.
func (s *Server) Run(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("metrics server on %s: %w", s.ln.Addr(), err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.srv.Shutdown(shutdownCtx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("stop metrics server on %s: %w", s.ln.Addr(), err)
	}
	return nil
}
