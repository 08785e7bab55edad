package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/berthhq/berth/controlplane/pki"
)

// tlsCmd groups the offline PKI commands: they write files and never dial a
// control plane.
func (a *app) tlsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "tls",
		Short: "Create the cluster CA and role certificates for mutual TLS (offline)",
		Long: `berthctl tls creates the files Berth's mutual TLS runs on. It works offline:
no control plane is contacted.

Every certificate names its holder's role and name in a URI SAN,
berth://<role>/<name>, and each link admits only the roles it expects:
server (control-plane nodes), proxy, client (berthctl, automation) and agent.`,
		Args: cobra.NoArgs,
	}
	ca := &cobra.Command{Use: "ca", Short: "Manage the cluster CA", Args: cobra.NoArgs}
	ca.AddCommand(a.tlsCACreateCmd())
	cert := &cobra.Command{Use: "cert", Short: "Issue role certificates", Args: cobra.NoArgs}
	cert.AddCommand(a.tlsCertCreateCmd())
	cmd.AddCommand(ca, cert)
	return cmd
}

func (a *app) tlsCACreateCmd() *cobra.Command {
	var (
		dir      string
		name     string
		validity time.Duration
	)
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Create a new CA (ca.pem, ca-key.pem) in a directory",
		Long: `Create a new self-signed CA (ECDSA P-256) as ca.pem and ca-key.pem in --dir.
Existing files are never overwritten. Keep ca-key.pem offline; components need
only ca.pem.`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if validity <= 0 {
				return fmt.Errorf("validity: must be positive, got %s", validity)
			}
			if err := pki.CreateCA(dir, name, validity); err != nil {
				return fmt.Errorf("create CA: %w", err)
			}
			certPath, keyPath := filepath.Join(dir, pki.CACertFile), filepath.Join(dir, pki.CAKeyFile)
			pair, err := tls.LoadX509KeyPair(certPath, keyPath)
			if err != nil {
				return fmt.Errorf("read back %s: %w", certPath, err)
			}
			fmt.Fprintf(a.stdout, "wrote %s and %s\n", certPath, keyPath)
			fmt.Fprintf(a.stdout, "CA %q, serial %s, valid until %s\n", pair.Leaf.Subject.CommonName,
				pair.Leaf.SerialNumber.Text(16), pair.Leaf.NotAfter.UTC().Format(time.RFC3339))
			return nil
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&dir, "dir", "", "directory to write ca.pem and ca-key.pem into (created if missing)")
	fs.StringVar(&name, "name", pki.DefaultCAName, "common name of the CA")
	fs.DurationVar(&validity, "validity", pki.DefaultCAValidity, "how long the CA is valid")
	_ = cmd.MarkFlagRequired("dir")
	return cmd
}

func (a *app) tlsCertCreateCmd() *cobra.Command {
	var (
		caDir    string
		role     string
		name     string
		hosts    []string
		out      string
		validity time.Duration
	)
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Issue a certificate for a role and name, signed by the CA",
		Long: `Issue a certificate for --role and --name signed by the CA in --ca-dir, written
as <name>.pem and <name>-key.pem in --out. The certificate carries the identity
berth://<role>/<name> plus a DNS or IP SAN for each --host the holder is
dialled by. It never outlives the CA, and existing files are never
overwritten.

Roles: ` + rolesHelp(),
		Example: `  berthctl tls cert create --ca-dir ca --role server --name cp0 --host cp0.internal,10.0.0.5 --out certs
  berthctl tls cert create --ca-dir ca --role client --name alice`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			r, err := pki.ParseRole(strings.TrimSpace(role))
			if err != nil {
				return err
			}
			if validity <= 0 {
				return fmt.Errorf("validity: must be positive, got %s", validity)
			}
			if err := pki.CreateCert(caDir, out, r, name, hosts, validity); err != nil {
				if errors.Is(err, pki.ErrNoCA) {
					return fmt.Errorf("create certificate: %w (create one with 'berthctl tls ca create --dir %s')", err, caDir)
				}
				return fmt.Errorf("create certificate: %w", err)
			}
			certPath, keyPath := pki.CertFiles(out, name)
			pair, err := tls.LoadX509KeyPair(certPath, keyPath)
			if err != nil {
				return fmt.Errorf("read back %s: %w", certPath, err)
			}
			leaf := pair.Leaf
			id, err := pki.IdentityOf(leaf)
			if err != nil {
				return fmt.Errorf("read back %s: %w", certPath, err)
			}
			sans := append([]string(nil), leaf.DNSNames...)
			for _, ip := range leaf.IPAddresses {
				sans = append(sans, ip.String())
			}
			fmt.Fprintf(a.stdout, "wrote %s and %s\n", certPath, keyPath)
			fmt.Fprintf(a.stdout, "identity %s, hosts [%s], serial %s, valid until %s\n",
				id, strings.Join(sans, " "), leaf.SerialNumber.Text(16), leaf.NotAfter.UTC().Format(time.RFC3339))
			return nil
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&caDir, "ca-dir", "", "directory holding ca.pem and ca-key.pem")
	fs.StringVar(&role, "role", "", "role of the holder: "+rolesHelp())
	fs.StringVar(&name, "name", "", "name of the holder (its node or proxy id); also names the files")
	fs.StringSliceVar(&hosts, "host", nil, "DNS name or IP the holder is dialled by; repeat or comma-separate")
	fs.StringVar(&out, "out", ".", "directory to write <name>.pem and <name>-key.pem into (created if missing)")
	fs.DurationVar(&validity, "validity", pki.DefaultCertValidity, "how long the certificate is valid (cut to the CA's expiry)")
	for _, f := range []string{"ca-dir", "role", "name"} {
		_ = cmd.MarkFlagRequired(f)
	}
	return cmd
}

func rolesHelp() string {
	roles := pki.Roles()
	s := make([]string, len(roles))
	for i, r := range roles {
		s[i] = string(r)
	}
	return strings.Join(s, ", ")
}
