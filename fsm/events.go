package fsm

import (
	"slices"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// Match reports whether ev belongs to a subscription for topics narrowed by
// filter. It is the one definition of topic and filter semantics: the event
// broker applies it to live events and State.SnapshotEvents to snapshots.
func Match(topics []berthv1.Topic, filter *berthv1.EventFilter, ev *berthv1.Event) bool {
	for _, t := range topics {
		if matchTopic(t, ev) && matchFilter(filter, ev) {
			return true
		}
	}
	return false
}

func matchTopic(t berthv1.Topic, ev *berthv1.Event) bool {
	switch t {
	case berthv1.Topic_TOPIC_PROXIES:
		return ev.GetProxy() != nil
	case berthv1.Topic_TOPIC_CONNECTIONS:
		return ev.GetConnection() != nil
	case berthv1.Topic_TOPIC_MOVES:
		return ev.GetMove() != nil
	case berthv1.Topic_TOPIC_ENDPOINTS:
		return ev.GetEndpoint() != nil
	case berthv1.Topic_TOPIC_SERVERS:
		return ev.GetServer() != nil
	case berthv1.Topic_TOPIC_ASSIGNMENTS:
		return ev.GetConnection() != nil || ev.GetMove() != nil
	}
	return false
}

func matchFilter(f *berthv1.EventFilter, ev *berthv1.Event) bool {
	if f == nil {
		return true
	}
	if f.Region != "" && ev.GetServer() == nil && ev.GetEndpoint() == nil && ev.Region != f.Region {
		return false
	}
	if f.ProxyId != "" && !touchesProxy(ev, f.ProxyId) {
		return false
	}
	if f.Endpoint != "" && !touchesEndpoint(ev, f.Endpoint) {
		return false
	}
	return true
}

func touchesProxy(ev *berthv1.Event, id string) bool {
	switch o := ev.Object.(type) {
	case *berthv1.Event_Proxy:
		return o.Proxy.GetId() == id
	case *berthv1.Event_Connection:
		return o.Connection.GetProxyId() == id
	case *berthv1.Event_Move:
		return o.Move.GetFromProxyId() == id || o.Move.GetToProxyId() == id
	case *berthv1.Event_Endpoint:
		return slices.Contains(o.Endpoint.GetProxyIds(), id)
	}
	return true
}

func touchesEndpoint(ev *berthv1.Event, name string) bool {
	switch o := ev.Object.(type) {
	case *berthv1.Event_Connection:
		return slices.Contains(o.Connection.GetEndpoints(), name)
	case *berthv1.Event_Endpoint:
		return o.Endpoint.GetName() == name
	case *berthv1.Event_Proxy, *berthv1.Event_Move, *berthv1.Event_Server:
		return false
	}
	return true
}
