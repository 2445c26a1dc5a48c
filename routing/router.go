package routing

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"

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

	mu     sync.Mutex // serialises Apply and Cleanup; guards status
	status Status
}

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
	errs := r.run(ctx, plan(r.o.Interface, have.Ours, want))
	mtu := have.Ours.LinkMTU
	if want.LinkMTU > 0 && !errors.Is(errors.Join(errs...), errMTU) {
		mtu = want.LinkMTU
	}
	r.status.LinkMTU, r.status.PodMTU = mtu, mtu
	return errors.Join(slices.Concat(have.Notes, notes, errs)...)
}

// errMTU marks a failed MTU change so Status keeps reporting the old MTU.
var errMTU = errors.New("link MTU not changed")

// run executes ops in order and keeps going after failures.
func (r *router) run(ctx context.Context, ops []op) []error {
	var errs []error
	for _, o := range ops {
		if err := ctx.Err(); err != nil {
			return append(errs, fmt.Errorf("routing: %d changes not made: %w", len(ops), err))
		}
		err := r.sys.do(ctx, o)
		if err == nil {
			r.log.Debug("applied", "op", o.String())
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
// every entry of ours and nothing else. The MTU and src_valid_mark are left
// as they are (wg-quick does not reset src_valid_mark either).
func (r *router) Cleanup(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	have, err := r.sys.observe(ctx)
	if err != nil {
		return fmt.Errorf("routing cleanup: read current state: %w", err)
	}
	return errors.Join(slices.Concat(have.Notes, r.run(ctx, plan(r.o.Interface, have.Ours, ours{})))...)
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
