// Command workload is the cluster lab's test-workload image: a static HTTP
// server and client, so scenarios can run real pods that talk to each other.
//
//	workload serve [addr]        serve HTTP on addr (default ":8080"):
//	                             GET /       → "<hostname> <client address>"
//	                             GET /bytes?n=N → N bytes of a fixed pattern
//	                             POST /sink  → "<bytes read> <sha256 hex>"
//	workload get URL             print the response body
//	workload fetch URL           GET URL, print "<bytes> <sha256 hex>"
//	workload send URL N          POST N pattern bytes to URL, print the reply
//	workload kube PATH           GET PATH from the API server the in-cluster
//	                             way (KUBERNETES_SERVICE_HOST/PORT, the pod's
//	                             service account token and CA), print the body
//	workload probe URL DURATION  GET URL every 100 ms (new connection, 1 s
//	                             timeout) for DURATION; print "up" once the
//	                             first answer came, then "down <unix ms>"
//	                             when answers stop and "gap <ms>" when they
//	                             return; it also ends when its standard
//	                             input, a pipe (kubectl exec -i), closes
//	workload sleep               block until SIGTERM
package main

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fail("usage: workload serve|get|fetch|send|sleep ...")
	}
	switch os.Args[1] {
	case "serve":
		addr := ":8080"
		if len(os.Args) > 2 {
			addr = os.Args[2]
		}
		serve(addr)
	case "get", "fetch":
		if len(os.Args) != 3 {
			fail("usage: workload " + os.Args[1] + " URL")
		}
		resp, err := client().Get(os.Args[2])
		if err != nil {
			fail(err.Error())
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			fail(resp.Status)
		}
		if os.Args[1] == "get" {
			io.Copy(os.Stdout, resp.Body)
			return
		}
		h := sha256.New()
		n, err := io.Copy(h, resp.Body)
		if err != nil {
			fail(err.Error())
		}
		fmt.Printf("%d %s\n", n, hex.EncodeToString(h.Sum(nil)))
	case "send":
		if len(os.Args) != 4 {
			fail("usage: workload send URL N")
		}
		n, err := strconv.ParseInt(os.Args[3], 10, 64)
		if err != nil {
			fail(err.Error())
		}
		resp, err := client().Post(os.Args[2], "application/octet-stream", io.LimitReader(&pattern{}, n))
		if err != nil {
			fail(err.Error())
		}
		defer resp.Body.Close()
		io.Copy(os.Stdout, resp.Body)
	case "kube":
		if len(os.Args) != 3 {
			fail("usage: workload kube PATH")
		}
		kube(os.Args[2])
	case "probe":
		if len(os.Args) != 4 {
			fail("usage: workload probe URL DURATION")
		}
		d, err := time.ParseDuration(os.Args[3])
		if err != nil {
			fail(err.Error())
		}
		probe(os.Args[2], d)
	case "sleep":
		c := make(chan os.Signal, 1)
		signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
		<-c
	default:
		fail("unknown command " + os.Args[1])
	}
}

// kube does what client-go's in-cluster configuration does, without
// client-go: the Service address from the environment kubelet sets, the
// mounted token and CA.
func kube(path string) {
	const sa = "/var/run/secrets/kubernetes.io/serviceaccount/"
	token, err := os.ReadFile(sa + "token")
	if err != nil {
		fail(err.Error())
	}
	ca, err := os.ReadFile(sa + "ca.crt")
	if err != nil {
		fail(err.Error())
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		fail("no certificate in " + sa + "ca.crt")
	}
	host := net.JoinHostPort(os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT"))
	req, err := http.NewRequest(http.MethodGet, "https://"+host+path, nil)
	if err != nil {
		fail(err.Error())
	}
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	c := client()
	c.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	resp, err := c.Do(req)
	if err != nil {
		fail(err.Error())
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fail(host + path + ": " + resp.Status)
	}
	io.Copy(os.Stdout, resp.Body)
}

// probe reports outages of URL as they happen, so a caller streaming the
// output sees them without waiting for the end.
func probe(url string, d time.Duration) {
	c := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	end := time.Now().Add(d)
	// Ending with the caller: when kubectl exec -i ends, the container's
	// runtime closes the process's standard input. Its standard output
	// stays open (the runtime's shim reads it), so writes would never fail.
	if fi, err := os.Stdin.Stat(); err == nil && fi.Mode()&os.ModeNamedPipe != 0 {
		go func() {
			io.Copy(io.Discard, os.Stdin)
			os.Exit(0)
		}()
	}
	var up bool
	var lastOK time.Time
	for time.Now().Before(end) {
		t := time.Now()
		resp, err := c.Get(url)
		ok := err == nil && resp.StatusCode == http.StatusOK
		if resp != nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		switch {
		case ok && lastOK.IsZero():
			fmt.Println("up")
		case ok && !up:
			fmt.Printf("gap %d\n", time.Since(lastOK).Milliseconds())
		case !ok && up:
			fmt.Printf("down %d\n", lastOK.UnixMilli())
		}
		if ok {
			up, lastOK = true, time.Now()
		} else {
			up = false
		}
		time.Sleep(100*time.Millisecond - time.Since(t))
	}
	if !up && !lastOK.IsZero() {
		fmt.Printf("still-down %d\n", time.Since(lastOK).Milliseconds())
	}
}

func client() *http.Client { return &http.Client{Timeout: 2 * time.Minute} }

func serve(addr string) {
	host, _ := os.Hostname()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s\n", host, r.RemoteAddr)
	})
	mux.HandleFunc("GET /bytes", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		if err != nil || n < 0 {
			http.Error(w, "n: want a byte count", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		io.Copy(w, io.LimitReader(&pattern{}, n))
	})
	mux.HandleFunc("POST /sink", func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%d %s\n", n, hex.EncodeToString(h.Sum(nil)))
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fail(err.Error())
	}
	srv := &http.Server{Handler: mux}
	go func() {
		c := make(chan os.Signal, 1)
		signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
		<-c
		srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && err != http.ErrServerClosed {
		fail(err.Error())
	}
}

// pattern is an endless byte stream whose sha256 over any length both ends
// can compute: byte i is i mod 251.
type pattern struct{ off int64 }

func (p *pattern) Read(b []byte) (int, error) {
	for i := range b {
		b[i] = byte((p.off + int64(i)) % 251)
	}
	p.off += int64(len(b))
	return len(b), nil
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, "workload:", msg)
	os.Exit(1)
}
