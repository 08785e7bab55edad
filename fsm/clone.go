package fsm

import berthv1 "github.com/berthhq/berth/proto/berth/v1"

// Hand-written shallow clones: proto.Clone is reflective and dominates
// Apply's cost. Slices, maps and sub-messages are shared with the original,
// which is safe because stored objects are never modified; a change assigns
// a new slice or map instead. TestClonesCopyEveryField fails when a field
// is added to the proto and not here.

func cloneProxy(p *berthv1.Proxy) *berthv1.Proxy {
	return &berthv1.Proxy{
		Id:                  p.Id,
		Region:              p.Region,
		Zone:                p.Zone,
		Addresses:           p.Addresses,
		Labels:              p.Labels,
		CapacityWeight:      p.CapacityWeight,
		Status:              p.Status,
		AdminState:          p.AdminState,
		Health:              p.Health,
		RegisteredIndex:     p.RegisteredIndex,
		HealthChangedUnixMs: p.HealthChangedUnixMs,
		Version:             p.Version,
	}
}

func cloneConn(c *berthv1.Connection) *berthv1.Connection {
	return &berthv1.Connection{
		Id:           c.Id,
		Slot:         c.Slot,
		AgentId:      c.AgentId,
		Endpoints:    c.Endpoints,
		ProxyId:      c.ProxyId,
		State:        c.State,
		OpenedIndex:  c.OpenedIndex,
		OpenedUnixMs: c.OpenedUnixMs,
		MoveId:       c.MoveId,
		Version:      c.Version,
	}
}

func cloneMove(m *berthv1.Move) *berthv1.Move {
	return &berthv1.Move{
		Id:              m.Id,
		ConnectionId:    m.ConnectionId,
		FromProxyId:     m.FromProxyId,
		ToProxyId:       m.ToProxyId,
		State:           m.State,
		Reason:          m.Reason,
		CreatedIndex:    m.CreatedIndex,
		CreatedUnixMs:   m.CreatedUnixMs,
		DeadlineUnixMs:  m.DeadlineUnixMs,
		NewConnectionId: m.NewConnectionId,
		AbortReason:     m.AbortReason,
		Version:         m.Version,
	}
}
