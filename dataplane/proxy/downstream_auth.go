package proxy

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/berthhq/berth/controlplane/token"
)

// Downstream authentication (optional, --downstream-auth-keys): every
// request must carry "Authorization: Bearer <jwt>", a token of the
// keyring in that directory (the same kind of token agents hold, signed by
// berthctl token) whose endpoints claim covers the endpoint asked for.
// The header is the edge's credential, so it is not passed upstream.
// Verified tokens are remembered until they expire, or the keyring
// changes, so a keep-alive client pays for one signature check, not one a
// request. A peer-forwarded request was checked by the proxy the client
// reached.

// errUnauthorized: the request lacks a token that covers its endpoint
// (401); the text says which way.
var errUnauthorized = errors.New("unauthorized")

// maxCachedTokens bounds the verified-token cache; past it, it starts over.
const maxCachedTokens = 4096

// downstreamAuth checks downstream requests' bearer tokens.
type downstreamAuth struct {
	keys atomic.Pointer[token.Keyring]

	mu    sync.Mutex
	ring  *token.Keyring // the keyring the cache was verified with
	cache map[string]*token.AgentClaims
}

// authorize is nil when downstream authentication is off, else a 401
// error wrapping errUnauthorized. On success the token is removed from r.
func (p *Proxy) authorize(r *http.Request, endpoint string) error {
	if p.downAuth == nil {
		return nil
	}
	if err := p.downAuth.check(r.Header.Get("Authorization"), endpoint, time.Now()); err != nil {
		return err
	}
	r.Header.Del("Authorization")
	return nil
}

func (a *downstreamAuth) check(header, endpoint string, now time.Time) error {
	scheme, tok, ok := strings.Cut(header, " ")
	if header == "" {
		return fmt.Errorf("%w: no bearer token (send Authorization: Bearer <token>)", errUnauthorized)
	}
	tok = strings.TrimSpace(tok)
	if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" {
		return fmt.Errorf("%w: the Authorization header is not \"Bearer <token>\"", errUnauthorized)
	}
	claims, err := a.verify(tok, now)
	switch {
	case errors.Is(err, token.ErrExpired):
		return fmt.Errorf("%w: token expired", errUnauthorized)
	case err != nil:
		// Which check failed (key, signature, claims) is not told.
		return fmt.Errorf("%w: invalid token", errUnauthorized)
	case !claims.Allows(endpoint):
		return fmt.Errorf("%w: token does not cover endpoint %q", errUnauthorized, endpoint)
	}
	return nil
}

// verify checks tok against the current keyring, from the cache when it
// was checked before with that keyring and has not expired since.
func (a *downstreamAuth) verify(tok string, now time.Time) (*token.AgentClaims, error) {
	ring := a.keys.Load()
	a.mu.Lock()
	if a.ring != ring {
		a.ring, a.cache = ring, make(map[string]*token.AgentClaims)
	}
	c := a.cache[tok]
	a.mu.Unlock()
	if c != nil {
		if now.Before(c.ExpiresAt.Add(token.Leeway)) {
			return c, nil
		}
		a.mu.Lock()
		delete(a.cache, tok)
		a.mu.Unlock()
		return nil, fmt.Errorf("%w at %s", token.ErrExpired, c.ExpiresAt.UTC().Format(time.RFC3339))
	}
	c, err := ring.VerifyAgent(tok, now)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	if a.ring == ring {
		if len(a.cache) >= maxCachedTokens {
			clear(a.cache)
		}
		a.cache[tok] = c
	}
	a.mu.Unlock()
	return c, nil
}
