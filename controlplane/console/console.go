// Package console is the control plane's read-only web console: a page
// under /ui on a node's HTTP address that shows the cluster, proxies'
// balance, endpoints and moves, and keeps itself current from the
// registry's event stream.
//
// It is built only on the public AdminService (ClusterStatus, ListProxies,
// ListEndpoints, Watch), called on the serving node's own gRPC address, so
// what the page may see is decided by the same checks as berthctl's: with
// admin auth on, the browser sends a read token as "Authorization: Bearer"
// on every request and the console passes it on as the caller's
// credential, never trusting its own certificate for it.
//
// The browser first loads GET /ui/api/snapshot (the registry at an index,
// from a Watch snapshot, plus Raft status, targets and load) and then
// reads GET /ui/events, a Server-Sent Events stream fed by a Watch that
// starts after that index. Each registry message carries its index as the
// event id; after a reconnect the browser sends it back as Last-Event-ID
// and the Watch resumes there (only the gap, or a fresh snapshot when the
// index has left the node's buffer).
package console

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/berthhq/berth/controlplane/client"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// Errors the console answers bad requests with.
var (
	// ErrBadAuthorization: the Authorization header is not a bearer token
	// the control plane could accept.
	ErrBadAuthorization = errors.New("console: bad Authorization header")
	// ErrTokenInURL: a token was put in the URL, where it would end up in
	// logs and history.
	ErrTokenInURL = errors.New("console: tokens go in the Authorization header, never in the URL")
	// ErrBadLastEventID: Last-Event-ID is not a registry index.
	ErrBadLastEventID = errors.New("console: bad Last-Event-ID")
	// errClientGone: writing to the browser failed, so the stream ends
	// without an error message nobody would read.
	errClientGone = errors.New("console: browser went away")
)

// Admin is the part of the AdminService the console calls;
// berthv1.AdminServiceClient satisfies it.
type Admin interface {
	ClusterStatus(ctx context.Context, in *berthv1.ClusterStatusRequest, opts ...grpc.CallOption) (*berthv1.ClusterStatusResponse, error)
	ListProxies(ctx context.Context, in *berthv1.ListProxiesRequest, opts ...grpc.CallOption) (*berthv1.ListProxiesResponse, error)
	ListEndpoints(ctx context.Context, in *berthv1.ListEndpointsRequest, opts ...grpc.CallOption) (*berthv1.ListEndpointsResponse, error)
	Watch(ctx context.Context, in *berthv1.WatchRequest, opts ...grpc.CallOption) (grpc.ServerStreamingClient[berthv1.WatchResponse], error)
}

// Config tunes the console.
type Config struct {
	// ClusterInterval is how often a live page gets Raft status (terms,
	// indexes and contact change without registry events).
	ClusterInterval time.Duration
	// DerivedMinInterval is the least time between two re-reads of
	// targets, load and ring-hash states prompted by registry events.
	DerivedMinInterval time.Duration
	// DerivedInterval re-reads them when no event asked sooner: load lives
	// in the leader's memory and changes without events.
	DerivedInterval time.Duration
	// Heartbeat is how often an idle event stream gets a comment, so
	// proxies and browsers keep it open.
	Heartbeat time.Duration
	// CallTimeout bounds each AdminService call but the Watch.
	CallTimeout time.Duration
	// FinishedMoves is how many completed or aborted moves the page shows.
	FinishedMoves int
}

// Default returns the settings berthd uses.
func Default() Config {
	return Config{
		ClusterInterval:    time.Second,
		DerivedMinInterval: 500 * time.Millisecond,
		DerivedInterval:    5 * time.Second,
		Heartbeat:          15 * time.Second,
		CallTimeout:        10 * time.Second,
		FinishedMoves:      20,
	}
}

// Validate reports the first problem with c.
func (c Config) Validate() error {
	for name, d := range map[string]time.Duration{
		"cluster interval": c.ClusterInterval, "derived min interval": c.DerivedMinInterval,
		"derived interval": c.DerivedInterval, "heartbeat": c.Heartbeat, "call timeout": c.CallTimeout,
	} {
		if d <= 0 {
			return fmt.Errorf("%s: must be positive, got %s", name, d)
		}
	}
	if c.FinishedMoves < 0 {
		return fmt.Errorf("finished moves: must not be negative, got %d", c.FinishedMoves)
	}
	return nil
}

// topics are what the page follows.
func topics() []berthv1.Topic {
	return []berthv1.Topic{berthv1.Topic_TOPIC_PROXIES, berthv1.Topic_TOPIC_CONNECTIONS, berthv1.Topic_TOPIC_MOVES, berthv1.Topic_TOPIC_ENDPOINTS, berthv1.Topic_TOPIC_SERVERS}
}

//go:embed ui
var uiFiles embed.FS

// Console serves the web console.
type Console struct {
	cfg    Config
	admin  Admin
	logger *slog.Logger
	static http.Handler
}

// New returns a console that reads through admin.
func New(cfg Config, admin Admin, logger *slog.Logger) (*Console, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("console: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	sub, err := fs.Sub(uiFiles, "ui")
	if err != nil {
		return nil, fmt.Errorf("console: embedded files: %w", err)
	}
	return &Console{cfg: cfg, admin: admin, logger: logger.With("subsystem", "console"), static: http.StripPrefix("/ui/", http.FileServerFS(sub))}, nil
}

// Register adds the console's routes (/ui and everything under it) to mux.
func (c *Console) Register(mux *http.ServeMux) {
	mux.Handle("GET /ui", http.RedirectHandler("/ui/", http.StatusMovedPermanently))
	mux.Handle("GET /ui/", c.guard(c.static))
	mux.Handle("GET /ui/api/snapshot", c.guard(http.HandlerFunc(c.serveSnapshot)))
	mux.Handle("GET /ui/events", c.guard(http.HandlerFunc(c.serveEvents)))
}

// guard sets the headers every console response gets and refuses tokens
// in the URL.
func (c *Console) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		// No inline script or style: a name that slipped into markup still
		// could not run.
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-store")
		q := r.URL.Query()
		for _, k := range []string{"token", "access_token", "authorization"} {
			if q.Has(k) {
				c.fail(w, r, http.StatusBadRequest, ErrTokenInURL)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// maxTokenBytes bounds the bearer token accepted from a browser.
const maxTokenBytes = 4096

// callContext returns ctx carrying the request's bearer token (if any) as
// the caller's credential for gRPC calls, marked so that a node receiving
// it over its own server certificate still checks the token.
func callContext(ctx context.Context, r *http.Request) (context.Context, error) {
	auth := r.Header.Values("Authorization")
	if len(auth) == 0 {
		return metadata.AppendToOutgoingContext(ctx, client.OnBehalfKey, "console"), nil
	}
	if len(auth) > 1 {
		return nil, fmt.Errorf("%w: sent %d times", ErrBadAuthorization, len(auth))
	}
	scheme, tok, ok := strings.Cut(auth[0], " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" {
		return nil, fmt.Errorf("%w: want \"Bearer <admin token>\"", ErrBadAuthorization)
	}
	if len(tok) > maxTokenBytes {
		return nil, fmt.Errorf("%w: token is %d bytes, at most %d", ErrBadAuthorization, len(tok), maxTokenBytes)
	}
	for i := 0; i < len(tok); i++ {
		if tok[i] <= ' ' || tok[i] > '~' {
			return nil, fmt.Errorf("%w: token has a character outside printable ASCII at byte %d", ErrBadAuthorization, i)
		}
	}
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok, client.OnBehalfKey, "console"), nil
}

// errorBody is every error answer's JSON.
type errorBody struct {
	Error string `json:"error"`
	// Code is the gRPC code when the control plane refused the call.
	Code string `json:"code,omitempty"`
}

// httpStatus maps an error from an AdminService call to an HTTP status.
func httpStatus(err error) int {
	switch {
	case errors.Is(err, ErrBadAuthorization):
		return http.StatusUnauthorized
	case errors.Is(err, ErrBadLastEventID), errors.Is(err, ErrTokenInURL):
		return http.StatusBadRequest
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout
	}
	switch status.Code(err) {
	case codes.Unauthenticated:
		return http.StatusUnauthorized
	case codes.PermissionDenied:
		return http.StatusForbidden
	case codes.InvalidArgument, codes.OutOfRange:
		return http.StatusBadRequest
	case codes.Unavailable:
		return http.StatusServiceUnavailable
	case codes.DeadlineExceeded:
		return http.StatusGatewayTimeout
	}
	return http.StatusBadGateway
}

// fail answers with code and err as JSON.
func (c *Console) fail(w http.ResponseWriter, r *http.Request, code int, err error) {
	body := bodyOf(err)
	if code == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="berth"`)
	}
	level := slog.LevelWarn
	if code < 500 {
		level = slog.LevelDebug
	}
	c.logger.Log(r.Context(), level, "console request failed", "path", r.URL.Path, "status", code, "err", err)
	writeJSON(w, code, body)
}

// bodyOf describes err for the page, with the gRPC code when there is one.
func bodyOf(err error) errorBody {
	var withStatus interface{ GRPCStatus() *status.Status }
	if errors.As(err, &withStatus) {
		if s := withStatus.GRPCStatus(); s.Code() != codes.OK && s.Code() != codes.Unknown {
			return errorBody{Error: err.Error(), Code: s.Code().String()}
		}
	}
	return errorBody{Error: err.Error()}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// serveSnapshot answers GET /ui/api/snapshot.
func (c *Console) serveSnapshot(w http.ResponseWriter, r *http.Request) {
	ctx, err := callContext(r.Context(), r)
	if err != nil {
		c.fail(w, r, httpStatus(err), err)
		return
	}
	snap, err := c.snapshot(ctx)
	if err != nil {
		c.fail(w, r, httpStatus(err), err)
		return
	}
	writeJSON(w, http.StatusOK, snap)
}

// snapshot reads the whole page state: Raft status first (a cheap call
// that also proves the token), the registry from a Watch snapshot, then
// what is derived from it.
func (c *Console) snapshot(ctx context.Context) (*snapshotView, error) {
	cl, err := c.cluster(ctx)
	if err != nil {
		return nil, err
	}
	reg, err := c.watchSnapshot(ctx)
	if err != nil {
		return nil, err
	}
	d, err := c.derived(ctx)
	if err != nil {
		return nil, err
	}
	return &snapshotView{registry: reg, Cluster: cl, Derived: d}, nil
}

func (c *Console) cluster(ctx context.Context) (*clusterView, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.CallTimeout)
	defer cancel()
	resp, err := c.admin.ClusterStatus(ctx, &berthv1.ClusterStatusRequest{})
	if err != nil {
		return nil, fmt.Errorf("cluster status: %w", err)
	}
	return newClusterView(resp), nil
}

// watchSnapshot opens a Watch from index 0 and returns its snapshot.
func (c *Console) watchSnapshot(ctx context.Context) (registry, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.CallTimeout)
	defer cancel()
	stream, err := c.admin.Watch(ctx, &berthv1.WatchRequest{Topics: topics()})
	if err != nil {
		return registry{}, fmt.Errorf("watch: %w", err)
	}
	var events []*berthv1.Event
	for {
		resp, err := stream.Recv()
		if err != nil {
			return registry{}, fmt.Errorf("watch snapshot: %w", err)
		}
		snap := resp.GetSnapshot()
		if snap == nil {
			continue // a reset before the snapshot: a fresh one follows
		}
		events = append(events, snap.GetEvents()...)
		if snap.GetDone() {
			return newRegistry(snap.GetIndex(), events, c.cfg.FinishedMoves), nil
		}
	}
}

// derived reads targets and load (ListProxies) and ring-hash states
// (ListEndpoints), every page.
func (c *Console) derived(ctx context.Context) (*derivedView, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.CallTimeout)
	defer cancel()
	d := &derivedView{Targets: map[string]float64{}, Load: map[string]loadView{}, Connectivity: map[string]map[string]string{}}
	for token, first := "", true; first || token != ""; first = false {
		resp, err := c.admin.ListProxies(ctx, &berthv1.ListProxiesRequest{Consistency: berthv1.Consistency_CONSISTENCY_STALE, PageToken: token})
		if err != nil {
			return nil, fmt.Errorf("list proxies: %w", err)
		}
		for id, t := range resp.GetTargetConnections() {
			d.Targets[id] = t
		}
		for id, l := range resp.GetLoad() {
			d.Load[id] = loadView{Connections: l.GetConnections(), ActiveStreams: l.GetActiveStreams(),
				CPUMillicores: l.GetCpuMillicores(), MemoryBytes: l.GetMemoryBytes(), SentMs: l.GetSentUnixMs()}
		}
		token = resp.GetNextPageToken()
	}
	for token, first := "", true; first || token != ""; first = false {
		resp, err := c.admin.ListEndpoints(ctx, &berthv1.ListEndpointsRequest{Consistency: berthv1.Consistency_CONSISTENCY_STALE, PageToken: token})
		if err != nil {
			return nil, fmt.Errorf("list endpoints: %w", err)
		}
		for _, ec := range resp.GetConnectivity() {
			m := d.Connectivity[ec.GetEndpoint()]
			if m == nil {
				m = map[string]string{}
				d.Connectivity[ec.GetEndpoint()] = m
			}
			m[ec.GetProxyId()] = enumName(ec.GetState().String(), "CONNECTIVITY_STATE_")
		}
		token = resp.GetNextPageToken()
	}
	return d, nil
}
