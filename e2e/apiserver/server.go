// Package apiserver runs a real kube-apiserver backed by an embedded etcd for
// wgmesh's end-to-end tests and the Kubernetes demo. Build compiles both from
// the e2e module (once, cached); Start brings up a private control plane with
// its own throwaway PKI, optionally inside a network namespace, and hands out
// kubeconfigs and client configs for the identities the tests need: the
// cluster admin and the wgmesh agent's service account (by impersonation, so
// the agent runs with exactly the DaemonSet's RBAC and admission policy).
package apiserver

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/wgmesh/wgmesh/e2e/internal/buildcache"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Options configures Start. The zero value runs on 127.0.0.1 on a free port
// in the caller's network namespace, with files in a fresh temporary directory.
type Options struct {
	// Dir is where the server's working directory (PKI, kubeconfigs, etcd
	// data, logs) is created; empty: the system temporary directory. The
	// working directory is removed by Stop.
	Dir string
	// BinDir holds kube-apiserver and etcd as produced by Build; empty:
	// Start calls Build.
	BinDir string
	// NetNS runs etcd and kube-apiserver inside this network namespace (a
	// name from `ip netns add`; needs root). Empty: the caller's namespace.
	NetNS string
	// BindAddress is the address kube-apiserver serves on and puts in its
	// certificate and kubeconfigs; zero: 127.0.0.1. etcd always listens on
	// loopback of the same namespace.
	BindAddress netip.Addr
	// Port is kube-apiserver's secure port; 0: a free port.
	Port int
	// ReadyTimeout bounds the wait for /readyz; 0: 2 minutes (slow shared
	// CI machines need far more than the usual 3 seconds).
	ReadyTimeout time.Duration
	// ExtraArgs are appended to kube-apiserver's command line after the
	// defaults; a single-valued flag given again overrides its default, a
	// list flag (--enable-admission-plugins, --authorization-mode) given
	// again adds to it, as pflag parses them (the cluster lab
	// sets --endpoint-reconciler-type=lease so kube-proxy has endpoints for
	// the kubernetes Service).
	ExtraArgs []string
	// Output, if set, also receives both processes' logs (they are always
	// kept in etcd.log and kube-apiserver.log in the working directory).
	Output io.Writer
}

// Identity is a user authenticated by client certificate: CN is the user
// name, O the groups.
type Identity struct {
	User   string
	Groups []string
}

// Admin is the cluster administrator (bound to cluster-admin through the
// system:masters group, which also allows impersonation).
var Admin = Identity{User: "admin", Groups: []string{"system:masters"}}

// Impersonation is the identity a request acts as (kubeconfig as,
// as-groups, as-user-extra), authenticated with the admin's certificate.
type Impersonation struct {
	User   string
	Groups []string
	Extra  map[string][]string
}

// The wgmesh agent's service account, as deploy/kubernetes creates it.
const (
	AgentNamespace      = "wgmesh"
	AgentServiceAccount = "wgmesh"
	// NodeNameExtra is the user-info extra key that kube-apiserver (1.32+)
	// attaches to tokens of service accounts bound to a pod, naming the pod's
	// node; the admission policy uses it to limit an agent to its own Node.
	NodeNameExtra = "authentication.kubernetes.io/node-name"
)

// Agent returns the identity of the wgmesh DaemonSet pod on node: its service
// account's user and groups, and the node name extra a bound token carries.
func Agent(node string) Impersonation {
	return Impersonation{
		User: "system:serviceaccount:" + AgentNamespace + ":" + AgentServiceAccount,
		Groups: []string{
			"system:serviceaccounts",
			"system:serviceaccounts:" + AgentNamespace,
			"system:authenticated",
		},
		Extra: map[string][]string{NodeNameExtra: {node}},
	}
}

// Server is a running kube-apiserver with its etcd.
type Server struct {
	opts       Options
	dir        string
	url        string
	ca         *authority
	readyAfter time.Duration

	etcd, apiserver *process

	mu      sync.Mutex
	counter int
	stopped bool
}

// Start brings up etcd and kube-apiserver and returns once /readyz answers
// and the default namespaces exist; ctx bounds the start-up only, the
// processes run until Stop. On error everything started is stopped.
// The processes get SIGKILL if the calling process dies; call Stop (e.g. in
// t.Cleanup) to end them and remove the working directory.
func Start(ctx context.Context, o Options) (_ *Server, err error) {
	if !o.BindAddress.IsValid() {
		o.BindAddress = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	}
	if o.ReadyTimeout == 0 {
		o.ReadyTimeout = 2 * time.Minute
	}
	if o.BinDir == "" {
		if o.BinDir, err = Build(ctx); err != nil {
			return nil, err
		}
	}
	if o.NetNS != "" {
		// A fresh namespace's loopback is down; etcd listens there.
		if out, err := exec.CommandContext(ctx, "ip", "-n", o.NetNS, "link", "set", "lo", "up").CombinedOutput(); err != nil {
			return nil, fmt.Errorf("bring up loopback in network namespace %q: %w: %s", o.NetNS, err, out)
		}
	}
	if o.Port == 0 {
		if o.Port, err = freePort(o.NetNS, o.BindAddress.String()); err != nil {
			return nil, err
		}
	}
	dir, err := os.MkdirTemp(o.Dir, "wgmesh-apiserver-")
	if err != nil {
		return nil, fmt.Errorf("create API server working directory in %q: %w", o.Dir, err)
	}
	s := &Server{opts: o, dir: dir}
	defer func() {
		if err != nil {
			s.Stop()
		}
	}()
	begin := time.Now() // the build is not part of start-up time
	s.url = "https://" + net.JoinHostPort(o.BindAddress.String(), strconv.Itoa(o.Port))
	if err := s.writePKI(); err != nil {
		return nil, err
	}

	etcdURL, err := s.startEtcd(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.startAPIServer(etcdURL); err != nil {
		return nil, err
	}
	if err := s.waitReady(ctx); err != nil {
		return nil, err
	}
	s.readyAfter = time.Since(begin)
	return s, nil
}

func (s *Server) path(name string) string { return filepath.Join(s.dir, name) }

func (s *Server) writePKI() error {
	ca, err := newAuthority()
	if err != nil {
		return err
	}
	s.ca = ca
	ips := []net.IP{net.ParseIP(s.opts.BindAddress.String()), net.IPv4(127, 0, 0, 1), net.IPv6loopback, net.IPv4(10, 96, 0, 1)}
	serving, err := ca.serving(ips, []string{
		"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local",
	})
	if err != nil {
		return err
	}
	saKey, err := serviceAccountKeyPEM()
	if err != nil {
		return err
	}
	if err := os.WriteFile(s.path("ca.crt"), ca.certPEM, 0o644); err != nil {
		return fmt.Errorf("write CA certificate: %w", err)
	}
	if err := os.WriteFile(s.path("serving.crt"), serving.certPEM, 0o644); err != nil {
		return fmt.Errorf("write serving certificate: %w", err)
	}
	if err := writeSecret(s.path("serving.key"), serving.keyPEM); err != nil {
		return err
	}
	return writeSecret(s.path("service-account.key"), saKey)
}

func (s *Server) startEtcd(ctx context.Context) (string, error) {
	data := s.path("etcd-data")
	urlFile := s.path("etcd-url")
	p, err := s.spawn("etcd", filepath.Join(s.opts.BinDir, EtcdBinary),
		"-data-dir", data, "-url-file", urlFile, "-host", "127.0.0.1")
	if err != nil {
		return "", err
	}
	s.etcd = p
	deadline := time.Now().Add(s.opts.ReadyTimeout)
	for {
		if b, err := os.ReadFile(urlFile); err == nil {
			return strings.TrimSpace(string(b)), nil
		}
		select {
		case <-p.done:
			return "", fmt.Errorf("etcd exited before becoming ready: %v\n%s", p.err, p.logTail())
		case <-ctx.Done():
			return "", fmt.Errorf("wait for etcd: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("etcd not ready after %v\n%s", s.opts.ReadyTimeout, p.logTail())
		}
	}
}

func (s *Server) startAPIServer(etcdURL string) error {
	args := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=" + s.opts.BindAddress.String(),
		"--advertise-address=" + s.opts.BindAddress.String(),
		"--secure-port=" + strconv.Itoa(s.opts.Port),
		"--cert-dir=" + s.path("cert-dir"),
		"--tls-cert-file=" + s.path("serving.crt"),
		"--tls-private-key-file=" + s.path("serving.key"),
		"--client-ca-file=" + s.path("ca.crt"),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + s.path("service-account.key"),
		"--service-account-signing-key-file=" + s.path("service-account.key"),
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction,ValidatingAdmissionPolicy",
		// Nothing may route to the services range; it is only a required
		// setting (and the source of the kubernetes Service's ClusterIP).
		"--service-cluster-ip-range=10.96.0.0/16",
		// No controller maintains the kubernetes Service's endpoints here;
		// the default reconciler would insist on a routable address.
		"--endpoint-reconciler-type=none",
		"--profiling=false",
		"--v=1",
	}
	args = append(args, s.opts.ExtraArgs...)
	p, err := s.spawn("kube-apiserver", filepath.Join(s.opts.BinDir, APIServerBinary), args...)
	if err != nil {
		return err
	}
	s.apiserver = p
	return nil
}

func (s *Server) waitReady(ctx context.Context) error {
	cfg, err := s.RESTConfig(Admin)
	if err != nil {
		return err
	}
	tlsCfg, err := s.tlsConfig(cfg)
	if err != nil {
		return err
	}
	hc := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: tlsCfg, DialContext: dialer(s.opts.NetNS)},
	}
	defer hc.CloseIdleConnections()
	deadline := time.Now().Add(s.opts.ReadyTimeout)
	var last string
	for {
		if last = s.probe(ctx, hc); last == "" {
			break
		}
		select {
		case <-s.apiserver.done:
			return fmt.Errorf("kube-apiserver exited before becoming ready: %v\n%s", s.apiserver.err, s.apiserver.logTail())
		case <-s.etcd.done:
			return fmt.Errorf("etcd exited while kube-apiserver started: %v\n%s", s.etcd.err, s.etcd.logTail())
		case <-ctx.Done():
			return fmt.Errorf("wait for kube-apiserver at %s: %w", s.url, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("kube-apiserver at %s not ready after %v (last: %s)\n%s", s.url, s.opts.ReadyTimeout, last, s.apiserver.logTail())
		}
	}

	// /readyz does not wait for the system namespaces controller; tests
	// create Events in "default" right away.
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("client for %s: %w", s.url, err)
	}
	for {
		_, err := cs.CoreV1().Namespaces().Get(ctx, metav1.NamespaceDefault, metav1.GetOptions{})
		if err == nil {
			return nil
		}
		if !apierrors.IsNotFound(err) || time.Now().After(deadline) {
			return fmt.Errorf("wait for namespace default on %s: %w", s.url, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for namespace default on %s: %w", s.url, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// probe returns "" when /readyz answers ok, else what went wrong.
func (s *Server) probe(ctx context.Context, hc *http.Client) string {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url+"/readyz", nil)
	if err != nil {
		return err.Error()
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	var body bytes.Buffer
	body.ReadFrom(http.MaxBytesReader(nil, resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return fmt.Sprintf("%s: %s", resp.Status, buildcache.Tail(body.Bytes(), 500))
	}
	return ""
}

func (s *Server) tlsConfig(cfg *rest.Config) (*tls.Config, error) {
	cert, err := tls.X509KeyPair(cfg.TLSClientConfig.CertData, cfg.TLSClientConfig.KeyData)
	if err != nil {
		return nil, fmt.Errorf("load admin client certificate: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(s.ca.cert)
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

// URL is the API server's https URL.
func (s *Server) URL() string { return s.url }

// Dir is the server's working directory (removed by Stop).
func (s *Server) Dir() string { return s.dir }

// CAFile and ServiceAccountKeyFile are the PEM files in Dir holding the
// cluster CA certificate and the service-account signing key (RSA), which a
// kube-controller-manager needs for --root-ca-file and
// --service-account-private-key-file.
func (s *Server) CAFile() string                { return s.path("ca.crt") }
func (s *Server) ServiceAccountKeyFile() string { return s.path("service-account.key") }

// CACert returns the PEM certificate of the CA that signed the serving and
// client certificates.
func (s *Server) CACert() []byte { return s.ca.certPEM }

// Stats describes a running server, for reporting in tests.
type Stats struct {
	// ReadyAfter is the time from Start (excluding the build) to ready.
	ReadyAfter time.Duration
	// APIServerRSS and EtcdRSS are the processes' resident set sizes.
	APIServerRSS, EtcdRSS int64
}

// Stats reports start-up time and the processes' current memory use.
func (s *Server) Stats() (Stats, error) {
	st := Stats{ReadyAfter: s.readyAfter}
	var err error
	if st.APIServerRSS, err = rss(s.apiserver.cmd.Process.Pid); err != nil {
		return st, err
	}
	st.EtcdRSS, err = rss(s.etcd.cmd.Process.Pid)
	return st, err
}

// RESTConfig returns a client configuration authenticating as id with a
// freshly issued client certificate. When the server runs in a network
// namespace, the config dials from inside that namespace.
func (s *Server) RESTConfig(id Identity) (*rest.Config, error) {
	if id.User == "" {
		return nil, errors.New("client configuration: identity has no user name")
	}
	cert, err := s.ca.client(id.User, id.Groups)
	if err != nil {
		return nil, err
	}
	return &rest.Config{
		Host: s.url,
		TLSClientConfig: rest.TLSClientConfig{
			CAData:   s.ca.certPEM,
			CertData: cert.certPEM,
			KeyData:  cert.keyPEM,
		},
		Dial: dialer(s.opts.NetNS),
		// The tests hammer the server on purpose (50 node joins in a row);
		// client-side throttling would only make them slow.
		QPS:   -1,
		Burst: -1,
	}, nil
}

// RESTConfigImpersonating returns an admin client configuration that acts as
// imp, so requests are authorized and admitted exactly as imp's.
func (s *Server) RESTConfigImpersonating(imp Impersonation) (*rest.Config, error) {
	if imp.User == "" {
		return nil, errors.New("impersonating client configuration: no user name")
	}
	cfg, err := s.RESTConfig(Admin)
	if err != nil {
		return nil, err
	}
	cfg.Impersonate = rest.ImpersonationConfig{UserName: imp.User, Groups: imp.Groups, Extra: imp.Extra}
	return cfg, nil
}

// Kubeconfig writes a kubeconfig file authenticating as id and returns its
// path (inside Dir). Processes using it must be able to route to URL.
func (s *Server) Kubeconfig(id Identity) (string, error) {
	cfg, err := s.RESTConfig(id)
	if err != nil {
		return "", err
	}
	return s.writeKubeconfig(id.User, cfg, nil)
}

// KubeconfigImpersonating writes a kubeconfig file that authenticates as the
// admin and impersonates user, groups and extra (e.g. Agent(node)).
func (s *Server) KubeconfigImpersonating(user string, groups []string, extra map[string][]string) (string, error) {
	cfg, err := s.RESTConfig(Admin)
	if err != nil {
		return "", err
	}
	return s.writeKubeconfig(user, cfg, &Impersonation{User: user, Groups: groups, Extra: extra})
}

func (s *Server) writeKubeconfig(name string, cfg *rest.Config, imp *Impersonation) (string, error) {
	auth := &clientcmdapi.AuthInfo{
		ClientCertificateData: cfg.TLSClientConfig.CertData,
		ClientKeyData:         cfg.TLSClientConfig.KeyData,
	}
	if imp != nil {
		if imp.User == "" {
			return "", errors.New("impersonating kubeconfig: no user name")
		}
		auth.Impersonate = imp.User
		auth.ImpersonateGroups = imp.Groups
		auth.ImpersonateUserExtra = imp.Extra
	}
	kc := clientcmdapi.NewConfig()
	kc.Clusters["e2e"] = &clientcmdapi.Cluster{Server: s.url, CertificateAuthorityData: s.ca.certPEM}
	kc.AuthInfos["user"] = auth
	kc.Contexts["e2e"] = &clientcmdapi.Context{Cluster: "e2e", AuthInfo: "user"}
	kc.CurrentContext = "e2e"

	s.mu.Lock()
	s.counter++
	n := s.counter
	s.mu.Unlock()
	path := s.path(fmt.Sprintf("kubeconfig-%d-%s", n, sanitize(name)))
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		return "", fmt.Errorf("write kubeconfig for %s to %s: %w", name, path, err)
	}
	// WriteToFile creates 0600 already; make sure, it holds a private key.
	if err := os.Chmod(path, 0o600); err != nil {
		return "", fmt.Errorf("restrict kubeconfig %s: %w", path, err)
	}
	return path, nil
}

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		return '_'
	}, s)
}

// Stop ends kube-apiserver and etcd (SIGTERM, then SIGKILL after 10 s) and
// removes the working directory. It is safe to call more than once.
func (s *Server) Stop() error {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return nil
	}
	s.stopped = true
	s.mu.Unlock()
	var errs []error
	// API server first: it would otherwise log etcd connection errors.
	for _, p := range []*process{s.apiserver, s.etcd} {
		if p != nil {
			p.stop(10 * time.Second)
		}
	}
	if err := os.RemoveAll(s.dir); err != nil {
		errs = append(errs, fmt.Errorf("remove API server working directory %s: %w", s.dir, err))
	}
	return errors.Join(errs...)
}

// Pids returns the process ids of kube-apiserver and etcd.
func (s *Server) Pids() (apiserver, etcd int) {
	return s.apiserver.cmd.Process.Pid, s.etcd.cmd.Process.Pid
}
