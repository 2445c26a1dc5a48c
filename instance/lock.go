package instance

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The instance lock is a listening Unix socket in the abstract namespace,
// "@wgmesh/instance/<interface>". Abstract sockets belong to a network
// namespace, need no file system (a hostNetwork pod and a process on the
// host see the same one without sharing /run), cannot go stale (the kernel
// releases the name when the process dies, even on SIGKILL), and tell who
// holds them: a client that connects reads the listener's pid with
// SO_PEERCRED. A lock file with flock would need a shared directory and
// name no owner.

func lockName(iface string) string { return "@wgmesh/instance/" + iface }

// startName is the lock held from the clash check until the interface
// carries its alias, so that two agents starting at the same moment check
// one after the other.
const startName = "@wgmesh/start"

// Lock is a held instance lock. Close releases it; the kernel releases it
// when the process ends.
type Lock struct {
	ln   *net.UnixListener
	done chan struct{}
}

// ErrHeld is wrapped by Acquire's error when another process holds the
// lock; the error names its pid.
var ErrHeld = errors.New("instance in use")

// Acquire takes the lock of the instance named iface in the calling
// process's network namespace. When a running agent (or `wgmesh cleanup`)
// holds it, the error wraps ErrHeld and names the holder's pid.
func Acquire(iface string) (*Lock, error) {
	l, err := listen(lockName(iface))
	if errors.Is(err, syscall.EADDRINUSE) {
		// The pid is 0 when the holder's pid namespace is not visible
		// from ours (an agent in a pod, cleanup in another).
		if pid, ok := Holder(iface); ok && pid > 0 {
			return nil, fmt.Errorf("%w: interface %s is owned by a running wgmesh agent (pid %d)", ErrHeld, iface, pid)
		}
		return nil, fmt.Errorf("%w: interface %s is owned by a running wgmesh agent", ErrHeld, iface)
	}
	if err != nil {
		return nil, fmt.Errorf("instance lock of interface %s (%s): %w", iface, lockName(iface), err)
	}
	return l, nil
}

// acquireStart takes the start lock, waiting up to wait for another
// starting agent to finish its check.
func acquireStart(ctx context.Context, wait time.Duration) (*Lock, error) {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	for {
		l, err := listen(startName)
		if err == nil {
			return l, nil
		}
		if !errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("start lock %s: %w", startName, err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("start lock %s: another wgmesh agent has been starting for %s: %w", startName, wait, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func listen(name string) (*Lock, error) {
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: name, Net: "unix"})
	if err != nil {
		return nil, err
	}
	l := &Lock{ln: ln, done: make(chan struct{})}
	// Answer (by closing) whoever asks for the holder, so the backlog
	// never fills.
	go func() {
		defer close(l.done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return l, nil
}

// Close releases the lock. Idempotent.
func (l *Lock) Close() error {
	if l == nil {
		return nil
	}
	err := l.ln.Close()
	<-l.done
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// Holder reports the pid of the process holding the lock of iface in this
// network namespace; ok is false when no one holds it.
func Holder(iface string) (pid int, ok bool) {
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: lockName(iface), Net: "unix"})
	if err != nil {
		return 0, false
	}
	defer c.Close()
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, true
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil || cerr != nil {
		return 0, true
	}
	return int(cred.Pid), true
}
