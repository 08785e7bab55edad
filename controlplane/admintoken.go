package controlplane

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/berthhq/berth/controlplane/client"
	"github.com/berthhq/berth/controlplane/pki"
	"github.com/berthhq/berth/controlplane/token"
	"github.com/berthhq/berth/fsm"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// adminRoles maps each AdminService method's full name to the role it
// declares in admin.proto (option admin_role). A method that declares none
// is an error here, and a call to a method missing from the map is refused.
func adminRoles() (map[string]token.AdminRole, error) {
	methods := berthv1.File_berth_v1_admin_proto.Services().ByName("AdminService").Methods()
	roles := make(map[string]token.AdminRole, methods.Len())
	for i := range methods.Len() {
		m := methods.Get(i)
		var role token.AdminRole
		switch proto.GetExtension(m.Options(), berthv1.E_AdminRole).(berthv1.AdminRole) {
		case berthv1.AdminRole_ADMIN_ROLE_READ:
			role = token.RoleRead
		case berthv1.AdminRole_ADMIN_ROLE_OPERATE:
			role = token.RoleOperate
		default:
			return nil, fmt.Errorf("AdminService.%s declares no admin_role in admin.proto", m.Name())
		}
		roles[adminServicePrefix+string(m.Name())] = role
	}
	return roles, nil
}

const adminServicePrefix = "/berth.v1.AdminService/"

// loadBootstrapToken reads the operate token from file that is always
// accepted, so the first real tokens can be created; "" when unset.
func loadBootstrapToken(path string) (string, error) {
	if path == "" {
		return "", nil
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("admin bootstrap token: %w", err)
	}
	tok := strings.TrimSpace(string(raw))
	if _, err := token.ParseAdminToken(tok); err != nil {
		return "", fmt.Errorf("admin bootstrap token in %s: %w", path, err)
	}
	return tok, nil
}

// authorizeAdmin checks the caller's admin token for an AdminService call
// when admin auth is on (default deny): read for reads, operate for
// changes. A control-plane node forwarding a call it already authorized
// (server certificate) passes, unless it relays someone else's token
// (client.OnBehalfKey).
func (n *Node) authorizeAdmin(ctx context.Context, fullMethod string) error {
	if !n.cfg.AdminAuth || !strings.HasPrefix(fullMethod, adminServicePrefix) {
		return nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	if p, ok := peer.FromContext(ctx); ok && len(md.Get(client.OnBehalfKey)) == 0 {
		if info, ok := p.AuthInfo.(credentials.TLSInfo); ok {
			if id, err := pki.PeerIdentity(info.State); err == nil && id.Role == pki.RoleServer {
				return nil
			}
		}
	}
	need, ok := n.adminRoles[fullMethod]
	if !ok {
		return status.Errorf(codes.PermissionDenied, "%s declares no admin role", fullMethod)
	}
	auth := md.Get("authorization")
	if len(auth) != 1 || !strings.HasPrefix(auth[0], "Bearer ") {
		return status.Error(codes.Unauthenticated, "admin auth is on: send an admin token as 'authorization: Bearer <token>'")
	}
	tok := strings.TrimPrefix(auth[0], "Bearer ")
	role, err := n.adminRole(ctx, tok)
	var unverified *unverifiedError
	if errors.As(err, &unverified) {
		n.metrics.denied.WithLabelValues("unverified").Inc()
		return status.Errorf(codes.Unavailable, "admin token: %v", err)
	}
	if err != nil {
		n.metrics.denied.WithLabelValues("token").Inc()
		return status.Errorf(codes.Unauthenticated, "admin token: %v", err)
	}
	if !role.Allows(need) {
		n.metrics.denied.WithLabelValues(string(role)).Inc()
		return status.Errorf(codes.PermissionDenied, "a %s token may not call %s; it needs %s", role, fullMethod, need)
	}
	return nil
}

// unverifiedError: the token's record could not be read consistently (no
// quorum reachable), so the token is neither accepted nor called bad.
type unverifiedError struct{ err error }

func (e *unverifiedError) Error() string {
	return "cannot check it against the registry now (the bootstrap token still works): " + e.err.Error()
}
func (e *unverifiedError) Unwrap() error { return e.err }

// adminRole verifies tok against the bootstrap token or its record in the
// registry. The record is read linearizably (read index, leadership
// verified with a quorum): once a revocation is acknowledged, no node
// accepts the token, not a lagging follower nor a deposed leader. Without
// a quorum only the bootstrap token works, as a break-glass credential.
func (n *Node) adminRole(ctx context.Context, tok string) (token.AdminRole, error) {
	if n.bootstrapToken != "" && len(tok) == len(n.bootstrapToken) && hashToken(tok) == hashToken(n.bootstrapToken) {
		return token.RoleOperate, nil
	}
	id, err := token.ParseAdminToken(tok)
	if err != nil {
		return "", err
	}
	var rec *berthv1.AdminToken
	ctx, cancel := context.WithTimeout(ctx, n.cfg.ApplyLimit.Timeout)
	defer cancel()
	if _, err := n.Read(ctx, berthv1.Consistency_CONSISTENCY_LINEARIZABLE, func(s *fsm.State) { rec, _ = s.AdminToken(id) }); err != nil {
		return "", &unverifiedError{err}
	}
	if rec == nil {
		return "", fmt.Errorf("%w: no such token", token.ErrBadSecret)
	}
	r := token.AdminRecord{ID: rec.Id, Name: rec.Name, Hash: rec.Hash, Role: token.AdminRole(rec.Role), CreatedUnixMs: rec.CreatedUnixMs, ExpiresUnixMs: rec.ExpiresUnixMs}
	if err := token.CheckAdminToken(tok, r, n.clock.Now()); err != nil {
		return "", err
	}
	return r.Role, nil
}

func hashToken(tok string) string {
	sum := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(sum[:])
}

func (a *adminServer) CreateAdminToken(ctx context.Context, req *berthv1.CreateAdminTokenRequest) (*berthv1.CreateAdminTokenResponse, error) {
	role, err := token.ParseAdminRole(req.Role)
	if err != nil {
		return nil, toStatus(fmt.Errorf("%w: role: %w", ErrInvalidArgument, err))
	}
	if req.TtlSeconds < 0 {
		return nil, toStatus(fmt.Errorf("%w: ttl_seconds is negative", ErrInvalidArgument))
	}
	tok, rec, err := token.NewAdminToken(req.Name, role, time.Duration(req.TtlSeconds)*time.Second, a.n.clock.Now())
	if err != nil {
		return nil, toStatus(fmt.Errorf("%w: %w", ErrInvalidArgument, err))
	}
	stored := &berthv1.AdminToken{Id: rec.ID, Name: rec.Name, Hash: rec.Hash, Role: string(rec.Role), CreatedUnixMs: rec.CreatedUnixMs, ExpiresUnixMs: rec.ExpiresUnixMs}
	res, err := a.n.Apply(ctx, &berthv1.Command{Kind: &berthv1.Command_UpsertAdminToken{UpsertAdminToken: &berthv1.UpsertAdminTokenCommand{Token: stored}}})
	if err != nil {
		return nil, toStatus(err)
	}
	shown := &berthv1.AdminToken{Id: stored.Id, Name: stored.Name, Role: stored.Role, CreatedUnixMs: stored.CreatedUnixMs, ExpiresUnixMs: stored.ExpiresUnixMs, Version: res.Index}
	return &berthv1.CreateAdminTokenResponse{Token: tok, Record: shown}, nil
}

func (a *adminServer) RevokeAdminToken(ctx context.Context, req *berthv1.RevokeAdminTokenRequest) (*berthv1.RevokeAdminTokenResponse, error) {
	if _, err := a.n.Apply(ctx, &berthv1.Command{Kind: &berthv1.Command_RevokeAdminToken{RevokeAdminToken: &berthv1.RevokeAdminTokenCommand{TokenId: req.TokenId}}}); err != nil {
		return nil, toStatus(err)
	}
	return &berthv1.RevokeAdminTokenResponse{}, nil
}

func (a *adminServer) ListAdminTokens(ctx context.Context, req *berthv1.ListAdminTokensRequest) (*berthv1.ListAdminTokensResponse, error) {
	resp := &berthv1.ListAdminTokensResponse{}
	idx, err := a.n.Read(ctx, req.Consistency, func(s *fsm.State) {
		for _, t := range s.AdminTokens() {
			resp.Tokens = append(resp.Tokens, &berthv1.AdminToken{Id: t.Id, Name: t.Name, Role: t.Role,
				CreatedUnixMs: t.CreatedUnixMs, ExpiresUnixMs: t.ExpiresUnixMs, Version: t.Version})
		}
	})
	if err != nil {
		return nil, toStatus(err)
	}
	resp.Header = a.header(idx)
	return resp, nil
}
