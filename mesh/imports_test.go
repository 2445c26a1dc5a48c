package mesh

import (
	"os/exec"
	"strings"
	"testing"
)

// forbiddenImports are the edges of the system: package mesh stays pure and
// reaches them only through the interfaces it declares, so it can be
// table-tested without a cluster, a kernel or root.
var forbiddenImports = []string{
	"k8s.io/client-go",
	"github.com/vishvananda/netlink",
	"golang.zx2c4.com/wireguard/wgctrl",
	"github.com/google/nftables",
}

// TestImportsArePure fails if package mesh depends, directly or transitively,
// on any package under forbiddenImports.
func TestImportsArePure(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go command not in PATH; cannot list dependencies")
	}
	out, err := exec.Command(goTool, "list", "-deps", "-f", "{{.ImportPath}}", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	if len(deps) == 0 || deps[len(deps)-1] != "github.com/wgmesh/wgmesh/mesh" {
		t.Fatalf("go list -deps did not list package mesh last; got %d packages", len(deps))
	}
	for _, dep := range deps {
		if bad, ok := forbidden(dep); ok {
			t.Errorf("package mesh imports %s (under %s); reach it through an interface in mesh and implement it in another package", dep, bad)
		}
	}
}

func TestForbiddenMatchesSubpackages(t *testing.T) {
	for dep, want := range map[string]bool{
		"k8s.io/client-go":                          true,
		"k8s.io/client-go/kubernetes":               true,
		"golang.zx2c4.com/wireguard/wgctrl/wgtypes": true,
		"golang.zx2c4.com/wireguard":                false,
		"golang.zx2c4.com/wireguard/tun":            false,
		"k8s.io/client-gopher":                      false,
		"github.com/google/nftables/expr":           true,
		"net/netip":                                 false,
	} {
		if _, got := forbidden(dep); got != want {
			t.Errorf("forbidden(%q) = %v, want %v", dep, got, want)
		}
	}
}

func forbidden(dep string) (string, bool) {
	for _, f := range forbiddenImports {
		if dep == f || strings.HasPrefix(dep, f+"/") {
			return f, true
		}
	}
	return "", false
}
