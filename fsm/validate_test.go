package fsm

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
	"google.golang.org/protobuf/proto"
)

func TestValidateID(t *testing.T) {
	for _, tt := range []struct {
		id  string
		ok  bool
		msg string
	}{
		{"p1", true, ""},
		{"A-z_0.9:x", true, ""},
		{strings.Repeat("a", MaxIDLen), true, ""},
		{"", false, "proxy_id: empty"},
		{strings.Repeat("a", MaxIDLen+1), false, "proxy_id: 129 characters, at most 128"},
		{"a b", false, `proxy_id: "a b" has ' ' at 1`},
		{"a/b", false, "allowed: A-Z a-z 0-9 . _ : -"},
		{"é", false, "proxy_id"},
	} {
		t.Run(tt.id, func(t *testing.T) {
			err := ValidateID("proxy_id", tt.id)
			if (err == nil) != tt.ok {
				t.Fatalf("ValidateID(%q) = %v", tt.id, err)
			}
			if err != nil {
				if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.msg) {
					t.Errorf("error %q: want ErrInvalid containing %q", err, tt.msg)
				}
			}
		})
	}
}

func TestValidateEndpointName(t *testing.T) {
	for _, tt := range []struct {
		name string
		ok   bool
	}{
		{"web", true}, {"a", true}, {"a-b-1", true}, {"0", true}, {strings.Repeat("e", 63), true},
		{"", false}, {strings.Repeat("e", 64), false}, {"-a", false}, {"a-", false},
		{"Web", false}, {"a_b", false}, {"a.b", false}, {"a b", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := ValidateEndpointName(tt.name); (err == nil) != tt.ok {
				t.Errorf("ValidateEndpointName(%q) = %v, want ok=%v", tt.name, err, tt.ok)
			}
		})
	}
}

func TestValidateAddress(t *testing.T) {
	for _, tt := range []struct {
		addr string
		ok   bool
	}{
		{"", true}, {"10.0.0.1:80", true}, {"[::1]:443", true}, {"[fe80::1%eth0]:7000", true}, {"host.example.com:7000", true}, {"my_host:1", true},
		{"host", false}, {"host:", false}, {"host:0", false}, {"host:65536", false}, {"host:http", false},
		{":80", false}, {"a b:80", false}, {"[::1:80", false},
	} {
		t.Run(tt.addr, func(t *testing.T) {
			if p := addressProblem(tt.addr); (p == "") != tt.ok {
				t.Errorf("addressProblem(%q) = %q, want ok=%v", tt.addr, p, tt.ok)
			}
		})
	}
}

func TestValidateCommand(t *testing.T) {
	ok := []*berthv1.Command{
		registerProxy("p", "r"),
		setAdmin("p", adminDraining),
		setHealth("p", down, 3),
		deregister("p"),
		connEvents("p", openEv(conn("BAD ID"))), // entries are judged in Apply
		reconcile("p", &berthv1.Connection{}),
		createMoves(mv("m", "c", "a", "b")),
		updateMove("m", moveAccepted, "n", ""),
		updateMove("m", moveCompleted, "", ""),
		updateMove("m", moveAborted, "", "why"),
		upsertServer("s", "h:1", ""),
		removeServer("s"),
	}
	for _, c := range ok {
		if err := ValidateCommand(c); err != nil {
			t.Errorf("ValidateCommand(%v) = %v", c, err)
		}
	}
	negative := registerProxy("p", "r")
	negative.NowUnixMs = -1
	bad := []struct {
		cmd *berthv1.Command
		msg string
	}{
		{nil, "command: missing"},
		{&berthv1.Command{}, "no kind set"},
		{negative, "now_unix_ms: -1 is negative"},
		{cmdOf(&berthv1.RegisterProxyCommand{}), "register_proxy.proxy: missing"},
		{&berthv1.Command{Kind: &berthv1.Command_SetProxyAdminState{}}, "set_proxy_admin_state.proxy_id: empty"},
		{setHealth("p", berthv1.Health_HEALTH_UNSPECIFIED, 0), "set_proxy_health.health"},
		{setAdmin("p", berthv1.AdminState(99)), "admin_state: 99"},
		{connEvents(""), "connection_events.proxy_id: empty"},
		{reconcile("p p"), "reconcile_proxy.proxy_id"},
		{updateMove("m", moveCompleted, "bad id", ""), "update_move.new_connection_id"},
		{cmdOf(&berthv1.UpsertServerCommand{Server: &berthv1.Server{Id: "s", GrpcAddress: "x"}}), "upsert_server.server.grpc_address"},
		{removeServer(strings.Repeat("s", 200)), "remove_server.server_id"},
	}
	for _, tt := range bad {
		err := ValidateCommand(tt.cmd)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.msg) {
			t.Errorf("ValidateCommand(%v) = %v, want ErrInvalid containing %q", tt.cmd, err, tt.msg)
		}
	}
}

func TestValidateConnection(t *testing.T) {
	if err := ValidateConnection(conn("c1", "web")); err != nil {
		t.Error(err)
	}
	err := ValidateConnection(conn("c1", "web", "web"))
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `connection.endpoints[1]: "web" listed twice`) {
		t.Errorf("got %v", err)
	}
}

func TestResultErrorAndCode(t *testing.T) {
	for _, tt := range []struct {
		code     berthv1.ResultCode
		sentinel error
	}{
		{codeInvalid, ErrInvalid},
		{codeNotFound, ErrNotFound},
		{codePrecondition, ErrFailedPrecondition},
		{codeExists, ErrAlreadyExists},
	} {
		t.Run(tt.code.String(), func(t *testing.T) {
			err := ResultError(&berthv1.CommandResult{Code: tt.code, Message: "proxy \"p\""})
			if !errors.Is(err, tt.sentinel) {
				t.Fatalf("ResultError = %v, want wrapping %v", err, tt.sentinel)
			}
			if want := tt.sentinel.Error() + `: proxy "p"`; err.Error() != want {
				t.Errorf("text %q, want %q", err, want)
			}
			if got := ResultCode(err); got != tt.code {
				t.Errorf("ResultCode = %v", got)
			}
			if got := ResultCode(fmt.Errorf("forwarded: %w", err)); got != tt.code {
				t.Errorf("ResultCode(wrapped) = %v", got)
			}
			// A local refusal reads the same as the one from a result.
			local := refuse(tt.code, `proxy "p"`)
			if local.Error() != err.Error() || !errors.Is(local, tt.sentinel) {
				t.Errorf("local %q vs result %q", local, err)
			}
		})
	}
	if err := ResultError(&berthv1.CommandResult{Code: codeOK}); err != nil {
		t.Errorf("OK result: %v", err)
	}
	if err := ResultError(nil); err == nil {
		t.Error("nil result: no error")
	}
	err := ResultError(&berthv1.CommandResult{Code: berthv1.ResultCode_RESULT_CODE_UNSPECIFIED, Message: "boom"})
	if err == nil || ResultCode(err) != berthv1.ResultCode_RESULT_CODE_UNSPECIFIED || !strings.Contains(err.Error(), "boom") {
		t.Errorf("unspecified: %v", err)
	}
	if ResultCode(nil) != codeOK || ResultCode(errors.New("x")) != berthv1.ResultCode_RESULT_CODE_UNSPECIFIED {
		t.Error("ResultCode of nil or a foreign error")
	}
}

func TestCodec(t *testing.T) {
	cmd := registerFull(&berthv1.Proxy{Id: "p", Labels: map[string]string{"b": "2", "a": "1", "c": "3"}})
	cmd.NowUnixMs = 42
	b, err := Encode(cmd)
	if err != nil {
		t.Fatal(err)
	}
	for range 10 { // deterministic: map order does not leak into the bytes
		b2, _ := Encode(cmd)
		if string(b2) != string(b) {
			t.Fatal("Encode is not deterministic")
		}
	}
	got, err := Decode(b)
	if err != nil || !proto.Equal(got, cmd) {
		t.Fatalf("Decode = %v, %v", got, err)
	}
	if _, err := Encode(nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("Encode(nil) = %v", err)
	}
	if _, err := Decode([]byte{0xff, 0xff}); !errors.Is(err, ErrInvalid) {
		t.Errorf("Decode(garbage) = %v", err)
	}
	if _, err := Decode(make([]byte, MaxCommandBytes+1)); !errors.Is(err, ErrInvalid) {
		t.Errorf("Decode(too big) = %v", err)
	}
	big := &berthv1.ReconcileProxyCommand{ProxyId: "p", Connections: []*berthv1.Connection{{Id: "c", Slot: strings.Repeat("s", MaxCommandBytes)}}}
	if _, err := Encode(cmdOf(big)); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "at most 8388608") {
		t.Errorf("Encode(too big) = %v", err)
	}
}
