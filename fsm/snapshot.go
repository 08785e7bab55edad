package fsm

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
	"google.golang.org/protobuf/encoding/protodelim"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// snapshotFormat is SnapshotHeader.format_version of what this code writes
// and the only version it reads.
const snapshotFormat = 1

// snapshotData is a point-in-time copy of the state's object pointers.
// Taking it copies pointers only; the objects are immutable, so it can be
// written out while Apply goes on.
type snapshotData struct {
	applied   uint64
	proxies   []*berthv1.Proxy
	conns     []*berthv1.Connection
	moves     []*berthv1.Move
	servers   []*berthv1.Server
	endpoints []*berthv1.Endpoint
	tokens    []*berthv1.AdminToken
	requests  []*appliedRequest // in the order they applied
}

// capture copies the object pointers out of the maps, unsorted: a few
// milliseconds for 100k connections on the FSM goroutine. Sorting is left
// to writeTo, which runs concurrently with Apply.
func (s *State) capture(applied uint64) *snapshotData {
	return &snapshotData{
		applied:   applied,
		proxies:   values(s.proxies),
		conns:     values(s.conns),
		moves:     values(s.moves),
		servers:   values(s.servers),
		endpoints: values(s.endpoints),
		tokens:    values(s.tokens),
		requests:  s.requests.live(),
	}
}

func values[V any](m map[string]V) []V {
	out := make([]V, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

type ider interface{ GetId() string }

func sortByID[T ider](xs []T) {
	slices.SortFunc(xs, func(a, b T) int { return strings.Compare(a.GetId(), b.GetId()) })
}

// writeTo streams the snapshot: a header, then proxies, connections, moves,
// servers, endpoints and admin tokens, each sorted by id so equal states
// give equal bytes, then the remembered requests in the order they applied,
// then a trailer with the counts. Every record is a varint-length-delimited
// SnapshotRecord, the protodelim format; it is framed here into one reused
// buffer rather than with protodelim.MarshalTo, which allocates per record.
func (d *snapshotData) writeTo(w io.Writer) error {
	sortByID(d.proxies)
	sortByID(d.conns)
	sortByID(d.moves)
	sortByID(d.servers)
	sortByID(d.tokens)
	slices.SortFunc(d.endpoints, func(a, b *berthv1.Endpoint) int { return strings.Compare(a.Name, b.Name) })

	bw := bufio.NewWriterSize(w, 256<<10)
	enc := proto.MarshalOptions{Deterministic: true}
	rec := &berthv1.SnapshotRecord{}
	var buf []byte
	put := func() error {
		var err error
		if buf, err = enc.MarshalAppend(buf[:0], rec); err != nil {
			return err
		}
		var n [binary.MaxVarintLen64]byte
		if _, err := bw.Write(protowire.AppendVarint(n[:0], uint64(len(buf)))); err != nil {
			return err
		}
		_, err = bw.Write(buf)
		return err
	}
	rec.Kind = &berthv1.SnapshotRecord_Header{Header: &berthv1.SnapshotHeader{FormatVersion: snapshotFormat, AppliedIndex: d.applied}}
	if err := put(); err != nil {
		return err
	}
	pr := &berthv1.SnapshotRecord_Proxy{}
	rec.Kind = pr
	for _, pr.Proxy = range d.proxies {
		if err := put(); err != nil {
			return err
		}
	}
	cr := &berthv1.SnapshotRecord_Connection{}
	rec.Kind = cr
	for _, cr.Connection = range d.conns {
		if err := put(); err != nil {
			return err
		}
	}
	mr := &berthv1.SnapshotRecord_Move{}
	rec.Kind = mr
	for _, mr.Move = range d.moves {
		if err := put(); err != nil {
			return err
		}
	}
	sr := &berthv1.SnapshotRecord_Server{}
	rec.Kind = sr
	for _, sr.Server = range d.servers {
		if err := put(); err != nil {
			return err
		}
	}
	se := &berthv1.SnapshotRecord_Endpoint{}
	rec.Kind = se
	for _, se.Endpoint = range d.endpoints {
		if err := put(); err != nil {
			return err
		}
	}
	st := &berthv1.SnapshotRecord_AdminToken{}
	rec.Kind = st
	for _, st.AdminToken = range d.tokens {
		if err := put(); err != nil {
			return err
		}
	}
	ar := &berthv1.SnapshotRecord_AppliedRequest{AppliedRequest: &berthv1.AppliedRequest{}}
	rec.Kind = ar
	for _, r := range d.requests {
		ar.AppliedRequest.RequestId = []byte(r.id)
		ar.AppliedRequest.UnixMs = r.unixMs
		ar.AppliedRequest.Result = r.result
		if err := put(); err != nil {
			return err
		}
	}
	rec.Kind = &berthv1.SnapshotRecord_Trailer{Trailer: &berthv1.SnapshotTrailer{
		Proxies:         uint64(len(d.proxies)),
		Connections:     uint64(len(d.conns)),
		Moves:           uint64(len(d.moves)),
		Servers:         uint64(len(d.servers)),
		AdminTokens:     uint64(len(d.tokens)),
		AppliedRequests: uint64(len(d.requests)),
	}}
	if err := put(); err != nil {
		return err
	}
	return bw.Flush()
}

var errTruncated = errors.New("snapshot truncated: no trailer")

// readSnapshot builds a complete new State from a snapshot stream and
// returns it with the snapshot's applied index. Indexes and endpoints are
// rebuilt. Any malformed, truncated or inconsistent stream is an error.
func readSnapshot(r io.Reader) (*State, uint64, error) {
	br := bufio.NewReaderSize(r, 256<<10)
	dec := protodelim.UnmarshalOptions{MaxSize: MaxCommandBytes}
	rec := &berthv1.SnapshotRecord{}
	next := func() error {
		err := dec.UnmarshalFrom(br, rec)
		switch {
		case err == io.EOF:
			return errTruncated
		case errors.Is(err, io.ErrUnexpectedEOF):
			return fmt.Errorf("%w: %v", errTruncated, err)
		case err != nil:
			return fmt.Errorf("snapshot record: %w", err)
		}
		return nil
	}
	if err := next(); err != nil {
		return nil, 0, err
	}
	h := rec.GetHeader()
	if h == nil {
		return nil, 0, errors.New("snapshot: does not start with a header")
	}
	if h.FormatVersion != snapshotFormat {
		return nil, 0, fmt.Errorf("snapshot: format version %d, this build reads %d", h.FormatVersion, snapshotFormat)
	}
	applied := h.AppliedIndex

	s := NewState()
	epVersions := map[string]uint64{}
	for {
		if err := next(); err != nil {
			return nil, 0, err
		}
		switch k := rec.Kind.(type) {
		case *berthv1.SnapshotRecord_Proxy:
			p := k.Proxy
			if p.GetId() == "" || s.proxies[p.Id] != nil {
				return nil, 0, fmt.Errorf("snapshot: proxy %q empty or repeated", p.GetId())
			}
			s.setProxy(p)
		case *berthv1.SnapshotRecord_Connection:
			c := k.Connection
			if c.GetId() == "" || s.conns[c.Id] != nil {
				return nil, 0, fmt.Errorf("snapshot: connection %q empty or repeated", c.GetId())
			}
			if s.proxies[c.ProxyId] == nil {
				return nil, 0, fmt.Errorf("snapshot: connection %q is held by unknown proxy %q", c.Id, c.ProxyId)
			}
			s.setConn(c)
		case *berthv1.SnapshotRecord_Move:
			m := k.Move
			if m.GetId() == "" || s.moves[m.Id] != nil {
				return nil, 0, fmt.Errorf("snapshot: move %q empty or repeated", m.GetId())
			}
			s.setMove(m)
		case *berthv1.SnapshotRecord_Server:
			v := k.Server
			if v.GetId() == "" || s.servers[v.Id] != nil {
				return nil, 0, fmt.Errorf("snapshot: server %q empty or repeated", v.GetId())
			}
			s.servers[v.Id] = v
		case *berthv1.SnapshotRecord_AdminToken:
			v := k.AdminToken
			if v.GetId() == "" || s.tokens[v.Id] != nil {
				return nil, 0, fmt.Errorf("snapshot: admin token %q empty or repeated", v.GetId())
			}
			s.tokens[v.Id] = v
		case *berthv1.SnapshotRecord_AppliedRequest:
			v := k.AppliedRequest
			id := v.GetRequestId()
			if len(id) == 0 || len(id) > MaxRequestIDBytes || v.GetResult() == nil {
				return nil, 0, fmt.Errorf("snapshot: applied request %x has a bad id or no result", id)
			}
			if _, dup := s.requests.lookup(id); dup {
				return nil, 0, fmt.Errorf("snapshot: applied request %x repeated", id)
			}
			s.requests.add(id, v.GetUnixMs(), v.GetResult())
		case *berthv1.SnapshotRecord_Trailer:
			t := k.Trailer
			if int(t.AdminTokens) != len(s.tokens) {
				return nil, 0, fmt.Errorf("snapshot: read %d admin tokens, trailer says %d", len(s.tokens), t.AdminTokens)
			}
			if int(t.AppliedRequests) != s.requests.Len() {
				return nil, 0, fmt.Errorf("snapshot: read %d applied requests, trailer says %d", s.requests.Len(), t.AppliedRequests)
			}
			got := Counts{Proxies: len(s.proxies), Connections: len(s.conns), Moves: len(s.moves), Servers: len(s.servers)}
			want := Counts{Proxies: int(t.Proxies), Connections: int(t.Connections), Moves: int(t.Moves), Servers: int(t.Servers)}
			if got != want {
				return nil, 0, fmt.Errorf("snapshot: read %+v, trailer says %+v", got, want)
			}
			if _, err := br.ReadByte(); err != io.EOF {
				return nil, 0, errors.New("snapshot: data after the trailer")
			}
			s.rebuildEndpoints(epVersions, applied)
			return s, applied, nil
		case *berthv1.SnapshotRecord_Header:
			return nil, 0, errors.New("snapshot: second header")
		case *berthv1.SnapshotRecord_Endpoint:
			epVersions[k.Endpoint.GetName()] = k.Endpoint.GetVersion()
		}
	}
}

// rebuildEndpoints derives every endpoint from the restored connections,
// with the version the snapshot recorded (the snapshot's index when it
// recorded none).
func (s *State) rebuildEndpoints(versions map[string]uint64, applied uint64) {
	for name := range s.dirty {
		if e := s.deriveEndpoint(name, nil, true); e != nil {
			e.Version = applied
			if v, ok := versions[name]; ok {
				e.Version = v
			}
			s.setEndpoint(e)
		}
	}
	clear(s.dirty)
}
