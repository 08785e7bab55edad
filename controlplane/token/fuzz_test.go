package token

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"
)

// fuzzKeyring has one fixed key per algorithm, so the committed seed
// tokens (testdata/fuzz/FuzzVerifyAgent) stay valid at t0.
func fuzzKeyring(t testing.TB) *Keyring {
	return newKeyring(t, fixedKey(t, AlgHS256, "hs", 1), fixedKey(t, AlgEdDSA, "ed", 2), fixedKey(t, AlgES256, "es", 3))
}

// fuzzClaims are the claims of the seed tokens; a fixed jti keeps the
// signed part of each token the same from run to run.
var fuzzClaims = []AgentClaims{
	{AgentID: "agent-1", Endpoints: []string{"web", "api"}, ExpiresAt: t0.Add(time.Hour), ID: "seed-1"},
	{Endpoints: []string{AnyEndpoint}, ExpiresAt: t0.Add(time.Minute), ID: "seed-2"},
}

// signedParts signs every fuzzClaims with every key of kr and returns the
// "header.payload" parts: the only ones a verified token may carry.
func signedParts(t testing.TB, kr *Keyring) (tokens []string, parts map[string]bool) {
	parts = make(map[string]bool)
	for _, kid := range kr.KeyIDs() {
		one := newKeyring(t, kr.keys[kid].Key)
		for _, c := range fuzzClaims {
			tok := sign(t, one, c, t0)
			tokens = append(tokens, tok)
			parts[tok[:strings.LastIndexByte(tok, '.')]] = true
		}
	}
	return tokens, parts
}

// FuzzVerifyAgent: no input panics; an input verifies only if its signed
// part is one the keyring signed (an ECDSA signature may be re-spelled,
// so the signature itself is not compared); every error wraps exactly one
// sentinel.
func FuzzVerifyAgent(f *testing.F) {
	kr := fuzzKeyring(f)
	tokens, parts := signedParts(f, kr)
	for _, tok := range tokens {
		f.Add(tok)
	}
	f.Add("")
	f.Add("..")
	f.Add("eyJhbGciOiJub25lIiwia2lkIjoiaHMifQ.eyJpc3MiOiJiZXJ0aCJ9.")
	f.Fuzz(func(t *testing.T, tok string) {
		c, err := kr.VerifyAgent(tok, t0)
		if err != nil {
			if c != nil {
				t.Fatalf("claims %+v with error %v", c, err)
			}
			n := 0
			for _, s := range sentinels {
				if errors.Is(err, s) {
					n++
				}
			}
			if n != 1 {
				t.Fatalf("error %q wraps %d sentinels", err, n)
			}
			return
		}
		if i := strings.LastIndexByte(tok, '.'); i < 0 || !parts[tok[:i]] {
			t.Fatalf("verified a token the keyring never signed: %q", tok)
		}
		if len(c.Endpoints) == 0 || c.ID == "" || c.ExpiresAt.IsZero() {
			t.Fatalf("claims %+v", c)
		}
	})
}

func TestFuzzSeedsVerify(t *testing.T) {
	kr := fuzzKeyring(t)
	tokens, _ := signedParts(t, kr)
	for _, tok := range tokens {
		if _, err := kr.VerifyAgent(tok, t0); err != nil {
			t.Fatalf("seed %q: %v", tok, err)
		}
	}
}

// fuzzAdmin is a fixed admin token and its record.
func fuzzAdmin() (string, AdminRecord) {
	secret := make([]byte, 32)
	for i := range secret {
		secret[i] = byte(7 * i)
	}
	tok := "bat_00112233445566ff_" + base64.RawURLEncoding.EncodeToString(secret)
	sum := sha256.Sum256([]byte(tok))
	return tok, AdminRecord{ID: "00112233445566ff", Name: "fuzz", Hash: hex.EncodeToString(sum[:]), Role: RoleRead}
}

// FuzzParseAdminToken: no input panics; a parsed id is the token's; only
// the one real token checks out against its record; errors never echo the
// secret.
func FuzzParseAdminToken(f *testing.F) {
	tok, rec := fuzzAdmin()
	f.Add(tok)
	f.Add("")
	f.Add("bat_")
	f.Add("bat_00112233445566ff_")
	f.Add(strings.ToUpper(tok))
	f.Add("bat_0123456789abcdef_" + strings.Repeat("_", 42) + "w")
	f.Fuzz(func(t *testing.T, in string) {
		id, err := ParseAdminToken(in)
		if err == nil {
			if len(in) != AdminTokenLen || !strings.HasPrefix(in, AdminTokenPrefix+id+"_") || len(id) != 16 {
				t.Fatalf("ParseAdminToken(%q) = %q", in, id)
			}
		} else {
			if id != "" || !errors.Is(err, ErrMalformed) {
				t.Fatalf("ParseAdminToken(%q) = %q, %v", in, id, err)
			}
			if len(in) == AdminTokenLen && strings.Contains(err.Error(), in[21:]) {
				t.Fatalf("error %q shows the secret", err)
			}
		}
		if err := CheckAdminToken(in, rec, t0); (err == nil) != (in == tok) {
			t.Fatalf("CheckAdminToken(%q) = %v", in, err)
		}
	})
}
