package proxy

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth/controlplane/token"
)

func TestDownstreamAuthCheck(t *testing.T) {
	key, err := token.GenerateKey(token.AlgEdDSA, "k1")
	if err != nil {
		t.Fatal(err)
	}
	ring, err := token.NewKeyring(key)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := token.GenerateKey(token.AlgEdDSA, "k1")
	otherRing, _ := token.NewKeyring(other)
	now := time.Now()
	sign := func(r *token.Keyring, endpoints ...string) string {
		tok, err := r.SignAgent(token.AgentClaims{Endpoints: endpoints, ExpiresAt: now.Add(time.Hour)}, now)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	a := &downstreamAuth{}
	a.keys.Store(ring)
	web := sign(ring, "web")
	tests := []struct {
		name, header, endpoint string
		at                     time.Time
		want                   string // "" for allowed
	}{
		{"good", "Bearer " + web, "web", now, ""},
		{"good again, cached", "bearer " + web, "web", now, ""},
		{"wildcard", "Bearer " + sign(ring, token.AnyEndpoint), "api", now, ""},
		{"wrong endpoint", "Bearer " + web, "api", now, `does not cover endpoint "api"`},
		{"missing", "", "web", now, "no bearer token"},
		{"basic auth", "Basic dXNlcjpwYXNz", "web", now, "not \"Bearer <token>\""},
		{"empty bearer", "Bearer ", "web", now, "not \"Bearer <token>\""},
		{"garbage", "Bearer not.a.jwt", "web", now, "invalid token"},
		{"other keyring", "Bearer " + sign(otherRing, "web"), "web", now, "invalid token"},
		{"expired, from the cache", "Bearer " + web, "web", now.Add(2 * time.Hour), "token expired"},
		{"expired, verified", "Bearer " + sign(ring, "web"), "web", now.Add(2 * time.Hour), "token expired"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := a.check(tt.header, tt.endpoint, tt.at)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if !errors.Is(err, errUnauthorized) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want errUnauthorized saying %q", err, tt.want)
			}
		})
	}
	// A retired keyring's tokens stop working at once, cached or not.
	a.keys.Store(otherRing)
	if err := a.check("Bearer "+web, "web", now); !errors.Is(err, errUnauthorized) {
		t.Fatalf("token of a retired key still accepted: %v", err)
	}
}
