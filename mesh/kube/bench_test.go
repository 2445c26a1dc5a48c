package kube

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"
)

// realisticNode is a Node about the size a busy kubelet produces: dozens of
// cached images and several managed-fields entries.
func realisticNode(i int) *corev1.Node {
	n := meshNode(fmt.Sprintf("node-%05d", i), byte(i%250+1))
	n.Spec.PodCIDRs = []string{fmt.Sprintf("10.%d.%d.0/24", 100+i/256, i%256)}
	for j := range 50 {
		n.Status.Images = append(n.Status.Images, corev1.ContainerImage{
			Names:     []string{fmt.Sprintf("registry.invalid/team/app-%d@sha256:%s", j, strings.Repeat("a", 64)), fmt.Sprintf("registry.invalid/team/app-%d:v1.%d", j, j)},
			SizeBytes: int64(j) << 20,
		})
	}
	for j := range 4 {
		n.ManagedFields = append(n.ManagedFields, metav1.ManagedFieldsEntry{Manager: fmt.Sprintf("manager-%d", j),
			FieldsType: "FieldsV1", FieldsV1: &metav1.FieldsV1{Raw: []byte(`{"f:status":{"f:conditions":{` + strings.Repeat(`"k:{\"type\":\"Ready\"}":{},`, 20) + `"x":{}}}}`)}})
	}
	return n
}

// BenchmarkNodes measures the snapshot the reconciler takes on every
// reconcile, at 5000 nodes, and reports how much of each Node the informer
// keeps (serialized bytes, as a proxy for memory).
func BenchmarkNodes(b *testing.B) {
	s, err := New(Options{Client: fake.NewClientset(), NodeName: "self", Logger: quiet, Recorder: &record.FakeRecorder{}})
	if err != nil {
		b.Fatal(err)
	}
	var fat, thin int
	for i := range 5000 {
		n := realisticNode(i)
		obj, _ := Strip(n)
		fb, _ := json.Marshal(n)
		tb, _ := json.Marshal(obj)
		fat, thin = fat+len(fb), thin+len(tb)
		if err := s.informer.GetStore().Add(obj); err != nil {
			b.Fatal(err)
		}
		s.onAdd(obj) // what the informer's handler does
	}
	// The first call after a change sorts; the steady state (nothing
	// changed since the last reconcile) copies.
	if got := len(s.Nodes()); got != 5000 {
		b.Fatalf("%d nodes", got)
	}
	for b.Loop() {
		if got := len(s.Nodes()); got != 5000 {
			b.Fatalf("%d nodes", got)
		}
	}
	b.ReportMetric(float64(fat)/5000, "fullB/node")
	b.ReportMetric(float64(thin)/5000, "keptB/node")
}
