package kube

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/mesh"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"
)

// recorded drains a FakeRecorder.
func recorded(r *record.FakeRecorder) []string {
	var out []string
	for {
		select {
		case e := <-r.Events:
			out = append(out, e)
		default:
			return out
		}
	}
}

func TestReportRateLimits(t *testing.T) {
	client := fake.NewClientset(fatNode("self", nil, "198.18.0.1"), fatNode("b", nil, "198.18.0.2"))
	rec := record.NewFakeRecorder(100)
	s := newSource(t, client, func(o *Options) { o.Recorder = rec })
	now := time.Unix(1000, 0)
	s.now = func() time.Time { return now }
	start(t, client, s)

	noKey := mesh.Problem{Node: "b", Reason: mesh.ReasonNoKey, Detail: "node has published no WireGuard public key"}
	dup := mesh.Problem{Node: "b", Reason: mesh.ReasonDuplicateKey, Detail: "public key is also published by node \"c\""}
	ghost := mesh.Problem{Node: "gone", Reason: mesh.ReasonNoKey, Detail: "not in the store"}
	nameless := mesh.Problem{Reason: mesh.Reason("InvalidName"), Detail: "a node has no name"}

	s.Report([]mesh.Problem{noKey, ghost, nameless})
	want := []string{"Warning NoKey node has published no WireGuard public key"}
	if got := recorded(rec); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("events = %q, want %q", got, want)
	}

	// The same problems again within the interval: nothing new; a new
	// detail for the same node is new.
	now = now.Add(DefaultReportInterval - time.Second)
	s.Report([]mesh.Problem{noKey, dup, ghost})
	want = []string{"Warning DuplicateKey public key is also published by node \"c\""}
	if got := recorded(rec); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("events = %q, want %q", got, want)
	}

	// After the interval the persisting problem is reported again.
	now = now.Add(2 * time.Second)
	s.Report([]mesh.Problem{noKey, dup})
	want = []string{"Warning NoKey node has published no WireGuard public key"}
	if got := recorded(rec); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("events = %q, want %q", got, want)
	}

	// Forgotten entries are pruned so the map does not grow forever.
	now = now.Add(time.Hour)
	s.Report(nil)
	if n := s.reported.Len(); n != 0 {
		t.Errorf("%d remembered problems after an hour of silence", n)
	}

	// Long details are cut to fit an Event.
	long := mesh.Problem{Node: "b", Reason: mesh.ReasonCIDROverlap, Detail: strings.Repeat("é", 2000)}
	s.Report([]mesh.Problem{long})
	got := recorded(rec)
	if len(got) != 1 || len(got[0]) > len("Warning CIDROverlap ")+maxEventMessage || !strings.HasSuffix(got[0], "…") {
		t.Errorf("long event not truncated: %d bytes", len(got[0]))
	}
}

// TestReportEventsToAPI uses the real broadcaster against the fake
// clientset: the Event must name the Node by UID and come from wgmesh.
func TestReportEventsToAPI(t *testing.T) {
	client := fake.NewClientset(fatNode("self", nil, "198.18.0.1"), fatNode("b", nil, "198.18.0.2"))
	s := newSource(t, client, func(o *Options) { o.Recorder = nil })
	start(t, client, s)
	p := mesh.Problem{Node: "b", Reason: mesh.ReasonInvalidKey, Detail: "annotation wgmesh.io/public-key: invalid WireGuard key"}
	s.Report([]mesh.Problem{p})
	s.Report([]mesh.Problem{p}) // rate-limited: still one Event

	var events []corev1.Event
	eventually(t, "an Event in the API", func() bool {
		l, err := client.CoreV1().Events(metav1.NamespaceDefault).List(context.Background(), metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		events = l.Items
		return len(events) > 0
	})
	time.Sleep(100 * time.Millisecond)
	l, _ := client.CoreV1().Events(metav1.NamespaceDefault).List(context.Background(), metav1.ListOptions{})
	if len(l.Items) != 1 {
		t.Fatalf("%d events, want 1", len(l.Items))
	}
	e := l.Items[0]
	io := e.InvolvedObject
	if io.Kind != "Node" || io.Name != "b" || io.UID != "uid-b" || e.Type != corev1.EventTypeWarning ||
		e.Reason != "InvalidKey" || e.Message != p.Detail || e.Source.Component != "wgmesh" || e.Source.Host != "self" {
		t.Errorf("event = %+v", e)
	}
}

func TestReporters(t *testing.T) {
	for _, n := range []int{1, 2, 3, 10, 200} {
		var names []string
		for i := range n {
			names = append(names, fmt.Sprintf("node-%d", i))
		}
		r := newReporters(names)
		load := map[string]int{}
		for _, node := range names {
			count := 0
			for _, agent := range names {
				if r.reports(agent, node) {
					if agent == node {
						t.Errorf("%d nodes: %s reports itself", n, node)
					}
					count++
					load[agent]++
				}
			}
			if want := min(reportersPerNode, n-1); count != want {
				t.Errorf("%d nodes: %s has %d reporters, want %d", n, node, count, want)
			}
		}
		// A node that is not (yet) in the store still gets reporters.
		count := 0
		for _, agent := range names {
			if r.reports(agent, "unknown") {
				count++
			}
		}
		if want := min(reportersPerNode, n); count != want {
			t.Errorf("%d nodes: unknown node has %d reporters, want %d", n, count, want)
		}
	}
}

// TestReportOnlyAsReporter checks that an agent writes Events about other
// nodes only when it is one of their reporters, and always about its own.
// Reporters are drawn from the healthy nodes only (no problem names them), so
// Events about agent-less nodes are never left to other agent-less nodes.
func TestReportOnlyAsReporter(t *testing.T) {
	objs := []runtime.Object{fatNode("self", nil, "198.18.0.1")}
	healthyNames := []string{"self"}
	var broken []string
	for i := range 30 {
		name := fmt.Sprintf("n%d", i)
		objs = append(objs, fatNode(name, nil))
		if i < 10 {
			healthyNames = append(healthyNames, name)
		} else {
			broken = append(broken, name)
		}
	}
	client := fake.NewClientset(objs...)
	rec := record.NewFakeRecorder(100)
	s := newSource(t, client, func(o *Options) { o.Recorder = rec })
	start(t, client, s)

	ring := newReporters(healthyNames)
	problems := []mesh.Problem{{Node: "self", Reason: mesh.ReasonNoKey, Detail: "about self"}}
	want := map[string]bool{"Warning NoKey about self": true}
	for _, n := range broken {
		problems = append(problems, mesh.Problem{Node: n, Reason: mesh.ReasonNoKey, Detail: "about " + n})
		want["Warning NoKey about "+n] = ring.reports("self", n)
	}
	s.Report(problems)
	got := map[string]bool{}
	for _, e := range recorded(rec) {
		got[e] = true
	}
	n := 0
	for e, w := range want {
		if got[e] != w {
			t.Errorf("event %q written = %v, want %v", e, got[e], w)
		}
		if w {
			n++
		}
	}
	if n < 2 || n == len(want) {
		t.Errorf("%d of %d problems reported as Events; the ring should pick some, not all", n, len(want))
	}
}

// TestReportAloneReportsAll: when every other node has a problem, the local
// agent is the only one known to work and writes every Event itself.
func TestReportAloneReportsAll(t *testing.T) {
	objs := []runtime.Object{fatNode("self", nil, "198.18.0.1")}
	var problems []mesh.Problem
	for i := range 9 {
		name := fmt.Sprintf("n%d", i)
		objs = append(objs, fatNode(name, nil))
		problems = append(problems, mesh.Problem{Node: name, Reason: mesh.ReasonNoKey, Detail: "about " + name})
	}
	client := fake.NewClientset(objs...)
	rec := record.NewFakeRecorder(100)
	s := newSource(t, client, func(o *Options) { o.Recorder = rec })
	start(t, client, s)
	s.Report(problems)
	if got := recorded(rec); len(got) != len(problems) {
		t.Errorf("wrote %d Events for %d problems of agent-less nodes: %q", len(got), len(problems), got)
	}
}

// TestHealthyExcludesWarnedNodes: a node named only by a warning stays
// programmed, but it may be a stale Node sharing a live one's endpoint, with
// no agent to write Events: it is no reporter.
func TestHealthyExcludesWarnedNodes(t *testing.T) {
	problems := []mesh.Problem{
		{Node: "a", Reason: mesh.ReasonDuplicateEndpoint},
		{Node: "b", Reason: mesh.ReasonDuplicateKey},
		{Node: "self", Reason: mesh.ReasonDuplicateKey},
	}
	got := healthy([]string{"a", "b", "c", "self"}, problems, "self")
	if want := []string{"c", "self"}; !slices.Equal(got, want) {
		t.Errorf("healthy = %q, want %q", got, want)
	}
}
