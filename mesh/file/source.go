// Package file is the peers-file source of wgmesh, for bare hosts and demos
// where there is no Kubernetes API to learn the other nodes from.
//
// The file lists every host of the mesh, the local one included, and
// optionally the cluster's pod ranges:
//
//	clusterCIDRs: ["10.244.0.0/16", "fd00:10:244::/48"]   # optional, before nodes: see mesh.DeriveOptions.ClusterCIDRs
//	nodes:
//	  - name: host-a
//	    publicKey: "<base64>"          # optional for the agent's own entry; must match its key if set
//	    endpoint: "198.18.0.1:51822"   # IP:port; [v6]:port for IPv6
//	    podCIDRs: ["10.244.1.0/24", "fd00:10:244:1::/64"]
//	    hostIPs: ["198.18.0.1"]
//	    labels: {role: edge}           # optional, matched by --unmanaged-nodes
//
// The Source watches the file's directory, so editors that write a new file
// and rename it over the old one, and Kubernetes ConfigMap volumes that swap a
// symlink, are both noticed; a slow poll covers file systems without change
// notifications. An invalid file is logged with path, line and reason and the
// last good configuration stays in force.
package file

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/agent"
)

// Defaults for the zero values of Options.
const (
	// DefaultPoll re-reads the file even without a notification; cheap (one
	// read and a byte compare) and it bounds how long a missed event lasts.
	DefaultPoll = 30 * time.Second
	// DefaultDebounce lets a burst of events (truncate, write, rename) settle
	// so the file is read once, complete.
	DefaultDebounce = 100 * time.Millisecond
	// DefaultReportEvery re-logs a problem set that has not changed, so it
	// stays visible in logs that are rotated, without flooding them.
	DefaultReportEvery = 10 * time.Minute
)

// Options configure a Source.
type Options struct {
	// Path of the peers file. Required.
	Path string
	// NodeName is the local node's name in the file. Required.
	NodeName string
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Poll is the interval of re-reads without a change notification; 0 means
	// DefaultPoll, negative disables polling.
	Poll time.Duration
	// Debounce is the quiet time after a change notification before the file
	// is read; 0 means DefaultDebounce.
	Debounce time.Duration
	// ReportEvery is how often an unchanged set of problems is logged again;
	// 0 means DefaultReportEvery.
	ReportEvery time.Duration
}

// Source is the agent.Source backed by a peers file.
type Source struct {
	o       Options
	log     *slog.Logger
	changes chan struct{}
	reload  chan struct{}
	running atomic.Bool

	mu       sync.Mutex
	nodes    []mesh.Node
	cluster  []netip.Prefix // the clusterCIDRs of the file in force
	synced   bool
	loadedAt time.Time
	lastData []byte      // last content read, valid or not: unchanged content is not parsed or logged again
	lastErr  error       // why the last read failed; nil when the file in force is the current one
	errSince time.Time   // when lastErr began
	entryErr error       // why the file in force disagrees with what the agent published; nil when it agrees
	self     *agent.Self // what the agent last published, to check later versions of the file

	reportMu   sync.Mutex
	reported   map[mesh.Problem]bool
	reportedAt time.Time
}

var (
	_ agent.Source        = (*Source)(nil)
	_ agent.StateReporter = (*Source)(nil)
	_ agent.Reloader      = (*Source)(nil)
)

// New returns a Source for o.Path. It does not read the file; Run does.
func New(o Options) (*Source, error) {
	if o.Path == "" {
		return nil, errors.New("peers file source: no path given; set --peers-file")
	}
	if o.NodeName == "" {
		return nil, fmt.Errorf("peers file source %s: no node name given; set --node-name or NODE_NAME", o.Path)
	}
	abs, err := filepath.Abs(o.Path)
	if err != nil {
		return nil, fmt.Errorf("peers file source %s: %w", o.Path, err)
	}
	o.Path = abs
	if o.Poll == 0 {
		o.Poll = DefaultPoll
	}
	if o.Debounce <= 0 {
		o.Debounce = DefaultDebounce
	}
	if o.ReportEvery <= 0 {
		o.ReportEvery = DefaultReportEvery
	}
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Source{
		o:       o,
		log:     log.With("component", "peers-file", "path", o.Path),
		changes: make(chan struct{}, 1),
		reload:  make(chan struct{}, 1),
	}, nil
}

// Run reads the file and keeps re-reading it on change until ctx is done. An
// unreadable or invalid file is not an error of Run: it is logged, Synced
// stays false (or the last good file stays in force) and Run keeps watching.
// Run returns nil when ctx is done; it may be called only once.
func (s *Source) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return fmt.Errorf("peers file source %s: Run called twice", s.o.Path)
	}
	w := s.watch()
	defer func() {
		if w != nil {
			w.Close()
		}
	}()
	s.load(false)

	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	defer debounce.Stop()
	var poll <-chan time.Time
	if s.o.Poll > 0 {
		t := time.NewTicker(s.o.Poll)
		defer t.Stop()
		poll = t.C
	}
	var events <-chan fsnotify.Event
	var werrs <-chan error
	if w != nil {
		events, werrs = w.Events, w.Errors
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			if s.relevant(ev.Name) {
				debounce.Reset(s.o.Debounce)
			}
		case err, ok := <-werrs:
			if !ok {
				werrs = nil
				continue
			}
			// An overflow loses events; read again rather than trust them.
			s.log.Warn("peers file watch error; re-reading the file", "error", err)
			debounce.Reset(s.o.Debounce)
		case <-debounce.C:
			s.load(false)
		case <-poll:
			if w == nil {
				if w = s.watch(); w != nil {
					events, werrs = w.Events, w.Errors
				}
			}
			s.load(false)
		case <-s.reload:
			s.load(true)
		}
	}
}

// watch starts a watch on the file's directory, or returns nil (polling
// covers for it) when that is impossible, e.g. the directory does not exist
// yet.
func (s *Source) watch() *fsnotify.Watcher {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		s.log.Warn("cannot watch the peers file; changes are noticed by polling only", "error", err, "poll", s.o.Poll)
		return nil
	}
	if err := w.Add(filepath.Dir(s.o.Path)); err != nil {
		w.Close()
		s.log.Warn("cannot watch the peers file's directory; changes are noticed by polling only", "error", err, "poll", s.o.Poll)
		return nil
	}
	return w
}

// relevant reports whether an event in the directory may change the file:
// the file itself, or a Kubernetes ConfigMap volume's "..data" symlink swap
// (its entries start with "..").
func (s *Source) relevant(name string) bool {
	base := filepath.Base(name)
	return base == filepath.Base(s.o.Path) || strings.HasPrefix(base, "..")
}

// Reload re-reads the file now, even if it looks unchanged, and signals
// Changes when it is valid (SIGHUP). It never blocks.
func (s *Source) Reload() {
	select {
	case s.reload <- struct{}{}:
	default:
	}
}

// load reads and parses the file; a valid file replaces the nodes in force.
// Unless force is set, content identical to the last read is skipped, so an
// invalid file is logged once per change, not once per poll.
func (s *Source) load(force bool) {
	data, err := readFile(s.o.Path)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		if force || s.lastErr == nil || s.lastErr.Error() != err.Error() {
			s.log.Error("cannot read the peers file; "+s.keeping(), "error", err)
		}
		s.setErr(err)
		s.lastData = nil
		return
	}
	if !force && s.lastData != nil && bytes.Equal(data, s.lastData) {
		return
	}
	s.lastData = data
	f, err := ParseFile(s.o.Path, data)
	nodes := f.Nodes
	if err != nil {
		s.setErr(err)
		msg := "invalid peers file; fix it and save again; " + s.keeping()
		var multi interface{ Unwrap() []error }
		if errors.As(err, &multi) {
			for _, e := range multi.Unwrap() {
				s.log.Error(msg, "error", e.Error())
			}
		} else {
			s.log.Error(msg, "error", err.Error())
		}
		return
	}
	if !slices.Equal(s.cluster, f.ClusterCIDRs) {
		// A range that disappears opens the window it closed: say so.
		s.log.Info("cluster pod ranges from the peers file", "clusterCIDRs", f.ClusterCIDRs, "before", s.cluster)
	}
	s.nodes, s.cluster, s.synced, s.lastErr, s.errSince, s.loadedAt = nodes, f.ClusterCIDRs, true, nil, time.Time{}, time.Now()
	self := slices.IndexFunc(nodes, func(n mesh.Node) bool { return n.Name == s.o.NodeName })
	s.log.Info("peers file loaded", "nodes", len(nodes))
	if self < 0 {
		s.log.Warn("this node has no entry in the peers file; other hosts will not reach it until one is added on every host", "node", s.o.NodeName)
	} else if s.self != nil && s.self.Name == nodes[self].Name {
		// Publish ran against an earlier version; an edit that puts another
		// key into this node's entry cuts it off just the same.
		s.entryErr = s.checkEntry(nodes[self], *s.self)
		if s.entryErr != nil {
			s.log.Error("the peers file no longer matches this agent", "error", s.entryErr)
		}
	}
	select {
	case s.changes <- struct{}{}:
	default:
	}
}

// setErr records why the file on disk is not in force; s.mu must be held.
func (s *Source) setErr(err error) {
	if s.lastErr == nil {
		s.errSince = time.Now()
	}
	s.lastErr = err
}

// State reports whether the file in force is the file on disk, when it was
// last read validly, and whether it agrees with this agent's identity. It
// implements agent.StateReporter.
func (s *Source) State() agent.SourceState {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := agent.SourceState{LastSuccess: s.loadedAt, SelfErr: s.entryErr}
	if s.lastErr != nil {
		st.Err = fmt.Errorf("%w; %s", s.lastErr, s.keeping())
		st.FailingSince = s.errSince
	}
	return st
}

// keeping says which configuration stays in force; s.mu must be held.
func (s *Source) keeping() string {
	if !s.synced {
		return "no configuration is in force yet, so nothing is applied"
	}
	return fmt.Sprintf("the configuration read at %s stays in force", s.loadedAt.Format(time.RFC3339))
}

// readFile reads at most MaxFileSize+1 bytes so Parse can reject an oversized
// file without the agent reading all of it.
func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return data, nil
}

// Synced reports whether a valid file has been read at least once.
func (s *Source) Synced() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.synced
}

// Err returns why the file on disk is not the configuration in force (it is
// unreadable or invalid), or nil.
func (s *Source) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastErr
}

// Nodes returns a copy of the nodes of the last valid file, in file order.
func (s *Source) Nodes() []mesh.Node {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]mesh.Node, len(s.nodes))
	for i, n := range s.nodes {
		n.Labels = maps.Clone(n.Labels)
		n.PodCIDRs = slices.Clone(n.PodCIDRs)
		n.HostIPs = slices.Clone(n.HostIPs)
		n.Problems = slices.Clone(n.Problems)
		out[i] = n
	}
	return out
}

// ClusterCIDRs returns the clusterCIDRs field of the last valid file (nil
// if it has none): agent.ClusterRanger.
func (s *Source) ClusterCIDRs() []netip.Prefix {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.cluster)
}

var _ agent.ClusterRanger = (*Source)(nil)

// Changes is signalled after every load of a valid file.
func (s *Source) Changes() <-chan struct{} { return s.changes }

// Publish checks the file's entry for the local node: the file is the only
// way other hosts learn the node's key, so an entry with a different key is
// an error (the agent must not run with a key nobody knows), and a missing
// key or entry is logged with the public key to add.
func (s *Source) Publish(ctx context.Context, self agent.Self) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.synced {
		why := "it has not been read yet"
		if s.lastErr != nil {
			why = s.lastErr.Error()
		}
		return fmt.Errorf("peers file %s: cannot check the entry of node %q: no valid file in force (%s)", s.o.Path, self.Name, why)
	}
	s.self = &self
	i := slices.IndexFunc(s.nodes, func(n mesh.Node) bool { return n.Name == self.Name })
	if i < 0 {
		attrs := []any{"node", self.Name, "publicKey", self.PublicKey.String()}
		if self.Endpoint.IsValid() {
			attrs = append(attrs, "endpoint", self.Endpoint.String())
		}
		s.log.Warn("this node has no entry in the peers file; add one with this public key on every host", attrs...)
		return nil
	}
	err := s.checkEntry(s.nodes[i], self)
	if err == nil {
		s.entryErr = nil
	}
	return err
}

// checkEntry compares the file's entry for the local node with what the
// agent publishes: a different key is an error, a missing key or another
// endpoint is logged.
func (s *Source) checkEntry(entry mesh.Node, self agent.Self) error {
	switch {
	case entry.PublicKey.IsZero():
		s.log.Warn("the peers file entry of this node has no publicKey; add it on every host so they can reach this node",
			"node", self.Name, "publicKey", self.PublicKey.String())
	case entry.PublicKey != self.PublicKey:
		return fmt.Errorf("peers file %s: node %q has publicKey %s, but this agent's public key is %s: "+
			"put %s into the file on every host, or restore the private key that belongs to the file's key",
			s.o.Path, self.Name, entry.PublicKey, self.PublicKey, self.PublicKey)
	}
	if self.Endpoint.IsValid() && entry.Endpoint.IsValid() && self.Endpoint != entry.Endpoint {
		s.log.Warn("the peers file gives this node a different endpoint than the agent listens on; other hosts will send to the file's",
			"node", self.Name, "fileEndpoint", entry.Endpoint.String(), "agentEndpoint", self.Endpoint.String())
	}
	return nil
}

// Report logs problems that are new since the last call (warning) and those
// that went away (info). An unchanged set is logged again only every
// Options.ReportEvery, so a resync every 30 seconds does not flood the log.
func (s *Source) Report(problems []mesh.Problem) {
	s.reportMu.Lock()
	defer s.reportMu.Unlock()
	now := time.Now()
	cur := make(map[mesh.Problem]bool, len(problems))
	for _, p := range problems {
		cur[p] = true
	}
	again := len(cur) > 0 && now.Sub(s.reportedAt) >= s.o.ReportEvery
	logged := make(map[mesh.Problem]bool, len(cur))
	for _, p := range problems {
		if logged[p] {
			continue
		}
		logged[p] = true
		if again || !s.reported[p] {
			s.log.Warn("mesh problem", "node", p.Node, "reason", string(p.Reason), "detail", p.Detail)
		}
	}
	for p := range s.reported {
		if !cur[p] {
			s.log.Info("mesh problem resolved", "node", p.Node, "reason", string(p.Reason), "detail", p.Detail)
		}
	}
	if again || !maps.Equal(cur, s.reported) {
		s.reportedAt = now
	}
	s.reported = cur
}
