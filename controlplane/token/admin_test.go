package token

import (
	"crypto/sha256"
	"encoding/hex"
	"regexp"
	"strings"
	"testing"
	"time"
)

var adminTokenRE = regexp.MustCompile(`^bat_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$`)

func newAdmin(t *testing.T, role AdminRole, ttl time.Duration) (string, AdminRecord) {
	t.Helper()
	tok, rec, err := NewAdminToken("ci deploy bot", role, ttl, t0)
	if err != nil {
		t.Fatal(err)
	}
	return tok, rec
}

func TestAdminTokenRoundTrip(t *testing.T) {
	tok, rec := newAdmin(t, RoleOperate, 24*time.Hour)
	if !adminTokenRE.MatchString(tok) || len(tok) != AdminTokenLen {
		t.Fatalf("token %q", tok)
	}
	sum := sha256.Sum256([]byte(tok))
	want := AdminRecord{
		ID: tok[4:20], Name: "ci deploy bot", Hash: hex.EncodeToString(sum[:]), Role: RoleOperate,
		CreatedUnixMs: t0.UnixMilli(), ExpiresUnixMs: t0.Add(24 * time.Hour).UnixMilli(),
	}
	if rec != want {
		t.Fatalf("record %+v, want %+v", rec, want)
	}
	if strings.Contains(rec.Hash, tok[21:]) || strings.Contains(rec.ID, tok[21:]) {
		t.Fatal("record holds the secret")
	}
	id, err := ParseAdminToken(tok)
	if err != nil || id != rec.ID {
		t.Fatalf("ParseAdminToken = %q, %v", id, err)
	}
	for _, now := range []time.Time{t0, t0.Add(24*time.Hour - time.Millisecond)} {
		if err := CheckAdminToken(tok, rec, now); err != nil {
			t.Fatalf("CheckAdminToken at %s: %v", now, err)
		}
	}
	other, _ := newAdmin(t, RoleOperate, 0)
	if other == tok {
		t.Fatal("two tokens alike")
	}
}

func TestCheckAdminTokenRejects(t *testing.T) {
	tok, rec := newAdmin(t, RoleRead, time.Hour)
	other, otherRec := newAdmin(t, RoleRead, time.Hour)
	// Same id, another secret: flip one character of the secret, keeping
	// it valid base64url of 32 bytes.
	flipped := []byte(tok)
	i := len(AdminTokenPrefix) + 16 + 1 + 5
	if flipped[i] == 'A' {
		flipped[i] = 'B'
	} else {
		flipped[i] = 'A'
	}
	sameIDOtherSecret := tok[:21] + other[21:]
	badHash := rec
	badHash.Hash = "zz"
	cases := []struct {
		name string
		tok  string
		rec  AdminRecord
		now  time.Time
		want error
	}{
		{"one character of the secret changed", string(flipped), rec, t0, ErrBadSecret},
		{"right id, another token's secret", sameIDOtherSecret, rec, t0, ErrBadSecret},
		{"another token", other, rec, t0, ErrBadSecret},
		{"another record", tok, otherRec, t0, ErrBadSecret},
		{"record hash corrupt", tok, badHash, t0, ErrBadSecret},
		{"expired", tok, rec, t0.Add(time.Hour), ErrExpired},
		{"long expired", tok, rec, t0.Add(1000 * time.Hour), ErrExpired},
		{"malformed", tok + "x", rec, t0, ErrMalformed},
		{"upper case", strings.ToUpper(tok), rec, t0, ErrMalformed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckAdminToken(tc.tok, tc.rec, tc.now)
			checkSentinel(t, err, tc.want)
			if strings.Contains(err.Error(), tc.tok[min(21, len(tc.tok)):]) {
				t.Errorf("error %q shows the secret", err)
			}
		})
	}
	// An expired token with the wrong secret says so, not "expired".
	checkSentinel(t, CheckAdminToken(string(flipped), rec, t0.Add(2*time.Hour)), ErrBadSecret)

	// ttl 0 never expires.
	forever, frec := newAdmin(t, RoleRead, 0)
	if frec.ExpiresUnixMs != 0 {
		t.Fatalf("ExpiresUnixMs %d", frec.ExpiresUnixMs)
	}
	if err := CheckAdminToken(forever, frec, t0.Add(100*365*24*time.Hour)); err != nil {
		t.Fatal(err)
	}
}

func TestParseAdminTokenRejects(t *testing.T) {
	tok, _ := newAdmin(t, RoleRead, 0)
	secret := tok[21:]
	cases := []struct{ name, tok string }{
		{"empty", ""},
		{"just the prefix", "bat_"},
		{"other prefix", "bot_" + tok[4:]},
		{"bearer prefix left on", "Bearer " + tok},
		{"trailing newline", tok[:len(tok)-1] + "\n"},
		{"upper case id", "bat_0123456789ABCDEF_" + secret},
		{"id not hex", "bat_0123456789abcdeg_" + secret},
		{"short id", "bat_0123456789abcde__" + secret},
		// A fixed secret: a random one may start with '_', which is a
		// separator again.
		{"no separator", "bat_0123456789abcdef" + strings.Repeat("A", 44)},
		{"secret not base64url", "bat_0123456789abcdef_" + strings.Repeat("+", 43)},
		// The last character carries 2 unused bits; strict decoding wants
		// them zero, so each secret has a single spelling.
		{"non-canonical secret", "bat_0123456789abcdef_" + strings.Repeat("A", 42) + "B"},
		{"agent JWT", "eyJhbGciOiJIUzI1NiJ9.e30.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id, err := ParseAdminToken(tc.tok)
			checkSentinel(t, err, ErrMalformed)
			if id != "" {
				t.Errorf("id %q", id)
			}
		})
	}
	if id, err := ParseAdminToken("bat_0123456789abcdef_" + strings.Repeat("_", 42) + "w"); err != nil || id != "0123456789abcdef" {
		t.Errorf("secret full of '_': %q, %v", id, err)
	}
}

func TestNewAdminTokenRejects(t *testing.T) {
	cases := []struct {
		name    string
		tokName string
		role    AdminRole
		ttl     time.Duration
		want    string
	}{
		{"empty name", " ", RoleRead, 0, "name: empty"},
		{"long name", strings.Repeat("n", 129), RoleRead, 0, "at most 128"},
		{"control character", "a\nb", RoleRead, 0, "unprintable"},
		{"bad UTF-8", "a\xffb", RoleRead, 0, "UTF-8"},
		{"no role", "n", "", 0, "unknown role"},
		{"unknown role", "n", "admin", 0, "valid values are read, operate"},
		{"role in the wrong case", "n", "READ", 0, "unknown role"},
		{"negative ttl", "n", RoleRead, -time.Second, "negative"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tok, _, err := NewAdminToken(tc.tokName, tc.role, tc.ttl, t0)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("NewAdminToken = %q, %v; want an error with %q", tok, err, tc.want)
			}
		})
	}
}

func TestAdminRoles(t *testing.T) {
	cases := []struct {
		have, need AdminRole
		want       bool
	}{
		{RoleRead, RoleRead, true},
		{RoleRead, RoleOperate, false},
		{RoleOperate, RoleRead, true},
		{RoleOperate, RoleOperate, true},
		{"", RoleRead, false},
		{"admin", RoleRead, false},
		{"READ", RoleRead, false},
		{RoleOperate, "", false},
		{RoleOperate, "admin", false},
	}
	for _, tc := range cases {
		if got := tc.have.Allows(tc.need); got != tc.want {
			t.Errorf("%q.Allows(%q) = %v, want %v", tc.have, tc.need, got, tc.want)
		}
	}
	for in, want := range map[string]AdminRole{"read": RoleRead, "Operate": RoleOperate, " read ": RoleRead} {
		if got, err := ParseAdminRole(in); err != nil || got != want {
			t.Errorf("ParseAdminRole(%q) = %q, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "admin", "reader", "operate,read"} {
		_, err := ParseAdminRole(in)
		if err == nil || !strings.Contains(err.Error(), "valid values are read, operate") {
			t.Errorf("ParseAdminRole(%q): %v", in, err)
		}
	}
}
