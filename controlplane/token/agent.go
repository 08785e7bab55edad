package token

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/berthhq/berth/fsm"
)

const (
	// Issuer is the iss claim of every agent token.
	Issuer = "berth"
	// AnyEndpoint in a token's endpoints allows every endpoint.
	AnyEndpoint = "*"
	// MaxTokenSize bounds an agent token; VerifyAgent refuses larger input
	// before decoding anything.
	MaxTokenSize = 8 << 10
	// MaxEndpoints bounds the endpoints one token names.
	MaxEndpoints = 64
	// Leeway absorbs clock skew between the signer and the verifier when
	// checking exp, nbf and iat.
	Leeway = 30 * time.Second
)

// AgentClaims is what an agent token grants.
type AgentClaims struct {
	// AgentID is the sub claim; optional.
	AgentID string
	// Endpoints the agent may register: DNS labels, or AnyEndpoint.
	Endpoints []string
	// ExpiresAt is the exp claim, whole seconds.
	ExpiresAt time.Time
	// ID is the jti claim. SignAgent picks a random one when it is empty.
	ID string
}

// agentJWT is the claim set on the wire.
type agentJWT struct {
	jwt.RegisteredClaims
	Endpoints []string `json:"endpoints"`
}

// Allows reports whether c lets the agent register endpoint: it is named,
// or c holds AnyEndpoint. A name that is not a valid endpoint never is.
func (c *AgentClaims) Allows(endpoint string) bool {
	if c == nil || fsm.ValidateEndpointName(endpoint) != nil {
		return false
	}
	for _, e := range c.Endpoints {
		if e == endpoint || e == AnyEndpoint {
			return true
		}
	}
	return false
}

// CheckEndpoints returns an error wrapping ErrEndpointNotAllowed for the
// first endpoint c does not allow.
func (c *AgentClaims) CheckEndpoints(endpoints ...string) error {
	for _, e := range endpoints {
		if !c.Allows(e) {
			return fmt.Errorf("%w: %q", ErrEndpointNotAllowed, clip(e))
		}
	}
	return nil
}

// SignAgent signs c with the keyring's signing key. iat and nbf are now; c
// must expire after now and name at least one endpoint.
func (k *Keyring) SignAgent(c AgentClaims, now time.Time) (string, error) {
	if k == nil {
		return "", ErrNoSigningKey
	}
	key, ok := k.keys[k.signer]
	if !ok {
		return "", ErrNoSigningKey
	}
	endpoints, err := validEndpoints(c.Endpoints)
	if err != nil {
		return "", err
	}
	if c.AgentID != "" {
		if err := fsm.ValidateID("agent id", c.AgentID); err != nil {
			return "", err
		}
	}
	if c.ID == "" {
		if c.ID, err = newTokenID(); err != nil {
			return "", err
		}
	} else if err := fsm.ValidateID("token id", c.ID); err != nil {
		return "", err
	}
	exp := jwt.NewNumericDate(c.ExpiresAt)
	issued := jwt.NewNumericDate(now)
	if !exp.After(issued.Time) {
		return "", fmt.Errorf("expires at %s, not after now (%s)", c.ExpiresAt.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	t := jwt.NewWithClaims(key.method, agentJWT{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    Issuer,
			Subject:   c.AgentID,
			ExpiresAt: exp,
			NotBefore: issued,
			IssuedAt:  issued,
			ID:        c.ID,
		},
		Endpoints: endpoints,
	})
	t.Header["kid"] = key.ID
	s, err := t.SignedString(key.sign)
	if err != nil {
		return "", fmt.Errorf("sign with key %q: %w", key.ID, err)
	}
	if len(s) > MaxTokenSize {
		return "", fmt.Errorf("token is %d bytes, at most %d: name fewer endpoints", len(s), MaxTokenSize)
	}
	return s, nil
}

// VerifyAgent checks an agent token and returns its claims. The kid must
// name a key in the keyring and the token's alg must be that key's (so no
// "none", and no HMAC keyed with a public key); the signature must verify;
// exp must be after now and nbf and iat not after it, each give or take
// Leeway; iss must be Issuer and the claims well formed. Every error wraps
// one of the package's sentinels. It never panics and reads at most
// MaxTokenSize bytes.
func (k *Keyring) VerifyAgent(token string, now time.Time) (*AgentClaims, error) {
	if k == nil {
		return nil, fmt.Errorf("%w: no keyring", ErrUnknownKey)
	}
	if len(token) > MaxTokenSize {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", ErrMalformed, len(token), MaxTokenSize)
	}
	// The key's error is kept apart: jwt would wrap it in its own text.
	var keyErr error
	keyFunc := func(t *jwt.Token) (any, error) {
		kid, ok := t.Header["kid"].(string)
		if !ok || kid == "" {
			keyErr = fmt.Errorf("%w: no kid in the header", ErrMalformed)
			return nil, keyErr
		}
		key, ok := k.keys[kid]
		if !ok {
			keyErr = fmt.Errorf("%w %q", ErrUnknownKey, clip(kid))
			return nil, keyErr
		}
		if alg := t.Method.Alg(); alg != key.Alg {
			keyErr = fmt.Errorf("%w: token says %s, key %q is %s", ErrBadSignature, clip(alg), kid, key.Alg)
			return nil, keyErr
		}
		return key.verify, nil
	}
	p := jwt.NewParser(
		jwt.WithValidMethods(algs),
		jwt.WithStrictDecoding(),
		jwt.WithTimeFunc(func() time.Time { return now }),
		jwt.WithLeeway(Leeway),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithIssuer(Issuer),
	)
	var claims agentJWT
	if _, err := p.ParseWithClaims(token, &claims, keyFunc); err != nil {
		if keyErr != nil {
			return nil, keyErr
		}
		return nil, verifyError(err, &claims, now)
	}
	out := &AgentClaims{
		AgentID:   claims.Subject,
		Endpoints: claims.Endpoints,
		ExpiresAt: claims.ExpiresAt.UTC(),
		ID:        claims.ID,
	}
	if err := out.validate(); err != nil {
		// %v: the fsm error inside must not make this look like bad input
		// to code that maps fsm.ErrInvalid.
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return out, nil
}

// verifyError maps a jwt error to the package's sentinels. Signature
// errors are checked first: the jwt library verifies the signature before
// the claims, so a time error means the token was genuine.
func verifyError(err error, c *agentJWT, now time.Time) error {
	at := func(d *jwt.NumericDate) string {
		if d == nil {
			return "?"
		}
		return d.UTC().Format(time.RFC3339)
	}
	nowS := now.UTC().Format(time.RFC3339)
	// jwt's text starts with its own sentinel's; ours says the same.
	detail := func(base error) string {
		return strings.TrimPrefix(err.Error(), base.Error()+": ")
	}
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		return fmt.Errorf("%w: %s", ErrMalformed, detail(jwt.ErrTokenMalformed))
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return fmt.Errorf("%w: %s", ErrBadSignature, detail(jwt.ErrTokenSignatureInvalid))
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		return fmt.Errorf("%w: %s", ErrBadSignature, detail(jwt.ErrTokenUnverifiable))
	case errors.Is(err, jwt.ErrTokenExpired):
		return fmt.Errorf("%w at %s (now %s)", ErrExpired, at(c.ExpiresAt), nowS)
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return fmt.Errorf("%w: not before %s (now %s)", ErrNotYetValid, at(c.NotBefore), nowS)
	case errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return fmt.Errorf("%w: issued at %s (now %s)", ErrNotYetValid, at(c.IssuedAt), nowS)
	default:
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
}

// validate checks the claims a verified token carries.
func (c *AgentClaims) validate() error {
	if c.ID == "" {
		return errors.New("no jti")
	}
	if err := fsm.ValidateID("jti", c.ID); err != nil {
		return err
	}
	if c.AgentID != "" {
		if err := fsm.ValidateID("sub", c.AgentID); err != nil {
			return err
		}
	}
	_, err := validEndpoints(c.Endpoints)
	return err
}

// validEndpoints checks a token's endpoint list and drops duplicates.
func validEndpoints(in []string) ([]string, error) {
	if len(in) == 0 {
		return nil, errors.New("endpoints: none given; name at least one, or \"*\" for any")
	}
	if len(in) > MaxEndpoints {
		return nil, fmt.Errorf("endpoints: %d given, at most %d", len(in), MaxEndpoints)
	}
	out := make([]string, 0, len(in))
	seen := make(map[string]bool, len(in))
	for _, e := range in {
		if e != AnyEndpoint {
			if err := fsm.ValidateEndpointName(e); err != nil {
				return nil, fmt.Errorf("endpoints: %w (or \"*\" for any)", err)
			}
		}
		if !seen[e] {
			seen[e] = true
			out = append(out, e)
		}
	}
	return out, nil
}

// newTokenID is a random jti: 128 bits, unpadded base64url.
func newTokenID() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("token id: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// clip shortens attacker-controlled text before it goes into an error.
func clip(s string) string {
	const max = 64
	if len(s) > max {
		return s[:max] + "..."
	}
	return s
}
