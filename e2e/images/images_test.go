package images

import (
	"bufio"
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
)

// dockerfileStage is what the final stage of a Dockerfile says about the
// image it produces.
type dockerfileStage struct {
	from       string
	copies     []string // destination paths
	env        []string // KEY=VALUE
	user       string
	expose     []string
	entrypoint []string
	cmd        []string
}

// parseFinalStage reads the instructions after the last FROM. It knows the
// handful of instructions deploy/Dockerfile uses and fails the test on any
// other, so a new instruction there cannot slip past the comparison.
func parseFinalStage(t *testing.T, path string) dockerfileStage {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var st dockerfileStage
	var inFinal bool
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		lines = append(lines, line)
	}
	// Find the last FROM; everything after it is the final stage.
	last := -1
	for i, l := range lines {
		if strings.HasPrefix(strings.ToUpper(l), "FROM ") {
			last = i
		}
	}
	if last < 0 {
		t.Fatalf("%s: no FROM", path)
	}
	for _, l := range lines[last:] {
		instr, args, _ := strings.Cut(l, " ")
		args = strings.TrimSpace(args)
		switch strings.ToUpper(instr) {
		case "FROM":
			inFinal = true
			st.from = args
		case "COPY":
			f := strings.Fields(args)
			st.copies = append(st.copies, f[len(f)-1])
		case "ENV":
			st.env = append(st.env, args)
		case "USER":
			st.user = args
		case "EXPOSE":
			st.expose = append(st.expose, strings.Fields(args)...)
		case "ENTRYPOINT":
			st.entrypoint = jsonArray(t, path, l, args)
		case "CMD":
			st.cmd = jsonArray(t, path, l, args)
		default:
			t.Fatalf("%s: final stage uses %q, which this comparison does not know: teach images_test.go and images.Wgmesh", path, l)
		}
	}
	if !inFinal {
		t.Fatalf("%s: no final stage", path)
	}
	return st
}

func jsonArray(t *testing.T, path, line, args string) []string {
	var v []string
	if err := json.Unmarshal([]byte(args), &v); err != nil {
		t.Fatalf("%s: %q: want exec form (JSON array): %v", path, line, err)
	}
	return v
}

// TestWgmeshImageMatchesDockerfile builds the agent image the cluster lab
// uses and checks it against deploy/Dockerfile's final stage, so the two
// cannot drift: same files, env, user, ports, entrypoint and command.
func TestWgmeshImageMatchesDockerfile(t *testing.T) {
	_, self, _, _ := runtime.Caller(0)
	dockerfile := filepath.Join(filepath.Dir(self), "..", "..", "deploy", "Dockerfile")
	st := parseFinalStage(t, dockerfile)
	if st.from != "scratch" {
		t.Errorf("Dockerfile final stage FROM %q; the Go-built image has an empty base (scratch)", st.from)
	}

	dir := t.TempDir()
	bin := filepath.Join(dir, "wgmesh")
	if err := os.WriteFile(bin, []byte("#!/bin/false\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	img, err := Wgmesh(dir, "wgmesh.invalid/wgmesh:test", bin)
	if err != nil {
		t.Fatal(err)
	}
	files, err := img.Files()
	if err != nil {
		t.Fatal(err)
	}
	got := slices.Sorted(maps.Keys(files))
	want := slices.Clone(st.copies)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("image files %v, Dockerfile copies to %v", got, want)
	}
	if files[WgmeshBinaryPath]&0o111 == 0 {
		t.Errorf("%s mode %v: not executable", WgmeshBinaryPath, files[WgmeshBinaryPath])
	}
	cf, err := img.Config()
	if err != nil {
		t.Fatal(err)
	}
	c := cf.Config
	if !slices.Equal(c.Env, st.env) {
		t.Errorf("image env %q, Dockerfile ENV %q", c.Env, st.env)
	}
	if c.User != st.user {
		t.Errorf("image user %q, Dockerfile USER %q", c.User, st.user)
	}
	ports := slices.Sorted(maps.Keys(c.ExposedPorts))
	wantPorts := slices.Clone(st.expose)
	slices.Sort(wantPorts)
	if !slices.Equal(ports, wantPorts) {
		t.Errorf("image exposes %v, Dockerfile EXPOSE %v", ports, wantPorts)
	}
	if !slices.Equal(c.Entrypoint, st.entrypoint) {
		t.Errorf("image entrypoint %q, Dockerfile ENTRYPOINT %q", c.Entrypoint, st.entrypoint)
	}
	if !slices.Equal(c.Cmd, st.cmd) {
		t.Errorf("image cmd %q, Dockerfile CMD %q", c.Cmd, st.cmd)
	}
	if cf.OS != "linux" || cf.Architecture != runtime.GOARCH {
		t.Errorf("image platform %s/%s, want linux/%s", cf.OS, cf.Architecture, runtime.GOARCH)
	}
	if _, err := os.Stat(img.Tarball); err != nil {
		t.Errorf("tarball: %v", err)
	}
}
