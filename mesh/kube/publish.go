package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/wgmesh/wgmesh/mesh/agent"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
)

// fieldManager names wgmesh as the writer of its annotations in the Node's
// managed fields.
const fieldManager = "wgmesh"

// Publish writes self as annotations on the own Node with a merge patch:
// the public key, the endpoint and the backend. The endpoint is, in order of
// preference, the user's wgmesh.io/force-endpoint, self.Endpoint (a zero
// port means Options.ListenPort), or the Node's first InternalIP (IPv4
// preferred) with Options.ListenPort; with none of them the endpoint
// annotation is left as it is. Annotations that already hold the wanted value
// are not written, and none are ever removed.
//
// Publish makes one attempt (a GET and at most one PATCH) and does not retry:
// the agent's loop owns the retries of publishing (agent.Publisher).
//
// Self is remembered: when the own Node's annotations later diverge from it
// (someone removed or edited them, or an InternalIP appeared), Republish is
// signalled so that the loop publishes again.
func (s *Source) Publish(ctx context.Context, self agent.Self) error {
	if self.Name != "" && self.Name != s.o.NodeName {
		return fmt.Errorf("kube source: cannot publish node %q: this agent runs on node %q", self.Name, s.o.NodeName)
	}
	if self.PublicKey.IsZero() {
		return fmt.Errorf("kube source: refusing to publish the zero public key on node %q", s.o.NodeName)
	}
	self.Name = s.o.NodeName
	s.mu.Lock()
	s.self = &self
	s.mu.Unlock()
	return s.publishCurrent(ctx)
}

// publishCurrent brings the own Node's annotations in line with the latest
// Self. It reads the Node from the API server rather than the informer,
// which may not have started or may lag behind.
func (s *Source) publishCurrent(ctx context.Context) error {
	s.pubMu.Lock()
	defer s.pubMu.Unlock()
	s.mu.Lock()
	self := s.self
	s.mu.Unlock()
	if self == nil {
		return nil
	}
	err := func() error {
		n, err := s.o.Client.CoreV1().Nodes().Get(ctx, s.o.NodeName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		want, haveEndpoint := s.desiredAnnotations(n, *self)
		if !haveEndpoint {
			s.log.Warn("no endpoint to publish: node has no InternalIP, set --endpoint or the annotation "+AnnotationForceEndpoint,
				"node", s.o.NodeName)
		}
		diff := changedAnnotations(n, want)
		if len(diff) == 0 {
			return nil
		}
		return patchAnnotations(ctx, s.o.Client, s.o.NodeName, diff)
	}()
	if err != nil {
		return fmt.Errorf("kube source: publish annotations on node %q: %w", s.o.NodeName, explain(err))
	}
	return nil
}

// desiredAnnotations computes what the own Node's annotations must say for
// self; haveEndpoint is false when no endpoint can be determined.
func (s *Source) desiredAnnotations(n *corev1.Node, self agent.Self) (want map[string]string, haveEndpoint bool) {
	want = map[string]string{AnnotationPublicKey: self.PublicKey.String()}
	if self.Backend != "" {
		want[AnnotationBackend] = string(self.Backend)
	}
	ep, ok := s.endpointFor(n, self)
	if ok {
		want[AnnotationEndpoint] = ep.String()
	}
	return want, ok
}

// endpointFor picks the endpoint to publish; see Publish.
func (s *Source) endpointFor(n *corev1.Node, self agent.Self) (netip.AddrPort, bool) {
	if f := strings.TrimSpace(n.Annotations[AnnotationForceEndpoint]); f != "" {
		if ep, err := ParseEndpoint(f); err == nil {
			return ep, true
		}
		// NodeFromObject reports the malformed override as a Problem.
	}
	port := uint16(s.o.ListenPort)
	if a := self.Endpoint.Addr(); a.IsValid() {
		if p := self.Endpoint.Port(); p != 0 {
			port = p
		}
		return netip.AddrPortFrom(a.Unmap(), port), true
	}
	if ip, ok := internalIP(n); ok {
		return netip.AddrPortFrom(ip, port), true
	}
	return netip.AddrPort{}, false
}

// changedAnnotations returns the entries of want that n does not already
// carry with that value.
func changedAnnotations(n *corev1.Node, want map[string]string) map[string]any {
	diff := make(map[string]any)
	for k, v := range want {
		if cur, ok := n.Annotations[k]; !ok || cur != v {
			diff[k] = v
		}
	}
	return diff
}

// patchAnnotations sends a JSON merge patch (RFC 7386) of the Node's
// annotations: a string value sets one, nil (JSON null) removes it, and
// annotations not named are untouched. A merge patch carries no
// resourceVersion, so it cannot conflict with the kubelet's status updates.
func patchAnnotations(ctx context.Context, client kubernetes.Interface, node string, ann map[string]any) error {
	body, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": ann}})
	if err != nil {
		return fmt.Errorf("encode annotation patch: %w", err)
	}
	_, err = client.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, body, metav1.PatchOptions{FieldManager: fieldManager})
	return err
}

// ownNodeChanged wakes the divergence check (coalesced, never blocking the
// informer).
func (s *Source) ownNodeChanged() {
	select {
	case s.republish <- struct{}{}:
	default:
	}
}

// Republish is signalled (coalesced) when the own Node, as the informer
// sees it, no longer carries the last published Self: agent.Republisher.
func (s *Source) Republish() <-chan struct{} { return s.lost }

// divergenceLoop signals Republish whenever the own Node diverges from the
// last published Self, at most as often as republishLimit allows: a fight
// with another writer of our annotations must not hammer the API server.
func (s *Source) divergenceLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.republish:
		}
		diff := s.diverged()
		if len(diff) == 0 {
			continue
		}
		if err := s.republishLimit.Wait(ctx); err != nil {
			return
		}
		s.log.Info("this node's wgmesh annotations differ from what this agent publishes; asking to publish again",
			"node", s.o.NodeName, "annotations", diff)
		select {
		case s.lost <- struct{}{}:
		default:
		}
	}
}

// diverged returns the annotations of the own Node in the informer's store
// that differ from the last published Self, sorted; nil before the first
// Publish or when they agree.
func (s *Source) diverged() []string {
	s.mu.Lock()
	self := s.self
	s.mu.Unlock()
	if self == nil {
		return nil // the loop has not published yet
	}
	obj, ok, err := s.informer.GetStore().GetByKey(s.o.NodeName)
	if err != nil || !ok {
		return nil
	}
	n, ok := obj.(*corev1.Node)
	if !ok {
		return nil
	}
	want, _ := s.desiredAnnotations(n, *self)
	return slices.Sorted(maps.Keys(changedAnnotations(n, want)))
}

// RemoveAnnotations deletes the annotations the agent writes (public key,
// endpoint, backend) from a Node with a merge patch, for uninstalling. The
// user's wgmesh.io/force-endpoint stays. Removing annotations that are absent
// is not an error.
func RemoveAnnotations(ctx context.Context, client kubernetes.Interface, nodeName string) error {
	ann := map[string]any{AnnotationPublicKey: nil, AnnotationEndpoint: nil, AnnotationBackend: nil}
	err := retry(ctx, wait.Backoff{Duration: 200 * time.Millisecond, Factor: 2, Jitter: 0.2, Steps: 5}, func(ctx context.Context) error {
		return patchAnnotations(ctx, client, nodeName, ann)
	})
	if err != nil {
		return fmt.Errorf("remove wgmesh annotations from node %q: %w", nodeName, explain(err))
	}
	return nil
}

// retry runs op with exponential backoff while it fails with an error worth
// retrying, and returns the last error.
func retry(ctx context.Context, b wait.Backoff, op func(context.Context) error) error {
	var last error
	err := wait.ExponentialBackoffWithContext(ctx, b, func(ctx context.Context) (bool, error) {
		last = op(ctx)
		if last == nil {
			return true, nil
		}
		if !retriable(last) {
			return false, last
		}
		return false, nil
	})
	if err != nil && wait.Interrupted(err) && last != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), last)
		}
		return last
	}
	return err
}

// retriable says whether err may go away on its own (conflicts, timeouts,
// throttling, an API server restarting) rather than needing a human.
func retriable(err error) bool {
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return false
	case apierrors.IsNotFound(err), apierrors.IsForbidden(err), apierrors.IsUnauthorized(err),
		apierrors.IsInvalid(err), apierrors.IsBadRequest(err), apierrors.IsMethodNotSupported(err),
		apierrors.IsNotAcceptable(err), apierrors.IsUnsupportedMediaType(err), apierrors.IsRequestEntityTooLargeError(err):
		return false
	}
	return true
}

// explain adds what to do to the API errors an operator can fix.
func explain(err error) error {
	switch {
	case apierrors.IsNotFound(err):
		return fmt.Errorf("%w (is the node name right? it must equal the Node object's name)", err)
	case apierrors.IsForbidden(err), apierrors.IsUnauthorized(err):
		return fmt.Errorf("%w (the agent needs RBAC nodes get/list/watch/patch and events create/patch)", err)
	}
	return err
}
