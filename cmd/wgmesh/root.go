package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"
)

// Exit codes. Scripts and probes rely on them, so they never change meaning.
const (
	// exitOK: the command did what was asked; verify found the cluster
	// fully encrypted.
	exitOK = 0
	// exitFailure: the command failed at run time, or verify found nodes
	// whose traffic is not encrypted.
	exitFailure = 1
	// exitUsage: bad command line (unknown flag, invalid flag value, missing
	// required flag). Nothing was changed.
	exitUsage = 2
)

// usageError marks an error as a command-line mistake (exitUsage).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

// exitCodeError carries an exit code other than exitFailure whose message
// has already been printed (verify's report).
type exitCodeError struct {
	code int
	err  error
}

func (e exitCodeError) Error() string { return e.err.Error() }
func (e exitCodeError) Unwrap() error { return e.err }

// streams are the command's standard files, so tests can run commands in
// process.
type streams struct {
	in       io.Reader
	out, err io.Writer
}

// globalFlags apply to every command.
type globalFlags struct {
	logFormat string
	logLevel  string
}

// app is the state shared by the commands of one invocation.
type app struct {
	streams
	global globalFlags
	log    *slog.Logger
	// getenv reads the environment (os.Getenv; tests substitute it).
	getenv func(string) string
	// inCluster reports whether the in-cluster configuration is usable.
	inCluster func() bool
}

// run executes the command line args and returns the process exit code.
func run(ctx context.Context, args []string, in io.Reader, out, errOut io.Writer) int {
	a := &app{streams: streams{in: in, out: out, err: errOut}, getenv: os.Getenv, inCluster: inClusterEnv}
	return a.execute(ctx, args)
}

// execute runs args with a's streams and environment.
func (a *app) execute(ctx context.Context, args []string) int {
	errOut := a.err
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetIn(a.in)
	root.SetOut(a.out)
	root.SetErr(errOut)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	var ec exitCodeError
	if errors.As(err, &ec) {
		return ec.code
	}
	fmt.Fprintf(errOut, "wgmesh: %v\n", err)
	var ue usageError
	if errors.As(err, &ue) || isCobraUsageError(err) {
		fmt.Fprintln(errOut, "Run 'wgmesh --help' or 'wgmesh <command> --help' for usage.")
		return exitUsage
	}
	return exitFailure
}

// isCobraUsageError recognises the errors cobra returns for bad flags and
// arguments, which it does not type.
func isCobraUsageError(err error) bool {
	var fe flagError
	return errors.As(err, &fe) || strings.HasPrefix(err.Error(), "unknown command")
}

// flagError wraps errors from cobra's flag parsing (SetFlagErrorFunc).
type flagError struct{ err error }

func (e flagError) Error() string { return e.err.Error() }
func (e flagError) Unwrap() error { return e.err }

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "wgmesh",
		Short: "WireGuard mesh for Kubernetes nodes and bare hosts",
		Long: `wgmesh encrypts traffic between Kubernetes nodes (or bare hosts) with WireGuard.
Every node runs one agent ('wgmesh agent'); the other commands manage keys,
show the local interface, verify the whole cluster and uninstall.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usagef("unknown command %q", args[0])
			}
			// No command is a usage error, as for kubectl: the help goes
			// to standard error and the exit status is 2.
			cmd.SetOut(a.err)
			if err := cmd.Help(); err != nil {
				return err
			}
			return exitCodeError{exitUsage, errors.New("no command given")}
		},
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(a.err, a.global.logFormat, a.global.logLevel)
			if err != nil {
				return err
			}
			a.log = log
			routeKlog(log)
			return nil
		},
	}
	ver, rev := buildVersion()
	root.Version = ver
	root.SetVersionTemplate(fmt.Sprintf("wgmesh {{.Version}} (commit %s)\n", rev))
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return flagError{err} })
	root.CompletionOptions.DisableDefaultCmd = true
	pf := root.PersistentFlags()
	pf.StringVar(&a.global.logFormat, "log-format", "text", "log format: text or json")
	pf.StringVar(&a.global.logLevel, "log-level", "info", "log level: debug, info, warn or error")

	root.AddCommand(
		a.agentCommand(),
		a.keygenCommand(),
		a.pubkeyCommand(),
		a.rotateKeyCommand(),
		a.statusCommand(),
		a.verifyCommand(),
		a.graphCommand(),
		a.cleanupCommand(),
		a.waitCommand(),
		a.versionCommand(),
	)
	for _, c := range root.Commands() {
		c.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return flagError{err} })
	}
	return root
}

// noArgs rejects positional arguments as a usage error.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef("%s takes no arguments, got %q", cmd.CommandPath(), args)
	}
	return nil
}
