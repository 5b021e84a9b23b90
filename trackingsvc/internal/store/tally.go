package store

import (
	"errors"
	"slices"
	"strings"

	"google.golang.org/protobuf/encoding/protowire"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
)

// tally is the counters of one aggregate while they are summed: plain
// integers. A stored aggregate is a trackingv1.Metrics in the protobuf wire
// format (self-describing, readable with proto.Unmarshal), but encoded and
// decoded here by hand: a metrics query adds up hundreds of aggregates and
// ingest rewrites thousands, and protobuf's generic code spends most of that
// time allocating and reflecting.
type tally struct {
	sent, failed, excluded, received, opened, uniqueOpens, dismissed, actions, uniqueActions int64
	// The breakdowns hold a handful of entries: a slice beats a map.
	failedBy   []reasonCount
	excludedBy []reasonCount
	actionsBy  []actionCount
}

type reasonCount struct {
	reason int32
	n      int64
}

type actionCount struct {
	id string
	n  int64
}

// count adds one event: the rules behind every counter. unique says the
// event is a profile's unique open or unique action of its message.
func (t *tally) count(e *trackingv1.Event, unique bool) {
	switch e.GetType() {
	case trackingv1.EventType_EVENT_TYPE_SENT:
		t.sent++
	case trackingv1.EventType_EVENT_TYPE_FAILED:
		t.failed++
		t.failedBy = addReason(t.failedBy, int32(e.GetFailureReason()), 1)
	case trackingv1.EventType_EVENT_TYPE_EXCLUDED:
		t.excluded++
		t.excludedBy = addReason(t.excludedBy, int32(e.GetExclusionReason()), 1)
	case trackingv1.EventType_EVENT_TYPE_RECEIVED:
		t.received++
	case trackingv1.EventType_EVENT_TYPE_OPENED:
		t.opened++
		if unique {
			t.uniqueOpens++
		}
	case trackingv1.EventType_EVENT_TYPE_DISMISSED:
		t.dismissed++
	case trackingv1.EventType_EVENT_TYPE_ACTION:
		t.actions++
		t.actionsBy = addAction(t.actionsBy, e.GetActionId(), 1)
		if unique {
			t.uniqueActions++
		}
	}
}

// add adds o into t.
func (t *tally) add(o *tally) {
	t.sent += o.sent
	t.failed += o.failed
	t.excluded += o.excluded
	t.received += o.received
	t.opened += o.opened
	t.uniqueOpens += o.uniqueOpens
	t.dismissed += o.dismissed
	t.actions += o.actions
	t.uniqueActions += o.uniqueActions
	for _, r := range o.failedBy {
		t.failedBy = addReason(t.failedBy, r.reason, r.n)
	}
	for _, r := range o.excludedBy {
		t.excludedBy = addReason(t.excludedBy, r.reason, r.n)
	}
	for _, a := range o.actionsBy {
		t.actionsBy = addAction(t.actionsBy, a.id, a.n)
	}
}

func addReason(list []reasonCount, reason int32, n int64) []reasonCount {
	for i := range list {
		if list[i].reason == reason {
			list[i].n += n
			return list
		}
	}
	return append(list, reasonCount{reason, n})
}

// addActionBytes is addAction for an id still in a stored aggregate: the
// string is made only for an id not in the list yet.
func addActionBytes(list []actionCount, id []byte, n int64) []actionCount {
	for i := range list {
		if list[i].id == string(id) {
			list[i].n += n
			return list
		}
	}
	return append(list, actionCount{string(id), n})
}

func addAction(list []actionCount, id string, n int64) []actionCount {
	for i := range list {
		if list[i].id == id {
			list[i].n += n
			return list
		}
	}
	return append(list, actionCount{id, n})
}

// Field numbers of trackingv1.Metrics and of its breakdown entries.
const (
	fTargeted         = 1
	fSent             = 2
	fFailed           = 3
	fFailedByReason   = 4
	fExcluded         = 5
	fExcludedByReason = 6
	fReceived         = 7
	fOpened           = 8
	fUniqueOpens      = 9
	fDismissed        = 10
	fActions          = 11
	fActionsByID      = 12
	fUniqueActions    = 15
	// In FailureCount, ExclusionCount and ActionCount alike.
	fEntryKey   = 1
	fEntryCount = 2
)

// appendTo appends t as a trackingv1.Metrics without rates, breakdowns in
// key order (the bytes proto.Marshal would make for it).
func (t *tally) appendTo(b []byte) []byte {
	t.sort()
	b = appendVarintField(b, fTargeted, uint64(t.sent+t.failed))
	b = appendVarintField(b, fSent, uint64(t.sent))
	b = appendVarintField(b, fFailed, uint64(t.failed))
	for _, r := range t.failedBy {
		b = appendReasonEntry(b, fFailedByReason, r)
	}
	b = appendVarintField(b, fExcluded, uint64(t.excluded))
	for _, r := range t.excludedBy {
		b = appendReasonEntry(b, fExcludedByReason, r)
	}
	b = appendVarintField(b, fReceived, uint64(t.received))
	b = appendVarintField(b, fOpened, uint64(t.opened))
	b = appendVarintField(b, fUniqueOpens, uint64(t.uniqueOpens))
	b = appendVarintField(b, fDismissed, uint64(t.dismissed))
	b = appendVarintField(b, fActions, uint64(t.actions))
	for _, a := range t.actionsBy {
		size := 0
		if a.id != "" {
			size += 1 + protowire.SizeBytes(len(a.id))
		}
		if a.n != 0 {
			size += 1 + protowire.SizeVarint(uint64(a.n))
		}
		b = protowire.AppendTag(b, fActionsByID, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(size))
		b = appendStringField(b, fEntryKey, a.id)
		b = appendVarintField(b, fEntryCount, uint64(a.n))
	}
	return appendVarintField(b, fUniqueActions, uint64(t.uniqueActions))
}

func appendReasonEntry(b []byte, num protowire.Number, r reasonCount) []byte {
	size := 0
	if r.reason != 0 {
		size += 1 + protowire.SizeVarint(uint64(int64(r.reason)))
	}
	if r.n != 0 {
		size += 1 + protowire.SizeVarint(uint64(r.n))
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(size))
	b = appendVarintField(b, fEntryKey, uint64(int64(r.reason)))
	return appendVarintField(b, fEntryCount, uint64(r.n))
}

var errBadAggregate = errors.New("corrupt aggregate")

// addEncoded adds a stored aggregate (a trackingv1.Metrics) into t without
// decoding it into a message first. Unknown fields are skipped.
func (t *tally) addEncoded(b []byte) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return errBadAggregate
		}
		b = b[n:]
		switch {
		case typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return errBadAggregate
			}
			b = b[n:]
			switch num {
			case fSent:
				t.sent += int64(v)
			case fFailed:
				t.failed += int64(v)
			case fExcluded:
				t.excluded += int64(v)
			case fReceived:
				t.received += int64(v)
			case fOpened:
				t.opened += int64(v)
			case fUniqueOpens:
				t.uniqueOpens += int64(v)
			case fDismissed:
				t.dismissed += int64(v)
			case fActions:
				t.actions += int64(v)
			case fUniqueActions:
				t.uniqueActions += int64(v)
			}
		case typ == protowire.BytesType && (num == fFailedByReason || num == fExcludedByReason || num == fActionsByID):
			entry, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return errBadAggregate
			}
			b = b[n:]
			key, id, count, err := decodeEntry(entry)
			if err != nil {
				return err
			}
			switch num {
			case fFailedByReason:
				t.failedBy = addReason(t.failedBy, int32(key), count)
			case fExcludedByReason:
				t.excludedBy = addReason(t.excludedBy, int32(key), count)
			default:
				t.actionsBy = addActionBytes(t.actionsBy, id, count)
			}
		default:
			n := protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return errBadAggregate
			}
			b = b[n:]
		}
	}
	return nil
}

// decodeEntry reads a FailureCount, ExclusionCount (key) or ActionCount
// (id, pointing into b).
func decodeEntry(b []byte) (key uint64, id []byte, count int64, err error) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return 0, nil, 0, errBadAggregate
		}
		b = b[n:]
		switch {
		case num == fEntryKey && typ == protowire.VarintType:
			key, n = protowire.ConsumeVarint(b)
		case num == fEntryKey && typ == protowire.BytesType:
			id, n = protowire.ConsumeBytes(b)
		case num == fEntryCount && typ == protowire.VarintType:
			var v uint64
			v, n = protowire.ConsumeVarint(b)
			count = int64(v)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return 0, nil, 0, errBadAggregate
		}
		b = b[n:]
	}
	return key, id, count, nil
}

func (t *tally) sort() {
	slices.SortFunc(t.failedBy, func(a, b reasonCount) int { return int(a.reason) - int(b.reason) })
	slices.SortFunc(t.excludedBy, func(a, b reasonCount) int { return int(a.reason) - int(b.reason) })
	slices.SortFunc(t.actionsBy, func(a, b actionCount) int { return strings.Compare(a.id, b.id) })
}

// metrics is t as the API returns it: targeted = sent + failed, open rate =
// unique opens / sent, action rate = actions / sent, unique action rate =
// unique actions / sent, each at most 1 (0 when
// nothing was sent), breakdowns in key order. Counted by event time, the
// opens of a bucket may answer the sends of an earlier one, and a device may
// tap twice: the caps keep a rate a share.
func (t *tally) metrics() *trackingv1.Metrics {
	t.sort()
	m := &trackingv1.Metrics{
		Targeted: t.sent + t.failed, Sent: t.sent, Failed: t.failed, Excluded: t.excluded,
		Received: t.received, Opened: t.opened, UniqueOpens: t.uniqueOpens, Dismissed: t.dismissed, Actions: t.actions,
		UniqueActions: t.uniqueActions,
	}
	if t.sent > 0 {
		m.OpenRate = float64(min(t.uniqueOpens, t.sent)) / float64(t.sent)
		m.ActionRate = float64(min(t.actions, t.sent)) / float64(t.sent)
		m.UniqueActionRate = float64(min(t.uniqueActions, t.sent)) / float64(t.sent)
	}
	for _, r := range t.failedBy {
		m.FailedByReason = append(m.FailedByReason, &commonv1.FailureCount{Reason: commonv1.FailureReason(r.reason), Count: r.n})
	}
	for _, r := range t.excludedBy {
		m.ExcludedByReason = append(m.ExcludedByReason, &commonv1.ExclusionCount{Reason: commonv1.ExclusionReason(r.reason), Count: r.n})
	}
	for _, a := range t.actionsBy {
		m.ActionsById = append(m.ActionsById, &trackingv1.ActionCount{ActionId: a.id, Count: a.n})
	}
	return m
}
