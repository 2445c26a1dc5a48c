package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Agent is a `wgmesh agent` process running in a node's namespace. Its
// standard output and error go to LogPath, appended across restarts.
type Agent struct {
	Node *Node
	// Args are the full arguments after the binary name.
	Args []string
	// LogPath is the agent's log file.
	LogPath string

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{} // closed when the current process has exited
	exitErr error
	starts  int
}

// StartAgent starts `wgmesh agent` in the node's namespace with the lab's
// defaults (node name, peers file, interface, key file) followed by extra,
// so later flags can override earlier ones. Close stops it.
func (l *Lab) StartAgent(n *Node, extra ...string) (*Agent, error) {
	return l.startAgent(n, append([]string{"--peers-file", n.PeersFile}, extra...))
}

// StartAgentKube starts the agent like StartAgent, but learning the other
// nodes from the Kubernetes API server described by kubeconfig instead of a
// peers file.
func (l *Lab) StartAgentKube(n *Node, kubeconfig string, extra ...string) (*Agent, error) {
	return l.startAgent(n, append([]string{"--kubeconfig", kubeconfig}, extra...))
}

func (l *Lab) startAgent(n *Node, extra []string) (*Agent, error) {
	if l.opts.Wgmesh == "" {
		return nil, fmt.Errorf("lab: node %s: no wgmesh binary configured (Options.Wgmesh)", n.Name)
	}
	args := []string{
		"agent",
		"--node-name", n.Name,
		"--interface", n.Interface,
		"--key-file", n.KeyFile,
		"--listen-port", fmt.Sprint(n.ListenPort),
	}
	a := &Agent{Node: n, Args: append(args, extra...), LogPath: filepath.Join(n.Dir, "agent.log")}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, errors.New("lab: closed")
	}
	l.agents = append(l.agents, a)
	l.mu.Unlock()
	if err := a.start(); err != nil {
		return nil, err
	}
	return a, nil
}

func (a *Agent) start() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd != nil && !a.exited() {
		return fmt.Errorf("lab: node %s: agent already running (pid %d)", a.Node.Name, a.cmd.Process.Pid)
	}
	log, err := os.OpenFile(a.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("lab: node %s: agent log: %w", a.Node.Name, err)
	}
	a.starts++
	fmt.Fprintf(log, "=== lab: start %d of agent on %s at %s: wgmesh %s\n", a.starts, a.Node.Name, time.Now().Format(time.RFC3339Nano), strings.Join(a.Args, " "))
	// `ip netns exec` execs the command in place, so the pid we hold is the
	// agent's own and signals reach it directly.
	cmd := exec.Command("ip", append([]string{"netns", "exec", a.Node.NS, a.Node.lab.opts.Wgmesh}, a.Args...)...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.Env = append(os.Environ(), "NODE_NAME="+a.Node.Name)
	// Own process group: a Ctrl-C at the demo's terminal reaches the demo,
	// which then stops the agents in order, instead of killing them all at once.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		log.Close()
		return fmt.Errorf("lab: node %s: start agent: %w", a.Node.Name, err)
	}
	done := make(chan struct{})
	a.cmd, a.done, a.exitErr = cmd, done, nil
	go func() {
		err := cmd.Wait()
		log.Close()
		a.mu.Lock()
		a.exitErr = err
		a.mu.Unlock()
		close(done)
	}()
	return nil
}

// exited reports whether the current process has ended; a.mu must be held.
func (a *Agent) exited() bool {
	if a.done == nil {
		return true
	}
	select {
	case <-a.done:
		return true
	default:
		return false
	}
}

// Running reports whether the agent process is alive.
func (a *Agent) Running() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return !a.exited()
}

// Pid is the process id of the current agent process (0 if never started).
func (a *Agent) Pid() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd == nil || a.cmd.Process == nil {
		return 0
	}
	return a.cmd.Process.Pid
}

// Exited returns a channel closed when the current agent process ends.
func (a *Agent) Exited() <-chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.done == nil {
		c := make(chan struct{})
		close(c)
		return c
	}
	return a.done
}

// Kill9 kills the agent with SIGKILL — a crash: it gets no chance to clean up —
// and waits for it to be gone.
func (a *Agent) Kill9() error {
	a.mu.Lock()
	cmd, done := a.cmd, a.done
	a.mu.Unlock()
	if cmd == nil || done == nil {
		return fmt.Errorf("lab: node %s: agent not started", a.Node.Name)
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("lab: node %s: agent pid %d survived SIGKILL for 10s", a.Node.Name, cmd.Process.Pid)
	}
}

// Stop sends SIGTERM and waits for the agent to exit, killing it when ctx
// ends first. It returns the exit error of a process that did not exit
// cleanly (a SIGTERM exit counts as clean).
func (a *Agent) Stop(ctx context.Context) error {
	a.mu.Lock()
	cmd, done := a.cmd, a.done
	a.mu.Unlock()
	if cmd == nil || done == nil {
		return nil
	}
	select {
	case <-done:
		return nil // already gone (Kill9, crash): nothing to stop
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-ctx.Done():
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-done
		return fmt.Errorf("lab: node %s: agent did not exit after SIGTERM: %w", a.Node.Name, ctx.Err())
	}
	a.mu.Lock()
	err := a.exitErr
	a.mu.Unlock()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGTERM {
			return nil
		}
		return fmt.Errorf("lab: node %s: agent exited after SIGTERM: %w (log %s)", a.Node.Name, err, a.LogPath)
	}
	return err
}

// Restart starts the agent again with the same arguments; the previous
// process must have ended (Kill9 or Stop).
func (a *Agent) Restart() error { return a.start() }

// Signal sends sig to the agent (SIGHUP: reload).
func (a *Agent) Signal(sig os.Signal) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd == nil || a.exited() {
		return fmt.Errorf("lab: node %s: agent not running", a.Node.Name)
	}
	return a.cmd.Process.Signal(sig)
}

// Log returns the agent's log so far.
func (a *Agent) Log() string {
	b, err := os.ReadFile(a.LogPath)
	if err != nil {
		return fmt.Sprintf("(agent log %s: %v)", a.LogPath, err)
	}
	return string(b)
}

// LogTail returns the last n lines of the agent's log, for failure messages.
func (a *Agent) LogTail(n int) string { return lastLines(a.Log(), n) }

// kill is Close's way out: SIGTERM, a short grace period, then SIGKILL.
func (a *Agent) kill() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = a.Stop(ctx)
}

// Agents returns the agents started in this lab.
func (l *Lab) Agents() []*Agent {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*Agent(nil), l.agents...)
}
