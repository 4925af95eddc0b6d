package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/daolinet/daoli/mapper"
	"github.com/spf13/cobra"
)

func newCACmd(a *app) *cobra.Command {
	cmd := groupCmd("ca", "Make the registry's certificate authority and the certificates it signs")
	cmd.Long = `Make a certificate authority for a registry, and the certificates its
mappers serve with and its clients present. A certificate names its holder
in a daoli://ROLE/NAME URI: a mapper (serving TLS for --host), an operator
(may do everything), a server (an agent and the hooks on it: may write only
its own server's registration, liveness and endpoints) or a reader (may
list and watch). See docs/security.md.`
	cmd.AddCommand(newCAInitCmd(a), newCAIssueCmd(a))
	return cmd
}

func newCAInitCmd(a *app) *cobra.Command {
	var name string
	var days int
	cmd := &cobra.Command{
		Use:     "init DIR",
		Short:   "Make a CA in DIR: ca.pem, and ca-key.pem (readable by its owner only)",
		Example: "  daoli ca init /etc/daoli/pki",
		Args:    exactArgs("DIR"),
		RunE: func(_ *cobra.Command, args []string) error {
			if days < 1 {
				return fmt.Errorf("--days %d: want 1 or more", days)
			}
			cert, key, err := mapper.NewCA(name, time.Duration(days)*24*time.Hour)
			if err != nil {
				return err
			}
			dir := args[0]
			if err := writeNew(filepath.Join(dir, "ca-key.pem"), key, 0o600); err != nil {
				return err
			}
			if err := writeNew(filepath.Join(dir, "ca.pem"), cert, 0o644); err != nil {
				os.Remove(filepath.Join(dir, "ca-key.pem"))
				return err
			}
			fmt.Fprintf(a.stdout, "%s\n%s\n", filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem"))
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "daoli registry CA", "the CA's common name")
	cmd.Flags().IntVar(&days, "days", 3650, "how long the CA is valid")
	return cmd
}

func newCAIssueCmd(a *app) *cobra.Command {
	var role, name, out string
	var hosts []string
	var days int
	cmd := &cobra.Command{
		Use:   "issue DIR --role mapper|operator|server|reader --name NAME [--host IP|DNS...]",
		Short: "Sign a certificate with the CA in DIR: ROLE-NAME.pem and ROLE-NAME-key.pem",
		Long: `Sign a certificate with the CA in DIR (daoli ca init). A server's
--name must be its name in the registry (the agent's --name): the
certificate lets it write only that server's registration, liveness and
endpoints. A mapper's certificate needs every --host clients dial it by.`,
		Example: `  daoli ca issue /etc/daoli/pki --role mapper --name m1 --host 10.0.0.11 --host mapper-1.example.net
  daoli ca issue /etc/daoli/pki --role server --name node1
  daoli ca issue /etc/daoli/pki --role operator --name alice`,
		Args: exactArgs("DIR"),
		RunE: func(_ *cobra.Command, args []string) error {
			if days < 1 {
				return fmt.Errorf("--days %d: want 1 or more", days)
			}
			dir := args[0]
			caCert, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
			if err != nil {
				return fmt.Errorf("read the CA: %w (daoli ca init %s makes one)", err, dir)
			}
			caKey, err := os.ReadFile(filepath.Join(dir, "ca-key.pem"))
			if err != nil {
				return fmt.Errorf("read the CA's key: %w", err)
			}
			cert, key, err := mapper.Issue(caCert, caKey, mapper.Identity{Role: mapper.Role(role), Name: name}, hosts, time.Duration(days)*24*time.Hour)
			if err != nil {
				return fmt.Errorf("issue: %w", err)
			}
			if out == "" {
				out = dir
			}
			base := filepath.Join(out, role+"-"+name)
			if err := writeNew(base+"-key.pem", key, 0o600); err != nil {
				return err
			}
			if err := writeNew(base+".pem", cert, 0o644); err != nil {
				os.Remove(base + "-key.pem")
				return err
			}
			fmt.Fprintf(a.stdout, "%s\n%s\n", base+".pem", base+"-key.pem")
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&role, "role", "", "mapper, operator, server or reader (required)")
	fl.StringVar(&name, "name", "", "who holds it: a server's registry name, a mapper's or a person's name (required)")
	fl.StringArrayVar(&hosts, "host", nil, "an IP address or DNS name a mapper is dialled by; repeat for more (mappers only)")
	fl.IntVar(&days, "days", 365, "how long the certificate is valid")
	fl.StringVar(&out, "out", "", "directory to write to (default: DIR)")
	cmd.MarkFlagRequired("role")
	cmd.MarkFlagRequired("name")
	return cmd
}

// writeNew writes a file that must not exist yet, creating its directory.
func writeNew(path string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%s exists; remove it first to replace it", path)
	}
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	return f.Close()
}
