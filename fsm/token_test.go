package fsm

import (
	"bytes"
	"strings"
	"testing"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

func TestAdminTokenRecords(t *testing.T) {
	s := NewState()
	tok := &berthv1.AdminToken{Id: "0123456789abcdef", Name: "alice", Hash: strings.Repeat("ab", 32), Role: "operate", CreatedUnixMs: 1}
	up := &berthv1.Command{NowUnixMs: 1, Kind: &berthv1.Command_UpsertAdminToken{UpsertAdminToken: &berthv1.UpsertAdminTokenCommand{Token: tok}}}
	if res, evs := s.Apply(1, up); res.Code != berthv1.ResultCode_RESULT_CODE_OK || len(evs) != 0 {
		t.Fatalf("upsert: %v, %d events (tokens emit none)", res, len(evs))
	}
	if got, ok := s.AdminToken(tok.Id); !ok || got.Version != 1 || got.Hash != tok.Hash {
		t.Fatalf("stored: %v", got)
	}
	for name, bad := range map[string]*berthv1.AdminToken{
		"bad hash": {Id: "x1", Hash: "nothex", Role: "read"},
		"bad role": {Id: "x2", Hash: strings.Repeat("ab", 32), Role: "root"},
		"bad id":   {Id: "not an id", Hash: strings.Repeat("ab", 32), Role: "read"},
	} {
		cmd := &berthv1.Command{Kind: &berthv1.Command_UpsertAdminToken{UpsertAdminToken: &berthv1.UpsertAdminTokenCommand{Token: bad}}}
		if res, _ := s.Apply(2, cmd); res.Code != berthv1.ResultCode_RESULT_CODE_INVALID_ARGUMENT {
			t.Errorf("%s: %v", name, res)
		}
	}
	// Snapshot and restore keep it.
	var buf bytes.Buffer
	if err := s.capture(1).writeTo(&buf); err != nil {
		t.Fatal(err)
	}
	r, _, err := readSnapshot(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := r.AdminToken(tok.Id); !ok || got.Hash != tok.Hash {
		t.Fatalf("restored: %v", got)
	}
	revoke := func(id string) *berthv1.CommandResult {
		res, _ := s.Apply(3, &berthv1.Command{Kind: &berthv1.Command_RevokeAdminToken{RevokeAdminToken: &berthv1.RevokeAdminTokenCommand{TokenId: id}}})
		return res
	}
	if res := revoke(tok.Id); res.Code != berthv1.ResultCode_RESULT_CODE_OK {
		t.Fatalf("revoke: %v", res)
	}
	if res := revoke(tok.Id); res.Code != berthv1.ResultCode_RESULT_CODE_NOT_FOUND {
		t.Fatalf("revoke twice: %v", res)
	}
	if _, ok := s.AdminToken(tok.Id); ok || len(s.AdminTokens()) != 0 {
		t.Fatal("revoked token still there")
	}
}
