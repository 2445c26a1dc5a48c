package apiserver

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// process is a child (etcd or kube-apiserver) whose output goes to a log file.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed when the process has exited
	err     error         // exit status, valid after done
}

// spawn starts bin with args (inside the server's network namespace if one is
// set), logging to <dir>/<name>.log.
func (s *Server) spawn(name, bin string, args ...string) (*process, error) {
	logPath := s.path(name + ".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("create %s log: %w", name, err)
	}
	argv := append([]string{bin}, args...)
	if s.opts.NetNS != "" {
		// ip netns exec execs in place, so the pid (and the parent-death
		// signal) stays the child's.
		argv = append([]string{"ip", "netns", "exec", s.opts.NetNS}, argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = s.dir
	var out io.Writer = logf
	if s.opts.Output != nil {
		out = io.MultiWriter(logf, s.opts.Output)
	}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// Die with the test binary even when it is killed without cleanup.
		Pdeathsig: syscall.SIGKILL,
		Setpgid:   true,
	}
	p := &process{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}

	// The parent-death signal fires when the *thread* that forked the child
	// exits, and Go ends threads whose goroutine exits while locked to them
	// (code that enters network namespaces does this on purpose). Fork from a
	// thread of our own that stays alive, locked, until the child is gone.
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			logf.Close()
			started <- fmt.Errorf("start %s (%s): %w", name, strings.Join(argv, " "), err)
			return
		}
		started <- nil
		p.err = cmd.Wait()
		// The child is gone: hand the thread back instead of letting Go end
		// it with the goroutine, which would fire the parent-death signal of
		// any other process later forked from this thread (the lab's tcpdump
		// died that way when a test stopped kube-apiserver). The thread never
		// entered a namespace, so it is clean to reuse.
		runtime.UnlockOSThread()
		logf.Close()
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return p, nil
}

// stop sends SIGTERM to the process group, SIGKILL after grace, and waits.
func (p *process) stop(grace time.Duration) {
	select {
	case <-p.done:
		return
	default:
	}
	pgid := p.cmd.Process.Pid
	syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		syscall.Kill(-pgid, syscall.SIGKILL)
		<-p.done
	}
}

// logTail returns the last lines of the process's log, for error messages.
func (p *process) logTail() string {
	f, err := os.Open(p.logPath)
	if err != nil {
		return fmt.Sprintf("(no %s log: %v)", p.name, err)
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > 40 {
			lines = lines[1:]
		}
	}
	return "--- last lines of " + p.logPath + " ---\n" + strings.Join(lines, "\n")
}

// rss reads a process's resident set size in bytes from /proc.
func rss(pid int) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, fmt.Errorf("read memory of pid %d: %w", pid, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parse VmRSS of pid %d: %w", pid, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("pid %d: no VmRSS in /proc status", pid)
}
