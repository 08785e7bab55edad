package fsm

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"unicode/utf8"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// Limits on what the registry accepts. Checked at the gRPC edge (through the
// Validate functions) and again in Apply, so a bad entry that reaches the log
// anyway is refused deterministically instead of corrupting state.
const (
	// MaxIDLen bounds proxy, connection, move, server, agent and slot IDs,
	// which use the characters A-Z a-z 0-9 . _ : -
	MaxIDLen = 128
	// MaxEndpointNameLen bounds endpoint names, which are DNS labels:
	// a-z 0-9 and '-', not starting or ending with '-'.
	MaxEndpointNameLen = 63
	// MaxRegionLen bounds regions and zones (ID characters, may be empty).
	MaxRegionLen = 64
	// MaxLabels bounds the labels of one proxy.
	MaxLabels = 32
	// MaxLabelKeyLen bounds a label key (ID characters and '/').
	MaxLabelKeyLen = 63
	// MaxLabelValueLen bounds a label value (any UTF-8).
	MaxLabelValueLen = 256
	// MaxEndpointsPerConnection bounds the endpoints one connection serves.
	MaxEndpointsPerConnection = 64
	// MaxAddressLen bounds a host:port address.
	MaxAddressLen = 256
	// MaxReasonLen bounds free-text reasons on moves (any UTF-8).
	MaxReasonLen = 256
	// MaxEventsPerCommand bounds one ConnectionEventsCommand.
	MaxEventsPerCommand = 10_000
	// MaxReconcileConnections bounds one ReconcileProxyCommand.
	MaxReconcileConnections = 200_000
	// MaxMovesPerCommand bounds one CreateMovesCommand.
	MaxMovesPerCommand = 10_000
	// MaxBatchCommands bounds one CommandBatch.
	MaxBatchCommands = 1024
	// MaxFinishedMoves is how many COMPLETED or ABORTED moves are kept as
	// history; older ones (by created_index, then id) are pruned.
	MaxFinishedMoves = 10_000
)

// Each rule is a *Problem function that describes what is wrong with a
// value, or returns "" without allocating when nothing is: Apply checks
// every connection of every batch, and only a refusal pays for building
// the field path of its message.

// ValidateID checks an ID: 1..MaxIDLen characters of A-Z a-z 0-9 . _ : -
// kind names the field in the error ("proxy_id", "move.id").
func ValidateID(kind, id string) error {
	if p := idProblem(id); p != "" {
		return invalid("%s: %s", kind, p)
	}
	return nil
}

func idProblem(id string) string {
	if id == "" {
		return "empty"
	}
	return tokenProblem(id, MaxIDLen, false)
}

// tokenProblem checks an optional string of ID characters (plus '/' when
// slash is set) of at most max bytes.
func tokenProblem(s string, max int, slash bool) string {
	if len(s) > max {
		return fmt.Sprintf("%d characters, at most %d", len(s), max)
	}
	for i := 0; i < len(s); i++ {
		if !isIDChar(s[i]) && !(slash && s[i] == '/') {
			allowed := "A-Z a-z 0-9 . _ : -"
			if slash {
				allowed += " /"
			}
			return fmt.Sprintf("%q has %q at %d; allowed: %s", s, s[i], i, allowed)
		}
	}
	return ""
}

func isIDChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		c == '.' || c == '_' || c == ':' || c == '-'
}

// ValidateEndpointName checks that name is a DNS label: 1..63 characters of
// a-z 0-9 '-', not starting or ending with '-'.
func ValidateEndpointName(name string) error {
	if p := endpointProblem(name); p != "" {
		return invalid("endpoint: %s", p)
	}
	return nil
}

func endpointProblem(name string) string {
	switch {
	case name == "":
		return "empty name"
	case len(name) > MaxEndpointNameLen:
		return fmt.Sprintf("name is %d characters, at most %d", len(name), MaxEndpointNameLen)
	case name[0] == '-' || name[len(name)-1] == '-':
		return fmt.Sprintf("%q starts or ends with '-'", name)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return fmt.Sprintf("%q has %q at %d; allowed: a-z 0-9 -", name, c, i)
		}
	}
	return ""
}

// ValidateProxy checks what a proxy registers: id, region, zone, addresses,
// labels. Fields the registry owns (status, admin state, health, indexes,
// version) are ignored, not checked.
func ValidateProxy(p *berthv1.Proxy) error {
	return validateProxy("proxy", p)
}

func validateProxy(field string, p *berthv1.Proxy) error {
	if p == nil {
		return invalid("%s: missing", field)
	}
	if e := idProblem(p.GetId()); e != "" {
		return invalid("%s.id: %s", field, e)
	}
	if e := tokenProblem(p.GetRegion(), MaxRegionLen, false); e != "" {
		return invalid("%s.region: %s", field, e)
	}
	if e := tokenProblem(p.GetZone(), MaxRegionLen, false); e != "" {
		return invalid("%s.zone: %s", field, e)
	}
	if a := p.GetAddresses(); a != nil {
		for _, f := range []struct{ name, v string }{
			{"tunnel", a.GetTunnel()}, {"downstream", a.GetDownstream()}, {"peer", a.GetPeer()},
		} {
			if e := addressProblem(f.v); e != "" {
				return invalid("%s.addresses.%s: %s", field, f.name, e)
			}
		}
	}
	if n := len(p.GetLabels()); n > MaxLabels {
		return invalid("%s.labels: %d labels, at most %d", field, n, MaxLabels)
	}
	for k, v := range p.GetLabels() {
		if k == "" {
			return invalid("%s.labels: empty key", field)
		}
		if e := tokenProblem(k, MaxLabelKeyLen, true); e != "" {
			return invalid("%s.labels key: %s", field, e)
		}
		if e := textProblem(v, MaxLabelValueLen); e != "" {
			return invalid("%s.labels[%q]: %s", field, k, e)
		}
	}
	return nil
}

// textProblem checks free text: valid UTF-8 (proto would refuse to
// marshal anything else, breaking snapshots) of at most max bytes.
func textProblem(s string, max int) string {
	if len(s) > max {
		return fmt.Sprintf("%d bytes, at most %d", len(s), max)
	}
	if !utf8.ValidString(s) {
		return "not valid UTF-8"
	}
	return ""
}

// ValidateHostPort checks a required host:port (an IP address or DNS name
// and a port 1..65535), as the registry accepts addresses.
func ValidateHostPort(field, addr string) error {
	if addr == "" {
		return invalid("%s: missing (want host:port)", field)
	}
	if p := addressProblem(addr); p != "" {
		return invalid("%s: %s", field, p)
	}
	return nil
}

// addressProblem accepts "" or host:port with a non-empty host (IP or DNS
// name) and a port in 1..65535, all printable ASCII.
func addressProblem(addr string) string {
	if addr == "" {
		return ""
	}
	if len(addr) > MaxAddressLen {
		return fmt.Sprintf("%d characters, at most %d", len(addr), MaxAddressLen)
	}
	for i := 0; i < len(addr); i++ {
		// Printable ASCII only: an IPv6 zone would otherwise let any byte
		// through, and invalid UTF-8 cannot be marshalled.
		if addr[i] <= ' ' || addr[i] > '~' {
			return fmt.Sprintf("%q has %q at %d", addr, addr[i], i)
		}
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Sprintf("%q is not host:port", addr)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return fmt.Sprintf("%q: port must be 1..65535", addr)
	}
	if host == "" {
		return fmt.Sprintf("%q: missing host", addr)
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return ""
	}
	for i := 0; i < len(host); i++ {
		c := host[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			return fmt.Sprintf("%q: host is neither an IP address nor a DNS name", addr)
		}
	}
	return ""
}

// ValidateConnection checks what a proxy reports about one connection: id,
// slot, agent_id, endpoints and proxy_id (which may be empty). State, move,
// indexes and version are the registry's and are ignored.
func ValidateConnection(c *berthv1.Connection) error {
	return validateConnection("connection", c)
}

func validateConnection(field string, c *berthv1.Connection) error {
	if c == nil {
		return invalid("%s: missing", field)
	}
	if e := idProblem(c.GetId()); e != "" {
		return invalid("%s.id: %s", field, e)
	}
	if e := tokenProblem(c.GetSlot(), MaxIDLen, false); e != "" {
		return invalid("%s.slot: %s", field, e)
	}
	if e := tokenProblem(c.GetAgentId(), MaxIDLen, false); e != "" {
		return invalid("%s.agent_id: %s", field, e)
	}
	if e := tokenProblem(c.GetProxyId(), MaxIDLen, false); e != "" {
		return invalid("%s.proxy_id: %s", field, e)
	}
	eps := c.GetEndpoints()
	if len(eps) > MaxEndpointsPerConnection {
		return invalid("%s.endpoints: %d endpoints, at most %d", field, len(eps), MaxEndpointsPerConnection)
	}
	for i, e := range eps {
		if p := endpointProblem(e); p != "" {
			return invalid("%s.endpoints[%d]: %s", field, i, p)
		}
		for _, prev := range eps[:i] {
			if prev == e {
				return invalid("%s.endpoints[%d]: %q listed twice", field, i, e)
			}
		}
	}
	return nil
}

func validateServer(field string, s *berthv1.Server) error {
	if s == nil {
		return invalid("%s: missing", field)
	}
	if e := idProblem(s.GetId()); e != "" {
		return invalid("%s.id: %s", field, e)
	}
	if e := addressProblem(s.GetRaftAddress()); e != "" {
		return invalid("%s.raft_address: %s", field, e)
	}
	if e := addressProblem(s.GetGrpcAddress()); e != "" {
		return invalid("%s.grpc_address: %s", field, e)
	}
	return nil
}

// validateNewMove is the stateless part of CreateMovesCommand's checks.
func validateNewMove(field string, m *berthv1.Move, now int64) error {
	if m == nil {
		return invalid("%s: missing", field)
	}
	for _, f := range []struct{ name, v string }{
		{"id", m.GetId()}, {"connection_id", m.GetConnectionId()},
		{"from_proxy_id", m.GetFromProxyId()}, {"to_proxy_id", m.GetToProxyId()},
	} {
		if e := idProblem(f.v); e != "" {
			return invalid("%s.%s: %s", field, f.name, e)
		}
	}
	if m.GetFromProxyId() == m.GetToProxyId() {
		return invalid("%s.to_proxy_id: %q is also the from_proxy_id", field, m.GetToProxyId())
	}
	if m.GetDeadlineUnixMs() <= now {
		return invalid("%s.deadline_unix_ms: %d is not after the command time %d", field, m.GetDeadlineUnixMs(), now)
	}
	if e := textProblem(m.GetReason(), MaxReasonLen); e != "" {
		return invalid("%s.reason: %s", field, e)
	}
	return nil
}

// ValidateCommand runs every check that needs no state: the command has a
// kind, IDs and names are well formed, enums hold a meaningful value, and
// counts are within the limits. Batched commands (connection_events,
// reconcile_proxy) are checked as an envelope only: their single entries
// are judged one by one in Apply and refused individually (use
// ValidateConnection to check one at the edge).
func ValidateCommand(cmd *berthv1.Command) error {
	if cmd == nil {
		return invalid("command: missing")
	}
	now := cmd.GetNowUnixMs()
	if now < 0 {
		return invalid("command.now_unix_ms: %d is negative", now)
	}
	if n := len(cmd.GetRequestId()); n > MaxRequestIDBytes {
		return invalid("command.request_id: %d bytes; at most %d", n, MaxRequestIDBytes)
	}
	switch k := cmd.GetKind().(type) {
	case *berthv1.Command_Batch:
		subs := k.Batch.GetCommands()
		if len(subs) == 0 || len(subs) > MaxBatchCommands {
			return invalid("batch.commands: %d commands; want 1 to %d", len(subs), MaxBatchCommands)
		}
		for i, sub := range subs {
			if _, nested := sub.GetKind().(*berthv1.Command_Batch); nested {
				return invalid("batch.commands[%d]: a batch cannot contain a batch", i)
			}
		}
		// Each command is validated when it applies, so one bad command is
		// refused on its own and the rest of the batch applies.
		return nil

	case *berthv1.Command_RegisterProxy:
		return validateProxy("register_proxy.proxy", k.RegisterProxy.GetProxy())

	case *berthv1.Command_UpsertAdminToken:
		return validateAdminToken(k.UpsertAdminToken.GetToken())

	case *berthv1.Command_RevokeAdminToken:
		return ValidateID("revoke_admin_token.token_id", k.RevokeAdminToken.GetTokenId())

	case *berthv1.Command_SetProxyAdminState:
		c := k.SetProxyAdminState
		if err := ValidateID("set_proxy_admin_state.proxy_id", c.GetProxyId()); err != nil {
			return err
		}
		switch c.GetAdminState() {
		case berthv1.AdminState_ADMIN_STATE_NONE, berthv1.AdminState_ADMIN_STATE_CORDONED, berthv1.AdminState_ADMIN_STATE_DRAINING:
			return nil
		}
		return invalid("set_proxy_admin_state.admin_state: %v; want NONE, CORDONED or DRAINING", c.GetAdminState())

	case *berthv1.Command_SetProxyHealth:
		c := k.SetProxyHealth
		if err := ValidateID("set_proxy_health.proxy_id", c.GetProxyId()); err != nil {
			return err
		}
		switch c.GetHealth() {
		case berthv1.Health_HEALTH_HEALTHY, berthv1.Health_HEALTH_UNHEALTHY, berthv1.Health_HEALTH_DOWN:
			return nil
		}
		return invalid("set_proxy_health.health: %v; want HEALTHY, UNHEALTHY or DOWN", c.GetHealth())

	case *berthv1.Command_DeregisterProxy:
		return ValidateID("deregister_proxy.proxy_id", k.DeregisterProxy.GetProxyId())

	case *berthv1.Command_RemoveProxy:
		return ValidateID("remove_proxy.proxy_id", k.RemoveProxy.GetProxyId())

	case *berthv1.Command_ConnectionEvents:
		c := k.ConnectionEvents
		if err := ValidateID("connection_events.proxy_id", c.GetProxyId()); err != nil {
			return err
		}
		if n := len(c.GetEvents()); n > MaxEventsPerCommand {
			return invalid("connection_events.events: %d events, at most %d", n, MaxEventsPerCommand)
		}
		return nil

	case *berthv1.Command_ReconcileProxy:
		c := k.ReconcileProxy
		if err := ValidateID("reconcile_proxy.proxy_id", c.GetProxyId()); err != nil {
			return err
		}
		if n := len(c.GetConnections()); n > MaxReconcileConnections {
			return invalid("reconcile_proxy.connections: %d connections, at most %d", n, MaxReconcileConnections)
		}
		return nil

	case *berthv1.Command_CreateMoves:
		moves := k.CreateMoves.GetMoves()
		switch {
		case len(moves) == 0:
			return invalid("create_moves.moves: empty")
		case len(moves) > MaxMovesPerCommand:
			return invalid("create_moves.moves: %d moves, at most %d", len(moves), MaxMovesPerCommand)
		}
		for i, m := range moves {
			if err := validateNewMove(fmt.Sprintf("create_moves.moves[%d]", i), m, now); err != nil {
				return err
			}
		}
		return nil

	case *berthv1.Command_UpdateMove:
		c := k.UpdateMove
		if err := ValidateID("update_move.move_id", c.GetMoveId()); err != nil {
			return err
		}
		switch c.GetState() {
		case berthv1.MoveState_MOVE_STATE_ACCEPTED:
			if err := ValidateID("update_move.new_connection_id", c.GetNewConnectionId()); err != nil {
				return err
			}
		case berthv1.MoveState_MOVE_STATE_COMPLETED, berthv1.MoveState_MOVE_STATE_ABORTED:
			if e := tokenProblem(c.GetNewConnectionId(), MaxIDLen, false); e != "" {
				return invalid("update_move.new_connection_id: %s", e)
			}
		default:
			return invalid("update_move.state: %v; want ACCEPTED, COMPLETED or ABORTED", c.GetState())
		}
		if e := textProblem(c.GetAbortReason(), MaxReasonLen); e != "" {
			return invalid("update_move.abort_reason: %s", e)
		}
		return nil

	case *berthv1.Command_UpsertServer:
		return validateServer("upsert_server.server", k.UpsertServer.GetServer())

	case *berthv1.Command_RemoveServer:
		return ValidateID("remove_server.server_id", k.RemoveServer.GetServerId())
	}
	return invalid("command: no kind set (empty, or a command this version does not know)")
}

// validateAdminToken checks a stored admin token record: an id, a hex
// SHA-256, a known role, sane times.
func validateAdminToken(t *berthv1.AdminToken) error {
	if t == nil {
		return invalid("upsert_admin_token.token: missing")
	}
	if err := ValidateID("upsert_admin_token.token.id", t.Id); err != nil {
		return err
	}
	if len(t.Name) > MaxIDLen {
		return invalid("upsert_admin_token.token.name: %d characters, at most %d", len(t.Name), MaxIDLen)
	}
	if len(t.Hash) != 64 || strings.Trim(t.Hash, "0123456789abcdef") != "" {
		return invalid("upsert_admin_token.token.hash: want 64 lowercase hex digits")
	}
	if t.Role != "read" && t.Role != "operate" {
		return invalid("upsert_admin_token.token.role: %q; want read or operate", t.Role)
	}
	if t.CreatedUnixMs < 0 || t.ExpiresUnixMs < 0 {
		return invalid("upsert_admin_token.token: negative time")
	}
	return nil
}
