package journey

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/buckets"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
	"github.com/pushmesh/pushmesh/servicekit/boltdb"
	"github.com/pushmesh/pushmesh/servicekit/fault"
)

// Domain errors.
var (
	ErrNotFound     = errors.New("journey not found")
	ErrFinished     = errors.New("journey already finished")
	ErrBadPageToken = errors.New("invalid page token")
)

// Keys in the journeys bucket:
//
//	tenant|"j"|journey_id   → Journey (protobuf), with state and progress
//	tenant|"c"|journey_id   → checkpoint cursor: every profile ≤ it is done
//	tenant|"r"|request_id   → journey_id (idempotent publish)
const (
	kindJourney = "j"
	kindCursor  = "c"
	kindRequest = "r"
)

// Store keeps journeys in bbolt.
type Store struct {
	db *bolt.DB
	// failCheckpoint, set by tests, makes Checkpoint fail as a bad disk
	// would when it returns an error.
	failCheckpoint func(j *deliveryv1.Journey) error
}

// NewStore uses db; the bucket is created by buckets.Create.
func NewStore(db *bolt.DB) *Store { return &Store{db: db} }

// newID makes a time-ordered id: newer journeys sort after older ones.
func newID(now time.Time) string {
	var r [4]byte
	_, _ = rand.Read(r[:])
	return fmt.Sprintf("jrn_%013x%s", now.UnixMilli(), hex.EncodeToString(r[:]))
}

// ByRequest returns the journey a publish with requestID created, or nil.
func (s *Store) ByRequest(tenant, requestID string) (j *deliveryv1.Journey, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(buckets.Journeys)
		id := b.Get(boltdb.Key(tenant, kindRequest, requestID))
		if id == nil {
			return nil
		}
		j, err = get(b, tenant, string(id))
		return err
	})
	return j, err
}

// Create stores a new journey, or returns the journey an earlier publish
// with the same requestID created (existed true).
func (s *Store) Create(tenant string, j *deliveryv1.Journey, requestID string) (out *deliveryv1.Journey, existed bool, err error) {
	err = s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(buckets.Journeys)
		if requestID != "" {
			if id := b.Get(boltdb.Key(tenant, kindRequest, requestID)); id != nil {
				prev, err := get(b, tenant, string(id))
				out, existed = prev, true
				return err
			}
			if err := b.Put(boltdb.Key(tenant, kindRequest, requestID), []byte(j.GetJourneyId())); err != nil {
				return err
			}
		}
		out = j
		return put(b, tenant, j)
	})
	return out, existed, err
}

func put(b *bolt.Bucket, tenant string, j *deliveryv1.Journey) error {
	v, err := proto.Marshal(j)
	if err != nil {
		return err
	}
	return b.Put(boltdb.Key(tenant, kindJourney, j.GetJourneyId()), v)
}

func get(b *bolt.Bucket, tenant, id string) (*deliveryv1.Journey, error) {
	v := b.Get(boltdb.Key(tenant, kindJourney, id))
	if v == nil {
		return nil, fault.OnField(ErrNotFound, "journey_id", "journey %q not found", id)
	}
	j := &deliveryv1.Journey{}
	if err := proto.Unmarshal(v, j); err != nil {
		return nil, fmt.Errorf("decode journey %s: %w", id, err)
	}
	return j, nil
}

// Get returns one journey.
func (s *Store) Get(tenant, id string) (j *deliveryv1.Journey, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		j, err = get(tx.Bucket(buckets.Journeys), tenant, id)
		return err
	})
	return j, err
}

// Cursor returns the checkpoint of a journey ("" before any).
func (s *Store) Cursor(tenant, id string) (cursor string, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		cursor = string(tx.Bucket(buckets.Journeys).Get(boltdb.Key(tenant, kindCursor, id)))
		return nil
	})
	return cursor, err
}

// Checkpoint saves a journey's state and progress and its cursor in one
// transaction, so a restart resumes from a consistent point.
//
// A stored final state (COMPLETED, CANCELLED, FAILED) is never replaced by
// another state: the check and the write share the transaction, so a
// cancel stored by CancelJourney cannot be overwritten by a runner's
// RUNNING checkpoint that raced it, nor a completed journey turned into a
// cancelled one. The same final state may be written again (a cancelled
// runner stores its final counts). A refusal is ErrFinished.
func (s *Store) Checkpoint(tenant string, j *deliveryv1.Journey, cursor string) error {
	if s.failCheckpoint != nil {
		if err := s.failCheckpoint(j); err != nil {
			return err
		}
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(buckets.Journeys)
		prev, err := get(b, tenant, j.GetJourneyId())
		switch {
		case errors.Is(err, ErrNotFound):
		case err != nil:
			return err
		case isFinal(prev.GetState()) && prev.GetState() != j.GetState():
			return endedError(j.GetJourneyId(), prev.GetState())
		}
		if cursor != "" {
			if err := b.Put(boltdb.Key(tenant, kindCursor, j.GetJourneyId()), []byte(cursor)); err != nil {
				return err
			}
		}
		return put(b, tenant, j)
	})
}

// endedError is ErrFinished for a journey that ended in state.
func endedError(id string, state deliveryv1.JourneyState) error {
	return fault.OnField(ErrFinished, "journey_id", "journey %s already ended %s", id, strings.TrimPrefix(state.String(), "JOURNEY_STATE_"))
}

// List returns journeys newest first, after pageToken (a journey id).
func (s *Store) List(tenant string, size int, pageToken string, states map[deliveryv1.JourneyState]bool) (out []*deliveryv1.Journey, next string, err error) {
	prefix := append(boltdb.Key(tenant, kindJourney), 0)
	err = s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(buckets.Journeys).Cursor()
		var k, v []byte
		if pageToken == "" {
			// Seek past the prefix, then step back onto its last key.
			end := append(bytes.Clone(prefix[:len(prefix)-1]), 1)
			if k, _ = c.Seek(end); k == nil {
				k, v = c.Last()
			} else {
				k, v = c.Prev()
			}
		} else {
			start := append(bytes.Clone(prefix), pageToken...)
			if k, _ = c.Seek(start); k == nil || !bytes.Equal(k, start) {
				return fault.OnField(ErrBadPageToken, "page_token", "page_token was not issued by ListJourneys")
			}
			k, v = c.Prev()
		}
		for ; k != nil && bytes.HasPrefix(k, prefix); k, v = c.Prev() {
			j := &deliveryv1.Journey{}
			if err := proto.Unmarshal(v, j); err != nil {
				return fmt.Errorf("decode journey: %w", err)
			}
			if len(states) > 0 && !states[j.GetState()] {
				continue
			}
			if len(out) == size {
				next = out[len(out)-1].GetJourneyId()
				return nil
			}
			out = append(out, j)
		}
		return nil
	})
	return out, next, err
}

// Unfinished lists every scheduled or running journey of every tenant, to
// resume them when the service starts.
func (s *Store) Unfinished() (out []Ref, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(buckets.Journeys).ForEach(func(k, v []byte) error {
			parts := bytes.SplitN(k, []byte{0}, 3)
			if len(parts) != 3 || string(parts[1]) != kindJourney {
				return nil
			}
			j := &deliveryv1.Journey{}
			if err := proto.Unmarshal(v, j); err != nil {
				return fmt.Errorf("decode journey: %w", err)
			}
			if j.GetState() == deliveryv1.JourneyState_JOURNEY_STATE_RUNNING || j.GetState() == deliveryv1.JourneyState_JOURNEY_STATE_SCHEDULED {
				out = append(out, Ref{Tenant: string(parts[0]), ID: j.GetJourneyId()})
			}
			return nil
		})
	})
	return out, err
}

// Ref names a journey of a tenant.
type Ref struct{ Tenant, ID string }
