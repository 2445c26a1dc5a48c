package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/kube"
)

// informerNodes is the cluster size of the memory benchmarks: the largest
// cluster Kubernetes supports.
const informerNodes = 5000

// RealisticNode returns Node i the way a cloud cluster's API server serves
// it: about twenty labels, cloud and CSI annotations, four managedFields
// entries with their field sets, eight conditions with messages, capacity,
// node info, and fifty cached container images with digests — the fields
// that make a Node tens of kilobytes although wgmesh needs a few hundred
// bytes of it. Every value that differs between real nodes differs here too.
func RealisticNode(i int) *corev1.Node {
	name := fmt.Sprintf("gke-prod-pool-%d-%08x", i%7, uint32(i)*2654435761)
	ip := fmt.Sprintf("198.18.%d.%d", (i>>8)&0xff, i&0xff)
	hex := func(seed, n int) string {
		const digits = "0123456789abcdef"
		b := make([]byte, n)
		x := uint64(seed)*0x9e3779b97f4a7c15 + 1
		for j := range b {
			x ^= x << 13
			x ^= x >> 7
			x ^= x << 17
			b[j] = digits[x&15]
		}
		return string(b)
	}
	labels := map[string]string{
		"beta.kubernetes.io/arch":                  "amd64",
		"beta.kubernetes.io/instance-type":         "n2-standard-8",
		"beta.kubernetes.io/os":                    "linux",
		"cloud.google.com/gke-boot-disk":           "pd-balanced",
		"cloud.google.com/gke-container-runtime":   "containerd",
		"cloud.google.com/gke-cpu-scaling-level":   "8",
		"cloud.google.com/gke-logging-variant":     "DEFAULT",
		"cloud.google.com/gke-max-pods-per-node":   "110",
		"cloud.google.com/gke-nodepool":            fmt.Sprintf("pool-%d", i%7),
		"cloud.google.com/gke-os-distribution":     "cos",
		"cloud.google.com/machine-family":          "n2",
		"cloud.google.com/private-node":            "false",
		"failure-domain.beta.kubernetes.io/region": "europe-west1",
		"failure-domain.beta.kubernetes.io/zone":   fmt.Sprintf("europe-west1-%c", 'b'+i%3),
		"kubernetes.io/arch":                       "amd64",
		"kubernetes.io/hostname":                   name,
		"kubernetes.io/os":                         "linux",
		"node.kubernetes.io/instance-type":         "n2-standard-8",
		"topology.gke.io/zone":                     fmt.Sprintf("europe-west1-%c", 'b'+i%3),
		"topology.kubernetes.io/region":            "europe-west1",
		"topology.kubernetes.io/zone":              fmt.Sprintf("europe-west1-%c", 'b'+i%3),
	}
	var key mesh.Key
	key[0], key[1], key[2] = byte(i), byte(i>>8), 7
	annotations := map[string]string{
		"container.googleapis.com/instance_id":                   fmt.Sprint(7000000000000000000 + i),
		"csi.volume.kubernetes.io/nodeid":                        fmt.Sprintf(`{"pd.csi.storage.gke.io":"projects/prod-%s/zones/europe-west1-b/instances/%s"}`, hex(i, 8), name),
		"node.alpha.kubernetes.io/ttl":                           "0",
		"node.gke.io/last-applied-node-labels":                   "cloud.google.com/gke-boot-disk=pd-balanced,cloud.google.com/gke-container-runtime=containerd,cloud.google.com/gke-cpu-scaling-level=8,cloud.google.com/gke-logging-variant=DEFAULT,cloud.google.com/gke-max-pods-per-node=110,cloud.google.com/gke-nodepool=pool,cloud.google.com/gke-os-distribution=cos,cloud.google.com/machine-family=n2,cloud.google.com/private-node=false",
		"node.gke.io/last-applied-node-taints":                   "",
		"volumes.kubernetes.io/controller-managed-attach-detach": "true",
		kube.AnnotationPublicKey:                                 key.String(),
		kube.AnnotationEndpoint:                                  ip + ":51820",
		kube.AnnotationBackend:                                   "kernel",
	}
	t := metav1.NewTime(time.Date(2026, 11, 1, 12, 0, i%60, 0, time.UTC))
	fields := func(manager string, n int) metav1.ManagedFieldsEntry {
		// A field set in the shape the API server records: nested f:/k:
		// keys, a few kilobytes for the kubelet's status writes.
		raw := `{"f:metadata":{"f:annotations":{`
		for j := 0; j < n; j++ {
			raw += fmt.Sprintf(`"f:example.io/field-%d":{},`, j)
		}
		raw += `"f:node.alpha.kubernetes.io/ttl":{}},"f:labels":{"f:kubernetes.io/hostname":{}}},"f:status":{"f:conditions":{`
		for _, c := range []string{"Ready", "MemoryPressure", "DiskPressure", "PIDPressure", "NetworkUnavailable"} {
			raw += fmt.Sprintf(`"k:{\"type\":\"%s\"}":{".":{},"f:lastHeartbeatTime":{},"f:lastTransitionTime":{},"f:message":{},"f:reason":{},"f:status":{},"f:type":{}},`, c)
		}
		raw += `"f:images":{}},"f:nodeInfo":{"f:bootID":{},"f:containerRuntimeVersion":{},"f:kernelVersion":{}}}}`
		return metav1.ManagedFieldsEntry{
			Manager: manager, Operation: metav1.ManagedFieldsOperationUpdate, APIVersion: "v1", Time: &t,
			FieldsType: "FieldsV1", FieldsV1: &metav1.FieldsV1{Raw: []byte(raw)},
		}
	}
	n := &corev1.Node{
		TypeMeta: metav1.TypeMeta{Kind: "Node", APIVersion: "v1"},
		ObjectMeta: metav1.ObjectMeta{
			Name:              name,
			UID:               types.UID(fmt.Sprintf("%s-%s-%s-%s-%s", hex(i, 8), hex(i+1, 4), hex(i+2, 4), hex(i+3, 4), hex(i+4, 12))),
			ResourceVersion:   fmt.Sprint(123456789 + i),
			CreationTimestamp: t,
			Labels:            labels,
			Annotations:       annotations,
			ManagedFields: []metav1.ManagedFieldsEntry{
				fields("kubelet", 4), fields("kube-controller-manager", 2), fields("gke-node-labeler", 12), fields("wgmesh", 3),
			},
		},
		Spec: corev1.NodeSpec{
			PodCIDR:    fmt.Sprintf("10.%d.%d.0/24", i>>8, i&0xff),
			PodCIDRs:   []string{fmt.Sprintf("10.%d.%d.0/24", i>>8, i&0xff), fmt.Sprintf("fd00:10:244:%x::/64", i)},
			ProviderID: fmt.Sprintf("gce://prod-%s/europe-west1-b/%s", hex(i, 8), name),
		},
	}
	qty := func(s string) resource.Quantity { return resource.MustParse(s) }
	res := corev1.ResourceList{
		"cpu": qty("8"), "memory": qty("32880532Ki"), "ephemeral-storage": qty("98831908Ki"), "pods": qty("110"),
		"hugepages-1Gi": qty("0"), "hugepages-2Mi": qty("0"), "attachable-volumes-gce-pd": qty("127"),
	}
	n.Status.Capacity = res
	n.Status.Allocatable = res.DeepCopy()
	for j, c := range []string{"FrequentUnregisterNetDevice", "FrequentKubeletRestart", "FrequentDockerRestart", "FrequentContainerdRestart",
		"KernelDeadlock", "ReadonlyFilesystem", "CorruptDockerOverlay2", "MemoryPressure", "DiskPressure", "PIDPressure", "Ready"} {
		st := corev1.ConditionFalse
		if c == "Ready" {
			st = corev1.ConditionTrue
		}
		n.Status.Conditions = append(n.Status.Conditions, corev1.NodeCondition{
			Type: corev1.NodeConditionType(c), Status: st, LastHeartbeatTime: t, LastTransitionTime: t,
			Reason:  fmt.Sprintf("No%s", c),
			Message: fmt.Sprintf("node %s is functioning properly (check %d)", name, j),
		})
	}
	n.Status.Addresses = []corev1.NodeAddress{
		{Type: corev1.NodeInternalIP, Address: ip},
		{Type: corev1.NodeExternalIP, Address: fmt.Sprintf("203.0.113.%d", i&0xff)},
		{Type: corev1.NodeHostName, Address: name},
	}
	n.Status.DaemonEndpoints.KubeletEndpoint.Port = 10250
	n.Status.NodeInfo = corev1.NodeSystemInfo{
		MachineID: hex(i+5, 32), SystemUUID: hex(i+6, 32), BootID: hex(i+7, 32),
		KernelVersion: "6.1.100+", OSImage: "Container-Optimized OS from Google", ContainerRuntimeVersion: "containerd://1.7.24",
		KubeletVersion: "v1.33.4-gke.1000", KubeProxyVersion: "v1.33.4-gke.1000", OperatingSystem: "linux", Architecture: "amd64",
	}
	for j := 0; j < 50; j++ {
		repo := fmt.Sprintf("europe-docker.pkg.example/prod/team-%d/service-%d", j%9, j)
		n.Status.Images = append(n.Status.Images, corev1.ContainerImage{
			Names:     []string{repo + "@sha256:" + hex(j*31+i%5, 64), fmt.Sprintf("%s:v1.%d.%d", repo, j, i%5)},
			SizeBytes: int64(10_000_000 + j*1_234_567),
		})
	}
	n.Status.VolumesInUse = []corev1.UniqueVolumeName{corev1.UniqueVolumeName("kubernetes.io/csi/pd.csi.storage.gke.io^projects/prod/zones/europe-west1-b/disks/pvc-" + hex(i+8, 32))}
	return n
}

// encodedNodes returns n realistic Nodes as the API server sends them.
func encodedNodes(tb testing.TB, n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		raw, err := json.Marshal(RealisticNode(i))
		if err != nil {
			tb.Fatal(err)
		}
		out[i] = raw
	}
	return out
}

// decodedNodes returns n Nodes decoded from JSON, each with its own strings
// as an informer's decoder produces them (sharing the generator's strings
// would understate the memory).
func decodedNodes(tb testing.TB, n int) []*corev1.Node {
	out := make([]*corev1.Node, n)
	for i, raw := range encodedNodes(tb, n) {
		out[i] = &corev1.Node{}
		if err := json.Unmarshal(raw, out[i]); err != nil {
			tb.Fatal(err)
		}
	}
	return out
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// BenchmarkInformerStore is the memory an informer's store retains for
// 5,000 realistic Nodes, with and without kube.Strip, the transform the kube
// source installs. Each Node is decoded from JSON, transformed and added to
// a store, as the informer's reflector and DeltaFIFO do on the initial list;
// nothing else keeps the decoded objects. MiB-retained is the heap that
// survives two GCs, compared with before decoding; ns/op is the whole
// initial list (decode, transform, store) of 5,000 Nodes.
func BenchmarkInformerStore(b *testing.B) {
	for _, strip := range []bool{false, true} {
		b.Run(fmt.Sprintf("nodes=%d/transform=%v", informerNodes, strip), func(b *testing.B) {
			var retained uint64
			var size int
			raw := encodedNodes(b, informerNodes)
			for b.Loop() {
				b.StopTimer()
				before := heapInUse()
				b.StartTimer()
				store := cache.NewStore(cache.MetaNamespaceKeyFunc)
				for _, r := range raw {
					// Decoded one at a time, as the informer's reflector
					// does, each into its own strings.
					n := &corev1.Node{}
					if err := json.Unmarshal(r, n); err != nil {
						b.Fatal(err)
					}
					var obj any = n
					if strip {
						var err error
						if obj, err = kube.Strip(n); err != nil {
							b.Fatal(err)
						}
					}
					if err := store.Add(obj); err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				if after := heapInUse(); after > before {
					retained = after - before
				} else {
					retained = 0
				}
				if got := len(store.ListKeys()); got != informerNodes {
					b.Fatalf("store holds %d nodes, want %d", got, informerNodes)
				}
				runtime.KeepAlive(store)
				b.StartTimer()
			}
			size = 0
			for _, r := range raw {
				size += len(r)
			}
			size /= len(raw)
			b.ReportMetric(float64(retained)/(1<<20), "MiB-retained")
			b.ReportMetric(float64(retained)/informerNodes, "B-retained/node")
			b.ReportMetric(float64(size), "JSON-B/node")
		})
	}
}

// BenchmarkKubeSourceHeap runs the real kube source (informer, transform,
// event handlers) against a fake clientset holding 5,000 realistic Nodes,
// converts them, and derives the desired state, reporting the heap that
// survives: the agent's control-plane memory at maximum cluster size. The
// fake clientset's own copy of the objects is measured first and subtracted.
func BenchmarkKubeSourceHeap(b *testing.B) {
	nodes := decodedNodes(b, informerNodes)
	objs := make([]k8sruntime.Object, len(nodes))
	for i, n := range nodes {
		objs[i] = n
	}
	client := fake.NewClientset(objs...)
	nodes, objs = nil, nil
	var retained uint64
	for b.Loop() {
		b.StopTimer()
		before := heapInUse()
		b.StartTimer()
		ctx, cancel := context.WithCancel(context.Background())
		src, err := kube.New(kube.Options{Client: client, NodeName: RealisticNode(0).Name, Recorder: &record.FakeRecorder{}})
		if err != nil {
			b.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- src.Run(ctx) }()
		for !src.Synced() {
			time.Sleep(10 * time.Millisecond)
		}
		meshNodes := src.Nodes()
		d := mesh.Derive(meshNodes[0], meshNodes, mesh.DeriveOptions{IPv4: true, IPv6: true})
		b.StopTimer()
		if len(d.Peers) != informerNodes-1 {
			b.Fatalf("derived %d peers from %d nodes", len(d.Peers), informerNodes)
		}
		if after := heapInUse(); after > before {
			retained = after - before
		}
		runtime.KeepAlive(meshNodes)
		runtime.KeepAlive(d)
		cancel()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(retained)/(1<<20), "MiB-retained")
}
