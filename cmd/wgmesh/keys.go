package main

import (
	"errors"
	"fmt"
	"io/fs"

	"github.com/spf13/cobra"

	"github.com/wgmesh/wgmesh/mesh/agent"
)

func (a *app) keygenCommand() *cobra.Command {
	var keyFile string
	cmd := &cobra.Command{
		Use:   "keygen",
		Short: "Create the private key file if absent (mode 0600) and print the public key",
		Long: `keygen creates the private key file if it does not exist yet (mode 0600, the
format of 'wg genkey') and prints the public key. An existing key is kept, so
keygen is safe to run on every boot; use rotate-key to replace it.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			priv, created, err := agent.NewKeyStore(keyFile).LoadOrCreate()
			if err != nil {
				return err
			}
			if created {
				a.log.Info("created private key", "file", keyFile)
			}
			fmt.Fprintln(a.out, priv.PublicKey())
			return nil
		},
	}
	cmd.Flags().StringVar(&keyFile, "key-file", agent.DefaultKeyFile, "private key file")
	return cmd
}

func (a *app) pubkeyCommand() *cobra.Command {
	var keyFile string
	cmd := &cobra.Command{
		Use:   "pubkey",
		Short: "Print the public key of the private key file",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			priv, err := agent.NewKeyStore(keyFile).Load()
			if errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("%w (create it with 'wgmesh keygen --key-file %s')", err, keyFile)
			}
			if err != nil {
				return err
			}
			fmt.Fprintln(a.out, priv.PublicKey())
			return nil
		},
	}
	cmd.Flags().StringVar(&keyFile, "key-file", agent.DefaultKeyFile, "private key file")
	return cmd
}

func (a *app) rotateKeyCommand() *cobra.Command {
	var keyFile string
	cmd := &cobra.Command{
		Use:   "rotate-key",
		Short: "Replace the private key; a running agent picks up the new key without restart",
		Long: `rotate-key writes a new private key to the key file (atomically, mode 0600)
and prints the new public key. A running agent notices the change, reconfigures
its interface and publishes the new public key; peers follow on their next
reconcile. Traffic to this node is dropped, never sent in plaintext, until the
peers have the new key.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			priv, err := agent.NewKeyStore(keyFile).Rotate()
			if err != nil {
				return err
			}
			a.log.Info("rotated private key", "file", keyFile)
			fmt.Fprintln(a.out, priv.PublicKey())
			return nil
		},
	}
	cmd.Flags().StringVar(&keyFile, "key-file", agent.DefaultKeyFile, "private key file")
	return cmd
}
