package kube

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/agent"
	"golang.org/x/time/rate"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	ktesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
)

// waitFor is how long a test waits for something asynchronous; generous for
// a loaded 2-core machine, never reached when things work.
const waitFor = 20 * time.Second

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func newSource(t *testing.T, client *fake.Clientset, mod func(*Options)) *Source {
	t.Helper()
	o := Options{Client: client, NodeName: "self", Logger: quiet, Recorder: record.NewFakeRecorder(100)}
	if mod != nil {
		mod(&o)
	}
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// start runs s until the test ends and waits until it has synced and its
// watch is established (the fake clientset drops events that happen between
// its list and its watch).
func start(t *testing.T, client *fake.Clientset, s *Source) {
	t.Helper()
	watching := make(chan struct{})
	var once sync.Once
	client.PrependWatchReactor("nodes", func(ktesting.Action) (bool, watch.Interface, error) {
		once.Do(func() { close(watching) })
		return false, nil, nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	eventually(t, "source synced", s.Synced)
	select {
	case <-watching:
	case <-time.After(waitFor):
		t.Fatal("the informer never started watching")
	}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// expectSignal waits for one Changes signal.
func expectSignal(t *testing.T, s *Source, what string) {
	t.Helper()
	select {
	case <-s.Changes():
	case <-time.After(waitFor):
		t.Fatalf("no Changes signal after %s", what)
	}
}

func drain(s *Source) {
	select {
	case <-s.Changes():
	default:
	}
}

func names(nodes []mesh.Node) string {
	var out []string
	for _, n := range nodes {
		out = append(out, n.Name)
	}
	return strings.Join(out, ",")
}

func nodeByName(nodes []mesh.Node, name string) (mesh.Node, bool) {
	for _, n := range nodes {
		if n.Name == name {
			return n, true
		}
	}
	return mesh.Node{}, false
}

func TestNewValidates(t *testing.T) {
	client := fake.NewClientset()
	for _, o := range []Options{
		{NodeName: "self"},
		{Client: client},
		{Client: client, NodeName: "self", ListenPort: 70000},
	} {
		if _, err := New(o); err == nil {
			t.Errorf("New(%+v) succeeded", o)
		}
	}
}

func TestWatchSignalsAndNodes(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset(
		fatNode("self", nil, "198.18.0.1"),
		fatNode("b", map[string]string{AnnotationPublicKey: testKey(2).String(), AnnotationEndpoint: "198.18.0.2:51820"}, "198.18.0.2"),
	)
	s := newSource(t, client, nil)
	if s.Synced() {
		t.Fatal("Synced before Run")
	}
	start(t, client, s)
	if got := names(s.Nodes()); got != "b,self" {
		t.Fatalf("Nodes = %s, want b,self", got)
	}
	drain(s)

	nodes := client.CoreV1().Nodes()
	if _, err := nodes.Create(ctx, fatNode("c", nil, "198.18.0.3"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	expectSignal(t, s, "add")
	eventually(t, "c in Nodes", func() bool { return names(s.Nodes()) == "b,c,self" })

	c, _ := nodes.Get(ctx, "c", metav1.GetOptions{})
	c.Annotations[AnnotationPublicKey] = testKey(3).String()
	if _, err := nodes.Update(ctx, c, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	expectSignal(t, s, "key annotation update")
	eventually(t, "c's key in Nodes", func() bool {
		n, _ := nodeByName(s.Nodes(), "c")
		return n.PublicKey == testKey(3)
	})

	if err := nodes.Delete(ctx, "b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	expectSignal(t, s, "delete")
	eventually(t, "b gone from Nodes", func() bool { return names(s.Nodes()) == "c,self" })

	// The store holds stripped objects only.
	obj, ok, _ := s.informer.GetStore().GetByKey("c")
	if !ok {
		t.Fatal("c not in the store")
	}
	if n := obj.(*corev1.Node); len(n.ManagedFields) != 0 || len(n.Status.Images) != 0 || len(n.Status.Conditions) != 0 ||
		n.Annotations["node.alpha.kubernetes.io/ttl"] != "" || n.UID == "" {
		t.Errorf("stored node is not stripped (or lost its UID): %+v", n)
	}
}

func TestHeartbeatDoesNotSignal(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset(fatNode("self", nil, "198.18.0.1"), fatNode("b", nil, "198.18.0.2"))
	s := newSource(t, client, nil)
	start(t, client, s)
	drain(s)

	// A kubelet status heartbeat: conditions, images and the resource
	// version change, nothing the mesh sees.
	nodes := client.CoreV1().Nodes()
	b, _ := nodes.Get(ctx, "b", metav1.GetOptions{})
	b.Status.Conditions[0].LastHeartbeatTime = metav1.Unix(99, 0)
	b.Status.Images = append(b.Status.Images, corev1.ContainerImage{Names: []string{"x"}})
	b.Annotations["node.alpha.kubernetes.io/ttl"] = "30"
	b.ResourceVersion = "7"
	if _, err := nodes.UpdateStatus(ctx, b, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Then a real change of another node. The handler sees events in order,
	// so once the second has arrived the first has been handled too.
	self, _ := nodes.Get(ctx, "self", metav1.GetOptions{})
	self.Labels["zone"] = "a"
	if _, err := nodes.Update(ctx, self, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	expectSignal(t, s, "label change")
	eventually(t, "label in Nodes", func() bool {
		n, _ := nodeByName(s.Nodes(), "self")
		return n.Labels["zone"] == "a"
	})
	select {
	case <-s.Changes():
		t.Error("a heartbeat-only update signalled Changes")
	case <-time.After(200 * time.Millisecond):
	}
}

// TestUpdateHandler checks the heartbeat filter without an informer.
func TestUpdateHandler(t *testing.T) {
	s := newSource(t, fake.NewClientset(), nil)
	base := fatNode("b", map[string]string{AnnotationPublicKey: testKey(2).String()}, "198.18.0.2")
	tests := []struct {
		name   string
		change func(n *corev1.Node)
		signal bool
	}{
		{"heartbeat", func(n *corev1.Node) {
			n.ResourceVersion = "2"
			n.Status.Conditions[0].LastHeartbeatTime = metav1.Unix(5, 0)
		}, false},
		{"foreign annotation", func(n *corev1.Node) { n.Annotations["x"] = "y" }, false},
		{"external IP", func(n *corev1.Node) { n.Status.Addresses[1].Address = "198.19.0.9" }, false},
		{"key", func(n *corev1.Node) { n.Annotations[AnnotationPublicKey] = testKey(9).String() }, true},
		{"endpoint", func(n *corev1.Node) { n.Annotations[AnnotationEndpoint] = "198.18.0.2:1" }, true},
		{"force endpoint", func(n *corev1.Node) { n.Annotations[AnnotationForceEndpoint] = "198.18.0.2:1" }, true},
		{"pod CIDR", func(n *corev1.Node) { n.Spec.PodCIDRs = []string{"10.244.9.0/24"} }, true},
		{"label", func(n *corev1.Node) { n.Labels["kubernetes.io/os"] = "windows" }, true},
		{"internal IP", func(n *corev1.Node) { n.Status.Addresses[2].Address = "198.18.0.9" }, true},
		{"malformed key", func(n *corev1.Node) { n.Annotations[AnnotationPublicKey] = "bad" }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := base.DeepCopy()
			tt.change(n)
			oldObj, _ := Strip(base)
			newObj, _ := Strip(n)
			s.onAdd(oldObj) // the source has seen base
			drain(s)
			s.onUpdate(oldObj, newObj)
			got := false
			select {
			case <-s.Changes():
				got = true
			default:
			}
			if got != tt.signal {
				t.Errorf("signalled = %v, want %v", got, tt.signal)
			}
		})
	}
}

// TestLostWatchKeepsState breaks the watch and every later list: the last
// known nodes must stay.
func TestLostWatchKeepsState(t *testing.T) {
	client := fake.NewClientset()
	var lists atomic.Int64
	initial := &corev1.NodeList{ListMeta: metav1.ListMeta{ResourceVersion: "10"}, Items: []corev1.Node{
		*fatNode("self", nil, "198.18.0.1"), *fatNode("b", nil, "198.18.0.2"),
	}}
	client.PrependReactor("list", "nodes", func(ktesting.Action) (bool, runtime.Object, error) {
		if lists.Add(1) == 1 {
			return true, initial, nil
		}
		return true, nil, apierrors.NewServiceUnavailable("API server restarting")
	})
	watcher := watch.NewFake()
	client.PrependWatchReactor("nodes", func(ktesting.Action) (bool, watch.Interface, error) {
		return true, watcher, nil
	})
	s := newSource(t, client, nil)
	start(t, client, s)
	if got := names(s.Nodes()); got != "b,self" {
		t.Fatalf("Nodes = %s, want b,self", got)
	}
	watcher.Stop()
	eventually(t, "a re-list after the watch was lost", func() bool { return lists.Load() >= 2 })
	if got := names(s.Nodes()); got != "b,self" {
		t.Errorf("after losing the watch Nodes = %s, want b,self", got)
	}
	if !s.Synced() {
		t.Error("no longer Synced after losing the watch")
	}
}

// patches returns the merge patches sent for node, decoded.
func patches(t *testing.T, client *fake.Clientset, node string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, a := range client.Actions() {
		p, ok := a.(ktesting.PatchActionImpl)
		if !ok || p.GetResource().Resource != "nodes" || p.Name != node {
			continue
		}
		if p.PatchType != types.MergePatchType {
			t.Errorf("patch type %s, want %s", p.PatchType, types.MergePatchType)
		}
		var body struct {
			Metadata struct {
				Annotations map[string]any `json:"annotations"`
			} `json:"metadata"`
		}
		dec := json.NewDecoder(strings.NewReader(string(p.Patch)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&body); err != nil {
			t.Fatalf("patch body %s: %v", p.Patch, err)
		}
		out = append(out, body.Metadata.Annotations)
	}
	return out
}

func annotations(t *testing.T, client *fake.Clientset, node string) map[string]string {
	t.Helper()
	n, err := client.CoreV1().Nodes().Get(context.Background(), node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return n.Annotations
}

func TestPublish(t *testing.T) {
	key := testKey(7)
	tests := []struct {
		name         string
		node         *corev1.Node
		self         agent.Self
		port         int
		wantEndpoint string // "" = no endpoint annotation
	}{
		{"InternalIP and default port", fatNode("self", nil, "198.18.0.1"), agent.Self{}, 0, "198.18.0.1:51822"},
		{"IPv4 preferred", fatNode("self", nil, "fd00:198:18::1", "198.18.0.1"), agent.Self{}, 4000, "198.18.0.1:4000"},
		{"IPv6 only", fatNode("self", nil, "fd00:198:18::1"), agent.Self{}, 0, "[fd00:198:18::1]:51822"},
		{"explicit endpoint", fatNode("self", nil, "198.18.0.1"), agent.Self{Endpoint: netip.MustParseAddrPort("198.18.5.5:6000")}, 0, "198.18.5.5:6000"},
		{"explicit address, listen port", fatNode("self", nil, "198.18.0.1"), agent.Self{Endpoint: netip.AddrPortFrom(netip.MustParseAddr("198.18.5.5"), 0)}, 7000, "198.18.5.5:7000"},
		{"force-endpoint honoured", fatNode("self", map[string]string{AnnotationForceEndpoint: "198.18.9.9:9999"}, "198.18.0.1"),
			agent.Self{Endpoint: netip.MustParseAddrPort("198.18.5.5:6000")}, 0, "198.18.9.9:9999"},
		{"malformed force-endpoint ignored", fatNode("self", map[string]string{AnnotationForceEndpoint: "nope"}, "198.18.0.1"), agent.Self{}, 0, "198.18.0.1:51822"},
		{"no address at all", fatNode("self", nil), agent.Self{}, 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client := fake.NewClientset(tt.node)
			s := newSource(t, client, func(o *Options) { o.ListenPort = tt.port })
			self := tt.self
			self.PublicKey, self.Backend = key, mesh.BackendUserspace
			if err := s.Publish(context.Background(), self); err != nil {
				t.Fatal(err)
			}
			got := annotations(t, client, "self")
			want := map[string]string{AnnotationPublicKey: key.String(), AnnotationBackend: "userspace"}
			if tt.wantEndpoint != "" {
				want[AnnotationEndpoint] = tt.wantEndpoint
			}
			for k, v := range want {
				if got[k] != v {
					t.Errorf("annotation %s = %q, want %q", k, got[k], v)
				}
			}
			if _, ok := got[AnnotationEndpoint]; ok && tt.wantEndpoint == "" {
				t.Errorf("endpoint %q published without an address", got[AnnotationEndpoint])
			}
			// Foreign and user annotations are untouched.
			if got["node.alpha.kubernetes.io/ttl"] != "0" || got[AnnotationForceEndpoint] != tt.node.Annotations[AnnotationForceEndpoint] {
				t.Errorf("other annotations changed: %v", got)
			}
			ps := patches(t, client, "self")
			if len(ps) != 1 {
				t.Fatalf("%d patches, want 1", len(ps))
			}
			if len(ps[0]) != len(want) {
				t.Errorf("patch sets %v, want exactly %v", ps[0], want)
			}
			// Publishing the same identity again writes nothing.
			if err := s.Publish(context.Background(), self); err != nil {
				t.Fatal(err)
			}
			if n := len(patches(t, client, "self")); n != 1 {
				t.Errorf("an idempotent Publish patched again (%d patches)", n)
			}
		})
	}
}

func TestPublishRejects(t *testing.T) {
	client := fake.NewClientset(fatNode("self", nil, "198.18.0.1"))
	s := newSource(t, client, nil)
	ctx := context.Background()
	if err := s.Publish(ctx, agent.Self{Name: "self"}); err == nil {
		t.Error("published the zero key")
	}
	if err := s.Publish(ctx, agent.Self{Name: "other", PublicKey: testKey(1)}); err == nil || !strings.Contains(err.Error(), `"other"`) {
		t.Errorf("publishing for another node: err = %v", err)
	}
	if n := len(client.Actions()); n != 0 {
		t.Errorf("%d API calls for rejected publishes", n)
	}

	missing := newSource(t, fake.NewClientset(), nil)
	err := missing.Publish(ctx, agent.Self{PublicKey: testKey(1)})
	if err == nil || !apierrors.IsNotFound(err) || !strings.Contains(err.Error(), `node "self"`) {
		t.Errorf("publish to a missing node: err = %v", err)
	}
}

// TestPublishMakesOneAttempt: Publish does not retry (the agent's loop
// owns the retries of publishing): a transient error is returned after one
// patch, explained, and the next call succeeds.
func TestPublishMakesOneAttempt(t *testing.T) {
	for _, tt := range []struct {
		name  string
		err   error
		check func(error) bool
		hint  string
	}{
		{"internal", apierrors.NewInternalError(errors.New("etcd leader changed")), apierrors.IsInternalError, "etcd"},
		{"unavailable", apierrors.NewServiceUnavailable("down"), apierrors.IsServiceUnavailable, "down"},
		{"forbidden", apierrors.NewForbidden(schema.GroupResource{Resource: "nodes"}, "self", errors.New("no RBAC")), apierrors.IsForbidden, "RBAC"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			client := fake.NewClientset(fatNode("self", nil, "198.18.0.1"))
			var attempts atomic.Int64
			client.PrependReactor("patch", "nodes", func(ktesting.Action) (bool, runtime.Object, error) {
				if attempts.Add(1) == 1 {
					return true, nil, tt.err
				}
				return false, nil, nil
			})
			s := newSource(t, client, nil)
			err := s.Publish(context.Background(), agent.Self{PublicKey: testKey(1)})
			if !tt.check(err) || !strings.Contains(err.Error(), tt.hint) || attempts.Load() != 1 {
				t.Fatalf("err = %v after %d attempts, want the %s error after one", err, attempts.Load(), tt.name)
			}
			if err := s.Publish(context.Background(), agent.Self{PublicKey: testKey(1)}); err != nil {
				t.Fatal(err)
			}
			if got := annotations(t, client, "self")[AnnotationPublicKey]; got != testKey(1).String() {
				t.Errorf("key annotation = %q", got)
			}
		})
	}
}

func TestRepublish(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset(fatNode("self", map[string]string{"keep": "me"}, "198.18.0.1"))
	s := newSource(t, client, nil)
	s.republishLimit = rate.NewLimiter(rate.Inf, 1)
	start(t, client, s)
	// The loop's part: publish the current Self whenever Republish is
	// signalled, retrying (here: at once) until it succeeds.
	var cur atomic.Pointer[agent.Self]
	publish := func(self agent.Self) {
		cur.Store(&self)
		if err := s.Publish(ctx, self); err != nil {
			t.Fatal(err)
		}
	}
	loopCtx, stop := context.WithCancel(ctx)
	loopDone := make(chan struct{})
	go func() {
		defer close(loopDone)
		for {
			select {
			case <-loopCtx.Done():
				return
			case <-s.Republish():
				for s.Publish(loopCtx, *cur.Load()) != nil && loopCtx.Err() == nil {
				}
			}
		}
	}()
	defer func() { stop(); <-loopDone }()
	self := agent.Self{PublicKey: testKey(1), Backend: mesh.BackendKernel}
	publish(self)
	published := func(key mesh.Key, endpoint string) func() bool {
		return func() bool {
			a := annotations(t, client, "self")
			return a[AnnotationPublicKey] == key.String() && a[AnnotationEndpoint] == endpoint && a[AnnotationBackend] == "kernel"
		}
	}
	eventually(t, "published", published(testKey(1), "198.18.0.1:51822"))

	// Someone removes our annotations: they come back.
	if err := RemoveAnnotations(ctx, client, "self"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "republished after removal", published(testKey(1), "198.18.0.1:51822"))

	// Someone overwrites the key: it is restored.
	patch := []byte(`{"metadata":{"annotations":{"` + AnnotationPublicKey + `":"` + testKey(5).String() + `"}}}`)
	if _, err := client.CoreV1().Nodes().Patch(ctx, "self", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "republished after overwrite", published(testKey(1), "198.18.0.1:51822"))

	// The user sets force-endpoint: the endpoint annotation follows.
	patch = []byte(`{"metadata":{"annotations":{"` + AnnotationForceEndpoint + `":"198.18.4.4:4444"}}}`)
	if _, err := client.CoreV1().Nodes().Patch(ctx, "self", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "endpoint follows force-endpoint", published(testKey(1), "198.18.4.4:4444"))

	// A rotated key is what gets restored from then on.
	publish(agent.Self{PublicKey: testKey(2), Backend: mesh.BackendKernel})
	if err := RemoveAnnotations(ctx, client, "self"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "rotated key republished", published(testKey(2), "198.18.4.4:4444"))
	if annotations(t, client, "self")["keep"] != "me" {
		t.Error("a foreign annotation was lost")
	}
}

func TestRemoveAnnotations(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset(fatNode("self", map[string]string{
		AnnotationPublicKey: testKey(1).String(), AnnotationEndpoint: "198.18.0.1:51820", AnnotationBackend: "kernel",
		AnnotationForceEndpoint: "198.18.9.9:1",
	}))
	for range 2 { // removing what is gone is fine
		if err := RemoveAnnotations(ctx, client, "self"); err != nil {
			t.Fatal(err)
		}
	}
	got := annotations(t, client, "self")
	for _, k := range []string{AnnotationPublicKey, AnnotationEndpoint, AnnotationBackend} {
		if _, ok := got[k]; ok {
			t.Errorf("%s still present", k)
		}
	}
	if got[AnnotationForceEndpoint] != "198.18.9.9:1" || got["node.alpha.kubernetes.io/ttl"] != "0" {
		t.Errorf("annotations not ours were touched: %v", got)
	}
	for _, p := range patches(t, client, "self") {
		if len(p) != 3 || p[AnnotationPublicKey] != nil {
			t.Errorf("patch %v, want three nulls", p)
		}
	}
	if err := RemoveAnnotations(ctx, client, "ghost"); !apierrors.IsNotFound(err) || !strings.Contains(err.Error(), `"ghost"`) {
		t.Errorf("missing node: err = %v", err)
	}
}

func TestLifecycle(t *testing.T) {
	client := fake.NewClientset(fatNode("self", nil, "198.18.0.1"))
	s := newSource(t, client, func(o *Options) { o.Recorder = nil })
	start(t, client, s)
	if err := s.Run(context.Background()); err == nil {
		t.Error("a second Run succeeded")
	}
	for range 2 {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}
	// After Close problems are still logged, never sent.
	s.Report([]mesh.Problem{{Node: "self", Reason: mesh.ReasonSelfKeyMismatch, Detail: "after close"}})
	time.Sleep(100 * time.Millisecond)
	for _, a := range client.Actions() {
		if a.GetResource().Resource == "events" {
			t.Errorf("event action after Close: %v", a)
		}
	}
}

// TestNodesFollowsHandlers drives the event handlers directly: Nodes is the
// conversion they keep, sorted, unaffected by callers modifying a snapshot,
// and a deletion the watch missed (a tombstone) still removes the node.
func TestNodesFollowsHandlers(t *testing.T) {
	s := newSource(t, fake.NewClientset(), nil)
	add := func(n *corev1.Node) {
		t.Helper()
		obj, err := Strip(n)
		if err != nil {
			t.Fatal(err)
		}
		s.onAdd(obj)
	}
	add(fatNode("c", nil, "198.18.0.3"))
	add(fatNode("a", nil, "198.18.0.1"))
	add(fatNode("b", map[string]string{AnnotationPublicKey: testKey(2).String()}, "198.18.0.2"))
	if got := names(s.Nodes()); got != "a,b,c" {
		t.Fatalf("Nodes = %s, want a,b,c", got)
	}

	snap := s.Nodes()
	snap[0].Name = "mangled"
	slices.Reverse(snap)
	if got := names(s.Nodes()); got != "a,b,c" {
		t.Fatalf("a caller's change to a snapshot leaked into Nodes: %s", got)
	}

	// A key change replaces the conversion.
	oldB, _ := Strip(fatNode("b", map[string]string{AnnotationPublicKey: testKey(2).String()}, "198.18.0.2"))
	newB, _ := Strip(fatNode("b", map[string]string{AnnotationPublicKey: testKey(7).String()}, "198.18.0.2"))
	s.onUpdate(oldB, newB)
	if n, _ := nodeByName(s.Nodes(), "b"); n.PublicKey != testKey(7) {
		t.Fatalf("after the update b's key is %v, want %v", n.PublicKey, testKey(7))
	}

	a, _ := Strip(fatNode("a", nil, "198.18.0.1"))
	s.onDelete(a)
	s.onDelete(cache.DeletedFinalStateUnknown{Key: "c", Obj: nil})
	s.onDelete(cache.DeletedFinalStateUnknown{Key: "never-seen"})
	if got := names(s.Nodes()); got != "b" {
		t.Fatalf("after deleting a and a tombstone of c, Nodes = %s, want b", got)
	}
}
