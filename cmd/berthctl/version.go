package main

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/berthhq/berth/cmd/internal/buildinfo"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// versionReport is what berthctl version prints: its own build and each
// control-plane server's, as the cluster status reports them.
type versionReport struct {
	Client  buildView    `json:"client"`
	Servers []serverView `json:"servers,omitempty"`
	// Error says why the servers are missing (berthctl's own version is
	// printed even when the control plane cannot be reached).
	Error string `json:"error,omitempty"`
}

type buildView struct {
	Version   string `json:"version"`
	Revision  string `json:"revision,omitempty"`
	Time      string `json:"time,omitempty"`
	Modified  bool   `json:"modified,omitempty"`
	GoVersion string `json:"go_version"`
}

type serverView struct {
	ID    string     `json:"id"`
	Build *buildView `json:"build,omitempty"`
	// State is the server's Raft state, or why it did not answer.
	State string `json:"state"`
}

func viewOf(i buildinfo.Info) buildView {
	return buildView{Version: i.Version, Revision: i.Revision, Time: i.Time, Modified: i.Modified, GoVersion: i.GoVersion}
}

func (a *app) versionCmd() *cobra.Command {
	var clientOnly bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print berthctl's version and every control-plane server's",
		Long: `version prints berthctl's build and, from the cluster status, the build each
control-plane server runs (a rolling upgrade shows both). With --client only
berthctl's own. It exits 1 when the servers cannot be asked.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rep := versionReport{Client: viewOf(a.build)}
			if clientOnly {
				return a.printVersion(rep)
			}
			ctx, cancel := a.callContext(cmd.Context())
			defer cancel()
			var st *berthv1.ClusterStatusResponse
			err := a.admin(func(c berthv1.AdminServiceClient) (err error) {
				st, err = c.ClusterStatus(ctx, &berthv1.ClusterStatusRequest{})
				return err
			})
			if err != nil {
				err = callFailed("cluster status", err)
				rep.Error = err.Error()
				if perr := a.printVersion(rep); perr != nil {
					return perr
				}
				return err
			}
			for _, s := range st.GetServers() {
				v := serverView{ID: s.GetId(), State: s.GetState()}
				if s.GetError() != "" {
					v.State += ": " + s.GetError()
				}
				if s.GetBuild() != nil {
					b := viewOf(buildinfo.FromProto(s.GetBuild()))
					v.Build = &b
				}
				rep.Servers = append(rep.Servers, v)
			}
			return a.printVersion(rep)
		},
	}
	cmd.Flags().BoolVar(&clientOnly, "client", false, "print berthctl's version only; ask no server")
	return cmd
}

func (a *app) printVersion(rep versionReport) error {
	w := a.stdout
	if a.printer.format != formatTable {
		js, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return fmt.Errorf("encode json: %w", err)
		}
		if a.printer.format == formatYAML {
			if js, err = jsonToYAML(js); err != nil {
				return err
			}
			_, err = w.Write(js)
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", js)
		return err
	}
	if _, err := fmt.Fprintf(w, "berthctl %s\n", buildinfo.Info(rep.Client)); err != nil {
		return err
	}
	for _, s := range rep.Servers {
		b := "unknown (no answer)"
		if s.Build != nil {
			b = buildinfo.Info(*s.Build).String()
		}
		if _, err := fmt.Fprintf(w, "server %s %s [%s]\n", s.ID, b, s.State); err != nil {
			return err
		}
	}
	return nil
}
