package audience

import (
	"cmp"
	"context"
	"slices"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/pushmesh/pushmesh/profilesvc/internal/profile"
	"github.com/pushmesh/pushmesh/servicekit/fault"
)

const tracerName = "github.com/pushmesh/pushmesh/profilesvc/internal/audience"

// Batch sizes (members per message).
const (
	DefaultBatchSize = 500
	MaxBatchSize     = 5000
)

const (
	// scanChunk is how many profiles one read transaction visits.
	scanChunk = 4096
	// MaxBatchBytes bounds the members of a batch (MemberSize), well
	// under gRPC's default 4 MiB receive limit: a member that would take
	// the batch past it starts the next batch instead. One member always
	// fits: the profile caps keep it under 0.9 MiB (see
	// profile.MaxProfileTokens); a bigger one, stored before the caps, is
	// trimmed (see trimMember).
	MaxBatchBytes = 1 << 20
	// progressEvery sends a (possibly empty) batch after this many profiles
	// scanned without one, so callers see progress and a fresh resume point
	// even when few profiles qualify.
	progressEvery = 100_000
)

// ExclusionReason says why a qualified profile cannot be reached. The
// numbers match pushmesh.common.v1.ExclusionReason.
type ExclusionReason uint8

// Exclusion reasons.
const (
	ExcludedNoActiveToken ExclusionReason = 1
	ExcludedNoConsent     ExclusionReason = 2
)

// Query is one audience query.
type Query struct {
	Condition *Condition
	// AppIDs and Platforms filter the tokens streamed; empty means all.
	AppIDs    []string
	Platforms []profile.Platform
	// RequireExplicitConsent treats unspecified consent as no consent.
	RequireExplicitConsent bool
	// StartAfter resumes after this profile id when HasStart.
	StartAfter profile.ID
	HasStart   bool
	// BatchSize is the number of members per batch (DefaultBatchSize when 0).
	BatchSize int
	// Limit stops after this many qualified profiles; 0 means no limit.
	Limit int64
	// Fields limits what members carry; nil means everything.
	Fields *Fields
	// CountOnly computes the stats without collecting members: batches
	// carry no members and come every progressEvery profiles and at the
	// end. Token details, attributes and identities are never decoded.
	CountOnly bool
}

// Validate checks the query's numbers; fields are named as in the API.
func (q *Query) Validate() error {
	var v fault.ValidationError
	if q.BatchSize < 0 || q.BatchSize > MaxBatchSize {
		v.Add("batch_size", "must be between 0 (default %d) and %d, got %d", DefaultBatchSize, MaxBatchSize, q.BatchSize)
	}
	if q.Limit < 0 {
		v.Add("limit", "must not be negative, got %d", q.Limit)
	}
	return v.Err()
}

// Fields selects the attributes and identities members carry. The
// condition still sees the whole profile.
type Fields struct {
	// Attributes are top-level attribute names; the others are not even
	// decoded.
	Attributes map[string]struct{}
	// Namespaces are identity namespaces.
	Namespaces map[string]struct{}
}

// read decodes the selected attributes and identities of a profile.
func (f *Fields) read(v *profile.View) (map[string]any, []profile.Identity, error) {
	attrs, err := v.AttributesNamed(f.Attributes)
	if err != nil {
		return nil, nil, err
	}
	ids, err := v.Identities()
	if err != nil {
		return nil, nil, err
	}
	ids = slices.DeleteFunc(ids, func(idn profile.Identity) bool {
		_, ok := f.Namespaces[idn.Namespace]
		return !ok
	})
	return attrs, ids, nil
}

// Member is one qualified profile.
type Member struct {
	ID profile.ID
	// Attributes, Identities and Tokens are only set for members that are
	// not excluded: an excluded member is not sent anything.
	Attributes map[string]any
	Identities []profile.Identity
	// Tokens are the active tokens of the requested apps and platforms.
	Tokens   []profile.Token
	Excluded bool
	Reason   ExclusionReason
}

// Stats are a query's running totals.
type Stats struct {
	Scanned   int64
	Qualified int64
	// Excluded counts excluded members by reason (index: ExclusionReason).
	Excluded [3]int64
	Tokens   int64
}

// Batch is one message of the stream.
type Batch struct {
	Members []Member
	Stats   Stats
	// ResumeAfter is the last profile scanned: resuming after it continues
	// exactly where this batch ends. Zero when nothing was scanned.
	ResumeAfter profile.ID
}

// heldMember is a member held over to the next batch, with the running
// stats and resume point of the batch before it.
type heldMember struct {
	m           Member
	size        int
	stats       Stats
	resumeAfter profile.ID
}

// trimMember returns m's size (MemberSize), after trimming a member too big
// for a batch: only a profile stored before the caps existed can be (see
// profile.MaxProfileTokens), with more attributes or identities than a
// profile keeps now. It leaves them out (a journey treats the member as a
// profile missing those values, excluded where a template requires one)
// instead of the query failing on it. Members carry at most MaxProfileTokens tokens, so the
// rest always fits.
func trimMember(m *Member) int {
	size := MemberSize(m)
	if size <= MaxBatchBytes || m.Excluded {
		return size
	}
	m.Attributes, m.Identities = map[string]any{}, nil
	return MemberSize(m)
}

// Scanner reads profiles in id order; the store implements it.
type Scanner interface {
	ScanChunk(ctx context.Context, after profile.ID, first bool, max int,
		visit func(id profile.ID, v *profile.View) (bool, error)) (last profile.ID, visited int, end bool, err error)
}

// Run streams q's audience to emit, batch by batch. Each batch is new: emit
// may keep it (e.g. hand it to another goroutine to encode while the scan
// goes on); memory stays bounded by the batches emit holds, whatever the
// audience size. It stops at the end of the profiles, at the limit, or when
// ctx ends.
func Run(ctx context.Context, sc Scanner, q Query, emit func(*Batch) error) error {
	ctx, span := otel.Tracer(tracerName).Start(ctx, "audience.query",
		trace.WithAttributes(attribute.Int("audience.condition_len", len(q.Condition.String()))))
	defer span.End()

	batchSize := q.BatchSize
	if batchSize == 0 {
		batchSize = DefaultBatchSize
	}
	apps := make(map[string]struct{}, len(q.AppIDs))
	for _, a := range q.AppIDs {
		apps[a] = struct{}{}
	}
	act := newActivation()
	var (
		batch         Batch
		batchBytes    int
		sinceEmit     int64
		after         = q.StartAfter
		first         = !q.HasStart
		limitReached  bool
		attrsForEmpty = map[string]any{}
		// prevScanned is the profile scanned before the current one.
		prevScanned profile.ID
		// held is a member that did not fit in the batch: the batch goes
		// out as it was before that profile was scanned, and the member
		// starts the next one.
		held *heldMember
	)
	wantToken := func(h *profile.TokenHead) bool {
		if !h.Active {
			return false
		}
		if len(q.Platforms) > 0 && !slices.Contains(q.Platforms, h.Platform) {
			return false
		}
		if len(apps) > 0 {
			if _, ok := apps[string(h.AppID)]; !ok {
				return false
			}
		}
		return true
	}

	visit := func(id profile.ID, v *profile.View) (bool, error) {
		statsBefore, scannedBefore := batch.Stats, prevScanned
		prevScanned = id
		batch.Stats.Scanned++
		sinceEmit++
		act.reset(id, v)
		ok := q.Condition.match(act)
		if act.err != nil {
			return false, act.err
		}
		if !ok {
			return true, nil
		}
		batch.Stats.Qualified++
		m := Member{ID: id}
		switch {
		case v.Consent == profile.ConsentOptedOut || (v.Consent == profile.ConsentUnspecified && q.RequireExplicitConsent):
			m.Excluded, m.Reason = true, ExcludedNoConsent
		case q.CountOnly:
			var tokens int64
			if err := v.EachTokenHead(func(h *profile.TokenHead) bool {
				if wantToken(h) {
					tokens++
				}
				return tokens < profile.MaxProfileTokens // as members carry
			}); err != nil {
				return false, err
			}
			if tokens == 0 {
				m.Excluded, m.Reason = true, ExcludedNoActiveToken
			}
			batch.Stats.Tokens += tokens
		default:
			var tokenErr error
			err := v.EachTokenHead(func(h *profile.TokenHead) bool {
				if !wantToken(h) {
					return true
				}
				t, terr := h.Full()
				if terr != nil {
					tokenErr = terr
					return false
				}
				t.History = nil
				m.Tokens = append(m.Tokens, t)
				// A profile stored before the caps may own more tokens
				// than one member carries.
				return len(m.Tokens) < profile.MaxProfileTokens
			})
			if err = cmp.Or(err, tokenErr); err != nil {
				return false, err
			}
			if len(m.Tokens) == 0 {
				m.Excluded, m.Reason = true, ExcludedNoActiveToken
				break
			}
			if q.Fields != nil {
				if m.Attributes, m.Identities, err = q.Fields.read(v); err != nil {
					return false, err
				}
			} else {
				if m.Attributes = act.attributes(); m.Attributes == nil {
					m.Attributes = attrsForEmpty
				}
				if m.Identities, err = v.Identities(); err != nil {
					return false, err
				}
			}
			if act.err != nil {
				return false, act.err
			}
		}
		if m.Excluded {
			batch.Stats.Excluded[m.Reason]++
		}
		if q.Limit > 0 && batch.Stats.Qualified >= q.Limit {
			limitReached = true
		}
		if q.CountOnly {
			return !limitReached, nil
		}
		size := trimMember(&m)
		batch.Stats.Tokens += int64(len(m.Tokens))
		if len(batch.Members) > 0 && batchBytes+size > MaxBatchBytes {
			held = &heldMember{m: m, size: size, stats: statsBefore, resumeAfter: scannedBefore}
			return false, nil
		}
		batch.Members = append(batch.Members, m)
		batchBytes += size
		if limitReached {
			return false, nil
		}
		return len(batch.Members) < batchSize && batchBytes < MaxBatchBytes, nil
	}

	for {
		last, n, end, err := sc.ScanChunk(ctx, after, first, scanChunk, visit)
		if err != nil {
			span.RecordError(err)
			return err
		}
		if n > 0 {
			after, first = last, false
		}
		stop := end || limitReached
		if held != nil {
			// The batch before the member that did not fit: its stats and
			// resume point are those of the profile scanned before it, so
			// resuming after this batch scans that member again.
			out := Batch{Members: batch.Members, Stats: held.stats, ResumeAfter: held.resumeAfter}
			if err := emit(&out); err != nil {
				return err
			}
			batch.Members = []Member{held.m}
			batchBytes, sinceEmit = held.size, 1
			held = nil
		}
		if stop || len(batch.Members) >= batchSize || batchBytes >= MaxBatchBytes || sinceEmit >= progressEvery {
			if !first {
				batch.ResumeAfter = after
			}
			out := batch
			if err := emit(&out); err != nil {
				return err
			}
			// Keep the running stats; the members now belong to emit.
			batch.Members = nil
			batchBytes, sinceEmit = 0, 0
		}
		if stop {
			span.SetAttributes(
				attribute.Int64("audience.scanned", batch.Stats.Scanned),
				attribute.Int64("audience.qualified", batch.Stats.Qualified))
			return nil
		}
	}
}
