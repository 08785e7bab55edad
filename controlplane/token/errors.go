package token

import "errors"

// Sentinel errors. Every error VerifyAgent, CheckAdminToken and
// ParseAdminToken return wraps exactly one of them; match with errors.Is.
// Callers should answer all of them alike (unauthenticated, or permission
// denied for ErrEndpointNotAllowed) and log the detail, not send it back.
var (
	// ErrMalformed means the token is not one this package produces: bad
	// encoding, too large, missing or ill-formed claims, wrong issuer.
	ErrMalformed = errors.New("malformed token")
	// ErrUnknownKey means the token names a kid that is not in the keyring
	// (never issued here, or retired by rotation).
	ErrUnknownKey = errors.New("unknown key")
	// ErrBadSignature means the signature does not verify with the key the
	// kid names, or the token's algorithm is not that key's.
	ErrBadSignature = errors.New("bad signature")
	// ErrExpired means the token's exp (or an admin record's expiry) has
	// passed.
	ErrExpired = errors.New("token expired")
	// ErrNotYetValid means the token's nbf or iat is still in the future.
	ErrNotYetValid = errors.New("token not yet valid")
	// ErrEndpointNotAllowed means a valid token does not name the endpoint
	// the agent asked for.
	ErrEndpointNotAllowed = errors.New("endpoint not allowed by token")
	// ErrNoSigningKey means the keyring holds only verification keys.
	ErrNoSigningKey = errors.New("no signing key in keyring")
	// ErrBadSecret means an admin token does not match its record.
	ErrBadSecret = errors.New("admin token does not match")
)
