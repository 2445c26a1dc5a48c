// Package helmchart renders wgmesh's Helm chart (deploy/helm/wgmesh, embedded
// as deploy.Chart) with the Helm SDK — Helm's own chart loader, values
// coalescing, values.schema.json validation and template engine, as `helm
// template` runs them — and generates the kustomize base in deploy/kubernetes
// from the chart's default values, so that the two ways of installing run
// the same objects.
//
// It lives in the e2e module because helm.sh/helm/v3 nearly doubles the main
// module's dependency graph (537 to 992 `go mod graph` lines) while the e2e
// module carries Kubernetes' server dependencies already (3454 to 3671).
// Helm v3.18 is the release line built on Kubernetes 0.33, the libraries
// both modules and the lab's kube-apiserver use; later lines need 0.34+.
package helmchart

import (
	"bytes"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strings"

	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/releaseutil"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/wgmesh/wgmesh/deploy"
	"github.com/wgmesh/wgmesh/deploy/monitoring"
)

// Release names the base's objects: a release named wgmesh in namespace
// wgmesh renders the names the README, uninstall base and cluster tests use.
const (
	ReleaseName = "wgmesh"
	// BaseService is the Release.Service of the generated base. The chart
	// adds Helm's labels (managed-by, instance, chart, version) only for
	// Release.Service "Helm": `kubectl apply -k` leaves no Helm release.
	BaseService = "kustomize"
	// AlertsFile is the chart's copy of deploy/monitoring/alerts.yaml, the
	// PrometheusRule's source (a chart cannot read outside its directory).
	AlertsFile = "files/alerts.yaml"
)

// Load returns the chart as shipped: the embedded deploy/helm/wgmesh,
// through Helm's loader (Chart.yaml, values.yaml, values.schema.json,
// templates, files; .helmignore honoured).
func Load() (*chart.Chart, error) {
	var files []*loader.BufferedFile
	err := fs.WalkDir(deploy.Chart, deploy.ChartDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := deploy.Chart.ReadFile(p)
		if err != nil {
			return err
		}
		files = append(files, &loader.BufferedFile{Name: strings.TrimPrefix(p, deploy.ChartDir+"/"), Data: data})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read the embedded chart: %w", err)
	}
	c, err := loader.LoadFiles(files)
	if err != nil {
		return nil, fmt.Errorf("load chart %s: %w", deploy.ChartDir, err)
	}
	return c, nil
}

// Options say how to render: the release and the values that override the
// chart's values.yaml (nil: the defaults), shaped as `helm --values` reads
// them.
type Options struct {
	// Name and Namespace of the release; empty: ReleaseName and
	// deploy.Namespace.
	Name, Namespace string
	// Service is Release.Service; empty: "Helm", as a real release.
	Service string
	Values  map[string]any
}

// Render renders the chart like `helm template`: values coalesced with
// values.yaml and checked against values.schema.json (an error names the
// failing value), templates executed by Helm's engine. It returns each
// template's output by its name inside the chart ("templates/daemonset.yaml"),
// NOTES.txt included; templates that render to nothing are left out.
func Render(o Options) (map[string]string, error) {
	c, err := Load()
	if err != nil {
		return nil, err
	}
	return render(c, o)
}

func render(c *chart.Chart, o Options) (map[string]string, error) {
	if o.Name == "" {
		o.Name = ReleaseName
	}
	if o.Namespace == "" {
		o.Namespace = deploy.Namespace
	}
	vals, err := chartutil.ToRenderValues(c, o.Values,
		chartutil.ReleaseOptions{Name: o.Name, Namespace: o.Namespace, IsInstall: true, Revision: 1}, nil)
	if err != nil {
		return nil, err
	}
	if o.Service != "" {
		vals["Release"].(map[string]any)["Service"] = o.Service
	}
	out, err := engine.Render(c, vals)
	if err != nil {
		return nil, err
	}
	res := map[string]string{}
	for name, text := range out {
		// The engine keys templates by chart name: "wgmesh/templates/x".
		name = strings.TrimPrefix(name, c.Name()+"/")
		if path.Base(name)[0] == '_' || strings.TrimSpace(stripComments(text)) == "" {
			continue
		}
		res[name] = text
	}
	return res, nil
}

// Objects renders like Render and decodes every manifest (NOTES.txt left
// out) in the order Helm installs them (Namespace first, admission objects
// last: releaseutil.InstallOrder). Errors name the template.
func Objects(o Options) ([]*unstructured.Unstructured, error) {
	out, err := Render(o)
	if err != nil {
		return nil, err
	}
	delete(out, "templates/NOTES.txt")
	_, manifests, err := releaseutil.SortManifests(out, nil, releaseutil.InstallOrder)
	if err != nil {
		return nil, err
	}
	var objs []*unstructured.Unstructured
	for _, m := range manifests {
		j, err := yaml.YAMLToJSON([]byte(m.Content))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", m.Name, err)
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(j); err != nil {
			return nil, fmt.Errorf("%s: %w", m.Name, err)
		}
		objs = append(objs, u)
	}
	return objs, nil
}

// baseHeader starts every generated file of the base.
const baseHeader = "# Generated by `make manifests` from the Helm chart deploy/helm/wgmesh with its\n" +
	"# default values: edit the chart, not this file.\n"

// Base returns the kustomize base deploy/kubernetes as `make manifests`
// writes it: file name → content. Each template of the chart rendered with
// default values (release wgmesh in namespace wgmesh, Release.Service
// BaseService) becomes the file of the same name; kustomization.yaml lists
// them. The uninstall base (kubernetes/uninstall) is not generated.
func Base() (map[string][]byte, error) {
	out, err := Render(Options{Service: BaseService})
	if err != nil {
		return nil, fmt.Errorf("render the chart with default values: %w", err)
	}
	files := map[string][]byte{}
	var names []string
	for name, text := range out {
		if !strings.HasPrefix(name, "templates/") || path.Ext(name) != ".yaml" {
			continue // NOTES.txt
		}
		base := path.Base(name)
		names = append(names, base)
		files[base] = []byte(baseHeader + strings.TrimLeft(text, "\n"))
	}
	sort.Strings(names)
	var k bytes.Buffer
	k.WriteString(baseHeader)
	k.WriteString(`#
# wgmesh: WireGuard mesh agent on every Linux node.
# Use it from an overlay that sets the image (README, "Install on a
# Kubernetes cluster"):
#   resources: [<path>/deploy/kubernetes]
#   images: [{name: wgmesh.invalid/wgmesh, newName: <repository>, newTag: <tag>}]
# and ` + "`kubectl apply -k <overlay>`" + `. The image here is a placeholder that
# cannot resolve, so a forgotten override fails at the pull.
#
# No ` + "`namespace:`" + ` field on purpose: kustomize sets it on every kind its
# built-in schema does not know to be cluster-scoped, and that schema
# predates ValidatingAdmissionPolicy(Binding). Each namespaced object names
# the namespace itself, and carries its labels, from the chart.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
`)
	for _, n := range names {
		fmt.Fprintf(&k, "  - %s\n", n)
	}
	files["kustomization.yaml"] = k.Bytes()
	return files, nil
}

// ChartFiles returns the chart's generated files, by path inside the
// chart: AlertsFile, a copy of deploy/monitoring/alerts.yaml.
func ChartFiles() map[string][]byte {
	return map[string][]byte{AlertsFile: monitoring.Rules()}
}

func stripComments(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(s, "\n") {
		if t := strings.TrimSpace(l); t != "" && !strings.HasPrefix(t, "#") && t != "---" {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}
