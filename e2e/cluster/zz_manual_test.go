package cluster

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"text/template"
)

func TestZZRender(t *testing.T) {
	dir := os.Getenv("ZZ_DIR")
	if dir == "" {
		t.Skip()
	}
	p := nodeParams{Dir: dir, Socket: dir + "/containerd.sock", Name: "node1", IP: "198.18.0.11", Bin: "/nonexistent", Pause: PauseImage, CNIBin: cniBinDir, CgroupRoot: "/wgmcl-manual", Sysctls: strings.Join(hostSysctls, " "), AddLibModules: true}
	for name, tm := range map[string]*template.Template{"node.sh": nodeScript, "containerd.toml": containerdConfig} {
		var b bytes.Buffer
		if err := tm.Execute(&b, p); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, name), b.Bytes(), 0o600)
	}
	os.WriteFile(filepath.Join(dir, "cni-template.json"), []byte(cniTemplate), 0o600)
	if _, err := Pause(t, dir); err != nil {
		t.Fatal(err)
	}
}
