package kube

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/wgmesh/wgmesh/mesh/agent"
)

// Retry pacing of the background read of kubeadm's pod range (Options.
// KubeadmRanges).
const (
	// DefaultKubeadmMinBackoff is the first retry delay after a transient
	// failure (API server unreachable, timeout, 5xx); it doubles per
	// failure.
	DefaultKubeadmMinBackoff = time.Second
	// DefaultKubeadmMaxBackoff caps that delay: a read that failed only
	// because the API server was down succeeds within it of its return.
	DefaultKubeadmMaxBackoff = time.Minute
	// DefaultKubeadmForbiddenRetry caps the retry delay while RBAC forbids
	// the read (it backs off from DefaultKubeadmMinBackoff like a
	// transient failure). Forbidden is not taken as final: an API server
	// that has just started answers Forbidden until its RBAC cache is
	// filled, a ClusterRoleBinding may be applied after the DaemonSet, and
	// an operator may add the rule later; none of these must need an agent
	// restart. The cap is high because the denial may also be deliberate
	// (the rule deleted to rely on --cluster-cidrs alone): then one
	// rejected GET per node every ten minutes.
	DefaultKubeadmForbiddenRetry = 10 * time.Minute
	// kubeadmReadTimeout bounds one read.
	kubeadmReadTimeout = 10 * time.Second
)

// ClusterRangeState is the state of the background read of kubeadm's pod
// range (networking.podSubnet of kube-system/kubeadm-config).
type ClusterRangeState struct {
	// CIDRs are the ranges read; nil until then, or when absent.
	CIDRs []netip.Prefix
	// Pending is true while the read is retried (and before the first
	// attempt).
	Pending bool
	// Detail says why it is pending (the last failure and when the next
	// attempt is) or, when not pending and CIDRs is nil, why there are
	// none (no ConfigMap, no field, an unusable value). Empty once read.
	Detail string
}

// ClusterCIDRs returns kubeadm's pod ranges once the background read has
// found them (agent.ClusterRanger); nil before, and without
// Options.KubeadmRanges.
func (s *Source) ClusterCIDRs() []netip.Prefix {
	s.rangeMu.Lock()
	defer s.rangeMu.Unlock()
	return s.ranges.CIDRs
}

var _ agent.ClusterRanger = (*Source)(nil)

// ClusterRanges returns the state of the background read of kubeadm's pod
// range; the zero value without Options.KubeadmRanges.
func (s *Source) ClusterRanges() ClusterRangeState {
	s.rangeMu.Lock()
	defer s.rangeMu.Unlock()
	st := s.ranges
	st.CIDRs = slices.Clone(st.CIDRs)
	return st
}

// kubeadmNotYet is ClusterRangeState.Detail before the first attempt.
func kubeadmNotYet(on bool) string {
	if !on {
		return ""
	}
	return "not read yet: ConfigMap " + KubeadmConfigNamespace + "/" + KubeadmConfigName + " is read once the source runs"
}

func (s *Source) setRanges(st ClusterRangeState) {
	s.rangeMu.Lock()
	s.ranges = st
	s.rangeMu.Unlock()
}

// kubeadmLoop reads kubeadm's pod range until it is read or definitely
// absent, then signals Changes so the next reconcile applies it. Transient
// failures are retried with the reconciler's backoff (agent.Backoff) capped
// at KubeadmMaxBackoff, Forbidden with one capped at KubeadmForbiddenRetry;
// each failure kind is logged when it begins, not per
// attempt.
func (s *Source) kubeadmLoop(ctx context.Context) {
	cm := KubeadmConfigNamespace + "/" + KubeadmConfigName
	// Failures of each kind so far: each kind backs off on its own.
	transient, forbidden := 0, 0
	lastKind := ""
	for attempt := 1; ; attempt++ {
		rctx, cancel := context.WithTimeout(ctx, kubeadmReadTimeout)
		cidrs, found, err := KubeadmPodSubnet(rctx, s.o.Client)
		cancel()
		if ctx.Err() != nil {
			return
		}
		var wait time.Duration
		var kind string
		switch {
		case err == nil && found:
			s.setRanges(ClusterRangeState{CIDRs: cidrs})
			s.log.Info("cluster pod ranges from kubeadm's networking.podSubnet", "configMap", cm, "podSubnet", cidrs, "attempts", attempt)
			s.notify()
			return
		case err == nil:
			s.setRanges(ClusterRangeState{Detail: fmt.Sprintf("no ConfigMap %s, or no networking.podSubnet in it (not a kubeadm cluster): only --cluster-cidrs applies", cm)})
			s.log.Info("no kubeadm pod range; only --cluster-cidrs applies", "configMap", cm)
			return
		case apierrors.IsForbidden(err):
			forbidden++
			kind, wait = "forbidden", agent.Backoff(forbidden, s.o.KubeadmMinBackoff, s.o.KubeadmForbiddenRetry)
		case errors.Is(err, ErrKubeadmUnusable):
			s.setRanges(ClusterRangeState{Detail: err.Error() + ": not used, only --cluster-cidrs applies"})
			s.log.Warn("cannot use the cluster's kubeadm pod range; only --cluster-cidrs applies", "error", err)
			return
		default:
			transient++
			kind, wait = "transient", agent.Backoff(transient, s.o.KubeadmMinBackoff, s.o.KubeadmMaxBackoff)
		}
		detail := fmt.Sprintf("%v (%d attempts); retrying in %s", err, attempt, wait.Round(time.Second))
		if kind == "forbidden" {
			detail = fmt.Sprintf("RBAC forbids reading ConfigMap %s (%d attempts): retrying in %s, backing off to every %s; grant get on it (deploy/kubernetes/rbac.yaml) or rely on --cluster-cidrs",
				cm, attempt, wait.Round(time.Second), s.o.KubeadmForbiddenRetry)
		}
		s.setRanges(ClusterRangeState{Pending: true, Detail: detail})
		if kind != lastKind {
			s.log.Warn("cluster pod range from kubeadm pending; retrying in the background", "configMap", cm, "error", err, "retryIn", wait)
			lastKind = kind
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}
