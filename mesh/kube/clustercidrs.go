package kube

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"go.yaml.in/yaml/v3"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/wgmesh/wgmesh/mesh"
)

// The ConfigMap kubeadm keeps its ClusterConfiguration in.
const (
	KubeadmConfigNamespace = "kube-system"
	KubeadmConfigName      = "kubeadm-config"
	kubeadmConfigKey       = "ClusterConfiguration"
)

// ErrKubeadmUnusable marks KubeadmPodSubnet's errors about the value
// itself (not a ClusterConfiguration, a malformed networking.podSubnet):
// reading again cannot help. Test with errors.Is.
var ErrKubeadmUnusable = errors.New("unusable kubeadm configuration")

// unusableError is an error that is ErrKubeadmUnusable, with its own text.
type unusableError struct{ error }

func (e unusableError) Is(target error) bool { return target == ErrKubeadmUnusable }
func (e unusableError) Unwrap() error        { return e.error }

// KubeadmPodSubnet reads the cluster's pod ranges from the kubeadm-config
// ConfigMap in kube-system (ClusterConfiguration, networking.podSubnet,
// comma-separated for dual-stack). found is false, with a nil error, when
// the cluster has no such ConfigMap (NotFound) or field: the caller then
// relies on --cluster-cidrs. A failed read is an error naming the
// ConfigMap and wrapping the API error (apierrors.IsForbidden tells RBAC
// apart); an unusable value is an error wrapping ErrKubeadmUnusable that
// names the ConfigMap, the field and why (the caller must not guess then
// either).
func KubeadmPodSubnet(ctx context.Context, client kubernetes.Interface) (cidrs []netip.Prefix, found bool, err error) {
	cm, err := client.CoreV1().ConfigMaps(KubeadmConfigNamespace).Get(ctx, KubeadmConfigName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return nil, false, nil
	case err != nil:
		return nil, false, fmt.Errorf("read ConfigMap %s/%s: %w", KubeadmConfigNamespace, KubeadmConfigName, err)
	}
	data, ok := cm.Data[kubeadmConfigKey]
	if !ok {
		return nil, false, nil
	}
	cidrs, err = ParseKubeadmPodSubnet(data)
	if err != nil {
		return nil, false, unusableError{fmt.Errorf("ConfigMap %s/%s, %s: %w", KubeadmConfigNamespace, KubeadmConfigName, kubeadmConfigKey, err)}
	}
	return cidrs, len(cidrs) > 0, nil
}

// ParseKubeadmPodSubnet returns networking.podSubnet of a kubeadm
// ClusterConfiguration document (YAML), parsed with
// mesh.ParseClusterCIDRs; nil if the field is absent or empty. Errors say
// which field is wrong and why.
func ParseKubeadmPodSubnet(data string) ([]netip.Prefix, error) {
	var doc struct {
		Networking struct {
			PodSubnet any `yaml:"podSubnet"`
		} `yaml:"networking"`
	}
	if err := yaml.Unmarshal([]byte(data), &doc); err != nil {
		return nil, fmt.Errorf("not a ClusterConfiguration document: %v", err)
	}
	switch v := doc.Networking.PodSubnet.(type) {
	case nil:
		return nil, nil
	case string:
		cidrs, err := mesh.ParseClusterCIDRs(v)
		if err != nil {
			return nil, fmt.Errorf("networking.podSubnet: %w", err)
		}
		return cidrs, nil
	default:
		return nil, fmt.Errorf("networking.podSubnet: want a string such as \"10.244.0.0/16\", got %T", v)
	}
}
