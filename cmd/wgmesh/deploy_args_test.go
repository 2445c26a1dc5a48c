package main

import (
	"io"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/yaml"

	"github.com/wgmesh/wgmesh/deploy"
)

// baseOverrides are the flags the kustomize base (and so the chart's
// values.yaml, which it is generated from) deliberately sets to something
// other than the agent's default, and why.
var baseOverrides = map[string]string{
	// Log collectors in a cluster parse JSON; text is for terminals.
	"log-format": "json",
}

// TestBaseArgsAreTheAgentDefaults parses the agent arguments of the shipped
// DaemonSet (deploy/kubernetes, generated from the Helm chart's default
// values) with the agent's real flag set and checks that every flag it
// spells out carries the agent's own default, except baseOverrides. The
// chart passes every flag explicitly, so without this a changed default in
// flags.go (the listen port, say) would silently not reach clusters.
func TestBaseArgsAreTheAgentDefaults(t *testing.T) {
	data, err := deploy.Kubernetes.ReadFile(deploy.Base + "/daemonset.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var ds appsv1.DaemonSet
	if err := yaml.UnmarshalStrict(data, &ds); err != nil {
		t.Fatalf("deploy/kubernetes/daemonset.yaml: %v", err)
	}
	args := ds.Spec.Template.Spec.Containers[0].Args
	if len(args) < 2 || args[0] != "agent" {
		t.Fatalf("DaemonSet args %q: want agent and its flags", args)
	}
	a := &app{streams: streams{in: strings.NewReader(""), out: io.Discard, err: io.Discard},
		getenv: func(string) string { return "" }, inCluster: func() bool { return true }}
	root := a.rootCommand()
	agent, _, err := root.Find([]string{"agent"})
	if err != nil {
		t.Fatal(err)
	}
	fs := agent.Flags()
	fs.AddFlagSet(root.PersistentFlags())
	if err := fs.Parse(args[1:]); err != nil {
		t.Fatalf("the agent refuses the DaemonSet's args %q: %v", args, err)
	}
	seen := 0
	for _, arg := range args[1:] {
		name, value, ok := strings.Cut(strings.TrimPrefix(arg, "--"), "=")
		if !ok || !strings.HasPrefix(arg, "--") {
			t.Errorf("DaemonSet arg %q: want --flag=value", arg)
			continue
		}
		f := fs.Lookup(name)
		if f == nil {
			t.Errorf("DaemonSet arg %q: no such agent flag", arg)
			continue
		}
		seen++
		want, override := baseOverrides[name]
		if !override {
			want = f.DefValue
		}
		if value != want {
			t.Errorf("DaemonSet sets --%s=%s; the agent's default is %s: change values.yaml in deploy/helm/wgmesh and run make manifests", name, value, f.DefValue)
		}
	}
	if seen < 10 {
		t.Errorf("DaemonSet spells out %d agent flags, want the chart's full set: %q", seen, args)
	}
	t.Logf("%d flags checked: %q", seen, args[1:])
}
