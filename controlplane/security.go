package controlplane

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"slices"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/berthhq/berth/controlplane/pki"
)

// tlsNetwork is a Network whose connections are mutual TLS: Raft between
// control-plane nodes, where both sides must hold server certificates.
type tlsNetwork struct {
	inner          Network
	server, client *tls.Config
}

func (t *tlsNetwork) Listen(addr string) (net.Listener, error) {
	ln, err := t.inner.Listen(addr)
	if err != nil {
		return nil, err
	}
	return tls.NewListener(ln, t.server), nil
}

func (t *tlsNetwork) Dial(ctx context.Context, addr string) (net.Conn, error) {
	c, err := t.inner.Dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	tc := tls.Client(c, t.client)
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("tls handshake with %s: %w", addr, err)
	}
	return tc, nil
}

// methodRoles says which certificate roles may call each service: only
// control-plane nodes may use the internal ClusterService; only proxies
// hold registry sessions; operators (client) and nodes forwarding on their
// behalf (server) use the AdminService. Health and reflection are open to
// any certificate of this CA.
var methodRoles = map[string][]pki.Role{
	"/berth.v1.ClusterService/":  {pki.RoleServer},
	"/berth.v1.RegistryService/": {pki.RoleProxy},
	"/berth.v1.AdminService/":    {pki.RoleClient, pki.RoleServer},
}

func rolesFor(fullMethod string) ([]pki.Role, bool) {
	for prefix, roles := range methodRoles {
		if strings.HasPrefix(fullMethod, prefix) {
			return roles, true
		}
	}
	return nil, false
}

// authorize checks the caller's certificate role for fullMethod. Without
// TLS (insecure mode) everything is allowed.
func (n *Node) authorize(ctx context.Context, fullMethod string) error {
	if n.tls == nil {
		return nil
	}
	roles, restricted := rolesFor(fullMethod)
	if !restricted {
		return nil
	}
	p, ok := peer.FromContext(ctx)
	if !ok {
		return status.Error(codes.Unauthenticated, "no peer information")
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return status.Error(codes.Unauthenticated, "not a TLS connection")
	}
	id, err := pki.PeerIdentity(info.State)
	if err != nil {
		return status.Errorf(codes.Unauthenticated, "caller certificate: %v", err)
	}
	if !slices.Contains(roles, id.Role) {
		n.metrics.denied.WithLabelValues(string(id.Role)).Inc()
		return status.Errorf(codes.PermissionDenied, "%s (role %s) may not call %s; allowed roles: %v", id, id.Role, fullMethod, roles)
	}
	return nil
}

func (n *Node) authUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := n.authorize(ctx, info.FullMethod); err != nil {
		return nil, err
	}
	if err := n.authorizeAdmin(ctx, info.FullMethod); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func (n *Node) authStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if err := n.authorize(ss.Context(), info.FullMethod); err != nil {
		return err
	}
	if err := n.authorizeAdmin(ss.Context(), info.FullMethod); err != nil {
		return err
	}
	return handler(srv, ss)
}
