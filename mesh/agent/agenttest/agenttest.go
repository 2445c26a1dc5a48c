// Package agenttest provides in-memory fakes of the agent loop's ports
// (NodeSource and Publisher, Device, Router, StatusSink) that record what
// the loop asks of them, for the tests of mesh/agent and of the sources
// that run under the real loop (mesh/file). They are safe for concurrent
// use: the loop calls them from its goroutine while the test reads them.
package agenttest

import (
	"context"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/agent"
)

// Source is an agent.Source, Reloader and Republisher driven by the test:
// it is not synced until Set or SetSynced, and its Publish fails with the
// errors queued by FailPublish, then succeeds.
type Source struct {
	mu         sync.Mutex
	nodes      []mesh.Node
	synced     bool
	changes    chan struct{}
	republish  chan struct{}
	published  []agent.Self
	publishErr []error
	reports    [][]mesh.Problem
	reloads    int
	running    bool
	runErr     chan error
}

var (
	_ agent.Source      = (*Source)(nil)
	_ agent.Reloader    = (*Source)(nil)
	_ agent.Republisher = (*Source)(nil)
)

// NewSource returns a Source holding nodes, not yet synced.
func NewSource(nodes ...mesh.Node) *Source {
	return &Source{nodes: nodes, changes: make(chan struct{}, 1), republish: make(chan struct{}, 1), runErr: make(chan error, 1)}
}

// Run blocks until ctx is done (returning nil) or Stop is called.
func (s *Source) Run(ctx context.Context) error {
	s.mu.Lock()
	s.running = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.running = false
		s.mu.Unlock()
	}()
	select {
	case <-ctx.Done():
		return nil
	case err := <-s.runErr:
		return err
	}
}

// Stop makes Run return err, as a source that fails for good.
func (s *Source) Stop(err error) { s.runErr <- err }

// Running reports whether Run is executing.
func (s *Source) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.running
}

// Synced reports whether Set or SetSynced(true) was called.
func (s *Source) Synced() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.synced
}

// SetSynced changes Synced without signalling Changes.
func (s *Source) SetSynced(v bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.synced = v
}

// Nodes returns a copy of the nodes last Set.
func (s *Source) Nodes() []mesh.Node {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.nodes)
}

// Changes is signalled by Set and Signal.
func (s *Source) Changes() <-chan struct{} { return s.changes }

// Set replaces the nodes, marks the source synced and signals Changes.
func (s *Source) Set(nodes ...mesh.Node) {
	s.mu.Lock()
	s.nodes, s.synced = nodes, true
	s.mu.Unlock()
	s.Signal()
}

// Signal signals Changes (coalesced).
func (s *Source) Signal() {
	select {
	case s.changes <- struct{}{}:
	default:
	}
}

// Publish records self and returns the next queued error, if any.
func (s *Source) Publish(_ context.Context, self agent.Self) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.published = append(s.published, self)
	if len(s.publishErr) > 0 {
		err := s.publishErr[0]
		s.publishErr = s.publishErr[1:]
		return err
	}
	return nil
}

// FailPublish replaces the queue of errors for the next Publish calls, one
// each; with none, Publish succeeds from now on.
func (s *Source) FailPublish(errs ...error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.publishErr = slices.Clone(errs)
}

// Published returns every Self given to Publish, in order.
func (s *Source) Published() []agent.Self {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.published)
}

// PublishedKeys returns the public keys of Published.
func (s *Source) PublishedKeys() []mesh.Key {
	var out []mesh.Key
	for _, p := range s.Published() {
		out = append(out, p.PublicKey)
	}
	return out
}

// Republish is signalled by SignalRepublish.
func (s *Source) Republish() <-chan struct{} { return s.republish }

// SignalRepublish says the published identity was undone.
func (s *Source) SignalRepublish() {
	select {
	case s.republish <- struct{}{}:
	default:
	}
}

// Report records problems.
func (s *Source) Report(problems []mesh.Problem) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reports = append(s.reports, slices.Clone(problems))
}

// Reports returns every list given to Report, in order.
func (s *Source) Reports() [][]mesh.Problem {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.reports)
}

// Reload counts the reload requests.
func (s *Source) Reload() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reloads++
}

// Reloads returns how often Reload was called.
func (s *Source) Reloads() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reloads
}

// destructive records calls that tear down the data plane; the loop must
// never make them.
type destructive struct {
	mu    sync.Mutex
	calls []string
}

func (d *destructive) record(name string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.calls = append(d.calls, name)
	return nil
}

// Destructive returns the tear-down calls made (device Close, router Cleanup).
func (d *destructive) Destructive() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.calls)
}

// Device is an agent.Device that records every configuration.
type Device struct {
	destructive
	mu      sync.Mutex
	configs []mesh.DeviceConfig
	fail    func(n int) error
}

var _ agent.Device = (*Device)(nil)

// Configure records cfg and returns the error SetFail decides for it.
func (d *Device) Configure(_ context.Context, cfg mesh.DeviceConfig) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := len(d.configs)
	d.configs = append(d.configs, cfg)
	if d.fail != nil {
		return d.fail(n)
	}
	return nil
}

// SetFail makes Configure call number n (0-based) return fail(n).
func (d *Device) SetFail(fail func(n int) error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.fail = fail
}

// Close is recorded as a destructive call: the loop must never close the
// device it was given (device.Device has Close).
func (d *Device) Close() error { return d.record("device.Close") }

// Count returns the number of Configure calls.
func (d *Device) Count() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.configs)
}

// Last returns the last configuration (zero before the first).
func (d *Device) Last() mesh.DeviceConfig {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.configs) == 0 {
		return mesh.DeviceConfig{}
	}
	return d.configs[len(d.configs)-1]
}

// PeerNames returns the node names of the last configuration's peers,
// comma-separated, or "<not configured>" before the first.
func (d *Device) PeerNames() string {
	if d.Count() == 0 {
		return "<not configured>"
	}
	var names []string
	for _, p := range d.Last().Peers {
		names = append(names, p.Node)
	}
	return strings.Join(names, ",")
}

// Router is an agent.Router that records applies and keeps the last applied
// Desired as its "OS state", which the test may wipe.
type Router struct {
	destructive
	mu      sync.Mutex
	applies []time.Time
	state   *mesh.Desired
	fail    func(n int) error
}

var _ agent.Router = (*Router)(nil)

// Apply records the call and, unless SetFail says it fails, keeps d.
func (r *Router) Apply(_ context.Context, d mesh.Desired) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := len(r.applies)
	r.applies = append(r.applies, time.Now())
	if r.fail != nil {
		if err := r.fail(n); err != nil {
			return err
		}
	}
	r.state = &d
	return nil
}

// SetFail makes Apply call number n (0-based) return fail(n).
func (r *Router) SetFail(fail func(n int) error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fail = fail
}

// Cleanup is recorded as a destructive call.
func (r *Router) Cleanup(context.Context) error { return r.record("router.Cleanup") }

// Count returns the number of Apply calls.
func (r *Router) Count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.applies)
}

// Times returns when each Apply was called.
func (r *Router) Times() []time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.applies)
}

// Current returns the state of the last successful Apply; nil before it or
// after Wipe.
func (r *Router) Current() *mesh.Desired {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.state
}

// Wipe forgets the state, as someone deleting the routes by hand.
func (r *Router) Wipe() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.state = nil
}

// Sink is an agent.StatusSink that records every Result.
type Sink struct {
	mu      sync.Mutex
	results []agent.Result
}

var _ agent.StatusSink = (*Sink)(nil)

// Observe records res.
func (s *Sink) Observe(res agent.Result) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.results = append(s.results, res)
}

// Results returns every Result observed, in order.
func (s *Sink) Results() []agent.Result {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.results)
}
