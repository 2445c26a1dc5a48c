// Command etcd runs a single-member embedded etcd 3.5 for the end-to-end
// tests' kube-apiserver. It exists because no etcd binary is installed on test
// machines; building it from the e2e module keeps its client/server versions
// in lockstep with the ones kube-apiserver v1.33 was released with.
//
// It listens on loopback only, on ports chosen by the kernel, and writes the
// client URL to -url-file once etcd is ready so the launcher never races for a
// free port (which it could not probe anyway when etcd runs in another network
// namespace).
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

func main() {
	dataDir := flag.String("data-dir", "", "directory for etcd's data (required)")
	urlFile := flag.String("url-file", "", "file to write the client URL to once ready (required)")
	host := flag.String("host", "127.0.0.1", "address to listen on for clients and peers")
	flag.Parse()
	if *dataDir == "" || *urlFile == "" {
		log.Fatal("etcd: -data-dir and -url-file are required")
	}
	if err := run(*dataDir, *urlFile, *host); err != nil {
		log.Fatalf("etcd: %v", err)
	}
}

func run(dataDir, urlFile, host string) error {
	cfg := embed.NewConfig()
	cfg.Name = "e2e"
	cfg.Dir = dataDir
	cfg.LogLevel = "error"
	// The data dies with the test; fsync only slows a shared CI machine down.
	cfg.UnsafeNoFsync = true
	// Port 0: the kernel picks; the real client address is read back below.
	// The peer URL is never dialled in a one-member cluster, it only has to
	// agree with InitialCluster.
	client := url.URL{Scheme: "http", Host: net.JoinHostPort(host, "0")}
	peer := url.URL{Scheme: "http", Host: net.JoinHostPort(host, "0")}
	cfg.ListenClientUrls = []url.URL{client}
	cfg.AdvertiseClientUrls = []url.URL{client}
	cfg.ListenPeerUrls = []url.URL{peer}
	cfg.AdvertisePeerUrls = []url.URL{peer}
	cfg.InitialCluster = cfg.Name + "=" + peer.String()

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("start embedded etcd in %s: %w", dataDir, err)
	}
	defer e.Close()
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(2 * time.Minute):
		return fmt.Errorf("embedded etcd in %s not ready after 2m", dataDir)
	}
	if len(e.Clients) == 0 {
		return fmt.Errorf("embedded etcd in %s has no client listener", dataDir)
	}
	addr := "http://" + e.Clients[0].Addr().String()
	// Write then rename, so the launcher never reads a half-written URL.
	tmp := filepath.Join(filepath.Dir(urlFile), "."+filepath.Base(urlFile)+".tmp")
	if err := os.WriteFile(tmp, []byte(addr+"\n"), 0o600); err != nil {
		return fmt.Errorf("write client URL to %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, urlFile); err != nil {
		return fmt.Errorf("publish client URL as %s: %w", urlFile, err)
	}

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-sig:
		return nil
	case err := <-e.Err():
		return fmt.Errorf("embedded etcd in %s failed: %w", dataDir, err)
	}
}
