package helmchart

import (
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"

	"github.com/wgmesh/wgmesh/deploy"
)

// FuzzValues feeds arbitrary values files (as `helm --values` reads them)
// to the chart. Values are the chart's input parser: whatever
// values.schema.json accepts must render, and every object rendered must
// decode strictly into its Kubernetes type. A value the schema lets through
// but a template cannot handle (a string where a number was assumed, YAML
// that breaks the indentation of the DaemonSet's args) fails here instead
// of at a user's `helm install`.
func FuzzValues(f *testing.F) {
	c, err := Load()
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{
		"",
		"agent:\n  listenPort: 51830\n  mtu: 1400\n  backend: kernel\n",
		"agent:\n  fwmark: 0x4000\n  logFormat: text\n  logLevel: debug\n",
		"agent:\n  unmanagedNodes: \"example.com/wgmesh=off\"\n  extraArgs: [\"--keepalive=25s\"]\n",
		"metrics:\n  podMonitor:\n    enabled: true\n  prometheusRule:\n    enabled: true\nadmissionPolicy:\n  enabled: false\n",
		"agent:\n  keepalive: 25s\n  clusterCIDRs: [10.244.0.0/16, \"fd00:10:244::/48\"]\n  hostRouteTable: 51900\n",
		"tolerations: [{operator: Exists}]\nnodeSelector: {kubernetes.io/os: linux}\npriorityClassName: system-node-critical\n",
		"resources: {requests: {cpu: 50m, memory: 64Mi}, limits: {memory: 256Mi}}\n",
		"image: {repository: \"a\\nb\", tag: \"'\"}\n",
		"agent:\n  listenPort: 70000\n",
		"agent: 3\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := chartutil.ReadValues(data)
		if err != nil {
			return // not a values file
		}
		vals, err := chartutil.ToRenderValues(c, v,
			chartutil.ReleaseOptions{Name: ReleaseName, Namespace: deploy.Namespace, IsInstall: true, Revision: 1}, nil)
		if err != nil {
			if !strings.Contains(err.Error(), "values don't meet the specifications of the schema") {
				t.Fatalf("values refused without the schema's reason: %v\n%s", err, data)
			}
			return
		}
		out, err := engine.Render(c, vals)
		if err != nil {
			t.Fatalf("values the schema accepts do not render: %v\nvalues:\n%s", err, data)
		}
		decodeStrict(t, out)
	})
}
