package main

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/berthhq/berth/dataplane/bench"
)

func (a *app) benchStreamCmd() *cobra.Command {
	cfg := bench.DefaultStream()
	var via string
	cmd := &cobra.Command{
		Use:   "stream tcp|ws TARGET",
		Short: "One stream's throughput through an echo service, every byte checked",
		Long: `bench stream writes a known byte pattern into one stream as fast as it takes
it and checks every byte the echo service sends back; the result is the
echoed megabytes (10^6 bytes) per second. Any byte out of place, or a
stream that ends early, fails the run.

  tcp HOST:PORT         a raw TCP echo (berth-agent demo-upstream --tcp-echo)
  tcp --via PROXY ENDP  the same echo behind an agent, through a proxy's
                        berth-tcp upgrade (PROXY is its downstream address)
  ws URL                a WebSocket echo (demo-upstream's /ws), binary
                        messages of --chunk-size, --window in flight

  berthctl bench stream tcp 127.0.0.1:9000
  berthctl bench stream tcp --via 127.0.0.1:8080 echo
  berthctl bench stream ws --endpoint demo ws://127.0.0.1:8080/ws`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg.Kind, cfg.Target = args[0], args[1]
			if via != "" {
				if cfg.Kind != bench.StreamTCP {
					return fmt.Errorf("--via: tcp streams only")
				}
				cfg.Via, cfg.Target, cfg.Endpoint = true, via, args[1]
			}
			if err := cfg.Validate(); err != nil {
				return err
			}
			res, err := bench.RunStream(cmd.Context(), cfg)
			if err != nil {
				return fmt.Errorf("bench: %w", err)
			}
			return a.printStream(cfg, res)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&via, "via", "", "proxy downstream address: reach the endpoint named by TARGET through it (tcp)")
	fs.StringVar(&cfg.Endpoint, "endpoint", "", "endpoint to reach, sent as X-Berth-Endpoint (ws)")
	fs.DurationVarP(&cfg.Duration, "duration", "d", cfg.Duration, "how long to send")
	fs.IntVar(&cfg.ChunkSize, "chunk-size", cfg.ChunkSize, "bytes per write (tcp) or per message (ws)")
	fs.IntVar(&cfg.Window, "window", cfg.Window, "WebSocket messages awaiting their echo")
	fs.DurationVar(&cfg.Timeout, "timeout", cfg.Timeout, "bound on connecting and on the last echoes")
	return cmd
}

// streamReport is the machine-readable form of a stream run.
type streamReport struct {
	Kind     string  `json:"kind" yaml:"kind"`
	Target   string  `json:"target" yaml:"target"`
	Endpoint string  `json:"endpoint,omitempty" yaml:"endpoint,omitempty"`
	Chunk    int     `json:"chunk_size" yaml:"chunk_size"`
	Bytes    int64   `json:"bytes" yaml:"bytes"`
	Seconds  float64 `json:"seconds" yaml:"seconds"`
	MBps     float64 `json:"mb_per_second" yaml:"mb_per_second"`
}

func (a *app) printStream(cfg bench.StreamConfig, res bench.StreamResult) error {
	rep := streamReport{Kind: cfg.Kind, Target: cfg.Target, Endpoint: cfg.Endpoint, Chunk: cfg.ChunkSize,
		Bytes: res.Bytes, Seconds: res.Elapsed.Seconds(), MBps: res.MBps}
	switch a.printer.format {
	case formatJSON, formatYAML:
		b, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return fmt.Errorf("encode: %w", err)
		}
		if a.printer.format == formatYAML {
			if b, err = jsonToYAML(b); err != nil {
				return err
			}
			_, err = a.stdout.Write(b)
			return err
		}
		_, err = fmt.Fprintf(a.stdout, "%s\n", b)
		return err
	}
	tw := newTable(a.stdout)
	fmt.Fprintf(tw, "stream\t%s %s\n", rep.Kind, rep.Target)
	if rep.Endpoint != "" {
		fmt.Fprintf(tw, "endpoint\t%s\n", rep.Endpoint)
	}
	fmt.Fprintf(tw, "echoed\t%.1f MB in %.2fs, every byte checked\n", float64(rep.Bytes)/1e6, rep.Seconds)
	fmt.Fprintf(tw, "throughput\t%.1f MB/s\n", rep.MBps)
	return tw.Flush()
}
