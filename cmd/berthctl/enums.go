package main

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/reflect/protoreflect"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// enumSet maps the short, lower-case names operators type ("active") to
// the values of a proto enum (PROXY_STATUS_ACTIVE), skipping UNSPECIFIED.
// Names come from the descriptor, so a value added to the .proto is
// accepted and listed without touching this file.
type enumSet struct {
	what    string // what the value is, for errors: "status"
	prefix  string // "PROXY_STATUS_"
	names   []string
	numbers map[string]protoreflect.EnumNumber
}

func newEnumSet(what string, d protoreflect.EnumDescriptor) enumSet {
	s := enumSet{what: what, numbers: make(map[string]protoreflect.EnumNumber)}
	if zero := d.Values().ByNumber(0); zero != nil {
		s.prefix = strings.TrimSuffix(string(zero.Name()), "UNSPECIFIED")
	}
	vals := d.Values()
	for i := range vals.Len() {
		v := vals.Get(i)
		if v.Number() == 0 {
			continue
		}
		name := strings.ToLower(strings.TrimPrefix(string(v.Name()), s.prefix))
		s.names = append(s.names, name)
		s.numbers[name] = v.Number()
	}
	return s
}

// Enums an operator can type.
var (
	proxyStatuses = newEnumSet("status", berthv1.ProxyStatus(0).Descriptor())
	moveStates    = newEnumSet("state", berthv1.MoveState(0).Descriptor())
	consistencies = newEnumSet("consistency", berthv1.Consistency(0).Descriptor())
	topics        = newEnumSet("topic", berthv1.Topic(0).Descriptor())
)

// parse accepts a short name or the full proto name, in any case.
func (s enumSet) parse(raw string) (protoreflect.EnumNumber, error) {
	name := strings.ToLower(strings.TrimSpace(raw))
	name = strings.TrimPrefix(name, strings.ToLower(s.prefix))
	if n, ok := s.numbers[name]; ok && name != "" {
		return n, nil
	}
	if strings.TrimSpace(raw) == "" {
		return 0, fmt.Errorf("empty %s: valid values are %s", s.what, strings.Join(s.names, ", "))
	}
	return 0, fmt.Errorf("unknown %s %q: valid values are %s", s.what, raw, strings.Join(s.names, ", "))
}

// parseEnums parses every value (already split on commas by the flag),
// dropping duplicates. An unknown value is an error, never an empty filter.
func parseEnums[T ~int32](s enumSet, raw []string) ([]T, error) {
	var out []T
	seen := make(map[protoreflect.EnumNumber]bool)
	for _, r := range raw {
		n, err := s.parse(r)
		if err != nil {
			return nil, err
		}
		if !seen[n] {
			seen[n] = true
			out = append(out, T(n))
		}
	}
	return out, nil
}

// parseEnumFlag parses a list flag; given but empty (--status "") is an
// error rather than a silent "match everything".
func parseEnumFlag[T ~int32](cmd *cobra.Command, flag string, s enumSet, raw []string) ([]T, error) {
	if cmd.Flags().Changed(flag) && len(raw) == 0 {
		_, err := s.parse("")
		return nil, err
	}
	return parseEnums[T](s, raw)
}

// enumName is the short lower-case name of a value for tables: "active"
// for PROXY_STATUS_ACTIVE, "-" for UNSPECIFIED, the number if unknown.
func enumName(e protoreflect.Enum) string {
	n := e.Number()
	if n == 0 {
		return "-"
	}
	d := e.Descriptor()
	v := d.Values().ByNumber(n)
	if v == nil {
		return strconv.Itoa(int(n))
	}
	prefix := ""
	if zero := d.Values().ByNumber(0); zero != nil {
		prefix = strings.TrimSuffix(string(zero.Name()), "UNSPECIFIED")
	}
	return strings.ToLower(strings.TrimPrefix(string(v.Name()), prefix))
}
