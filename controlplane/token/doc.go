// Package token issues and checks the credentials of Berth: agent tokens
// (signed JWTs naming the endpoints an agent may serve) and admin tokens
// (opaque bearer tokens with a role, stored hashed).
//
// # Agent tokens
//
// An agent token is a JWT (RFC 7519) in compact form, at most MaxTokenSize
// bytes. Its header names the key in "kid" and the algorithm in "alg":
// HS256, EdDSA (Ed25519) or ES256 (P-256). Its claims are:
//
//	iss        "berth", always
//	sub        the agent ID (optional; ID characters A-Z a-z 0-9 . _ : -)
//	jti        the token ID (random unless the issuer picks one)
//	iat, nbf   when it was signed
//	exp        when it expires (required)
//	endpoints  the endpoints the agent may register: 1..MaxEndpoints DNS
//	           labels (a-z 0-9 '-', as fsm.ValidateEndpointName), or "*"
//	           for any endpoint
//
// Verification trusts nothing in the token before the signature checks out:
// the kid picks the key and the key fixes the algorithm, so a token cannot
// choose "none" or ask for an HMAC keyed with a public key. Time claims are
// compared with the caller's clock, give or take Leeway.
//
// # Keyring
//
// A Keyring holds keys by kid. Several may be live at once so keys can be
// rotated: SignAgent uses the newest key that can sign, VerifyAgent accepts
// any key in the ring. To rotate, add a new key (berthctl token keygen), let
// the tokens signed with the old one expire, then delete the old key.
//
// On disk a keyring is a directory of key files, one per key, named
// "<kid>.json"; other names, dotfiles and subdirectories are ignored, so
// editor backups and Kubernetes' "..data" links do no harm:
//
//	{
//	  "kid": "2026-03",                    // must match the file name
//	  "alg": "EdDSA",                      // HS256, EdDSA or ES256
//	  "created": "2026-03-01T12:00:00Z",   // orders keys; newest signs
//	  "secret": "<base64>",                // HS256: 32 or more bytes
//	  "private_key": "-----BEGIN PRIVATE KEY-----\n...",  // EdDSA, ES256: PKCS#8 PEM
//	  "public_key": "-----BEGIN PUBLIC KEY-----\n..."     // EdDSA, ES256: PKIX PEM
//	}
//
// An EdDSA or ES256 file holds the private key (signs and verifies) or only
// the public key (verifies only): hand verify-only copies to nodes that must
// not mint tokens. Files written by WriteKey are mode 0600 and appear
// atomically; unknown fields are refused, so a typo is an error rather than
// a silently weaker key. LoadKeyring reads the whole directory or fails,
// and a Keyring never changes once built, so a server reloads by loading
// again and swapping the pointer (atomic.Pointer[Keyring]), keeping the old
// keyring when the load fails.
//
// # Admin tokens
//
// An admin token is "bat_<id>_<secret>": id is 16 lowercase hex digits that
// let the server find the record, secret 32 random bytes in unpadded
// base64url. The server keeps only an AdminRecord with the SHA-256 of the
// whole token, and compares in constant time. Roles are read (status,
// watch) and operate (read plus cordon, drain, rebalance, membership and
// token management); anything else is denied.
package token
