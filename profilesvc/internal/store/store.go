// Package store keeps profilesvc's state in one bbolt file: it loads what
// the domain rules (package profile) need, runs them, and persists their
// changes in one transaction per mutation or batch, so a crash never leaves
// half a change behind.
package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"

	"github.com/pushmesh/pushmesh/profilesvc/internal/profile"
	"github.com/pushmesh/pushmesh/servicekit/tenant"
)

const tracerName = "github.com/pushmesh/pushmesh/profilesvc/internal/store"

// ErrClosed is returned by calls made after Close.
var ErrClosed = errors.New("store closed")

// Options tune a Store; zero values pick the defaults.
type Options struct {
	// ImportBatchRows is how many import rows go into one transaction.
	ImportBatchRows int
	// MaxCommitBatch bounds how many single mutations share one commit.
	MaxCommitBatch int
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// DefaultImportBatchRows trades import throughput (bigger transactions
// amortize the rewrite of the random-key index pages) against how long an
// import holds bbolt's single writer lock per batch.
const DefaultImportBatchRows = 50_000

// DefaultMaxCommitBatch bounds a group commit.
const DefaultMaxCommitBatch = 256

// Store is profilesvc's persistent state.
type Store struct {
	db      *bolt.DB
	ids     *profile.Generator
	now     func() time.Time
	opts    Options
	commits *committer
	tracer  trace.Tracer
}

// Open prepares db (creating the buckets) and starts the group committer.
// Close stops it; the caller closes db afterwards.
func Open(db *bolt.DB, opts Options) (*Store, error) {
	if opts.ImportBatchRows <= 0 {
		opts.ImportBatchRows = DefaultImportBatchRows
	}
	if opts.MaxCommitBatch <= 0 {
		opts.MaxCommitBatch = DefaultMaxCommitBatch
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	s := &Store{
		db:     db,
		ids:    profile.NewGenerator(opts.Now),
		now:    opts.Now,
		opts:   opts,
		tracer: otel.Tracer(tracerName),
	}
	err := db.Update(func(tx *bolt.Tx) error {
		for _, name := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return fmt.Errorf("create bucket %s: %w", name, err)
			}
		}
		meta := tx.Bucket(bucketMeta)
		switch v := meta.Get(schemaKey); {
		case v == nil:
			if err := meta.Put(schemaKey, []byte(schemaVersion)); err != nil {
				return err
			}
		case string(v) != schemaVersion:
			return fmt.Errorf("profilesvc store has schema version %q, this build reads %q", v, schemaVersion)
		}
		s.ids.Observe(maxProfileID(tx.Bucket(bucketProfiles)))
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.commits = newCommitter(db, opts.MaxCommitBatch, s.tracer)
	return s, nil
}

// maxProfileID finds the largest stored profile id across tenants, so ids
// keep growing after a restart even if the clock went back. It visits one
// key per tenant: the last key of each tenant's range.
func maxProfileID(b *bolt.Bucket) profile.ID {
	var best profile.ID
	c := b.Cursor()
	for k, _ := c.First(); k != nil; {
		sep := bytes.IndexByte(k, 0)
		if sep < 0 {
			break
		}
		// Seek just past this tenant's range (prefix with 0x00 bumped to
		// 0x01), then step back to its last key.
		next := append(slices.Clone(k[:sep]), 1)
		nk, _ := c.Seek(next)
		var last []byte
		if nk == nil {
			last, _ = c.Last()
		} else {
			last, _ = c.Prev()
		}
		if id, ok := idFromKey(last); ok && bytes.Compare(id[:], best[:]) > 0 {
			best = id
		}
		k = nk
	}
	return best
}

// Close stops the group committer. Calls in flight finish first.
func (s *Store) Close() error {
	s.commits.close()
	return nil
}

// clock returns now in unix nanoseconds.
func (s *Store) clock() int64 { return s.now().UnixNano() }

// Now is the store's clock, for validation of source timestamps.
func (s *Store) Now() time.Time { return s.now() }

// loader reads state for a Workset from one transaction.
type loader struct {
	keys       keyer
	profiles   *bolt.Bucket
	identities *bolt.Bucket
	tokens     *bolt.Bucket
	devices    *bolt.Bucket
	buf        []byte
}

func newLoader(tx *bolt.Tx, tenantID string) *loader {
	return &loader{
		keys:       newKeyer(tenantID),
		profiles:   tx.Bucket(bucketProfiles),
		identities: tx.Bucket(bucketIdentities),
		tokens:     tx.Bucket(bucketTokens),
		devices:    tx.Bucket(bucketDevices),
	}
}

func (l *loader) LoadProfile(id profile.ID) (*profile.Profile, error) {
	l.buf = l.keys.profile(l.buf[:0], id)
	v := l.profiles.Get(l.buf)
	if v == nil {
		return nil, nil
	}
	return profile.Decode(id, v)
}

func (l *loader) owner(b *bolt.Bucket, key []byte) (profile.ID, bool, error) {
	v := b.Get(key)
	if v == nil {
		return profile.ID{}, false, nil
	}
	var id profile.ID
	if len(v) != len(id) {
		return id, false, fmt.Errorf("index value of %d bytes: %w", len(v), profile.ErrCorrupt)
	}
	copy(id[:], v)
	return id, true, nil
}

func (l *loader) LoadTokenOwner(k profile.TokenKey) (profile.ID, bool, error) {
	l.buf = l.keys.token(l.buf[:0], k)
	return l.owner(l.tokens, l.buf)
}

func (l *loader) LoadIdentityOwner(idn profile.Identity) (profile.ID, bool, error) {
	l.buf = l.keys.identity(l.buf[:0], idn)
	return l.owner(l.identities, l.buf)
}

func (l *loader) LoadDeviceToken(k profile.DeviceKey) (string, bool, error) {
	l.buf = l.keys.device(l.buf[:0], k)
	v := l.devices.Get(l.buf)
	if v == nil {
		return "", false, nil
	}
	return string(v), true, nil
}

// persist writes a workset's changes, each bucket's keys in sorted order
// (bbolt inserts sorted keys much faster than random ones).
func persist(tx *bolt.Tx, tenantID string, ch profile.Changes) error {
	keys := newKeyer(tenantID)
	var mem arena
	type put struct {
		key, val []byte
		del      bool
	}
	write := func(b *bolt.Bucket, puts []put) error {
		slices.SortFunc(puts, func(a, b put) int { return bytes.Compare(a.key, b.key) })
		for _, p := range puts {
			var err error
			if p.del {
				err = b.Delete(p.key)
			} else {
				err = b.Put(p.key, p.val)
			}
			if err != nil {
				return err
			}
		}
		return nil
	}

	puts := make([]put, 0, len(ch.Profiles))
	for _, c := range ch.Profiles {
		p := put{key: mem.build(func(dst []byte) []byte { return keys.profile(dst, c.ID) }), del: c.Profile == nil}
		if c.Profile != nil {
			p.val = mem.build(func(dst []byte) []byte { return profile.Encode(dst, c.Profile) })
		}
		puts = append(puts, p)
	}
	if err := write(tx.Bucket(bucketProfiles), puts); err != nil {
		return fmt.Errorf("write profiles: %w", err)
	}

	puts = puts[:0]
	for _, c := range ch.TokenOwners {
		p := put{key: mem.build(func(dst []byte) []byte { return keys.token(dst, c.Key) }), del: !c.Found}
		if c.Found {
			p.val = mem.build(func(dst []byte) []byte { return append(dst, c.Owner[:]...) })
		}
		puts = append(puts, p)
	}
	if err := write(tx.Bucket(bucketTokens), puts); err != nil {
		return fmt.Errorf("write token index: %w", err)
	}

	puts = puts[:0]
	for _, c := range ch.IdentityOwners {
		p := put{key: mem.build(func(dst []byte) []byte { return keys.identity(dst, c.Identity) }), del: !c.Found}
		if c.Found {
			p.val = mem.build(func(dst []byte) []byte { return append(dst, c.Owner[:]...) })
		}
		puts = append(puts, p)
	}
	if err := write(tx.Bucket(bucketIdentities), puts); err != nil {
		return fmt.Errorf("write identity index: %w", err)
	}

	puts = puts[:0]
	for _, c := range ch.DeviceTokens {
		p := put{key: mem.build(func(dst []byte) []byte { return keys.device(dst, c.Key) }), del: !c.Found}
		if c.Found {
			p.val = mem.build(func(dst []byte) []byte { return append(dst, c.Token...) })
		}
		puts = append(puts, p)
	}
	if err := write(tx.Bucket(bucketDevices), puts); err != nil {
		return fmt.Errorf("write device index: %w", err)
	}
	return nil
}

// mutate runs apply on a fresh workset inside a group commit and persists
// its changes. apply may run more than once (when a shared commit fails and
// is retried alone), so it must set its outputs afresh on every run.
func (s *Store) mutate(ctx context.Context, apply func(ws *profile.Workset, ld *loader) error) error {
	tenantID := tenant.FromContext(ctx)
	return s.commits.do(ctx, func(tx *bolt.Tx) (func() error, error) {
		ld := newLoader(tx, tenantID)
		ws := profile.NewWorkset(ld, s.ids.New, s.clock())
		if err := apply(ws, ld); err != nil {
			return nil, err
		}
		ch := ws.Changes()
		return func() error { return persist(tx, tenantID, ch) }, nil
	})
}

// view runs read on a workset over a read transaction.
func (s *Store) view(ctx context.Context, read func(ws *profile.Workset) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	tenantID := tenant.FromContext(ctx)
	return s.db.View(func(tx *bolt.Tx) error {
		ws := profile.NewWorkset(newLoader(tx, tenantID), s.ids.New, s.clock())
		return read(ws)
	})
}
