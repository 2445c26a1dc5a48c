package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wgmesh/wgmesh/device"
	"github.com/wgmesh/wgmesh/mesh/metrics"
)

// TestBareCommandIsUsage: `wgmesh` alone prints the help to standard error
// and exits 2, as kubectl does; --version exists.
func TestBareCommandIsUsage(t *testing.T) {
	r := wgmesh(t, nil)
	if r.code != exitUsage || !strings.Contains(r.stderr, "Available Commands") || r.stdout != "" {
		t.Errorf("wgmesh: code %d stdout %q stderr %q, want 2 with the help on stderr", r.code, r.stdout, r.stderr)
	}
	r = wgmesh(t, nil, "--version")
	if r.code != exitOK || !strings.HasPrefix(r.stdout, "wgmesh ") || !strings.Contains(r.stdout, "commit") {
		t.Errorf("wgmesh --version: code %d out %q err %q", r.code, r.stdout, r.stderr)
	}
}

// TestHelpStatesTheRules: --help says what the flag checks enforce.
func TestHelpStatesTheRules(t *testing.T) {
	r := wgmesh(t, nil, "agent", "--help")
	for _, want := range []string{
		"excludes --peers-file", "excludes --kubeconfig", "must exist at start",
		"readable by group or others is refused", "not 253-255", "2-32765", "exactly one bit", "1-65535",
		"the file's entry", "at least one of --ipv4 and --ipv6",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("wgmesh agent --help lacks %q", want)
		}
	}
}

// TestStandardKubeconfigRules: verify and cleanup --remove-annotations
// find the cluster as kubectl does, through $KUBECONFIG.
func TestStandardKubeconfigRules(t *testing.T) {
	dir := t.TempDir()
	kc := filepath.Join(dir, "config")
	if err := os.WriteFile(kc, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://198.18.0.99:6443"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KUBECONFIG", kc)
	t.Setenv("HOME", dir)
	cfg, err := standardRestConfig("")
	if err != nil {
		t.Fatalf("standardRestConfig with $KUBECONFIG: %v", err)
	}
	if cfg.Host != "https://198.18.0.99:6443" {
		t.Errorf("host %q, want the $KUBECONFIG cluster", cfg.Host)
	}
	t.Setenv("KUBECONFIG", "")
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	if _, err := standardRestConfig(""); err == nil || !strings.Contains(err.Error(), "$KUBECONFIG") {
		t.Errorf("without any configuration: %v, want an error naming where it looked", err)
	}
}

// TestStatusJSONErrorObject: `status -o json` prints a JSON document even
// when it fails, and the message for an agent serving another interface
// suggests --interface.
func TestStatusJSONErrorObject(t *testing.T) {
	a := &app{streams: streams{out: &strings.Builder{}, err: &strings.Builder{}}}
	a.log = slog.New(slog.DiscardHandler)
	inspect := func(string) (device.Info, error) { return device.Info{}, device.ErrNotFound }
	_, err := a.readStatus(context.Background(), "http://127.0.0.1:1", "wgx0", inspect)
	if err == nil {
		t.Fatal("readStatus without agent and interface succeeded")
	}
	var out strings.Builder
	writeStatusError(&out, err)
	var doc map[string]any
	if jerr := json.Unmarshal([]byte(out.String()), &doc); jerr != nil || doc["kind"] != "Error" || doc["apiVersion"] != metrics.APIVersion || doc["error"] == "" {
		t.Errorf("error object %q: %v", out.String(), jerr)
	}
	srv := httptest.NewServer(metrics.New(metrics.Options{Interface: "wgmesh0"}).Handler())
	defer srv.Close()
	_, err = a.readStatus(context.Background(), srv.URL, "wgx0", inspect)
	if err == nil || !strings.Contains(err.Error(), "serves interface wgmesh0") || !strings.Contains(err.Error(), "--interface wgmesh0") {
		t.Errorf("agent on another interface: %v, want a hint to pass --interface wgmesh0", err)
	}
}
