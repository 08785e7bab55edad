package token

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// AdminRole is what an admin token may do.
type AdminRole string

// Admin roles. The zero value and any other string allow nothing.
const (
	// RoleRead may read status and watch events.
	RoleRead AdminRole = "read"
	// RoleOperate may do all RoleRead may, and cordon, drain, rebalance,
	// change membership and manage tokens.
	RoleOperate AdminRole = "operate"
)

// ParseAdminRole returns the role named by s, in any case, or an error
// listing the valid ones.
func ParseAdminRole(s string) (AdminRole, error) {
	for _, r := range []AdminRole{RoleRead, RoleOperate} {
		if strings.EqualFold(strings.TrimSpace(s), string(r)) {
			return r, nil
		}
	}
	return "", fmt.Errorf("unknown role %q: valid values are %s, %s", s, RoleRead, RoleOperate)
}

// Allows reports whether r covers need: operate covers read. An unknown
// role, or an unknown need, is denied.
func (r AdminRole) Allows(need AdminRole) bool {
	switch r {
	case RoleOperate:
		return need == RoleRead || need == RoleOperate
	case RoleRead:
		return need == RoleRead
	default:
		return false
	}
}

// Admin token layout: "bat_" + 16 hex digits + "_" + 43 base64url
// characters (32 bytes, unpadded). The id has no '_', so the first '_'
// after the prefix ends it even though the secret may hold '_'.
const (
	AdminTokenPrefix  = "bat_"
	adminIDBytes      = 8
	adminSecretBytes  = 32
	adminIDLen        = 2 * adminIDBytes
	adminSecretLen    = (adminSecretBytes*8 + 5) / 6
	AdminTokenLen     = len(AdminTokenPrefix) + adminIDLen + 1 + adminSecretLen
	maxAdminNameBytes = 128
)

// AdminRecord is what the server stores for an admin token: never the
// token, only the hex SHA-256 of all of it.
type AdminRecord struct {
	ID   string // the <id> part of the token, for lookup
	Name string // for people: who or what holds the token
	Hash string // lowercase hex SHA-256 of the whole token
	Role AdminRole
	// CreatedUnixMs and ExpiresUnixMs are Unix milliseconds; an
	// ExpiresUnixMs of 0 never expires.
	CreatedUnixMs, ExpiresUnixMs int64
}

// NewAdminToken makes an admin token named name with role, valid for ttl
// from now (0: no expiry). The token is shown once to its holder; only rec
// is kept.
func NewAdminToken(name string, role AdminRole, ttl time.Duration, now time.Time) (token string, rec AdminRecord, err error) {
	if err := validAdminName(name); err != nil {
		return "", AdminRecord{}, err
	}
	if role != RoleRead && role != RoleOperate {
		return "", AdminRecord{}, fmt.Errorf("unknown role %q: valid values are %s, %s", role, RoleRead, RoleOperate)
	}
	if ttl < 0 {
		return "", AdminRecord{}, fmt.Errorf("ttl %s is negative; use 0 for no expiry", ttl)
	}
	var raw [adminIDBytes + adminSecretBytes]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", AdminRecord{}, fmt.Errorf("admin token: %w", err)
	}
	id := hex.EncodeToString(raw[:adminIDBytes])
	token = AdminTokenPrefix + id + "_" + base64.RawURLEncoding.EncodeToString(raw[adminIDBytes:])
	sum := sha256.Sum256([]byte(token))
	rec = AdminRecord{
		ID:            id,
		Name:          name,
		Hash:          hex.EncodeToString(sum[:]),
		Role:          role,
		CreatedUnixMs: now.UnixMilli(),
	}
	if ttl > 0 {
		rec.ExpiresUnixMs = now.Add(ttl).UnixMilli()
	}
	return token, rec, nil
}

// ParseAdminToken checks the shape of a presented token and returns its id
// for looking up the record. It proves nothing about the holder; errors
// never echo the token.
func ParseAdminToken(tok string) (id string, err error) {
	if len(tok) != AdminTokenLen {
		return "", fmt.Errorf("%w: admin token is %d bytes, want %d", ErrMalformed, len(tok), AdminTokenLen)
	}
	rest, ok := strings.CutPrefix(tok, AdminTokenPrefix)
	if !ok {
		return "", fmt.Errorf("%w: admin token does not start with %q", ErrMalformed, AdminTokenPrefix)
	}
	id, secret, ok := strings.Cut(rest, "_")
	if !ok || len(id) != adminIDLen {
		return "", fmt.Errorf("%w: admin token id is not %d hex digits", ErrMalformed, adminIDLen)
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return "", fmt.Errorf("%w: admin token id is not %d lowercase hex digits", ErrMalformed, adminIDLen)
		}
	}
	// Strict: exactly one spelling per secret, so equal secrets hash alike.
	if b, err := base64.RawURLEncoding.Strict().DecodeString(secret); err != nil || len(b) != adminSecretBytes {
		return "", fmt.Errorf("%w: admin token secret is not %d bytes of base64url", ErrMalformed, adminSecretBytes)
	}
	return id, nil
}

// CheckAdminToken reports whether tok is the token rec was made for, and
// still valid at now. The hash is compared in constant time.
func CheckAdminToken(tok string, rec AdminRecord, now time.Time) error {
	id, err := ParseAdminToken(tok)
	if err != nil {
		return err
	}
	want, err := hex.DecodeString(rec.Hash)
	if err != nil || len(want) != sha256.Size {
		return fmt.Errorf("%w: record %q has no valid hash", ErrBadSecret, rec.ID)
	}
	got := sha256.Sum256([]byte(tok))
	if subtle.ConstantTimeCompare(got[:], want) != 1 || id != rec.ID {
		return fmt.Errorf("%w record %q", ErrBadSecret, rec.ID)
	}
	if rec.ExpiresUnixMs != 0 && now.UnixMilli() >= rec.ExpiresUnixMs {
		return fmt.Errorf("%w: admin token %q expired at %s", ErrExpired, rec.ID,
			time.UnixMilli(rec.ExpiresUnixMs).UTC().Format(time.RFC3339))
	}
	return nil
}

// validAdminName checks a token's name: 1..128 bytes of printable UTF-8.
func validAdminName(name string) error {
	switch {
	case strings.TrimSpace(name) == "":
		return errors.New("admin token name: empty")
	case len(name) > maxAdminNameBytes:
		return fmt.Errorf("admin token name: %d bytes, at most %d", len(name), maxAdminNameBytes)
	case !utf8.ValidString(name):
		return errors.New("admin token name: not UTF-8")
	}
	for _, r := range name {
		if !unicode.IsPrint(r) {
			return fmt.Errorf("admin token name %q: has unprintable %U", name, r)
		}
	}
	return nil
}
