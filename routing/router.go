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
	// dropped reads the strict ingress drop counter (0 without the table).
	dropped() (uint64, error)
}

// router is the Router over any system: observe, target, plan, execute.
type router struct {
	o   Options
	sys system
	log *slog.Logger
	// optErr is reported by every Apply when the options are invalid (only
	// reachable through NewFake, which cannot return an error).
	optErr error

	mu     sync.Mutex // serialises Apply and Cleanup; guards the rest
	status Status
	// lastWarn and warnedAt rate-limit logging of unchanged warnings.
	lastWarn string
	warnedAt time.Time
}

// warnEvery is how often a warning that persists from Apply to Apply is
// logged again; Status carries it all the time.
const warnEvery = 10 * time.Minute

var _ Router = (*router)(nil)

func newRouter(o Options, sys system) *router {
	return &router{o: o, sys: sys, log: o.logger(), optErr: o.validate()}
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
	errs, warns := r.run(ctx, plan(r.o.Interface, have.Ours, want))
	mtu := have.Ours.LinkMTU
	if want.LinkMTU > 0 && !errors.Is(errors.Join(errs...), errMTU) {
		mtu = want.LinkMTU
	}
	r.status.LinkMTU, r.status.PodMTU = mtu, mtu
	// plan retries src_valid_mark on every Apply until it is in place, so
	// the warnings are always current.
	r.status.Warnings = warns
	r.logWarnings(warns)
	return errors.Join(slices.Concat(have.Notes, notes, errs)...)
}

// logWarnings logs warnings when they change, and unchanged ones at most
// every warnEvery: they repeat on every Apply (resyncs included) until the
// cause is fixed.
func (r *router) logWarnings(warns []string) {
	key := strings.Join(warns, "\n")
	now := time.Now()
	if key == "" || (key == r.lastWarn && now.Sub(r.warnedAt) < warnEvery) {
		r.lastWarn = key
		return
	}
	r.lastWarn, r.warnedAt = key, now
	for _, w := range warns {
		r.log.Warn("routing is applied, with a warning", "warning", w)
	}
}

// errMTU marks a failed MTU change so Status keeps reporting the old MTU.
var errMTU = errors.New("link MTU not changed")

// run executes ops in order and keeps going after failures. Failures that
// must not fail Apply (src_valid_mark) come back as warnings.
func (r *router) run(ctx context.Context, ops []op) (errs []error, warns []string) {
	putFailed := false
	for _, o := range ops {
		if err := ctx.Err(); err != nil {
			return append(errs, fmt.Errorf("routing: %d changes not made: %w", len(ops), err)), warns
		}
		if o.kind == opDelLegacyFilter && putFailed {
			// The legacy table still drops what the new one would: keep
			// it until the instance's own table exists.
			errs = append(errs, fmt.Errorf("%s: kept, because the instance's own table could not be created", o))
			continue
		}
		err := r.sys.do(ctx, o)
		putFailed = putFailed || (o.kind == opPutFilter && err != nil)
		if o.kind == opSysctl {
			if w := r.srcValidMark(ctx, o, err); w != "" {
				warns = append(warns, w)
			}
			continue
		}
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
	return errs, warns
}

// srcValidMark completes an opSysctl whose write returned err: when the
// `all` value cannot be written (read-only /proc/sys in a container, a
// user namespace without rights over the network namespace, no procfs),
// it sets the value on each of o.devs over rtnetlink instead (see target
// for why that is equivalent). It returns a warning when src_valid_mark is
// still missing somewhere it matters, "" otherwise.
func (r *router) srcValidMark(ctx context.Context, o op, err error) string {
	if err == nil {
		r.log.Debug("applied", "op", o)
		return ""
	}
	var done, failed []string
	for _, dev := range o.devs {
		d := op{kind: opDevConf, iface: dev}
		if derr := r.sys.do(ctx, d); derr != nil {
			failed = append(failed, fmt.Sprintf("%s: %v", d, derr))
		} else {
			done = append(done, dev)
		}
	}
	if len(done) > 0 {
		r.log.Info("net.ipv4.conf.all.src_valid_mark is not writable: set per interface instead",
			"err", err, "interfaces", done)
	}
	if len(o.devs) > 0 && len(failed) == 0 {
		return ""
	}
	per := "no underlay or tunnel interface to set it on instead"
	if len(failed) > 0 {
		per = strings.Join(failed, "; ")
	}
	return fmt.Sprintf("src_valid_mark not set: %s: %v; %s. Reverse-path filtering of received packets ignores "+
		"the fwmark; wgmesh works without it (its table holds no peer endpoint). Set "+
		"net.ipv4.conf.all.src_valid_mark=1 on the host to clear this warning", o, err, per)
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
// every entry of ours and nothing else. The MTU and src_valid_mark, the
// `all` value and the per-interface ones alike, are left as they are:
// wg-quick does not reset src_valid_mark either, the router cannot tell
// whether a 1 predates it (another VPN or CNI may rely on it), and 1 is
// harmless; the tunnel's own value goes with the interface.
func (r *router) Cleanup(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	have, err := r.sys.observe(ctx)
	if err != nil {
		return fmt.Errorf("routing cleanup: read current state: %w", err)
	}
	errs, _ := r.run(ctx, plan(r.o.Interface, have.Ours, ours{}))
	return errors.Join(slices.Concat(have.Notes, errs)...)
}

// Status implements Router.
func (r *router) Status() Status {
	r.mu.Lock()
	s := r.status
	r.mu.Unlock()
	if n, err := r.sys.dropped(); err == nil {
		s.IngressDropped = n
	} else {
		r.log.Debug("reading the ingress drop counter failed", "err", err)
	}
	return s
}
