package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/berthhq/berth/dataplane/bench"
	"github.com/berthhq/berth/dataplane/proxy"
)

func (a *app) benchCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Load generators that check every answer",
	}
	cmd.AddCommand(a.benchHTTPCmd(), a.benchStreamCmd())
	return cmd
}

func (a *app) benchHTTPCmd() *cobra.Command {
	cfg := bench.Default()
	var (
		endpoint string
		headers  []string
		noEcho   bool
	)
	cmd := &cobra.Command{
		Use:   "http URL",
		Short: "Closed-loop HTTP load: req/s, latency percentiles, errors by kind",
		Long: `bench http sends requests from --clients keep-alive connections, each waiting
for its answer before sending the next, and checks every answer: status 200
and, with a body, the same bytes echoed back (each body carries a sequence
number, so an answer meant for another request is caught). Failed requests
are counted by kind and never as throughput; the command exits 1 when any
request failed.

  berthctl bench http --endpoint demo http://127.0.0.1:8080/echo
  berthctl bench http -c 64 -d 30s --body-size 65536 http://demo.localhost:8080/echo
  berthctl bench http --body-size 0 --no-echo -n 100000 http://127.0.0.1:5000/`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg.URL = args[0]
			cfg.Echo = !noEcho
			cfg.Headers = http.Header{}
			for _, h := range headers {
				k, v, ok := strings.Cut(h, ":")
				if !ok || strings.TrimSpace(k) == "" {
					return fmt.Errorf("header %q: want 'Name: value'", h)
				}
				cfg.Headers.Add(strings.TrimSpace(k), strings.TrimSpace(v))
			}
			if endpoint != "" {
				cfg.Headers.Set(proxy.EndpointHeader, endpoint)
			}
			if err := cfg.Validate(); err != nil {
				return err
			}
			res, err := bench.Run(cmd.Context(), cfg)
			if errors.Is(err, context.Canceled) {
				// Interrupted (Ctrl-C, SIGTERM): report what ran.
				fmt.Fprintln(a.stderr, "interrupted: results so far")
			} else if err != nil {
				return fmt.Errorf("bench: %w", err)
			}
			if err := a.printBench(cfg, res); err != nil {
				return err
			}
			if n := res.ErrorCount(); n > 0 {
				return fmt.Errorf("%d request(s) failed", n)
			}
			if res.Requests == 0 {
				return fmt.Errorf("no request was answered")
			}
			return nil
		},
	}
	fs := cmd.Flags()
	fs.IntVarP(&cfg.Clients, "clients", "c", cfg.Clients, "concurrent keep-alive connections")
	fs.DurationVarP(&cfg.Duration, "duration", "d", cfg.Duration, "how long to send (0: until --requests)")
	fs.Int64VarP(&cfg.Requests, "requests", "n", 0, "stop after this many answered requests (0: until --duration)")
	fs.IntVar(&cfg.BodySize, "body-size", cfg.BodySize, "request body in bytes (POST); 0 sends GET")
	fs.BoolVar(&noEcho, "no-echo", false, "do not require the body to be echoed back")
	fs.StringVar(&cfg.Host, "host", "", "Host header (default: the URL's host)")
	fs.StringVar(&endpoint, "endpoint", "", "endpoint to reach, sent as "+proxy.EndpointHeader)
	fs.StringArrayVarP(&headers, "header", "H", nil, "extra header 'Name: value' (repeatable)")
	fs.DurationVar(&cfg.Timeout, "request-timeout", cfg.Timeout, "deadline of one request")
	fs.DurationVar(&cfg.Warmup, "warmup", cfg.Warmup, "untimed load before the measured run")
	return cmd
}

// benchReport is the machine-readable form of a run (-o json / yaml).
type benchReport struct {
	URL       string           `json:"url" yaml:"url"`
	Clients   int              `json:"clients" yaml:"clients"`
	BodySize  int              `json:"body_size" yaml:"body_size"`
	Requests  int64            `json:"requests" yaml:"requests"`
	Failed    int64            `json:"failed" yaml:"failed"`
	Errors    map[string]int64 `json:"errors" yaml:"errors"`
	Seconds   float64          `json:"seconds" yaml:"seconds"`
	PerSecond float64          `json:"requests_per_second" yaml:"requests_per_second"`
	P50Ms     float64          `json:"p50_ms" yaml:"p50_ms"`
	P90Ms     float64          `json:"p90_ms" yaml:"p90_ms"`
	P99Ms     float64          `json:"p99_ms" yaml:"p99_ms"`
	MaxMs     float64          `json:"max_ms" yaml:"max_ms"`
	MBSent    float64          `json:"mb_sent" yaml:"mb_sent"`
	MBRecv    float64          `json:"mb_received" yaml:"mb_received"`
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func (a *app) printBench(cfg bench.Config, res bench.Result) error {
	rep := benchReport{
		URL: cfg.URL, Clients: cfg.Clients, BodySize: cfg.BodySize,
		Requests: res.Requests, Failed: res.ErrorCount(), Errors: res.Errors, Seconds: res.Elapsed.Seconds(),
		PerSecond: res.PerSecond, P50Ms: ms(res.P50), P90Ms: ms(res.P90), P99Ms: ms(res.P99), MaxMs: ms(res.Max),
		MBSent: float64(res.BytesSent) / 1e6, MBRecv: float64(res.BytesRecv) / 1e6,
	}
	switch a.printer.format {
	case formatJSON:
		b, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return fmt.Errorf("encode json: %w", err)
		}
		_, err = fmt.Fprintf(a.stdout, "%s\n", b)
		return err
	case formatYAML:
		b, err := json.Marshal(rep)
		if err != nil {
			return fmt.Errorf("encode: %w", err)
		}
		y, err := jsonToYAML(b)
		if err != nil {
			return err
		}
		_, err = a.stdout.Write(y)
		return err
	}
	tw := newTable(a.stdout)
	fmt.Fprintf(tw, "url\t%s\n", rep.URL)
	fmt.Fprintf(tw, "clients\t%d\n", rep.Clients)
	fmt.Fprintf(tw, "body\t%d B\n", rep.BodySize)
	fmt.Fprintf(tw, "requests\t%d in %.2fs\n", rep.Requests, rep.Seconds)
	fmt.Fprintf(tw, "req/s\t%.0f\n", rep.PerSecond)
	fmt.Fprintf(tw, "latency\tp50 %.2fms  p90 %.2fms  p99 %.2fms  max %.2fms\n", rep.P50Ms, rep.P90Ms, rep.P99Ms, rep.MaxMs)
	fmt.Fprintf(tw, "transfer\t%.1f MB sent, %.1f MB received\n", rep.MBSent, rep.MBRecv)
	printErrors(tw, res.Errors)
	return tw.Flush()
}

func printErrors(tw *tabwriter.Writer, errs map[string]int64) {
	if len(errs) == 0 {
		fmt.Fprintf(tw, "errors\tnone\n")
		return
	}
	kinds := make([]string, 0, len(errs))
	for k := range errs {
		kinds = append(kinds, k)
	}
	slices.Sort(kinds)
	for i, k := range kinds {
		label := ""
		if i == 0 {
			label = "errors"
		}
		fmt.Fprintf(tw, "%s\t%s: %d\n", label, k, errs[k])
	}
}
