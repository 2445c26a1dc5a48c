// Package bench holds wgmesh's Go benchmarks: the data path over an in-memory
// device pair, the crypto bound of the machine, and the control plane at
// cluster scale. The namespace throughput comparison against other WireGuard
// implementations is the harness in bench/cmd/benchrun (`make bench`), which
// also runs these benchmarks and writes bench/RESULTS.md.
package bench
