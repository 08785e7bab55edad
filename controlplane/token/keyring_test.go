package token

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestGenerateKey(t *testing.T) {
	for _, alg := range append(Algs(), "eddsa", " hs256 ") {
		k, err := GenerateKey(alg, "k1")
		if err != nil {
			t.Fatalf("%s: %v", alg, err)
		}
		if _, err := prepare(k); err != nil || !k.CanSign() || k.Created.IsZero() {
			t.Fatalf("%s: %+v: %v", alg, k, err)
		}
	}
	if k, _ := GenerateKey(AlgHS256, "k1"); len(k.Secret) != 32 {
		t.Errorf("HS256 secret is %d bytes", len(k.Secret))
	}
	_, err := GenerateKey("RS256", "k1")
	if err == nil || !strings.Contains(err.Error(), "valid values are HS256, EdDSA, ES256") {
		t.Errorf("RS256: %v", err)
	}
	for _, kid := range []string{"", ".hidden", "a/b", "a b", strings.Repeat("k", 65)} {
		if _, err := GenerateKey(AlgEdDSA, kid); err == nil {
			t.Errorf("kid %q accepted", kid)
		}
	}
}

func TestNewKeyringRejects(t *testing.T) {
	ed := fixedKey(t, AlgEdDSA, "ed", 2)
	es := fixedKey(t, AlgES256, "es", 3)
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	otherEd := fixedKey(t, AlgEdDSA, "x", 9).Private.Public()
	cases := []struct {
		name string
		keys []Key
		want string
	}{
		{"no keys", nil, "no keys"},
		{"duplicate kid", []Key{fixedKey(t, AlgHS256, "a", 1), fixedKey(t, AlgHS256, "a", 2)}, "twice"},
		{"bad kid", []Key{{ID: "a/b", Alg: AlgHS256, Secret: make([]byte, 32)}}, "key ID"},
		{"unknown alg", []Key{{ID: "a", Alg: "RS256", Secret: make([]byte, 32)}}, "valid values are"},
		{"alg in the wrong case", []Key{{ID: "a", Alg: "hs256", Secret: make([]byte, 32)}}, "unknown algorithm"},
		{"short secret", []Key{{ID: "a", Alg: AlgHS256, Secret: make([]byte, 31)}}, "at least 32"},
		{"HS256 with a key pair", []Key{{ID: "a", Alg: AlgHS256, Secret: make([]byte, 32), Private: ed.Private}}, "not a key pair"},
		{"EdDSA with a secret", []Key{{ID: "a", Alg: AlgEdDSA, Secret: make([]byte, 32)}}, "not a secret"},
		{"EdDSA with an ECDSA key", []Key{{ID: "a", Alg: AlgEdDSA, Private: es.Private}}, "want an Ed25519 key"},
		{"EdDSA with an ECDSA public key", []Key{{ID: "a", Alg: AlgEdDSA, Public: es.Private.Public()}}, "want ed25519.PublicKey"},
		{"EdDSA mismatched pair", []Key{{ID: "a", Alg: AlgEdDSA, Private: ed.Private, Public: otherEd}}, "does not match"},
		{"EdDSA nothing", []Key{{ID: "a", Alg: AlgEdDSA}}, "no private or public key"},
		{"ES256 with an Ed25519 key", []Key{{ID: "a", Alg: AlgES256, Private: ed.Private}}, "want *ecdsa.PrivateKey"},
		{"ES256 on P-384", []Key{{ID: "a", Alg: AlgES256, Private: p384}}, "want P-256"},
		{"ES256 public on P-384", []Key{{ID: "a", Alg: AlgES256, Public: &p384.PublicKey}}, "want P-256"},
		{"ES256 mismatched pair", []Key{{ID: "a", Alg: AlgES256, Private: es.Private, Public: &p384.PublicKey}}, "P-256"},
		{"ES256 nothing", []Key{{ID: "a", Alg: AlgES256}}, "no private or public key"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			kr, err := NewKeyring(tc.keys...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("NewKeyring = %v, %v; want an error with %q", kr, err, tc.want)
			}
		})
	}
}

func TestKeyringCopiesSecrets(t *testing.T) {
	k := fixedKey(t, AlgHS256, "hs", 1)
	kr := newKeyring(t, k)
	tok := sign(t, kr, AgentClaims{Endpoints: []string{"web"}, ExpiresAt: t0.Add(time.Hour)}, t0)
	clear(k.Secret)
	if _, err := kr.VerifyAgent(tok, t0); err != nil {
		t.Fatalf("changing the caller's secret changed the keyring: %v", err)
	}
}

func TestWriteLoadKeyring(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	claims := AgentClaims{AgentID: "a1", Endpoints: []string{"web"}, ExpiresAt: t0.Add(time.Hour)}
	var want []string
	for i, alg := range Algs() {
		k, err := GenerateKey(alg, "k-"+alg)
		if err != nil {
			t.Fatal(err)
		}
		k.Created = t0.Add(time.Duration(i) * time.Hour)
		if err := WriteKey(dir, k); err != nil {
			t.Fatal(err)
		}
		want = append(want, k.ID)
		st, err := os.Stat(filepath.Join(dir, k.ID+".json"))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", k.ID, st.Mode())
		}
		// What the key signs, the loaded keyring verifies, and vice versa.
		loaded, err := LoadKeyring(dir)
		if err != nil {
			t.Fatal(err)
		}
		if loaded.SigningKeyID() != k.ID {
			t.Fatalf("loaded keyring signs with %q, want the newest, %q", loaded.SigningKeyID(), k.ID)
		}
		if _, err := loaded.VerifyAgent(sign(t, newKeyring(t, k), claims, t0), t0); err != nil {
			t.Fatalf("%s: %v", alg, err)
		}
		if _, err := newKeyring(t, k).VerifyAgent(sign(t, loaded, claims, t0), t0); err != nil {
			t.Fatalf("%s: %v", alg, err)
		}
		// A single file loads too.
		if _, err := LoadKeyring(filepath.Join(dir, k.ID+".json")); err != nil {
			t.Fatal(err)
		}
	}
	if st, err := os.Stat(dir); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("dir: %v, %v", st.Mode(), err)
	}
	kr, err := LoadKeyring(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(kr.KeyIDs(), ","); got != "k-ES256,k-EdDSA,k-HS256" {
		t.Errorf("KeyIDs %s (want %v)", got, want)
	}

	// Never replaces a key.
	again, _ := GenerateKey(AlgEdDSA, "k-EdDSA")
	if err := WriteKey(dir, again); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("overwrite: %v", err)
	}
	// Noise is ignored, and no temporary files are left behind.
	for name, data := range map[string]string{".k-x.json.tmp-1": "junk", "README": "junk", "k.json~": "junk", ".hidden.json": "junk"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "sub.json"), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadKeyring(dir); err != nil {
		t.Fatalf("noise in the directory: %v", err)
	}
}

func TestLoadKeyringVerifyOnly(t *testing.T) {
	dir := t.TempDir()
	for _, alg := range []string{AlgEdDSA, AlgES256} {
		k := fixedKey(t, alg, "k-"+alg, 7)
		if err := WriteKey(dir, k); err != nil {
			t.Fatal(err)
		}
		// Drop the private key: what is left only verifies.
		path := filepath.Join(dir, k.ID+".json")
		var kf map[string]any
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(raw, &kf); err != nil {
			t.Fatal(err)
		}
		if kf["private_key"] == nil || kf["public_key"] == nil {
			t.Fatalf("key file %s", raw)
		}
		delete(kf, "private_key")
		pubDir := filepath.Join(t.TempDir(), "pub")
		writeJSON(t, filepath.Join(pubDir, k.ID+".json"), kf)
		pub, err := LoadKeyring(pubDir)
		if err != nil {
			t.Fatal(err)
		}
		if pub.SigningKeyID() != "" {
			t.Fatalf("verify-only keyring signs with %q", pub.SigningKeyID())
		}
		tok := sign(t, newKeyring(t, k), AgentClaims{Endpoints: []string{"web"}, ExpiresAt: t0.Add(time.Hour)}, t0)
		if _, err := pub.VerifyAgent(tok, t0); err != nil {
			t.Fatalf("%s: %v", alg, err)
		}
		_, err = pub.SignAgent(AgentClaims{Endpoints: []string{"web"}, ExpiresAt: t0.Add(time.Hour)}, t0)
		checkSentinel(t, err, ErrNoSigningKey)
	}
}

func TestLoadKeyringOpenSSLECKey(t *testing.T) {
	priv := fixedKey(t, AlgES256, "es", 3).Private.(*ecdsa.PrivateKey)
	der, err := x509.MarshalECPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	writeJSON(t, filepath.Join(dir, "es.json"), map[string]any{
		"kid": "es", "alg": "ES256",
		"private_key": string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})),
	})
	kr, err := LoadKeyring(dir)
	if err != nil {
		t.Fatal(err)
	}
	if kr.SigningKeyID() != "es" {
		t.Fatalf("signs with %q", kr.SigningKeyID())
	}
}

func writeJSON(t *testing.T, path string, v any) {
	t.Helper()
	raw, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestLoadKeyringRejects(t *testing.T) {
	edPEM := func() string {
		der, err := x509.MarshalPKCS8PrivateKey(ed25519.NewKeyFromSeed(make([]byte, 32)))
		if err != nil {
			t.Fatal(err)
		}
		return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	}()
	secret := make([]byte, 32)
	cases := []struct {
		name  string
		files map[string]string
		want  string
	}{
		{"empty dir", map[string]string{}, "no key files"},
		{"kid does not match the name", map[string]string{"a.json": `{"kid":"b","alg":"HS256","secret":"` + b64(secret) + `"}`}, "does not match the file name"},
		{"unknown field", map[string]string{"a.json": `{"kid":"a","alg":"HS256","secert":"` + b64(secret) + `"}`}, "unknown field"},
		{"not JSON", map[string]string{"a.json": `kid: a`}, "decode"},
		{"two objects", map[string]string{"a.json": `{"kid":"a","alg":"HS256","secret":"` + b64(secret) + `"} {}`}, "after the key object"},
		{"short secret", map[string]string{"a.json": `{"kid":"a","alg":"HS256","secret":"` + b64(secret[:16]) + `"}`}, "at least 32"},
		{"no PEM", map[string]string{"a.json": `{"kid":"a","alg":"EdDSA","private_key":"nope"}`}, "no PEM block"},
		{"wrong PEM type", map[string]string{"a.json": `{"kid":"a","alg":"EdDSA","public_key":` + jsonString(edPEM) + `}`}, "want \"PUBLIC KEY\""},
		{"alg does not match the key", map[string]string{"a.json": `{"kid":"a","alg":"ES256","private_key":` + jsonString(edPEM) + `}`}, "want *ecdsa.PrivateKey"},
		{"trailing data after PEM", map[string]string{"a.json": `{"kid":"a","alg":"EdDSA","private_key":` + jsonString(edPEM+"x") + `}`}, "after the PEM block"},
		{"one bad file spoils the load", map[string]string{
			"a.json": `{"kid":"a","alg":"HS256","secret":"` + b64(secret) + `"}`,
			"b.json": `{"kid":"b","alg":"HS256"}`,
		}, "b.json"},
		{"too large", map[string]string{"a.json": `{"kid":"a","alg":"HS256","secret":"` + strings.Repeat("A", maxKeyFileSize) + `"}`}, "larger than"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, data := range tc.files {
				if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			kr, err := LoadKeyring(dir)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("LoadKeyring = %v, %v; want an error with %q", kr, err, tc.want)
			}
		})
	}
	if _, err := LoadKeyring(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("missing directory loaded")
	}
}

func b64(b []byte) string {
	raw, _ := json.Marshal(b)
	return strings.Trim(string(raw), `"`)
}

func jsonString(s string) string {
	raw, _ := json.Marshal(s)
	return string(raw)
}
