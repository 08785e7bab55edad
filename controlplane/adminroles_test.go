package controlplane

import (
	"testing"

	"github.com/berthhq/berth/controlplane/token"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// TestEveryAdminMethodDeclaresItsRole: the roles come from admin.proto;
// a method added without one must not slip through as a read.
func TestEveryAdminMethodDeclaresItsRole(t *testing.T) {
	roles, err := adminRoles()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range berthv1.AdminService_ServiceDesc.Methods {
		if _, ok := roles[adminServicePrefix+m.MethodName]; !ok {
			t.Errorf("%s has no admin role", m.MethodName)
		}
	}
	for _, s := range berthv1.AdminService_ServiceDesc.Streams {
		if _, ok := roles[adminServicePrefix+s.StreamName]; !ok {
			t.Errorf("%s has no admin role", s.StreamName)
		}
	}
	want := map[string]token.AdminRole{
		"ClusterStatus": token.RoleRead, "ListConnections": token.RoleRead, "Watch": token.RoleRead,
		"DrainProxy": token.RoleOperate, "Rebalance": token.RoleOperate, "ListAdminTokens": token.RoleOperate,
		"SaveSnapshot": token.RoleOperate, "RestoreSnapshot": token.RoleOperate, "TransferLeadership": token.RoleOperate,
	}
	for name, role := range want {
		if got := roles[adminServicePrefix+name]; got != role {
			t.Errorf("%s needs %q, want %q", name, got, role)
		}
	}
	if n := len(berthv1.AdminService_ServiceDesc.Methods) + len(berthv1.AdminService_ServiceDesc.Streams); len(roles) != n {
		t.Errorf("%d roles for %d methods", len(roles), n)
	}
}
