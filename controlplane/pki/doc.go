// Package pki issues and loads the certificates Berth uses for mutual TLS on
// every link (control plane to control plane, proxy to control plane, proxy to
// proxy, berthctl to control plane, and optionally agent to proxy).
//
// # Identities
//
// One private CA per cluster signs every certificate. A certificate says who
// its holder is with exactly one URI SAN of the form
//
//	berth://<role>/<name>
//
// for example berth://server/cp0, berth://proxy/edge-1 or
// berth://client/alice. The role says what the holder may do, and the
// receiving side checks it on every handshake:
//
//   - server: a control-plane node; may join Raft and call CP-internal RPCs.
//   - proxy: may open proxy sessions with the control plane and peer links
//     with other proxies.
//   - client: berthctl and automation; admin calls, further gated by tokens.
//   - agent: optional mTLS for agents (their tokens still decide what they
//     may serve).
//
// The name is the holder's node or proxy id (the characters fsm.ValidateID
// allows). DNS and IP SANs carry the host names the holder is dialled by, so
// ordinary hostname verification works too; the role, not the host name, is
// what grants access. Every certificate is good for both server and client
// auth because every component is a server on one link and a client on
// another.
//
// # Rotation
//
// A Reloader serves a component's certificate and CA bundle from disk and
// picks up new files without a restart: every handshake uses the material in
// effect at that moment (no TLS session resumption, so no handshake skips
// verification against the current CA). A bad new file is logged and the
// previous material stays in use. To rotate the CA, first distribute a bundle
// holding the old and the new CA to every component, then reissue
// certificates from the new CA, then drop the old CA from the bundle.
//
// Verification reads the CA from the Reloader on each handshake rather than
// from a tls.Config field fixed at start: servers get a fresh config per
// handshake from GetConfigForClient, and clients verify the server in
// VerifyConnection (crypto/tls's own check would use a static RootCAs).
//
// A Reloader also refuses material that would break the component's own
// links: a certificate that does not chain to its CA bundle (a half-done
// rotation), or that carries no berth identity.
package pki

import "errors"

// Sentinel errors. Functions wrap them with detail; match with errors.Is.
var (
	// ErrUnknownRole is a role other than server, proxy, client or agent.
	ErrUnknownRole = errors.New("unknown role")
	// ErrInvalidName is a certificate name that is empty, too long or holds
	// characters outside A-Z a-z 0-9 . _ : -.
	ErrInvalidName = errors.New("invalid name")
	// ErrInvalidHost is a --host entry that is neither an IP address nor a
	// DNS name.
	ErrInvalidHost = errors.New("invalid host")
	// ErrNoIdentity is a certificate without a berth:// URI SAN.
	ErrNoIdentity = errors.New("certificate has no berth identity")
	// ErrAmbiguousIdentity is a certificate with more than one berth:// URI
	// SAN.
	ErrAmbiguousIdentity = errors.New("certificate has several berth identities")
	// ErrMalformedIdentity is a berth:// URI SAN that is not exactly
	// berth://<role>/<name>.
	ErrMalformedIdentity = errors.New("malformed berth identity")
	// ErrWrongRole is a peer whose role the link does not admit.
	ErrWrongRole = errors.New("peer role not allowed")
	// ErrUnverified is a connection whose peer certificate was not verified
	// against a CA by crypto/tls.
	ErrUnverified = errors.New("peer certificate not verified")
	// ErrExists is a file CreateCA or CreateCert would overwrite.
	ErrExists = errors.New("file already exists")
	// ErrNoCA is a CA directory without a readable ca.pem and ca-key.pem.
	ErrNoCA = errors.New("no CA")
	// ErrInvalidFiles is a Files with some but not all of CA, Cert and Key.
	ErrInvalidFiles = errors.New("invalid TLS files")
	// ErrBadMaterial is a certificate, key or CA file that does not parse or
	// does not fit together.
	ErrBadMaterial = errors.New("bad TLS material")
)
