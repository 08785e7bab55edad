package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	"github.com/berthhq/berth/controlplane/token"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// tokenCmd groups the offline token tools: they read and write key files
// and never dial the control plane, so --addr does not matter to them.
func (a *app) tokenCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Make signing keys and agent tokens (offline)",
		Long: `token makes the keys that sign agent tokens, and agent tokens themselves.
Both work offline from a key directory; no control plane is contacted.

A key directory holds one <kid>.json file per key. Tokens are signed with
the newest key and verified with any, so to rotate: keygen a new key, copy
the directory to every control-plane node, and delete the old key file once
the tokens it signed have expired.`,
	}
	cmd.AddCommand(a.tokenKeygenCmd(), a.tokenCreateCmd(), a.tokenAdminCmd())
	return cmd
}

// tokenAdminCmd manages operators' admin tokens (read or operate role),
// which the control plane keeps hashed in its registry.
func (a *app) tokenAdminCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "admin",
		Short: "Create, list and revoke admin tokens (roles read and operate)",
	}
	var name, role string
	var ttl time.Duration
	create := &cobra.Command{
		Use:   "create --name NAME --role read|operate [--ttl 720h]",
		Short: "Create an admin token (needs an operate token); the token is shown once",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := token.ParseAdminRole(role); err != nil {
				return err
			}
			if ttl < 0 {
				return errors.New("--ttl: must not be negative (0: never expires)")
			}
			ctx, cancel := a.callContext(cmd.Context())
			defer cancel()
			return a.admin(func(admin berthv1.AdminServiceClient) error {
				resp, err := admin.CreateAdminToken(ctx, &berthv1.CreateAdminTokenRequest{Name: name, Role: role, TtlSeconds: int64(ttl / time.Second)})
				if err != nil {
					return callFailed("create admin token", err)
				}
				return a.printer.print(resp, func(tw *tabwriter.Writer) {
					fmt.Fprintf(tw, "%s\n", resp.GetToken())
				})
			})
		},
	}
	create.Flags().StringVar(&name, "name", "", "who or what holds the token")
	create.Flags().StringVar(&role, "role", "read", "read (status, watch) or operate (read plus changes)")
	create.Flags().DurationVar(&ttl, "ttl", 0, "lifetime (0: never expires)")
	revoke := &cobra.Command{
		Use:   "revoke <token-id>",
		Short: "Revoke an admin token by its id",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := a.callContext(cmd.Context())
			defer cancel()
			return a.admin(func(admin berthv1.AdminServiceClient) error {
				if _, err := admin.RevokeAdminToken(ctx, &berthv1.RevokeAdminTokenRequest{TokenId: args[0]}); err != nil {
					return callFailed("revoke admin token", err)
				}
				fmt.Fprintf(a.stdout, "revoked %s\n", args[0])
				return nil
			})
		},
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "List admin tokens (ids, names, roles; never secrets)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := a.callContext(cmd.Context())
			defer cancel()
			return a.admin(func(admin berthv1.AdminServiceClient) error {
				resp, err := admin.ListAdminTokens(ctx, &berthv1.ListAdminTokensRequest{})
				if err != nil {
					return callFailed("list admin tokens", err)
				}
				return a.printer.print(resp, func(tw *tabwriter.Writer) {
					row(tw, "ID", "NAME", "ROLE", "EXPIRES")
					for _, t := range resp.GetTokens() {
						exp := "never"
						if t.GetExpiresUnixMs() > 0 {
							exp = time.UnixMilli(t.GetExpiresUnixMs()).UTC().Format(time.RFC3339)
						}
						row(tw, t.GetId(), t.GetName(), t.GetRole(), exp)
					}
				})
			})
		},
	}
	bootstrap := &cobra.Command{
		Use:   "bootstrap",
		Short: "Print a new operate token for berthd --admin-bootstrap-token-file (offline)",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			tok, _, err := token.NewAdminToken("bootstrap", token.RoleOperate, 0, time.Now())
			if err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, tok)
			return nil
		},
	}
	cmd.AddCommand(create, revoke, list, bootstrap)
	return cmd
}

func (a *app) tokenKeygenCmd() *cobra.Command {
	var dir, alg, kid string
	cmd := &cobra.Command{
		Use:   "keygen --dir DIR --kid KID [--alg EdDSA]",
		Short: "Write a new signing key into a key directory",
		Example: `  berthctl token keygen --dir /etc/berth/keys --kid 2026-03
  berthctl token keygen --dir /etc/berth/keys --kid k2 --alg ES256`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			k, err := token.GenerateKey(alg, kid)
			if err != nil {
				return err
			}
			if err := token.WriteKey(dir, k); err != nil {
				return err
			}
			path := filepath.Join(dir, k.ID+token.KeyFileExt)
			return a.printValue(keyOutput{KID: k.ID, Alg: k.Alg, Path: path, Created: k.Created},
				func() string { return fmt.Sprintf("wrote %s key %q to %s", k.Alg, k.ID, path) })
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&dir, "dir", "", "key directory (created if missing)")
	fs.StringVar(&alg, "alg", token.AlgEdDSA, "algorithm: "+strings.Join(token.Algs(), ", "))
	fs.StringVar(&kid, "kid", "", "key ID, unique in the directory (A-Z a-z 0-9 . _ -)")
	_ = cmd.MarkFlagRequired("dir")
	_ = cmd.MarkFlagRequired("kid")
	return cmd
}

func (a *app) tokenCreateCmd() *cobra.Command {
	var (
		keys      string
		endpoints []string
		ttl       time.Duration
		agentID   string
		id        string
	)
	cmd := &cobra.Command{
		Use:   "create --keys DIR --endpoint NAME[,NAME...] [--ttl 24h] [--agent-id ID]",
		Short: "Print an agent token signed with the newest key in a key directory",
		Example: `  berthctl token create --keys /etc/berth/keys --endpoint web,api --ttl 24h
  berthctl token create --keys /etc/berth/keys --endpoint '*' --agent-id edge-1`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if ttl <= 0 {
				return fmt.Errorf("--ttl: must be positive, got %s", ttl)
			}
			kr, err := token.LoadKeyring(keys)
			if err != nil {
				return err
			}
			now := a.now()
			tok, err := kr.SignAgent(token.AgentClaims{
				AgentID:   agentID,
				Endpoints: endpoints,
				ExpiresAt: now.Add(ttl),
				ID:        id,
			}, now)
			if err != nil {
				return fmt.Errorf("create token: %w", err)
			}
			// Read back what was signed: the output shows the claims as a
			// verifier will see them.
			c, err := kr.VerifyAgent(tok, now)
			if err != nil {
				return fmt.Errorf("create token: the new token does not verify: %w", err)
			}
			return a.printValue(tokenOutput{
				Token: tok, ID: c.ID, KID: kr.SigningKeyID(), AgentID: c.AgentID,
				Endpoints: c.Endpoints, ExpiresAt: c.ExpiresAt,
			}, func() string { return tok })
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&keys, "keys", "", "key directory (or one key file) written by 'token keygen'")
	fs.StringSliceVar(&endpoints, "endpoint", nil,
		`endpoints the agent may register (DNS labels), repeat or comma-separate; "*" for any`)
	fs.DurationVar(&ttl, "ttl", 24*time.Hour, "how long the token is valid")
	fs.StringVar(&agentID, "agent-id", "", "agent ID the token is for (sub claim; optional)")
	fs.StringVar(&id, "id", "", "token ID (jti claim); random when empty")
	_ = cmd.MarkFlagRequired("keys")
	_ = cmd.MarkFlagRequired("endpoint")
	return cmd
}

// keyOutput and tokenOutput are what -o json and -o yaml print.
type keyOutput struct {
	KID     string    `json:"kid" yaml:"kid"`
	Alg     string    `json:"alg" yaml:"alg"`
	Path    string    `json:"path" yaml:"path"`
	Created time.Time `json:"created" yaml:"created"`
}

type tokenOutput struct {
	Token     string    `json:"token" yaml:"token"`
	ID        string    `json:"id" yaml:"id"`
	KID       string    `json:"kid" yaml:"kid"`
	AgentID   string    `json:"agent_id" yaml:"agent_id"`
	Endpoints []string  `json:"endpoints" yaml:"endpoints"`
	ExpiresAt time.Time `json:"expires_at" yaml:"expires_at"`
}

// printValue writes v as JSON or YAML, or the line table returns for the
// table format. These results are not protos, so the proto printer does
// not apply.
func (a *app) printValue(v any, table func() string) error {
	var out []byte
	var err error
	switch a.printer.format {
	case formatJSON:
		if out, err = json.MarshalIndent(v, "", "  "); err == nil {
			out = append(out, '\n')
		}
	case formatYAML:
		out, err = yaml.Marshal(v)
	default:
		out = []byte(table() + "\n")
	}
	if err != nil {
		return fmt.Errorf("encode output: %w", err)
	}
	_, err = a.stdout.Write(out)
	return err
}
