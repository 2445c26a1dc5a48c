package uml

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// AgentLog is the guest agent's log (stdout and stderr, appended across
// restarts), on the host.
func (g *Guest) AgentLog() string { return filepath.Join(g.Node.Dir, "agent.log") }

func (g *Guest) agentPidFile() string { return filepath.Join(g.Node.Dir, "agent.pid") }

// AgentArgs are the arguments StartAgent gives `wgmesh agent`, the lab's
// defaults (as lab.StartAgent) followed by extra.
func (g *Guest) AgentArgs(extra ...string) []string {
	n := g.Node
	return append([]string{
		"agent",
		"--node-name", n.Name,
		"--interface", n.Interface,
		"--key-file", n.KeyFile,
		"--listen-port", fmt.Sprint(n.ListenPort),
		"--peers-file", n.PeersFile,
	}, extra...)
}

// StartAgent starts `wgmesh agent` in the guest (see AgentArgs) in the
// background and returns its pid in the guest. It fails when an agent
// started earlier still runs.
func (g *Guest) StartAgent(ctx context.Context, extra ...string) (int, error) {
	if pid, ok := g.AgentPid(ctx); ok {
		return 0, fmt.Errorf("uml: %s: agent already running (pid %d)", g.Node.Name, pid)
	}
	g.agentN++
	args := g.AgentArgs(extra...)
	script := fmt.Sprintf("echo \"=== uml: start %d of agent on %s at $(date -Ins): wgmesh %s\" >> %s\n"+
		"NODE_NAME=%s setsid %s %s >> %s 2>&1 < /dev/null &\necho $! > %s\necho $!\n",
		g.agentN, g.Node.Name, shellJoin(args), g.AgentLog(),
		g.Node.Name, g.o.Wgmesh, shellJoin(args), g.AgentLog(), g.agentPidFile())
	out, err := g.Run(ctx, script)
	if err != nil {
		return 0, err
	}
	var pid int
	if _, err := fmt.Sscan(strings.TrimSpace(out), &pid); err != nil {
		return 0, fmt.Errorf("uml: %s: agent pid: %q", g.Node.Name, out)
	}
	return pid, nil
}

// AgentPid is the pid of the running agent, if one runs.
func (g *Guest) AgentPid(ctx context.Context) (int, bool) {
	b, err := os.ReadFile(g.agentPidFile())
	if err != nil {
		return 0, false
	}
	var pid int
	if _, err := fmt.Sscan(string(b), &pid); err != nil || pid <= 0 {
		return 0, false
	}
	if _, err := g.Run(ctx, fmt.Sprintf("kill -0 %d", pid)); err != nil {
		return 0, false
	}
	return pid, true
}

// SignalAgent sends sig ("TERM", "KILL", "HUP") to the agent and, for TERM
// and KILL, waits (up to timeout) until the process is gone.
func (g *Guest) SignalAgent(ctx context.Context, sig string, timeout time.Duration) error {
	pid, ok := g.AgentPid(ctx)
	if !ok {
		return fmt.Errorf("uml: %s: no agent running", g.Node.Name)
	}
	script := fmt.Sprintf("kill -%s %d\n", sig, pid)
	if sig == "TERM" || sig == "KILL" {
		// The agent is no child of this shell: poll.
		script += fmt.Sprintf("i=0; while kill -0 %d 2>/dev/null; do i=$((i+1)); [ $i -gt %d ] && { echo still running; exit 1; }; sleep 0.02; done\n",
			pid, int(timeout/(20*time.Millisecond)))
	}
	_, err := g.Run(ctx, script)
	return err
}

// Wgmesh runs the wgmesh binary in the guest with args.
func (g *Guest) Wgmesh(ctx context.Context, args ...string) (string, error) {
	return g.Run(ctx, g.o.Wgmesh+" "+shellJoin(args))
}

// shellJoin quotes words for sh.
func shellJoin(words []string) string {
	q := make([]string, len(words))
	for i, w := range words {
		q[i] = "'" + strings.ReplaceAll(w, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}

// WriteFile replaces path with data from inside the guest (write to a
// temporary file, then rename), so the guest's inotify watchers see the
// change; a change made on the host side of hostfs is invisible to them.
func (g *Guest) WriteFile(ctx context.Context, path string, data []byte) error {
	_, err := g.Run(ctx, fmt.Sprintf("base64 -d > %s.tmp <<'EOF'\n%s\nEOF\nmv %s.tmp %s\n",
		path, base64.StdEncoding.EncodeToString(data), path, path))
	return err
}
