package main

import (
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

func (a *app) waitCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "wait",
		Short: "Block until SIGTERM or SIGINT, then exit 0 (uninstall DaemonSet)",
		Long: `wait does nothing until it receives SIGTERM or SIGINT, then exits 0. It keeps
the uninstall DaemonSet's pod (deploy/kubernetes/uninstall) Running and Ready
after its init container ran 'wgmesh cleanup', so that 'kubectl rollout
status' reports when every node is clean; the image has no shell or sleep.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			<-ctx.Done()
			return nil
		},
	}
}
