// Package buckets is the one list of deliverysvc's top-level bbolt buckets.
// Every store names its bucket from here, and Create makes them all when the
// service opens its file, so no code path has to create buckets lazily inside
// a hot write transaction.
package buckets

import (
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// Top-level buckets. Keys inside each start with the tenant (see
// servicekit/boltdb.Key), except where a bucket's package documents a nested
// layout.
var (
	// Meta holds the credentials key check value.
	Meta = []byte("meta")
	// Apps holds registered apps; credentials sealed with AES-256-GCM.
	Apps = []byte("apps")
	// Dedupe holds completed messages by idempotency key, in one nested
	// bucket per day.
	Dedupe = []byte("dedupe")
	// TrackingOutbox holds send outcomes waiting for trackingsvc.
	TrackingOutbox = []byte("outbox_tracking")
	// FeedbackOutbox holds dead-token verdicts waiting for profilesvc.
	FeedbackOutbox = []byte("outbox_feedback")
	// Journeys holds journeys, their checkpoints and publish request ids
	// (see internal/journey).
	Journeys = []byte("journeys")
)

// All lists every top-level bucket.
func All() [][]byte {
	return [][]byte{Meta, Apps, Dedupe, TrackingOutbox, FeedbackOutbox, Journeys}
}

// Create makes every top-level bucket that does not exist yet, in one
// transaction.
func Create(db *bolt.DB) error {
	return db.Update(func(tx *bolt.Tx) error {
		for _, name := range All() {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return fmt.Errorf("create bucket %s: %w", name, err)
			}
		}
		return nil
	})
}
