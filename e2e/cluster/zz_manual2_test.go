package cluster

import (
	"context"
	"testing"

	"github.com/wgmesh/wgmesh/e2e/images"
)

func Pause(t *testing.T, dir string) (*images.Image, error) {
	return images.Pause(context.Background(), dir, PauseImage)
}
