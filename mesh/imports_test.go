package mesh

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// forbiddenImports are the edges of the system: package mesh stays pure and
// reaches them only through the ports of mesh/agent, so it can be
// table-tested without a cluster, a kernel or root. Neither mesh nor
// anything it imports, however indirectly, may depend on them.
var forbiddenImports = []string{
	"k8s.io/client-go",
	"k8s.io/api",
	"k8s.io/apimachinery",
	"github.com/vishvananda/netlink",
	"golang.zx2c4.com/wireguard/wgctrl",
	"github.com/google/nftables",
	"github.com/fsnotify/fsnotify",
	"github.com/prometheus",
}

// impureStd are the standard packages that do I/O, start or coordinate
// goroutines, or make a result depend on chance: package mesh and the
// module's packages it builds on must not import them directly (the
// standard library itself uses some of them underneath fmt and friends,
// which is why this is checked one level deep and not transitively).
//
// Allowed on purpose: time, for the model's timestamps and durations (no
// clock is read: TestNoClockNoGoroutines), and crypto/rand, which
// GeneratePrivateKey needs: it reads the kernel's random source and touches
// no file, and the key type is where `wg genkey` belongs.
var impureStd = []string{
	"os", "os/exec", "os/signal", "syscall", "io/fs", "path/filepath",
	"net", "net/http", "log", "log/slog",
	"sync", "sync/atomic", "context", "runtime",
	"math/rand", "math/rand/v2",
}

const modulePath = "github.com/wgmesh/wgmesh"

// meshDeps lists the packages package mesh depends on (itself included,
// last), with their direct imports.
func meshDeps(t *testing.T) (paths []string, imports map[string][]string) {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go command not in PATH; cannot list dependencies")
	}
	out, err := exec.Command(goTool, "list", "-deps", "-f", "{{.ImportPath}}:{{join .Imports \" \"}}", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	imports = make(map[string][]string)
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		path, imps, _ := strings.Cut(line, ":")
		paths = append(paths, path)
		imports[path] = strings.Fields(imps)
	}
	if len(paths) == 0 || paths[len(paths)-1] != modulePath+"/mesh" {
		t.Fatalf("go list -deps did not list package mesh last; got %d packages", len(paths))
	}
	return paths, imports
}

// TestImportsArePure fails if package mesh depends, directly or transitively,
// on any package under forbiddenImports.
func TestImportsArePure(t *testing.T) {
	paths, _ := meshDeps(t)
	for _, dep := range paths {
		if bad, ok := forbidden(dep, forbiddenImports); ok {
			t.Errorf("package mesh imports %s (under %s); reach it through a port in mesh/agent and implement it in another package", dep, bad)
		}
	}
}

// TestImportsDoNoIO fails if package mesh, or a package of this module it
// builds on (the derive machinery), imports a standard package that does
// I/O or runs goroutines. Such code belongs in mesh/agent or an adapter.
func TestImportsDoNoIO(t *testing.T) {
	paths, imports := meshDeps(t)
	for _, p := range paths {
		if p != modulePath && !strings.HasPrefix(p, modulePath+"/") {
			continue
		}
		for _, imp := range imports[p] {
			for _, bad := range impureStd {
				if imp == bad {
					t.Errorf("%s imports %s, which does I/O or runs goroutines; move that code to mesh/agent or an adapter", p, imp)
				}
			}
		}
	}
}

// clockCalls are the functions of package time that read the clock or
// wait: a pure Derive gets its times from its input.
var clockCalls = map[string]bool{
	"Now": true, "Since": true, "Until": true, "Sleep": true, "After": true,
	"AfterFunc": true, "NewTimer": true, "NewTicker": true, "Tick": true,
}

// TestNoClockNoGoroutines fails if a non-test file of package mesh starts a
// goroutine or reads the clock: the same nodes must give the same Desired.
func TestNoClockNoGoroutines(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	checked := 0
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		checked++
		timeName := ""
		for _, imp := range f.Imports {
			if imp.Path.Value == `"time"` {
				timeName = "time"
				if imp.Name != nil {
					timeName = imp.Name.Name
				}
			}
		}
		ast.Inspect(f, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.GoStmt:
				t.Errorf("%s: a go statement; package mesh starts no goroutines", fset.Position(n.Pos()))
			case *ast.SelectorExpr:
				if x, ok := n.X.(*ast.Ident); ok && timeName != "" && x.Name == timeName && clockCalls[n.Sel.Name] {
					t.Errorf("%s: time.%s; package mesh reads no clock (take the time as input)", fset.Position(n.Pos()), n.Sel.Name)
				}
			}
			return true
		})
	}
	if checked == 0 {
		t.Fatal("no Go files checked")
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
		"github.com/prometheus/client_golang":       true,
		"net/netip":                                 false,
	} {
		if _, got := forbidden(dep, forbiddenImports); got != want {
			t.Errorf("forbidden(%q) = %v, want %v", dep, got, want)
		}
	}
}

func forbidden(dep string, list []string) (string, bool) {
	for _, f := range list {
		if dep == f || strings.HasPrefix(dep, f+"/") {
			return f, true
		}
	}
	return "", false
}
