package token

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// sentinels are the package's errors; every failure wraps exactly one.
var sentinels = []error{
	ErrMalformed, ErrUnknownKey, ErrBadSignature, ErrExpired, ErrNotYetValid,
	ErrEndpointNotAllowed, ErrNoSigningKey, ErrBadSecret,
}

// checkSentinel fails unless err wraps want and no other sentinel.
func checkSentinel(t testing.TB, err, want error) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %v", want)
	}
	var got []error
	for _, s := range sentinels {
		if errors.Is(err, s) {
			got = append(got, s)
		}
	}
	if len(got) != 1 || got[0] != want {
		t.Fatalf("error %q wraps %v, want only %v", err, got, want)
	}
}

// fixedKey is a deterministic key for alg: tests and fuzz seeds stay valid
// from run to run.
func fixedKey(t testing.TB, alg, kid string, seed byte) Key {
	t.Helper()
	b := make([]byte, 32)
	for i := range b {
		b[i] = seed + byte(i)
	}
	k := Key{ID: kid, Alg: alg}
	switch alg {
	case AlgHS256:
		k.Secret = b
	case AlgEdDSA:
		k.Private = ed25519.NewKeyFromSeed(b)
	case AlgES256:
		priv, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), b)
		if err != nil {
			t.Fatal(err)
		}
		k.Private = priv
	}
	return k
}

func newKeyring(t testing.TB, keys ...Key) *Keyring {
	t.Helper()
	kr, err := NewKeyring(keys...)
	if err != nil {
		t.Fatal(err)
	}
	return kr
}

func sign(t testing.TB, kr *Keyring, c AgentClaims, now time.Time) string {
	t.Helper()
	tok, err := kr.SignAgent(c, now)
	if err != nil {
		t.Fatalf("SignAgent: %v", err)
	}
	return tok
}

// forge signs arbitrary claims and header with jwt directly, bypassing
// SignAgent's checks; key is whatever the method takes.
func forge(t testing.TB, m jwt.SigningMethod, kid string, claims jwt.Claims, key any) string {
	t.Helper()
	tok := jwt.NewWithClaims(m, claims)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatalf("forge: %v", err)
	}
	return s
}

// goodClaims are what SignAgent would write at t0, valid for an hour.
func goodClaims() agentJWT {
	return agentJWT{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    Issuer,
			Subject:   "agent-1",
			ExpiresAt: jwt.NewNumericDate(t0.Add(time.Hour)),
			NotBefore: jwt.NewNumericDate(t0),
			IssuedAt:  jwt.NewNumericDate(t0),
			ID:        "jti-1",
		},
		Endpoints: []string{"web"},
	}
}

func TestSignVerifyRoundTrip(t *testing.T) {
	for _, alg := range Algs() {
		t.Run(alg, func(t *testing.T) {
			k, err := GenerateKey(alg, "k-"+alg)
			if err != nil {
				t.Fatal(err)
			}
			kr := newKeyring(t, k)
			in := AgentClaims{
				AgentID:   "agent-1",
				Endpoints: []string{"web", "api", "web"},
				ExpiresAt: t0.Add(time.Hour + 500*time.Millisecond),
			}
			tok := sign(t, kr, in, t0)
			parsed, _, err := jwt.NewParser().ParseUnverified(tok, &agentJWT{})
			if err != nil {
				t.Fatal(err)
			}
			if parsed.Header["alg"] != alg || parsed.Header["kid"] != "k-"+alg {
				t.Fatalf("header %v", parsed.Header)
			}
			for _, now := range []time.Time{t0, t0.Add(59 * time.Minute), t0.Add(-Leeway)} {
				got, err := kr.VerifyAgent(tok, now)
				if err != nil {
					t.Fatalf("VerifyAgent at %s: %v", now, err)
				}
				if got.AgentID != "agent-1" || !slices.Equal(got.Endpoints, []string{"web", "api"}) ||
					!got.ExpiresAt.Equal(t0.Add(time.Hour)) || len(got.ID) != 22 {
					t.Fatalf("claims %+v", got)
				}
			}
			// A caller-chosen jti is kept.
			in.ID = "my-token.1"
			if got, err := kr.VerifyAgent(sign(t, kr, in, t0), t0); err != nil || got.ID != "my-token.1" {
				t.Fatalf("jti: %+v, %v", got, err)
			}
		})
	}
}

func TestVerifyAgentRejects(t *testing.T) {
	hs := fixedKey(t, AlgHS256, "hs", 1)
	ed := fixedKey(t, AlgEdDSA, "ed", 2)
	es := fixedKey(t, AlgES256, "es", 3)
	kr := newKeyring(t, hs, ed, es)
	edPub := ed.Private.Public().(ed25519.PublicKey)
	edPubDER, err := x509.MarshalPKIXPublicKey(edPub)
	if err != nil {
		t.Fatal(err)
	}
	edPubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: edPubDER})
	esPub := es.Private.(*ecdsa.PrivateKey).PublicKey
	esPubBytes, err := esPub.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	hour := AgentClaims{Endpoints: []string{"web"}, ExpiresAt: t0.Add(time.Hour)}

	// Same kids, other key material.
	impostors := newKeyring(t, fixedKey(t, AlgHS256, "hs", 101), fixedKey(t, AlgEdDSA, "ed", 102), fixedKey(t, AlgES256, "es", 103))

	tampered := func(tok string) string {
		parts := strings.Split(tok, ".")
		c := goodClaims()
		c.Endpoints = []string{"*"}
		body := strings.Split(forge(t, jwt.SigningMethodHS256, "hs", c, hs.Secret), ".")[1]
		return parts[0] + "." + body + "." + parts[2]
	}

	cases := []struct {
		name string
		tok  func() string
		now  time.Time
		want error
	}{
		{"expired", func() string { return sign(t, kr, hour, t0) }, t0.Add(time.Hour + Leeway + time.Second), ErrExpired},
		{"expired exactly past leeway", func() string { return sign(t, kr, hour, t0) }, t0.Add(time.Hour + Leeway), ErrExpired},
		{"not yet valid", func() string {
			return sign(t, kr, AgentClaims{Endpoints: []string{"web"}, ExpiresAt: t0.Add(3 * time.Hour)}, t0.Add(time.Hour))
		}, t0, ErrNotYetValid},
		{"issued in the future, no nbf", func() string {
			c := goodClaims()
			c.NotBefore = nil
			c.IssuedAt = jwt.NewNumericDate(t0.Add(10 * time.Minute))
			return forge(t, jwt.SigningMethodEdDSA, "ed", c, ed.Private)
		}, t0, ErrNotYetValid},
		{"HS256 other key same kid", func() string { return sign(t, newKeyring(t, impostors.keys["hs"].Key), hour, t0) }, t0, ErrBadSignature},
		{"EdDSA other key same kid", func() string { return sign(t, newKeyring(t, impostors.keys["ed"].Key), hour, t0) }, t0, ErrBadSignature},
		{"ES256 other key same kid", func() string { return sign(t, newKeyring(t, impostors.keys["es"].Key), hour, t0) }, t0, ErrBadSignature},
		{"unknown kid", func() string { return sign(t, newKeyring(t, fixedKey(t, AlgEdDSA, "other", 2)), hour, t0) }, t0, ErrUnknownKey},
		{"no kid", func() string { return forge(t, jwt.SigningMethodEdDSA, "", goodClaims(), ed.Private) }, t0, ErrMalformed},
		{"kid not a string", func() string {
			tok := jwt.NewWithClaims(jwt.SigningMethodHS256, goodClaims())
			tok.Header["kid"] = 7
			s, err := tok.SignedString(hs.Secret)
			if err != nil {
				t.Fatal(err)
			}
			return s
		}, t0, ErrMalformed},
		{"HS256 keyed with the Ed25519 public key", func() string { return forge(t, jwt.SigningMethodHS256, "ed", goodClaims(), []byte(edPub)) }, t0, ErrBadSignature},
		{"HS256 keyed with the Ed25519 public key PEM", func() string { return forge(t, jwt.SigningMethodHS256, "ed", goodClaims(), edPubPEM) }, t0, ErrBadSignature},
		{"HS256 keyed with the P-256 public key", func() string { return forge(t, jwt.SigningMethodHS256, "es", goodClaims(), esPubBytes) }, t0, ErrBadSignature},
		{"alg none", func() string {
			return forge(t, jwt.SigningMethodNone, "ed", goodClaims(), jwt.UnsafeAllowNoneSignatureType)
		}, t0, ErrBadSignature},
		{"alg none with an HS256 kid", func() string {
			return forge(t, jwt.SigningMethodNone, "hs", goodClaims(), jwt.UnsafeAllowNoneSignatureType)
		}, t0, ErrBadSignature},
		{"alg none hand made", func() string {
			enc := base64.RawURLEncoding.EncodeToString
			return enc([]byte(`{"alg":"none","kid":"hs","typ":"JWT"}`)) + "." +
				enc([]byte(`{"iss":"berth","exp":1900000000,"jti":"x","endpoints":["*"]}`)) + "."
		}, t0, ErrBadSignature},
		{"alg of another registered family", func() string {
			priv, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			return forge(t, jwt.SigningMethodES384, "es", goodClaims(), priv)
		}, t0, ErrBadSignature},
		{"EdDSA token naming the ES256 key", func() string { return forge(t, jwt.SigningMethodEdDSA, "es", goodClaims(), ed.Private) }, t0, ErrBadSignature},
		{"unregistered alg", func() string {
			enc := base64.RawURLEncoding.EncodeToString
			return enc([]byte(`{"alg":"XX999","kid":"hs"}`)) + "." + enc([]byte(`{}`)) + ".AAAA"
		}, t0, ErrBadSignature},
		{"tampered claims", func() string { return tampered(sign(t, newKeyring(t, ed), hour, t0)) }, t0, ErrBadSignature},
		{"expired and forged reports the signature", func() string { return sign(t, newKeyring(t, impostors.keys["ed"].Key), hour, t0) }, t0.Add(48 * time.Hour), ErrBadSignature},
		{"wrong issuer", func() string {
			c := goodClaims()
			c.Issuer = "someone-else"
			return forge(t, jwt.SigningMethodEdDSA, "ed", c, ed.Private)
		}, t0, ErrMalformed},
		{"no exp", func() string {
			c := goodClaims()
			c.ExpiresAt = nil
			return forge(t, jwt.SigningMethodEdDSA, "ed", c, ed.Private)
		}, t0, ErrMalformed},
		{"no jti", func() string {
			c := goodClaims()
			c.ID = ""
			return forge(t, jwt.SigningMethodEdDSA, "ed", c, ed.Private)
		}, t0, ErrMalformed},
		{"no endpoints", func() string {
			c := goodClaims()
			c.Endpoints = nil
			return forge(t, jwt.SigningMethodEdDSA, "ed", c, ed.Private)
		}, t0, ErrMalformed},
		{"endpoint not a DNS label", func() string {
			c := goodClaims()
			c.Endpoints = []string{"web", "Not_A_Label"}
			return forge(t, jwt.SigningMethodEdDSA, "ed", c, ed.Private)
		}, t0, ErrMalformed},
		{"bad sub", func() string {
			c := goodClaims()
			c.Subject = "agent 1"
			return forge(t, jwt.SigningMethodEdDSA, "ed", c, ed.Private)
		}, t0, ErrMalformed},
		{"endpoints of the wrong type", func() string {
			return forge(t, jwt.SigningMethodEdDSA, "ed", jwt.MapClaims{"iss": Issuer, "exp": t0.Add(time.Hour).Unix(), "jti": "x", "endpoints": "web"}, ed.Private)
		}, t0, ErrMalformed},
		{"too large", func() string { return sign(t, kr, hour, t0) + strings.Repeat("A", MaxTokenSize) }, t0, ErrMalformed},
		{"empty", func() string { return "" }, t0, ErrMalformed},
		{"two segments", func() string { return "a.b" }, t0, ErrMalformed},
		{"four segments", func() string { return sign(t, kr, hour, t0) + ".x" }, t0, ErrMalformed},
		{"not base64", func() string { return "!!.??.**" }, t0, ErrMalformed},
		{"header not JSON", func() string { return "bm90IGpzb24.e30.AAAA" }, t0, ErrMalformed},
		{"padded signature", func() string { return sign(t, newKeyring(t, hs), hour, t0) + "=" }, t0, ErrMalformed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := kr.VerifyAgent(tc.tok(), tc.now)
			if got != nil {
				t.Fatalf("verified: %+v", got)
			}
			checkSentinel(t, err, tc.want)
		})
	}
}

func TestVerifyAgentLeeway(t *testing.T) {
	kr := newKeyring(t, fixedKey(t, AlgEdDSA, "ed", 2))
	tok := sign(t, kr, AgentClaims{Endpoints: []string{"web"}, ExpiresAt: t0.Add(time.Hour)}, t0)
	for _, now := range []time.Time{t0.Add(-Leeway), t0.Add(time.Hour + Leeway - time.Second)} {
		if _, err := kr.VerifyAgent(tok, now); err != nil {
			t.Errorf("at %s: %v", now, err)
		}
	}
	_, err := kr.VerifyAgent(tok, t0.Add(-Leeway-time.Second))
	checkSentinel(t, err, ErrNotYetValid)
}

func TestRotation(t *testing.T) {
	for _, alg := range Algs() {
		t.Run(alg, func(t *testing.T) {
			old := fixedKey(t, alg, "old", 1)
			old.Created = t0
			next := fixedKey(t, alg, "new", 50)
			next.Created = t0.Add(24 * time.Hour)
			claims := AgentClaims{Endpoints: []string{"web"}, ExpiresAt: t0.Add(72 * time.Hour)}

			tokOld := sign(t, newKeyring(t, old), claims, t0)
			for _, both := range []*Keyring{newKeyring(t, old, next), newKeyring(t, next, old)} {
				if both.SigningKeyID() != "new" {
					t.Fatalf("signs with %q, want the newest", both.SigningKeyID())
				}
				if _, err := both.VerifyAgent(tokOld, t0.Add(25*time.Hour)); err != nil {
					t.Fatalf("old token during rotation: %v", err)
				}
				tokNew := sign(t, both, claims, t0.Add(25*time.Hour))
				if _, err := newKeyring(t, next).VerifyAgent(tokNew, t0.Add(26*time.Hour)); err != nil {
					t.Fatalf("new token: %v", err)
				}
			}
			_, err := newKeyring(t, next).VerifyAgent(tokOld, t0.Add(25*time.Hour))
			checkSentinel(t, err, ErrUnknownKey)
		})
	}
}

func TestNewKeyringSigningKey(t *testing.T) {
	a, b := fixedKey(t, AlgHS256, "a", 1), fixedKey(t, AlgHS256, "b", 2)
	if got := newKeyring(t, a, b).SigningKeyID(); got != "b" {
		t.Errorf("equal times: signs with %q, want the last given", got)
	}
	if got := newKeyring(t, b, a).SigningKeyID(); got != "a" {
		t.Errorf("equal times: signs with %q, want the last given", got)
	}
	a.Created = t0.Add(time.Hour)
	if got := newKeyring(t, a, b).SigningKeyID(); got != "a" {
		t.Errorf("signs with %q, want the newest", got)
	}
	// A newer key that only verifies does not take over signing.
	pubOnly := fixedKey(t, AlgEdDSA, "c", 3)
	pubOnly = Key{ID: "c", Alg: AlgEdDSA, Public: pubOnly.Private.Public(), Created: t0.Add(48 * time.Hour)}
	kr := newKeyring(t, a, pubOnly)
	if got := kr.SigningKeyID(); got != "a" {
		t.Errorf("signs with %q, want a", got)
	}
	if got := kr.KeyIDs(); !slices.Equal(got, []string{"a", "c"}) {
		t.Errorf("KeyIDs %v", got)
	}
	_, err := newKeyring(t, pubOnly).SignAgent(AgentClaims{Endpoints: []string{"web"}, ExpiresAt: t0.Add(time.Hour)}, t0)
	checkSentinel(t, err, ErrNoSigningKey)
}

func TestSignAgentRejects(t *testing.T) {
	kr := newKeyring(t, fixedKey(t, AlgEdDSA, "ed", 2))
	exp := t0.Add(time.Hour)
	many := make([]string, MaxEndpoints+1)
	for i := range many {
		many[i] = "e" + strings.Repeat("x", i%50) + string(rune('a'+i%26))
	}
	cases := []struct {
		name string
		c    AgentClaims
		want string
	}{
		{"no endpoints", AgentClaims{ExpiresAt: exp}, "none given"},
		{"upper case endpoint", AgentClaims{Endpoints: []string{"Web"}, ExpiresAt: exp}, `"Web"`},
		{"underscore", AgentClaims{Endpoints: []string{"a_b"}, ExpiresAt: exp}, "allowed: a-z 0-9 -"},
		{"empty endpoint", AgentClaims{Endpoints: []string{"web", ""}, ExpiresAt: exp}, "empty"},
		{"leading dash", AgentClaims{Endpoints: []string{"-web"}, ExpiresAt: exp}, "'-'"},
		{"too long", AgentClaims{Endpoints: []string{strings.Repeat("a", 64)}, ExpiresAt: exp}, "at most 63"},
		{"too many", AgentClaims{Endpoints: many, ExpiresAt: exp}, "at most 64"},
		{"bad agent id", AgentClaims{AgentID: "agent 1", Endpoints: []string{"web"}, ExpiresAt: exp}, "agent id"},
		{"bad token id", AgentClaims{ID: "a/b", Endpoints: []string{"web"}, ExpiresAt: exp}, "token id"},
		{"expires now", AgentClaims{Endpoints: []string{"web"}, ExpiresAt: t0}, "not after now"},
		{"expires within the second", AgentClaims{Endpoints: []string{"web"}, ExpiresAt: t0.Add(999 * time.Millisecond)}, "not after now"},
		{"no expiry", AgentClaims{Endpoints: []string{"web"}}, "not after now"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tok, err := kr.SignAgent(tc.c, t0)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("SignAgent = %q, %v; want an error with %q", tok, err, tc.want)
			}
		})
	}
	// The largest token SignAgent can be asked for still verifies.
	long := make([]string, MaxEndpoints)
	for i := range long {
		long[i] = strings.Repeat(string(rune('a'+i%26)), 60) + string(rune('a'+i/26))
	}
	tok := sign(t, kr, AgentClaims{AgentID: strings.Repeat("a", 128), ID: strings.Repeat("j", 128), Endpoints: long, ExpiresAt: exp}, t0)
	if _, err := kr.VerifyAgent(tok, t0); err != nil {
		t.Fatalf("largest token (%d bytes): %v", len(tok), err)
	}
}

func TestAllows(t *testing.T) {
	named := &AgentClaims{Endpoints: []string{"web", "api"}}
	anyEP := &AgentClaims{Endpoints: []string{AnyEndpoint}}
	cases := []struct {
		c        *AgentClaims
		endpoint string
		want     bool
	}{
		{named, "web", true},
		{named, "api", true},
		{named, "db", false},
		{named, "WEB", false},
		{named, "we", false},
		{named, "", false},
		{named, "*", false},
		{anyEP, "web", true},
		{anyEP, "anything-at-all", true},
		{anyEP, "", false},
		{anyEP, "*", false},
		{anyEP, "not_a_label", false},
		{&AgentClaims{}, "web", false},
		{nil, "web", false},
	}
	for _, tc := range cases {
		if got := tc.c.Allows(tc.endpoint); got != tc.want {
			var eps []string
			if tc.c != nil {
				eps = tc.c.Endpoints
			}
			t.Errorf("%v.Allows(%q) = %v, want %v", eps, tc.endpoint, got, tc.want)
		}
	}
	if err := named.CheckEndpoints("web", "api"); err != nil {
		t.Errorf("CheckEndpoints: %v", err)
	}
	err := named.CheckEndpoints("web", "db")
	checkSentinel(t, err, ErrEndpointNotAllowed)
	if !strings.Contains(err.Error(), `"db"`) {
		t.Errorf("error %q does not name the endpoint", err)
	}
}
