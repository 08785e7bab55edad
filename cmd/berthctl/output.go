package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"gopkg.in/yaml.v3"
)

// Output formats for -o.
const (
	formatTable = "table"
	formatJSON  = "json"
	formatYAML  = "yaml"
)

var formats = []string{formatTable, formatJSON, formatYAML}

func parseFormat(s string) (string, error) {
	f := strings.ToLower(strings.TrimSpace(s))
	for _, known := range formats {
		if f == known {
			return f, nil
		}
	}
	return "", fmt.Errorf("unknown output format %q: valid values are %s", s, strings.Join(formats, ", "))
}

// jsonOptions keep the proto field names and print every field, so scripts
// see stable keys.
var jsonOptions = protojson.MarshalOptions{
	UseProtoNames:   true,
	EmitUnpopulated: true,
}

// marshalJSON encodes m with jsonOptions, then lays it out with
// encoding/json: protojson varies its whitespace on purpose, and output that
// changes from run to run would spoil diffs and golden files. indent ""
// gives one line.
func marshalJSON(m proto.Message, indent string) ([]byte, error) {
	raw, err := jsonOptions.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode json: %w", err)
	}
	var buf bytes.Buffer
	if indent == "" {
		err = json.Compact(&buf, raw)
	} else {
		err = json.Indent(&buf, raw, "", indent)
	}
	if err != nil {
		return nil, fmt.Errorf("format json: %w", err)
	}
	return buf.Bytes(), nil
}

// printer writes results in the chosen format: tables for people, JSON and
// YAML (both from protojson, so names match the .proto) for scripts.
type printer struct {
	w      io.Writer
	format string
}

// print writes m as JSON or YAML, or calls table for the table format.
func (p printer) print(m proto.Message, table func(*tabwriter.Writer)) error {
	switch p.format {
	case formatJSON:
		b, err := marshalJSON(m, "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(p.w, "%s\n", b)
		return err
	case formatYAML:
		b, err := toYAML(m)
		if err != nil {
			return err
		}
		_, err = p.w.Write(b)
		return err
	default:
		tw := newTable(p.w)
		table(tw)
		return tw.Flush()
	}
}

// printLine writes m as one compact JSON line, or one YAML document; used
// for streams.
func (p printer) printLine(m proto.Message) error {
	switch p.format {
	case formatYAML:
		b, err := toYAML(m)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(p.w, "---\n%s", b)
		return err
	default:
		b, err := marshalJSON(m, "")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(p.w, "%s\n", b)
		return err
	}
}

// toYAML converts m's protojson form to block-style YAML. Going through a
// yaml.Node keeps the proto field order and the quoting of strings that
// would otherwise read back as numbers or booleans (64-bit integers are
// strings in protojson).
func toYAML(m proto.Message) ([]byte, error) {
	js, err := jsonOptions.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode json: %w", err)
	}
	return jsonToYAML(js)
}

// jsonToYAML lays a JSON document out as block-style YAML, keys in order.
func jsonToYAML(js []byte) ([]byte, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(js, &doc); err != nil {
		return nil, fmt.Errorf("convert json to yaml: %w", err)
	}
	blockStyle(&doc)
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return nil, fmt.Errorf("encode yaml: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("encode yaml: %w", err)
	}
	return buf.Bytes(), nil
}

// blockStyle drops the flow style and quoting JSON parsing left on every
// node; the encoder re-quotes only where YAML needs it.
func blockStyle(n *yaml.Node) {
	n.Style = 0
	for _, c := range n.Content {
		blockStyle(c)
	}
}

func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
}

// row writes one table row. Write errors surface at Flush.
func row(tw *tabwriter.Writer, cells ...string) {
	for i, c := range cells {
		cells[i] = cell(c)
	}
	_, _ = fmt.Fprintln(tw, strings.Join(cells, "\t"))
}

// cell keeps a value on one table cell: no tabs or newlines, "-" for empty.
func cell(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if s == "" {
		return "-"
	}
	return s
}

func uint64s(v uint64) string { return strconv.FormatUint(v, 10) }

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// age says how long ago a Unix-ms time was ("-" when unset).
func age(now time.Time, unixMs int64) string {
	if unixMs == 0 {
		return "-"
	}
	d := now.Sub(time.UnixMilli(unixMs))
	if d < 0 {
		d = 0
	}
	return shortDuration(d)
}

// shortDuration rounds d to what a person reads at a glance.
func shortDuration(d time.Duration) string {
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < 10*time.Second:
		return d.Round(100 * time.Millisecond).String()
	case d < time.Hour:
		return d.Round(time.Second).String()
	default:
		return d.Round(time.Minute).String()
	}
}

// bytesIEC formats a byte count with binary units.
func bytesIEC(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := uint64(unit), 0
	for v := n / unit; v >= unit; v /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// joinOr joins values with commas ("-" when empty).
func joinOr(vals []string) string {
	if len(vals) == 0 {
		return "-"
	}
	return strings.Join(vals, ",")
}
