// Package store keeps profilesvc's state in one bbolt file: it loads what
// the domain rules (package profile) need, runs them, and persists their
// changes in one transaction per mutation or batch, so a crash never leaves
// half a change behind.
package store

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
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
	// ImportBatchBytes ends an import batch early once its rows take
	// about this much memory (profile.ImportRow.MemSize).
	ImportBatchBytes int
	// MaxCommitBatch bounds how many single mutations share one commit.
	MaxCommitBatch int
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// DefaultImportBatchRows trades import throughput against how long an
// import holds bbolt's single writer lock per batch. Updates and moves hit
// random keys of the token indexes, so each batch rewrites nearly every page
// of them whatever its size: bigger batches rewrite them less often. On the
// reference machine 1M rows imported at 44,000 rows/s in batches of 50,000
// and 58,000 rows/s in batches of 100,000 (about 1.5 s of writer lock per
// batch); at 200,000 the batch's working set outgrew the caches and it was
// slower again. Since batches are applied ahead of the writer (0.7-1.6 s of
// writer lock per 100,000 rows), 150,000 rows per batch wrote 14% fewer
// bytes but took more CPU and was not faster (3 alternating runs each).
const DefaultImportBatchRows = 100_000

// DefaultImportBatchBytes bounds the memory of an import batch's rows as
// well as their number. The pipeline holds about four batches at a time
// (one filling, one queued, one being prepared, one being written, plus
// the workset the next batch is prepared on top of), so with rows of a few
// hundred bytes (no attributes) a batch ends at DefaultImportBatchRows,
// about 40 MiB, while rows carrying up to 64 KiB of attributes each (a
// 100,000-row batch of them could take gigabytes) end a batch at 64 MiB:
// a few hundred MiB for the whole pipeline, under the service's 1.5 GiB
// memory limit (server.DefaultMemoryLimit).
const DefaultImportBatchBytes = 64 << 20

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

	// importRereads counts import batches whose read-ahead went stale and
	// were applied again inside their write transaction.
	importRereads atomic.Int64
}

// Open prepares db (creating the buckets) and starts the group committer.
// Close stops it; the caller closes db afterwards.
func Open(db *bolt.DB, opts Options) (*Store, error) {
	if opts.ImportBatchRows <= 0 {
		opts.ImportBatchRows = DefaultImportBatchRows
	}
	if opts.ImportBatchBytes <= 0 {
		opts.ImportBatchBytes = DefaultImportBatchBytes
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
		case v == nil || string(v) == upgradableSchema:
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
	details    *bolt.Bucket
	devices    *bolt.Bucket
	buf        []byte
}

func newLoader(tx *bolt.Tx, tenantID string) *loader {
	return &loader{
		keys:       newKeyer(tenantID),
		profiles:   tx.Bucket(bucketProfiles),
		identities: tx.Bucket(bucketIdentities),
		tokens:     tx.Bucket(bucketTokens),
		details:    tx.Bucket(bucketProfileTokens),
		devices:    tx.Bucket(bucketDevices),
	}
}

func (l *loader) LoadProfile(id profile.ID) (*profile.Profile, error) {
	l.buf = l.keys.profile(l.buf[:0], id)
	v := l.profiles.Get(l.buf)
	if v == nil {
		return nil, nil
	}
	p, err := profile.DecodeProfile(id, v)
	if err != nil {
		return nil, fmt.Errorf("profile %s: %w", id, err)
	}
	return p, nil
}

func (l *loader) ProfileExists(id profile.ID) (bool, error) {
	l.buf = l.keys.profile(l.buf[:0], id)
	return l.profiles.Get(l.buf) != nil, nil
}

func (l *loader) LoadToken(k profile.TokenKey) (*profile.Token, error) {
	return l.loadToken(k, k.ID())
}

func (l *loader) loadToken(k profile.TokenKey, id profile.TokenID) (*profile.Token, error) {
	l.buf = l.keys.token(l.buf[:0], id)
	v := l.tokens.Get(l.buf)
	if v == nil {
		return nil, nil
	}
	t, err := profile.DecodeHot(k, v)
	if err != nil {
		return nil, fmt.Errorf("token of app %q: %w", k.AppID, err)
	}
	return t, nil
}

func (l *loader) LoadTokenDetails(owner profile.ID, id profile.TokenID, t *profile.Token) error {
	l.buf = l.keys.details(l.buf[:0], owner, &id)
	v := l.details.Get(l.buf)
	if v == nil {
		return fmt.Errorf("details of a token of profile %s missing: %w", owner, profile.ErrCorrupt)
	}
	return profile.DecodeDetails(t, v)
}

func (l *loader) LoadProfileTokens(owner profile.ID) ([]*profile.Token, error) {
	prefix := l.keys.details(nil, owner, nil)
	var out []*profile.Token
	c := l.details.Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		t := &profile.Token{}
		if err := profile.DecodeFullDetails(t, v); err != nil {
			return nil, fmt.Errorf("token of profile %s: %w", owner, err)
		}
		hot := l.tokens.Get(append(slices.Clone(l.keys.prefix), k[len(prefix):]...))
		if hot == nil {
			return nil, fmt.Errorf("hot record of a token of profile %s missing: %w", owner, profile.ErrCorrupt)
		}
		if err := profile.DecodeHotInto(t, hot); err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, nil
}

func (l *loader) CountProfileTokens(owner profile.ID, limit int) (int, error) {
	l.buf = l.keys.details(l.buf[:0], owner, nil)
	return countUnder(l.details.Cursor(), l.buf, limit), nil
}

// countUnder counts the keys under prefix, stopping past limit.
func countUnder(c *bolt.Cursor, prefix []byte, limit int) int {
	n := 0
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix) && n <= limit; k, _ = c.Next() {
		n++
	}
	return n
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

func (l *loader) LoadIdentityOwner(idn profile.Identity) (profile.ID, bool, error) {
	l.buf = l.keys.identity(l.buf[:0], idn)
	return l.owner(l.identities, l.buf)
}

func (l *loader) LoadDeviceTokens(k profile.DeviceKey) ([]string, error) {
	return deviceTokens(l.devices.Cursor(), l.keys.device(nil, k, nil)), nil
}

// deviceTokens lists the tokens stored under a device prefix.
func deviceTokens(c *bolt.Cursor, prefix []byte) []string {
	var out []string
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		out = append(out, string(v))
	}
	return out
}

// put is one key to write (or delete) in a bucket.
type put struct {
	key, val []byte
	del      bool
	// rank is the 8 key bytes after the prefix all keys of the batch share,
	// big endian: see sortPuts.
	rank uint64
}

// Fill factors for page splits. Profiles and (for CRM customer ids,
// usually sequential) identities mostly grow at the end, where bbolt's
// default of half-full pages would double the file and every later page
// rewrite. The random-key token index keeps slack for inserts. Token
// details grow at the end as profiles are created, but a token moving to
// another profile lands in the middle: filled to 90%, pages split into a
// full page and a nearly empty one at the first insert (1M rows: 633 MiB
// file at 0.9, 594 MiB at 0.8).
var fillPercent = map[string]float64{
	string(bucketProfiles):      0.95,
	string(bucketProfileTokens): 0.8,
	string(bucketIdentities):    0.8,
	string(bucketTokens):        0.7,
	string(bucketDevices):       0.5,
}

// bucket opens a bucket for writing with its fill factor.
func bucket(tx *bolt.Tx, name []byte) *bolt.Bucket {
	b := tx.Bucket(name)
	if f, ok := fillPercent[string(name)]; ok {
		b.FillPercent = f
	}
	return b
}

// sortPuts orders puts by key: bbolt inserts sorted keys much faster than
// random ones, since each page is visited once. The keys of a batch share a
// long prefix (the tenant, an identity namespace), so comparing whole keys
// spends most of its time on equal bytes: each put is ranked by the 8 bytes
// after the common prefix, and keys are compared only when ranks tie. Puts
// already in order (a batch seeded in key order) are left as they are; big
// batches are sorted with a radix sort on the 16 bytes after the common
// prefix (profile ids made in the same millisecond share their first 8
// bytes after it), which moves small (rank, index) triples instead of
// comparing and swapping 64-byte puts.
func sortPuts(puts []put) {
	if len(puts) < 2 {
		return
	}
	lcp := len(puts[0].key)
	for _, p := range puts[1:] {
		lcp = min(lcp, commonPrefixLen(puts[0].key, p.key))
	}
	for i := range puts {
		puts[i].rank = rank(puts[i].key[lcp:])
	}
	cmpPuts := func(a, b put) int {
		if a.rank != b.rank {
			return cmp.Compare(a.rank, b.rank)
		}
		return bytes.Compare(a.key, b.key)
	}
	if slices.IsSortedFunc(puts, cmpPuts) {
		return
	}
	if len(puts) < radixMin {
		slices.SortFunc(puts, cmpPuts)
		return
	}
	order := radixSortRanks(puts, lcp)
	// Equal ranks are ordered by their whole keys.
	for i := 0; i < len(order); {
		j := i + 1
		for j < len(order) && order[j].hi == order[i].hi && order[j].lo == order[i].lo {
			j++
		}
		if j-i > 1 {
			slices.SortFunc(order[i:j], func(a, b rankedPut) int { return bytes.Compare(puts[a.i].key, puts[b.i].key) })
		}
		i = j
	}
	sorted := make([]put, len(puts))
	for j, o := range order {
		sorted[j] = puts[o.i]
	}
	copy(puts, sorted)
}

// radixMin is the number of puts from which sortPuts radix sorts.
const radixMin = 512

// rankedPut is a put's rank (hi) and the 8 key bytes after it (lo).
type rankedPut struct {
	hi, lo uint64
	i      int
}

// digit is byte d of r's 16-byte rank, 0 the least significant.
func (r *rankedPut) digit(d int) byte {
	if d < 8 {
		return byte(r.lo >> (8 * d))
	}
	return byte(r.hi >> (8 * (d - 8)))
}

// radixSortRanks returns the puts' ranks (the 16 key bytes after lcp) and
// indexes, sorted by rank: a least-significant-byte-first radix sort,
// skipping the bytes all ranks share.
func radixSortRanks(puts []put, lcp int) []rankedPut {
	a := make([]rankedPut, len(puts))
	var counts [16][256]int
	for i, p := range puts {
		r := rankedPut{hi: p.rank, i: i}
		if len(p.key) > lcp+8 {
			r.lo = rank(p.key[lcp+8:])
		}
		a[i] = r
		for d := range 16 {
			counts[d][r.digit(d)]++
		}
	}
	b := make([]rankedPut, len(puts))
	for d := range 16 {
		c := &counts[d]
		if c[a[0].digit(d)] == len(a) {
			continue // every rank has the same byte here
		}
		sum := 0
		for v := range c {
			c[v], sum = sum, sum+c[v]
		}
		for _, x := range a {
			v := x.digit(d)
			b[c[v]] = x
			c[v]++
		}
		a, b = b, a
	}
	return a
}

// commonPrefixLen is the length of the longest common prefix of a and b.
func commonPrefixLen(a, b []byte) int {
	n := min(len(a), len(b))
	for i := 0; i < n; i++ {
		if a[i] != b[i] {
			return i
		}
	}
	return n
}

// rank is the first 8 bytes of b as a big-endian number, zero-padded: it
// orders like the bytes, and equal ranks leave the order to the rest.
func rank(b []byte) uint64 {
	if len(b) >= 8 {
		return binary.BigEndian.Uint64(b)
	}
	var buf [8]byte
	copy(buf[:], b)
	return binary.BigEndian.Uint64(buf[:])
}

// writePuts writes puts (sorted) to b.
func writePuts(b *bolt.Bucket, puts []put) error {
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

// bucketPuts is one bucket's sorted writes.
type bucketPuts struct {
	name []byte
	puts []put
}

// persist writes a workset's changes, each bucket in sorted key order.
// Building and sorting the keys and values is pure CPU work: for big
// batches (hundreds of thousands of keys) it runs on goroutines, one per
// bucket, and each bucket is written as soon as its keys are ready, so the
// transaction's writes overlap the building of the other buckets. Only the
// writes go through the transaction, one at a time.
func persist(tx *bolt.Tx, tenantID string, ch profile.Changes) error {
	builders := putBuilders(tenantID, ch)
	if len(ch.Profiles)+len(ch.Tokens) <= 1000 {
		// Small changes (a registration writes a few hundred bytes) are
		// built and written in turn, from one arena.
		var mem arena
		for _, build := range builders {
			if err := writeBucket(tx, build(&mem)); err != nil {
				return err
			}
		}
		return nil
	}
	ready := make(chan bucketPuts, len(builders))
	for _, build := range builders {
		go func() {
			var mem arena
			ready <- build(&mem)
		}()
	}
	var first error
	for range builders {
		// Keep receiving after an error (without writing): every builder
		// must finish before the transaction is rolled back.
		w := <-ready
		if first == nil {
			first = writeBucket(tx, w)
		}
	}
	return first
}

// buildPuts builds every bucket's sorted writes for ch, one goroutine per
// bucket, without a transaction: an import prepares a batch's writes while
// the previous batch is being written.
func buildPuts(tenantID string, ch profile.Changes) []bucketPuts {
	builders := putBuilders(tenantID, ch)
	out := make([]bucketPuts, len(builders))
	var wg sync.WaitGroup
	for i, build := range builders {
		wg.Go(func() {
			var mem arena
			out[i] = build(&mem)
		})
	}
	wg.Wait()
	return out
}

// writeBuckets writes what buildPuts built.
func writeBuckets(tx *bolt.Tx, all []bucketPuts) error {
	for _, w := range all {
		if err := writeBucket(tx, w); err != nil {
			return err
		}
	}
	return nil
}

// putBuilders returns one function per bucket building its sorted writes.
func putBuilders(tenantID string, ch profile.Changes) []func(mem *arena) bucketPuts {
	keys := newKeyer(tenantID)
	return []func(mem *arena) bucketPuts{
		func(mem *arena) bucketPuts { return bucketPuts{bucketProfileTokens, detailPuts(mem, keys, ch.Tokens)} },
		func(mem *arena) bucketPuts { return bucketPuts{bucketTokens, hotPuts(mem, keys, ch.Tokens)} },
		func(mem *arena) bucketPuts { return bucketPuts{bucketProfiles, profilePuts(mem, keys, ch.Profiles)} },
		func(mem *arena) bucketPuts {
			return bucketPuts{bucketIdentities, identityPuts(mem, keys, ch.IdentityOwners)}
		},
		func(mem *arena) bucketPuts { return bucketPuts{bucketDevices, devicePuts(mem, keys, ch.DeviceTokens)} },
	}
}

func writeBucket(tx *bolt.Tx, w bucketPuts) error {
	if len(w.puts) == 0 {
		return nil
	}
	if err := writePuts(bucket(tx, w.name), w.puts); err != nil {
		return fmt.Errorf("write %s: %w", w.name, err)
	}
	return nil
}

func profilePuts(mem *arena, keys keyer, changes []profile.ProfileChange) []put {
	puts := make([]put, 0, len(changes))
	for _, c := range changes {
		p := put{key: mem.build(func(dst []byte) []byte { return keys.profile(dst, c.ID) }), del: c.Profile == nil}
		if c.Profile != nil {
			p.val = mem.build(func(dst []byte) []byte { return profile.EncodeProfile(dst, c.Profile) })
		}
		puts = append(puts, p)
	}
	sortPuts(puts)
	return puts
}

func identityPuts(mem *arena, keys keyer, changes []profile.IdentityOwnerChange) []put {
	puts := make([]put, 0, len(changes))
	for _, c := range changes {
		p := put{key: mem.build(func(dst []byte) []byte { return keys.identity(dst, c.Identity) }), del: !c.Found}
		if c.Found {
			p.val = mem.build(func(dst []byte) []byte { return append(dst, c.Owner[:]...) })
		}
		puts = append(puts, p)
	}
	sortPuts(puts)
	return puts
}

func devicePuts(mem *arena, keys keyer, changes []profile.DeviceTokenChange) []put {
	puts := make([]put, 0, len(changes))
	for _, c := range changes {
		id := profile.TokenKey{Platform: c.Key.Platform, AppID: c.Key.AppID, Token: c.Token}.ID()
		p := put{key: mem.build(func(dst []byte) []byte { return keys.device(dst, c.Key, &id) }), del: !c.Found}
		if c.Found {
			p.val = mem.build(func(dst []byte) []byte { return append(dst, c.Token...) })
		}
		puts = append(puts, p)
	}
	sortPuts(puts)
	return puts
}

func hotPuts(mem *arena, keys keyer, changes []profile.TokenChange) []put {
	puts := make([]put, 0, len(changes))
	for _, c := range changes {
		if !c.Hot {
			continue
		}
		p := put{key: mem.build(func(dst []byte) []byte { return keys.token(dst, c.ID) }), del: c.Token == nil}
		if c.Token != nil {
			p.val = mem.build(func(dst []byte) []byte { return profile.EncodeHot(dst, c.Token) })
		}
		puts = append(puts, p)
	}
	sortPuts(puts)
	return puts
}

func detailPuts(mem *arena, keys keyer, changes []profile.TokenChange) []put {
	puts := make([]put, 0, len(changes))
	for _, c := range changes {
		if c.HasOldDetails {
			puts = append(puts, put{key: mem.build(func(dst []byte) []byte { return keys.details(dst, c.DeleteDetailsOf, &c.ID) }), del: true})
		}
		if c.Details && c.Token != nil {
			puts = append(puts, put{
				key: mem.build(func(dst []byte) []byte { return keys.details(dst, c.Token.Owner, &c.ID) }),
				val: mem.build(func(dst []byte) []byte { return profile.EncodeDetails(dst, c.Token) }),
			})
		}
	}
	sortPuts(puts)
	return puts
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
