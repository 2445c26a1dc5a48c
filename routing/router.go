package routing

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/wgmesh/wgmesh/internal/ratelog"
	"github.com/wgmesh/wgmesh/mesh"
)

// system is where plans are carried out: the kernel or the fake.
type system interface {
	// observe reports the current state; observed.Ours holds only entries
	// the ownership predicates recognise as wgmesh's.
	observe(ctx context.Context) (observed, error)
	// do carries out one op. Adding what exists and deleting what is gone
	// succeed.
	do(ctx context.Context, o op) error
	// counters reads the drop counters (0 without the table).
	counters() (dropCounts, error)
}

// dropCounts are the packets the ingress filter and the egress guard have
// dropped since the table was created.
type dropCounts struct{ Ingress, Egress uint64 }

// router is the Router over any system: observe, target, plan, execute.
type router struct {
	o   Options
	sys system
	log *slog.Logger
	// optErr is reported by every Apply when the options are invalid (only
	// reachable through the tests' fake, whose constructor cannot return an
	// error).
	optErr error

	mu     sync.Mutex // serialises Apply and Cleanup; guards the rest
	status Status
	// warned rate-limits logging of unchanged warnings.
	warned ratelog.Changes[string]
	// egressLogged is the egress drop count last logged; egressLog lets
	// one line through per warnEvery.
	egressLogged uint64
	egressLog    ratelog.Limiter[struct{}]
}

// warnEvery is how often a warning that persists from Apply to Apply is
// logged again; Status carries it all the time.
const warnEvery = 10 * time.Minute

var _ Router = (*router)(nil)

func newRouter(o Options, sys system) *router {
	return &router{o: o, sys: sys, log: o.logger(), optErr: o.Validate(),
		warned:    ratelog.Changes[string]{Every: warnEvery},
		egressLog: ratelog.Limiter[struct{}]{Burst: 1, Window: warnEvery}}
}

// Apply implements Router.
func (r *router) Apply(ctx context.Context, d mesh.Desired) error {
	if r.optErr != nil {
		return r.optErr
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	have, err := r.sys.observe(ctx)
	if err != nil {
		return fmt.Errorf("routing: read current state: %w", err)
	}
	want, notes := r.o.target(d, have)
	errs := r.run(ctx, plan(r.o.Interface, have.Ours, want))
	mtu := have.Ours.LinkMTU
	if want.LinkMTU > 0 && !errors.Is(errors.Join(errs...), errMTU) {
		mtu = want.LinkMTU
	}
	r.status.LinkMTU, r.status.PodMTU = mtu, mtu
	// Recomputed from what this Apply observed, so the warnings are
	// always current and vanish with their cause.
	warns := r.o.warnings(d, have, mtu)
	warns = append(warns, r.o.markWarnings(have.MarkRules, have.MarkNFT)...)
	if d, ok := r.sys.(interface{ degraded() []string }); ok {
		warns = append(warns, d.degraded()...)
	}
	if have.MarkScanErr != nil {
		warns = append(warns, have.MarkScanErr.Error())
	}
	r.status.Warnings = warns
	r.logWarnings(warns)
	r.logEgress(have)
	return errors.Join(slices.Concat(have.Notes, notes, errs)...)
}

// logEgress logs one line when the egress guard's counter has grown since
// it last did, at most every warnEvery: each drop is a packet some other
// software tried to send to a remote pod outside the tunnel. The line names
// the likely cause, which the mark scan of this Apply may already know.
// The caller holds r.mu.
func (r *router) logEgress(have observed) {
	d, err := r.sys.counters()
	if err != nil || d.Egress < r.egressLogged {
		// Unreadable, or the table was recreated: start counting again.
		r.egressLogged = d.Egress
		return
	}
	if d.Egress == r.egressLogged {
		return
	}
	if ok, _ := r.egressLog.Allow(struct{}{}, time.Now()); !ok {
		return
	}
	cause := fmt.Sprintf("a policy rule, route or mark of other software sends traffic to remote pods around table %d; "+
		"compare `ip rule` and `ip route get <remote pod IP> from <local pod IP> iif <pod interface> mark <the packet's mark>`", r.o.Table)
	// A rule that sets the bit is a likelier cause than one that matches it.
	if w := append(r.o.markWarnings(nil, have.MarkNFT), r.o.markWarnings(have.MarkRules, nil)...); len(w) > 0 {
		cause = w[0]
		if len(w) > 1 {
			cause += fmt.Sprintf(" (and %d more, see wgmesh status)", len(w)-1)
		}
	}
	r.log.Warn("egress guard dropped packets to remote pods that were about to leave outside the tunnel in plaintext",
		"dropped_total", d.Egress, "new", d.Egress-r.egressLogged, "likely_cause", cause)
	r.egressLogged = d.Egress
}

// warnings are the Status warnings of an Apply that observed w and left
// the tunnel at podMTU: an automatic MTU raised to the floor, and local pod
// interfaces above podMTU.
func (o Options) warnings(d mesh.Desired, w observed, podMTU int) []string {
	var warns []string
	if _, ok := w.link(o.Interface); ok {
		if _, warn, _ := o.tunnelMTU(w, d.Underlay); warn != "" {
			warns = append(warns, warn)
		}
	}
	if warn := o.podMTUWarning(d.PodSources, w, podMTU); warn != "" {
		warns = append(warns, warn)
	}
	return warns
}

// logWarnings logs warnings when they change, and unchanged ones at most
// every warnEvery: they repeat on every Apply (resyncs included) until the
// cause is fixed.
func (r *router) logWarnings(warns []string) {
	// A cleared set counts as a change, so the warnings' return is logged.
	if key := strings.Join(warns, "\n"); !r.warned.Allow(key, time.Now()) || key == "" {
		return
	}
	for _, w := range warns {
		r.log.Warn("routing is applied, with a warning", "warning", w)
	}
}

// errMTU marks a failed MTU change so Status keeps reporting the old MTU.
var errMTU = errors.New("link MTU not changed")

// run executes ops in order and keeps going after failures.
func (r *router) run(ctx context.Context, ops []op) (errs []error) {
	putFailed := false
	for _, o := range ops {
		if err := ctx.Err(); err != nil {
			return append(errs, fmt.Errorf("routing: %d changes not made: %w", len(ops), err))
		}
		if o.kind == opDelLegacyFilter && putFailed {
			// The legacy table still drops what the new one would: keep
			// it until the instance's own table exists.
			errs = append(errs, fmt.Errorf("%s: kept, because the instance's own table could not be created", o))
			continue
		}
		err := r.sys.do(ctx, o)
		putFailed = putFailed || (o.kind == opPutFilter && err != nil)
		if err == nil {
			r.log.Debug("applied", "op", o)
			continue
		}
		if o.kind == opSetMTU {
			err = fmt.Errorf("%w: %w", errMTU, err)
		}
		errs = append(errs, fmt.Errorf("%s: %w", o, err))
		r.log.Warn("routing change failed", "op", o.String(), "err", err)
		if o.kind == opReplaceRoute && o.route.Type == typeUnicast {
			errs = append(errs, r.fallback(ctx, o.route)...)
		}
	}
	if len(ops) > 0 {
		r.log.Info("routing state changed", "changes", len(ops), "failed", len(errs))
	}
	return errs
}

// fallback installs something in place of a tunnel route that could not be
// installed: the route without preferred source (still encrypted), else an
// unreachable route, so the destination never falls through to the main
// table and leaves in plaintext.
func (r *router) fallback(ctx context.Context, rt route) []error {
	if rt.Src.IsValid() {
		noSrc := rt
		noSrc.Src = netip.Addr{}
		if err := r.sys.do(ctx, op{kind: opReplaceRoute, route: noSrc}); err == nil {
			return nil
		}
	}
	blocked := rt
	blocked.Type, blocked.Dev, blocked.Src = typeUnreachable, "", netip.Addr{}
	o := op{kind: opReplaceRoute, route: blocked}
	if err := r.sys.do(ctx, o); err != nil {
		return []error{fmt.Errorf("%s (fail-closed fallback): %w", o, err)}
	}
	return nil
}

// Cleanup implements Router: it plans towards an empty state, which deletes
// every entry of ours and nothing else. The tunnel's MTU goes with the
// interface (the device's business); Apply sets no sysctl, so none needs
// restoring.
func (r *router) Cleanup(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	have, err := r.sys.observe(ctx)
	if err != nil {
		return fmt.Errorf("routing cleanup: read current state: %w", err)
	}
	errs := r.run(ctx, plan(r.o.Interface, have.Ours, ours{}))
	return errors.Join(slices.Concat(have.Notes, errs)...)
}

// Status implements Router.
func (r *router) Status() Status {
	r.mu.Lock()
	s := r.status
	r.mu.Unlock()
	if d, err := r.sys.counters(); err == nil {
		s.IngressDropped, s.EgressDropped = d.Ingress, d.Egress
	} else {
		r.log.Debug("reading the drop counters failed", "err", err)
	}
	return s
}
