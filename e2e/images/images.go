// Package images builds the container images the cluster lab runs, in Go and
// without a registry or Docker: the wgmesh agent image from bin/wgmesh with
// the layout deploy/Dockerfile describes, a sandbox ("pause") image and a
// small test-workload image. Each is written as a docker-archive tarball that
// `ctr -n k8s.io images import` loads into a node's containerd.
package images

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// The wgmesh image's layout, as deploy/Dockerfile's final stage has it
// (images_test.go parses the Dockerfile and compares).
const (
	WgmeshBinaryPath = "/usr/local/bin/wgmesh"
	CABundlePath     = "/etc/ssl/certs/ca-certificates.crt"
	WgmeshPath       = "PATH=/usr/local/bin"
	WgmeshUser       = "0:0"
	WgmeshPort       = "9587/tcp"
)

// hostCABundle is where Debian (and the golang:*-bookworm build stage of the
// Dockerfile) keeps the CA bundle the image carries.
const hostCABundle = "/etc/ssl/certs/ca-certificates.crt"

// Image is one built image.
type Image struct {
	// Ref is the full reference, e.g. "wgmesh.invalid/wgmesh:lab1".
	Ref string
	// Tarball is the docker-archive file holding it.
	Tarball string
	img     v1.Image
}

// Config returns the image's config file (entrypoint, env, user, ports).
func (i *Image) Config() (*v1.ConfigFile, error) { return i.img.ConfigFile() }

// Files lists the regular files of the image's layers: path → mode.
func (i *Image) Files() (map[string]os.FileMode, error) {
	layers, err := i.img.Layers()
	if err != nil {
		return nil, err
	}
	files := map[string]os.FileMode{}
	for _, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			return nil, err
		}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if err != nil {
				break
			}
			if h.Typeflag == tar.TypeReg {
				files["/"+h.Name] = os.FileMode(h.Mode).Perm()
			}
		}
		rc.Close()
	}
	return files, nil
}

// file is one file of a layer.
type file struct {
	path string // absolute path inside the image
	data []byte
	mode int64
}

// layer makes one uncompressed tar layer from files, with the parent
// directories, fixed times and root ownership, so the same input always
// gives the same digest.
func layer(files []file) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	seen := map[string]bool{}
	epoch := time.Unix(0, 0)
	for _, f := range files {
		var dirs []string
		for d := filepath.Dir(f.path); d != "/" && d != "."; d = filepath.Dir(d) {
			dirs = append([]string{d}, dirs...)
		}
		for _, d := range dirs {
			if seen[d] {
				continue
			}
			seen[d] = true
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d[1:] + "/", Mode: 0o755, ModTime: epoch}); err != nil {
				return nil, err
			}
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.path[1:], Mode: f.mode, Size: int64(len(f.data)), ModTime: epoch}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	// Compressed once: the digest needs the gzip stream and so does the
	// tarball's write, which would otherwise gzip it again.
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil }, tarball.WithCompressedCaching)
}

// build assembles an image on the empty base and writes it to dir.
func build(dir, ref string, files []file, cfg v1.Config) (*Image, error) {
	tag, err := name.NewTag(ref)
	if err != nil {
		return nil, fmt.Errorf("image reference %q: %w", ref, err)
	}
	l, err := layer(files)
	if err != nil {
		return nil, fmt.Errorf("image %s: layer: %w", ref, err)
	}
	img, err := mutate.AppendLayers(empty.Image, l)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", ref, err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Architecture = runtime.GOARCH
	cf.OS = "linux"
	cf.Config = cfg
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return nil, fmt.Errorf("image %s: config: %w", ref, err)
	}
	path := filepath.Join(dir, sanitize(ref)+".tar")
	if err := tarball.WriteToFile(path, tag, img); err != nil {
		return nil, fmt.Errorf("image %s: write %s: %w", ref, path, err)
	}
	return &Image{Ref: ref, Tarball: path, img: img}, nil
}

// Wgmesh builds the agent image ref (e.g. "wgmesh.invalid/wgmesh:lab") from
// the binary at bin, laid out like deploy/Dockerfile's final stage: the
// binary at WgmeshBinaryPath, the host's CA bundle at CABundlePath, PATH,
// user 0:0, port 9587/tcp, entrypoint the binary, command "agent".
func Wgmesh(dir, ref, bin string) (*Image, error) {
	data, err := os.ReadFile(bin)
	if err != nil {
		return nil, fmt.Errorf("wgmesh image: read binary: %w", err)
	}
	ca, err := os.ReadFile(hostCABundle)
	if err != nil {
		return nil, fmt.Errorf("wgmesh image: read CA bundle (package ca-certificates): %w", err)
	}
	return build(dir, ref, []file{
		{CABundlePath, ca, 0o644},
		{WgmeshBinaryPath, data, 0o755},
	}, v1.Config{
		Env:          []string{WgmeshPath},
		User:         WgmeshUser,
		ExposedPorts: map[string]struct{}{WgmeshPort: {}},
		Entrypoint:   []string{WgmeshBinaryPath},
		Cmd:          []string{"agent"},
	})
}

// Pause builds the sandbox image ref from e2e/images/cmd/pause: it sleeps,
// reaps children and exits on SIGTERM, all containerd needs of a sandbox.
func Pause(ctx context.Context, dir, ref string) (*Image, error) {
	bin, err := goBuild(ctx, dir, "./images/cmd/pause")
	if err != nil {
		return nil, err
	}
	return build(dir, ref, []file{{"/pause", bin, 0o755}}, v1.Config{Entrypoint: []string{"/pause"}})
}

// Workload builds the test-workload image ref from e2e/images/cmd/workload:
// a static HTTP server and client the cluster scenarios run as pods.
func Workload(ctx context.Context, dir, ref string) (*Image, error) {
	bin, err := goBuild(ctx, dir, "./images/cmd/workload")
	if err != nil {
		return nil, err
	}
	return build(dir, ref, []file{{"/workload", bin, 0o755}}, v1.Config{
		Entrypoint: []string{"/workload"},
		Cmd:        []string{"serve"},
		Env:        []string{"PATH=/"},
	})
}

// goBuild compiles a static binary from the e2e module and returns it.
func goBuild(ctx context.Context, dir, pkg string) ([]byte, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return nil, fmt.Errorf("build %s: no caller information", pkg)
	}
	modDir := filepath.Dir(filepath.Dir(file))
	out := filepath.Join(dir, filepath.Base(pkg)+".bin")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w", "-o", out, pkg)
	cmd.Dir = modDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build %s in %s: %w\n%s", pkg, modDir, err, b)
	}
	defer os.Remove(out)
	return os.ReadFile(out)
}

func sanitize(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			b[i] = '_'
		}
	}
	return string(b)
}
