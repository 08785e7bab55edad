package controlplane

import (
	"google.golang.org/protobuf/proto"

	"github.com/berthhq/berth/fsm"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

func cloneWatch(req *berthv1.WatchRequest) *berthv1.WatchRequest {
	return proto.Clone(req).(*berthv1.WatchRequest)
}

// subscribe registers req with the broker under the FSM's read lock, so the
// snapshot (if one is needed) and the first live event join up exactly.
func (n *Node) subscribe(req *berthv1.WatchRequest) (sub *Subscription, err error) {
	n.fsm.View(func(s *fsm.State, applied uint64) {
		sub, err = n.broker.Subscribe(req, applied, func() []*berthv1.Event { return watchSnapshot(s, req) })
	})
	return sub, err
}

// watchSnapshot is the matching state of s as UPSERT events, each object
// once even when several selectors match it.
func watchSnapshot(s *fsm.State, req *berthv1.WatchRequest) []*berthv1.Event {
	var out []*berthv1.Event
	if len(req.Topics) > 0 {
		out = s.SnapshotEvents(req.Topics, req.Filter)
	}
	if len(req.Selectors) == 0 {
		return out
	}
	seen := make(map[objectKey]bool, len(out))
	for _, ev := range out {
		seen[eventKey(ev)] = true
	}
	for _, sel := range req.Selectors {
		for _, ev := range s.SnapshotEvents(sel.Topics, sel.Filter) {
			if k := eventKey(ev); !seen[k] {
				seen[k] = true
				out = append(out, ev)
			}
		}
	}
	return out
}

type objectKey struct {
	kind int
	id   string
}

func eventKey(ev *berthv1.Event) objectKey {
	switch o := ev.Object.(type) {
	case *berthv1.Event_Proxy:
		return objectKey{1, o.Proxy.Id}
	case *berthv1.Event_Connection:
		return objectKey{2, o.Connection.Id}
	case *berthv1.Event_Move:
		return objectKey{3, o.Move.Id}
	case *berthv1.Event_Endpoint:
		return objectKey{4, o.Endpoint.Name}
	case *berthv1.Event_Server:
		return objectKey{5, o.Server.Id}
	}
	return objectKey{}
}
