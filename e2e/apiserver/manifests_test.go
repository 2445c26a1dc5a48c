package apiserver

import (
	"strings"
	"testing"

	"github.com/wgmesh/wgmesh/deploy"
)

// The compiled-in bases must render: ApplyDeploy and the e2e tests depend
// on them.
func TestRenderDeployBase(t *testing.T) {
	ms, err := RenderDeploy(deploy.Base, deploy.Overlay{})
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]bool{}
	for _, m := range ms {
		kinds[m.Object.GetKind()] = true
		if m.Object.GetName() == "" || !strings.HasPrefix(m.File, deploy.Base) {
			t.Errorf("%s: no name, or File does not name the base", m)
		}
	}
	for _, want := range []string{"Namespace", "ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"} {
		if !kinds[want] {
			t.Errorf("deploy base has no %s", want)
		}
	}
}
