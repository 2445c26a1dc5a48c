package cluster

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cgroupMounts lists the mount points of the cgroup v1 hierarchies (from
// /proc/self/mountinfo): kubelet needs its cgroupRoot in every one of them.
func cgroupMounts() ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var mounts []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		// ... mountpoint(4) ... " - " fstype source options
		for i, fl := range fields {
			if fl == "-" && i+1 < len(fields) && fields[i+1] == "cgroup" {
				mounts = append(mounts, fields[4])
			}
		}
	}
	if len(mounts) == 0 {
		return nil, errors.New("cluster: no cgroup v1 hierarchies mounted (the lab's kubelet runs with the cgroupfs driver on cgroup v1)")
	}
	return mounts, sc.Err()
}

// createCgroupRoot makes /<name> in every hierarchy, with cpuset's cpus and
// mems copied from the parent (a new cpuset cgroup starts empty and would
// accept no task).
func createCgroupRoot(name string) error {
	mounts, err := cgroupMounts()
	if err != nil {
		return err
	}
	for _, m := range mounts {
		dir := filepath.Join(m, name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("cluster: cgroup %s: %w", dir, err)
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			b, err := os.ReadFile(filepath.Join(m, f))
			if err != nil {
				continue // not the cpuset hierarchy
			}
			if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
				return fmt.Errorf("cluster: cgroup %s: copy %s: %w", dir, f, err)
			}
		}
	}
	return nil
}

// removeCgroupRoot kills every process in /<name> and below (pod containers
// live in their own network namespaces, where no namespace sweep finds
// them) and removes the cgroups, deepest first, in every hierarchy.
func removeCgroupRoot(name string) error {
	if name == "" || strings.Contains(name, "/") || name == "." || name == ".." {
		return fmt.Errorf("cluster: refusing cgroup root %q", name)
	}
	mounts, err := cgroupMounts()
	if err != nil {
		return err
	}
	var errs []error
	for _, m := range mounts {
		root := filepath.Join(m, name)
		if _, err := os.Stat(root); errors.Is(err, os.ErrNotExist) {
			continue
		}
		var dirs []string
		filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
		for _, d := range dirs {
			var last error
			for range 100 {
				killCgroup(d)
				if last = syscall.Rmdir(d); last == nil || errors.Is(last, syscall.ENOENT) {
					last = nil
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			if last != nil {
				errs = append(errs, fmt.Errorf("cluster: remove cgroup %s: %w", d, last))
			}
		}
	}
	return errors.Join(errs...)
}

func killCgroup(dir string) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return
	}
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 && pid != os.Getpid() {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}
