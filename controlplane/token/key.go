package token

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Signing algorithms a Key may use.
const (
	AlgHS256 = "HS256" // HMAC-SHA256 with a shared secret
	AlgEdDSA = "EdDSA" // Ed25519
	AlgES256 = "ES256" // ECDSA on P-256 with SHA-256
)

// algs lists the supported algorithms; also the only ones VerifyAgent
// lets the jwt library consider.
var algs = []string{AlgHS256, AlgEdDSA, AlgES256}

// Algs lists the supported algorithms.
func Algs() []string { return slices.Clone(algs) }

const (
	// MinSecretLen is the shortest HS256 secret accepted: RFC 7518 wants a
	// key at least as long as the hash.
	MinSecretLen = 32
	// MaxKeyIDLen bounds a kid.
	MaxKeyIDLen = 64
)

// methods maps each algorithm to its jwt signing method.
var methods = map[string]jwt.SigningMethod{
	AlgHS256: jwt.SigningMethodHS256,
	AlgEdDSA: jwt.SigningMethodEdDSA,
	AlgES256: jwt.SigningMethodES256,
}

// ParseAlg returns the algorithm named by s, in any case ("eddsa" is
// EdDSA), or an error listing the valid ones.
func ParseAlg(s string) (string, error) {
	for _, a := range algs {
		if strings.EqualFold(strings.TrimSpace(s), a) {
			return a, nil
		}
	}
	return "", fmt.Errorf("unknown algorithm %q: valid values are %s", s, strings.Join(algs, ", "))
}

// Key is one signing or verification key.
//
//   - HS256: Secret (MinSecretLen bytes or more) signs and verifies.
//   - EdDSA: Private (an ed25519.PrivateKey, or any crypto.Signer whose
//     public key is Ed25519) signs; Public (ed25519.PublicKey) verifies and
//     may be left out when Private is set.
//   - ES256: Private (*ecdsa.PrivateKey on P-256) signs; Public
//     (*ecdsa.PublicKey) verifies and may be left out when Private is set.
//
// A key without Secret or Private only verifies.
type Key struct {
	ID      string // kid: 1..MaxKeyIDLen of A-Z a-z 0-9 . _ -, not starting with '.'
	Alg     string // AlgHS256, AlgEdDSA or AlgES256
	Secret  []byte
	Private crypto.Signer
	Public  crypto.PublicKey
	// Created orders keys: the keyring signs with the newest key that can
	// sign. GenerateKey sets it; keys with equal times keep argument order.
	Created time.Time
}

// GenerateKey makes a new key for alg (HS256: 32 random bytes; EdDSA:
// Ed25519; ES256: P-256) named kid, created now.
func GenerateKey(alg, kid string) (Key, error) {
	alg, err := ParseAlg(alg)
	if err != nil {
		return Key{}, err
	}
	if err := validKeyID(kid); err != nil {
		return Key{}, err
	}
	k := Key{ID: kid, Alg: alg, Created: time.Now().UTC()}
	switch alg {
	case AlgHS256:
		k.Secret = make([]byte, MinSecretLen)
		_, err = rand.Read(k.Secret)
	case AlgEdDSA:
		var priv ed25519.PrivateKey
		k.Public, priv, err = ed25519.GenerateKey(rand.Reader)
		k.Private = priv
	case AlgES256:
		var priv *ecdsa.PrivateKey
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err == nil {
			k.Private, k.Public = priv, &priv.PublicKey
		}
	}
	if err != nil {
		return Key{}, fmt.Errorf("generate %s key: %w", alg, err)
	}
	return k, nil
}

// CanSign reports whether k holds private material.
func (k Key) CanSign() bool {
	return len(k.Secret) > 0 || k.Private != nil
}

// checked is a Key that passed prepare, with what signing and verifying
// hand to the jwt library.
type checked struct {
	Key
	method jwt.SigningMethod
	sign   any // nil for verify-only keys
	verify any
}

// prepare validates k and fills in its public key. Byte-slice keys are
// copied, so a caller reusing its buffers cannot change a keyring.
func prepare(k Key) (checked, error) {
	if err := validKeyID(k.ID); err != nil {
		return checked{}, err
	}
	c := checked{Key: k, method: methods[k.Alg]}
	if c.method == nil {
		return checked{}, fmt.Errorf("key %q: unknown algorithm %q: valid values are %s", k.ID, k.Alg, strings.Join(algs, ", "))
	}
	var err error
	switch k.Alg {
	case AlgHS256:
		err = c.prepareHMAC()
	case AlgEdDSA:
		err = c.prepareEd25519()
	case AlgES256:
		err = c.prepareECDSA()
	}
	if err != nil {
		return checked{}, fmt.Errorf("key %q (%s): %w", k.ID, k.Alg, err)
	}
	return c, nil
}

func (c *checked) prepareHMAC() error {
	if c.Private != nil || c.Public != nil {
		return fmt.Errorf("takes a secret, not a key pair")
	}
	if len(c.Secret) < MinSecretLen {
		return fmt.Errorf("secret is %d bytes, at least %d", len(c.Secret), MinSecretLen)
	}
	c.Secret = bytes.Clone(c.Secret)
	c.sign, c.verify = c.Secret, c.Secret
	return nil
}

func (c *checked) prepareEd25519() error {
	if c.Secret != nil {
		return fmt.Errorf("takes a key pair, not a secret")
	}
	var pub ed25519.PublicKey
	if c.Private != nil {
		p, ok := c.Private.Public().(ed25519.PublicKey)
		if !ok || len(p) != ed25519.PublicKeySize {
			return fmt.Errorf("private key is %T, want an Ed25519 key", c.Private)
		}
		pub = p
		if priv, ok := c.Private.(ed25519.PrivateKey); ok {
			if len(priv) != ed25519.PrivateKeySize {
				return fmt.Errorf("private key is %d bytes, want %d", len(priv), ed25519.PrivateKeySize)
			}
			c.Private = ed25519.PrivateKey(bytes.Clone(priv))
		}
		c.sign = c.Private
	}
	if c.Public != nil {
		p, ok := c.Public.(ed25519.PublicKey)
		if !ok || len(p) != ed25519.PublicKeySize {
			return fmt.Errorf("public key is %T, want ed25519.PublicKey", c.Public)
		}
		if pub != nil && !pub.Equal(p) {
			return fmt.Errorf("public key does not match the private key")
		}
		pub = p
	}
	if pub == nil {
		return fmt.Errorf("no private or public key")
	}
	pub = bytes.Clone(pub)
	c.Public, c.verify = pub, pub
	return nil
}

func (c *checked) prepareECDSA() error {
	if c.Secret != nil {
		return fmt.Errorf("takes a key pair, not a secret")
	}
	var pub *ecdsa.PublicKey
	if c.Private != nil {
		priv, ok := c.Private.(*ecdsa.PrivateKey)
		if !ok || priv == nil {
			return fmt.Errorf("private key is %T, want *ecdsa.PrivateKey", c.Private)
		}
		if priv.Curve != elliptic.P256() {
			return fmt.Errorf("private key is on %s, want P-256", priv.Curve.Params().Name)
		}
		pub = &priv.PublicKey
		c.sign = priv
	}
	if c.Public != nil {
		p, ok := c.Public.(*ecdsa.PublicKey)
		if !ok || p == nil {
			return fmt.Errorf("public key is %T, want *ecdsa.PublicKey", c.Public)
		}
		if p.Curve != elliptic.P256() {
			return fmt.Errorf("public key is on %s, want P-256", p.Curve.Params().Name)
		}
		if pub != nil && !pub.Equal(p) {
			return fmt.Errorf("public key does not match the private key")
		}
		pub = p
	}
	if pub == nil {
		return fmt.Errorf("no private or public key")
	}
	c.Public, c.verify = pub, pub
	return nil
}

// validKeyID checks a kid. It becomes a file name, hence the narrow set.
func validKeyID(kid string) error {
	switch {
	case kid == "":
		return fmt.Errorf("empty key ID")
	case len(kid) > MaxKeyIDLen:
		return fmt.Errorf("key ID is %d characters, at most %d", len(kid), MaxKeyIDLen)
	case kid[0] == '.':
		return fmt.Errorf("key ID %q starts with '.'", kid)
	}
	for i := 0; i < len(kid); i++ {
		c := kid[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("key ID %q has %q at %d; allowed: A-Z a-z 0-9 . _ -", kid, c, i)
		}
	}
	return nil
}
