module github.com/wgmesh/wgmesh/e2e

go 1.26.0

require github.com/wgmesh/wgmesh v0.0.0

replace github.com/wgmesh/wgmesh => ../
