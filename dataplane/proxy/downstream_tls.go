package proxy

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"

	"github.com/berthhq/berth/controlplane/pki"
	"github.com/berthhq/berth/fsm"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// Downstream TLS (--downstream-tls-addr, -cert, -key) runs a second
// downstream listener beside the plain one, with the same handler:
// TLS 1.2 or later, HTTP/2 for clients that offer it by ALPN, HTTP/1.1
// otherwise. The certificate files are re-read when they change
// (pki.KeyPair); connections already open keep theirs, so a rotation fails
// no request.
//
// The endpoint is named as on the plain listener (X-Berth-Endpoint, then
// the Host's first label) and, when the Host is an address, by the first
// label of the TLS server name (SNI). TCP endpoints work two ways: the
// berth-tcp upgrade over TLS, or a client that offers the ALPN protocol
// "berth-tcp", whose connection is then a raw TCP stream to the endpoint
// its SNI names (a TLS-wrapping client needs no HTTP at all).

// ALPNTCP is the ALPN protocol that makes a downstream TLS connection a
// raw TCP stream to the SNI's endpoint.
const ALPNTCP = "berth-tcp"

// setupDownstreamTLS loads the certificate and listens (add registers
// what undoes it if New fails later); serveDownstreamTLS serves.
func (p *Proxy) setupDownstreamTLS(listen func(name, addr string) (net.Listener, error), add func(func())) error {
	cfg := p.cfg.Edge
	kp, err := pki.NewKeyPair(cfg.TLSCert, cfg.TLSKey, cfg.CertReload, p.logger.With("subsystem", "downstream-tls"))
	if err != nil {
		return fmt.Errorf("downstream tls: %w", err)
	}
	add(kp.Close)
	p.downCert = kp
	ln, err := listen("downstream tls", cfg.TLSAddr)
	if err != nil {
		return err
	}
	p.downTLSLn = ln
	p.downstreamTLS = &http.Server{
		Handler:           p,
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		ErrorLog:          slog.NewLogLogger(p.logger.Handler(), slog.LevelDebug),
		TLSConfig: &tls.Config{
			MinVersion:     tls.VersionTLS12,
			GetCertificate: kp.GetCertificate,
			NextProtos:     []string{"h2", "http/1.1", ALPNTCP},
		},
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){
			ALPNTCP: func(_ *http.Server, c *tls.Conn, _ http.Handler) { p.serveTLSTCP(c) },
		},
	}
	// TLSNextProto set by hand turns off HTTP/2's automatic setup; ask
	// for it explicitly.
	p.downstreamTLS.Protocols = new(http.Protocols)
	p.downstreamTLS.Protocols.SetHTTP1(true)
	p.downstreamTLS.Protocols.SetHTTP2(true)
	return nil
}

func (p *Proxy) serveDownstreamTLS() {
	if err := p.downstreamTLS.ServeTLS(p.downTLSLn, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
		p.logger.Error("downstream tls server stopped", "err", err)
	}
}

// DownstreamTLSAddr is where clients reach this proxy over TLS ("" when
// off).
func (p *Proxy) DownstreamTLSAddr() string {
	if p.downTLSLn == nil {
		return ""
	}
	return advertise("", p.downTLSLn.Addr())
}

// downstreamEndpoint names a downstream request's endpoint: as endpointOf,
// falling back to the TLS server name when the Host is an address.
func (p *Proxy) downstreamEndpoint(r *http.Request) (string, error) {
	name, err := endpointOf(r)
	if err == nil || r.TLS == nil || r.TLS.ServerName == "" || r.Header.Get(EndpointHeader) != "" {
		return name, err
	}
	return sniEndpoint(r.TLS.ServerName)
}

func sniEndpoint(serverName string) (string, error) {
	name, _, _ := strings.Cut(strings.ToLower(serverName), ".")
	if err := fsm.ValidateEndpointName(name); err != nil {
		return "", fmt.Errorf("%w: TLS server name %q: %w", errInvalidEndpoint, serverName, err)
	}
	return name, nil
}

// serveTLSTCP splices a berth-tcp ALPN connection to its endpoint. There
// is no HTTP to answer a failure with: the connection is closed.
func (p *Proxy) serveTLSTCP(c *tls.Conn) {
	defer c.Close()
	cs := c.ConnectionState()
	endpoint, err := sniEndpoint(cs.ServerName)
	if err != nil {
		p.logger.Debug("berth-tcp over TLS refused", "remote", c.RemoteAddr(), "err", err)
		return
	}
	if p.downAuth != nil {
		// No header to carry a token: with downstream authentication on,
		// TCP goes through the berth-tcp upgrade, which has headers.
		p.logger.Debug("berth-tcp over TLS refused: downstream authentication needs the upgrade", "remote", c.RemoteAddr())
		return
	}
	hdr := &berthv1.StreamHeader{Endpoint: endpoint, Kind: berthv1.StreamKind_STREAM_KIND_TCP, ClientAddress: c.RemoteAddr().String()}
	up, t, err := p.openStream(p.ctx, hdr, route{endpoint: endpoint})
	if err != nil {
		p.logger.Debug("berth-tcp over TLS: no stream", "endpoint", endpoint, "err", err)
		return
	}
	done := p.begin(t)
	defer done()
	p.metrics.tcpStreams.Inc()
	if p.access != nil {
		p.access.logger.Info("tcp", "endpoint", endpoint, "remote", c.RemoteAddr().String(), "tls", true, "target", t.String())
	}
	pipe(c, up)
}
