package store

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/pushmesh/pushmesh/profilesvc/internal/profile"
)

// ProfileState is a profile with the number of active tokens it owns.
type ProfileState struct {
	Profile      *profile.Profile
	ActiveTokens int
}

func activeCount(ws *profile.Workset, id profile.ID) (int, error) {
	ts, err := ws.ProfileTokens(id)
	if err != nil {
		return 0, err
	}
	n := 0
	for i := range ts {
		if ts[i].Active() {
			n++
		}
	}
	return n, nil
}

// Upsert creates or updates a profile (see profile.Workset.Upsert).
func (s *Store) Upsert(ctx context.Context, req profile.UpsertRequest) (st ProfileState, created bool, err error) {
	err = s.mutate(ctx, func(ws *profile.Workset, _ *loader) error {
		p, c, err := ws.Upsert(req)
		if err != nil {
			return err
		}
		n, err := activeCount(ws, p.ID)
		st, created = ProfileState{Profile: p, ActiveTokens: n}, c
		return err
	})
	return st, created, err
}

// Get returns the profile ref names; NotFound on field prefix.profile_id or
// prefix.identity.
func (s *Store) Get(ctx context.Context, ref profile.Ref, prefix string) (st ProfileState, err error) {
	err = s.view(ctx, func(ws *profile.Workset) error {
		p, err := ws.Resolve(ref, prefix)
		if err != nil {
			return err
		}
		n, err := activeCount(ws, p.ID)
		st = ProfileState{Profile: p, ActiveTokens: n}
		return err
	})
	return st, err
}

// Tokens returns every token of the profile ref names, ordered by app id
// then token.
func (s *Store) Tokens(ctx context.Context, ref profile.Ref, prefix string) (tokens []profile.Token, err error) {
	err = s.view(ctx, func(ws *profile.Workset) error {
		id, err := ws.ResolveID(ref, prefix)
		if err != nil {
			return err
		}
		tokens, err = ws.ProfileTokens(id)
		return err
	})
	return tokens, err
}

// Delete erases the profile ref names and every index entry pointing at it.
func (s *Store) Delete(ctx context.Context, ref profile.Ref, prefix string) (id profile.ID, tokens int, err error) {
	err = s.mutate(ctx, func(ws *profile.Workset, _ *loader) error {
		p, err := ws.Resolve(ref, prefix)
		if err != nil {
			return err
		}
		id = p.ID
		tokens, err = ws.Delete(p)
		return err
	})
	return id, tokens, err
}

// Registered is what a registration did, with the token afterwards.
type Registered struct {
	profile.RegisterResult
	Token profile.Token
}

// Register attaches a token to the profile ref names, creating the profile
// when ref is an identity nobody owns yet.
func (s *Store) Register(ctx context.Context, ref profile.Ref, prefix string, reg profile.Registration) (res Registered, err error) {
	reg.OwnerKey = profile.OwnerKeyOf(ref)
	err = s.mutate(ctx, func(ws *profile.Workset, _ *loader) error {
		id, _, err := ws.ResolveOrCreate(ref, prefix)
		if err != nil {
			return err
		}
		if res.RegisterResult, err = ws.Register(id, reg); err != nil {
			return err
		}
		res.Token, _, err = ws.Token(reg.Key)
		return err
	})
	return res, err
}

// Unregister deactivates a token; deactivated says it was active before
// (an inactive token stays inactive, with its reason updated).
func (s *Store) Unregister(ctx context.Context, k profile.TokenKey, reason profile.InactiveReason) (t profile.Token, deactivated bool, err error) {
	err = s.mutate(ctx, func(ws *profile.Workset, _ *loader) error {
		before, found, err := ws.Token(k)
		if err != nil {
			return err
		}
		if t, err = ws.Unregister(k, reason); err != nil {
			return err
		}
		deactivated = found && before.Active() && !t.Active()
		return nil
	})
	return t, deactivated, err
}

// FeedbackItem is one gateway verdict.
type FeedbackItem struct {
	Key    profile.TokenKey
	Reason profile.InactiveReason
	// At is the gateway's timestamp (unix nanoseconds).
	At int64
}

// FeedbackCounts sums what a feedback batch changed.
type FeedbackCounts struct {
	Deactivated int
	Unchanged   int
	Unknown     int
	// Outcomes holds what each item changed, in the items' order.
	Outcomes []profile.FeedbackOutcome
}

// Feedback applies a batch of gateway verdicts in one transaction, reading
// the token index in sorted key order.
func (s *Store) Feedback(ctx context.Context, items []FeedbackItem) (counts FeedbackCounts, err error) {
	ctx, span := s.tracer.Start(ctx, "store.feedback", trace.WithAttributes(attribute.Int("feedback.items", len(items))))
	defer span.End()
	err = s.mutate(ctx, func(ws *profile.Workset, ld *loader) error {
		counts = FeedbackCounts{Outcomes: make([]profile.FeedbackOutcome, 0, len(items))}
		keys := make([]profile.TokenKey, len(items))
		ids := make([]profile.TokenID, len(items))
		for i, it := range items {
			keys[i], ids[i] = it.Key, it.Key.ID()
		}
		// Only active tokens can be deactivated, which rewrites details.
		seeds, _, err := ld.readTokens(keys, ids, func(_ int, t *profile.Token) bool { return t.Active() })
		if err != nil {
			return err
		}
		(&prefetched{tokens: seeds}).seed(ws)
		for _, it := range items {
			out, err := ws.Feedback(it.Key, it.Reason, it.At)
			if err != nil {
				return err
			}
			counts.Outcomes = append(counts.Outcomes, out)
			switch out {
			case profile.FeedbackDeactivated:
				counts.Deactivated++
			case profile.FeedbackUnchanged:
				counts.Unchanged++
			case profile.FeedbackUnknown:
				counts.Unknown++
			}
		}
		return nil
	})
	span.SetAttributes(attribute.Int("feedback.deactivated", counts.Deactivated))
	return counts, err
}
