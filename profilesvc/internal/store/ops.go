package store

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/pushmesh/pushmesh/profilesvc/internal/profile"
)

// Upsert creates or updates a profile (see profile.Workset.Upsert).
func (s *Store) Upsert(ctx context.Context, req profile.UpsertRequest) (p *profile.Profile, created bool, err error) {
	err = s.mutate(ctx, func(ws *profile.Workset, ld *loader) error {
		p, created, err = ws.Upsert(req)
		return err
	})
	return p, created, err
}

// Get returns the profile ref names; NotFound on field prefix.profile_id or
// prefix.identity.
func (s *Store) Get(ctx context.Context, ref profile.Ref, prefix string) (p *profile.Profile, err error) {
	err = s.view(ctx, func(ws *profile.Workset) error {
		p, err = ws.Resolve(ref, prefix)
		return err
	})
	return p, err
}

// Delete erases the profile ref names and every index entry pointing at it.
func (s *Store) Delete(ctx context.Context, ref profile.Ref, prefix string) (id profile.ID, tokens int, err error) {
	err = s.mutate(ctx, func(ws *profile.Workset, ld *loader) error {
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

// Register attaches a token to the profile ref names, creating the profile
// when ref is an identity nobody owns yet.
func (s *Store) Register(ctx context.Context, ref profile.Ref, prefix string, reg profile.Registration) (res profile.RegisterResult, err error) {
	reg.OwnerKey = profile.OwnerKeyOf(ref)
	err = s.mutate(ctx, func(ws *profile.Workset, ld *loader) error {
		p, _, err := ws.ResolveOrCreate(ref, prefix)
		if err != nil {
			return err
		}
		res, err = ws.Register(p, reg)
		return err
	})
	return res, err
}

// Unregister deactivates a token.
func (s *Store) Unregister(ctx context.Context, k profile.TokenKey, reason profile.InactiveReason) (t profile.Token, owner profile.ID, err error) {
	err = s.mutate(ctx, func(ws *profile.Workset, ld *loader) error {
		t, owner, err = ws.Unregister(k, reason)
		return err
	})
	return t, owner, err
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
}

// Feedback applies a batch of gateway verdicts in one transaction, reading
// the token index in sorted key order.
func (s *Store) Feedback(ctx context.Context, items []FeedbackItem) (counts FeedbackCounts, err error) {
	ctx, span := s.tracer.Start(ctx, "store.feedback", trace.WithAttributes(attribute.Int("feedback.items", len(items))))
	defer span.End()
	err = s.mutate(ctx, func(ws *profile.Workset, ld *loader) error {
		counts = FeedbackCounts{}
		keys := make([]profile.TokenKey, len(items))
		for i, it := range items {
			keys[i] = it.Key
		}
		if err := ld.prefetchTokens(ws, keys); err != nil {
			return err
		}
		for _, it := range items {
			out, err := ws.Feedback(it.Key, it.Reason, it.At)
			if err != nil {
				return err
			}
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
