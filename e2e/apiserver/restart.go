package apiserver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"
)

// StopAPIServer ends kube-apiserver only (SIGTERM, SIGKILL after 10 s) and
// waits for it to exit. etcd, the PKI and the working directory stay, so
// StartAPIServer brings the same cluster back at the same URL with every
// object and every issued kubeconfig still valid: an API server outage as
// clients see it. Stopping a stopped API server is not an error. Neither
// this nor StartAPIServer may run concurrently with Stop.
func (s *Server) StopAPIServer() error {
	s.mu.Lock()
	stopped, p := s.stopped, s.apiserver
	s.mu.Unlock()
	if stopped {
		return errors.New("stop kube-apiserver: the server was stopped for good (Stop)")
	}
	if p == nil {
		return errors.New("stop kube-apiserver: it was never started")
	}
	p.stop(10 * time.Second)
	return nil
}

// StartAPIServer starts kube-apiserver again after StopAPIServer, on the same
// address, port, certificates and etcd, and returns once it is ready; ctx
// bounds the wait. The previous process's log is kept as
// kube-apiserver.log.N next to the new one.
func (s *Server) StartAPIServer(ctx context.Context) error {
	s.mu.Lock()
	stopped, p := s.stopped, s.apiserver
	s.counter++
	n := s.counter
	s.mu.Unlock()
	if stopped {
		return errors.New("start kube-apiserver: the server was stopped for good (Stop)")
	}
	if p != nil {
		select {
		case <-p.done:
		default:
			return fmt.Errorf("start kube-apiserver: it is still running (pid %d); call StopAPIServer first", p.cmd.Process.Pid)
		}
	}
	select {
	case <-s.etcd.done:
		return fmt.Errorf("start kube-apiserver: etcd has exited: %v\n%s", s.etcd.err, s.etcd.logTail())
	default:
	}
	b, err := os.ReadFile(s.path("etcd-url"))
	if err != nil {
		return fmt.Errorf("start kube-apiserver: read etcd's URL: %w", err)
	}
	// spawn truncates the log; keep the previous run's for diagnosis.
	log := s.path("kube-apiserver.log")
	if err := os.Rename(log, fmt.Sprintf("%s.%d", log, n)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("start kube-apiserver: keep the previous log: %w", err)
	}
	if err := s.startAPIServer(strings.TrimSpace(string(b))); err != nil {
		return err
	}
	return s.waitReady(ctx)
}
