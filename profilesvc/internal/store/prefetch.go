package store

import (
	"bytes"
	"cmp"
	"slices"

	bolt "go.etcd.io/bbolt"

	"github.com/pushmesh/pushmesh/profilesvc/internal/profile"
)

// Batches (imports, feedback) read every key they need up front, each bucket
// in sorted key order, and seed the workset with the results. A sorted walk
// steps a cursor from key to key when they are close (a batch of 100,000 rows
// over a few hundred thousand keys mostly is) instead of searching from the
// root for each: far fewer cache misses than one Get per row.

// walker looks up keys given in ascending order.
type walker struct {
	c       *bolt.Cursor
	k, v    []byte
	started bool
}

// maxSteps is how many entries the walker steps over before it gives up
// and seeks: a seek costs about as much as a few dozen steps.
const maxSteps = 24

func newWalker(b *bolt.Bucket) *walker { return &walker{c: b.Cursor()} }

// get returns key's value (nil when absent); keys must not decrease between
// calls. The value is only valid during the transaction.
func (w *walker) get(key []byte) []byte {
	if w.started {
		for i := 0; i < maxSteps && w.k != nil && bytes.Compare(w.k, key) < 0; i++ {
			w.k, w.v = w.c.Next()
		}
		if w.k == nil {
			return nil // past the last key: every later key is absent too
		}
		if c := bytes.Compare(w.k, key); c >= 0 {
			if c == 0 {
				return w.v
			}
			return nil
		}
	}
	w.k, w.v = w.c.Seek(key)
	w.started = true
	if w.k != nil && bytes.Equal(w.k, key) {
		return w.v
	}
	return nil
}

// countPrefix counts the keys under prefix, stopping past limit; prefixes
// must not decrease between calls (and none may be a prefix of another).
func (w *walker) countPrefix(prefix []byte, limit int) int {
	if w.started {
		for i := 0; i < maxSteps && w.k != nil && bytes.Compare(w.k, prefix) < 0; i++ {
			w.k, w.v = w.c.Next()
		}
		if w.k == nil {
			return 0
		}
		if bytes.Compare(w.k, prefix) < 0 {
			w.k, w.v = w.c.Seek(prefix)
		}
	} else {
		w.k, w.v = w.c.Seek(prefix)
		w.started = true
	}
	n := 0
	for w.k != nil && n <= limit && bytes.HasPrefix(w.k, prefix) {
		n++
		w.k, w.v = w.c.Next()
	}
	return n
}

type identitySeed struct {
	idn   profile.Identity
	owner profile.ID
	found bool
}

type profileSeed struct {
	id profile.ID
	p  *profile.Profile
}

type tokenSeed struct {
	id profile.TokenID
	t  *profile.Token // nil: absent; Full when its details were read too
}

type countSeed struct {
	id profile.ID
	n  int
}

type deviceSeed struct {
	dk     profile.DeviceKey
	tokens []string
}

// readIdentities reads the owners of idns; owners[i] is the owner of
// idns[i] (zero when none) and seeds[seedOf[i]] its seed.
func (l *loader) readIdentities(idns []profile.Identity) (owners []profile.ID, seeds []identitySeed, seedOf []int32, err error) {
	var mem arena
	// The keys are sorted as sortPuts does. The sort is written out again
	// because a generic version with key and rank accessors made a 300k-row
	// import take 60 % more CPU (measured).
	type item struct {
		key  []byte
		rank uint64 // see sortPuts
		i    int
	}
	items := make([]item, len(idns))
	for i, idn := range idns {
		items[i] = item{key: mem.build(func(dst []byte) []byte { return l.keys.identity(dst, idn) }), i: i}
	}
	if len(items) > 0 {
		lcp := len(items[0].key)
		for _, it := range items[1:] {
			lcp = min(lcp, commonPrefixLen(items[0].key, it.key))
		}
		for i := range items {
			items[i].rank = rank(items[i].key[lcp:])
		}
	}
	slices.SortFunc(items, func(a, b item) int {
		if a.rank != b.rank {
			return cmp.Compare(a.rank, b.rank)
		}
		return bytes.Compare(a.key, b.key)
	})
	owners = make([]profile.ID, len(idns))
	seeds = make([]identitySeed, 0, len(idns))
	seedOf = make([]int32, len(idns))
	w := newWalker(l.identities)
	for j, it := range items {
		if j > 0 && bytes.Equal(items[j-1].key, it.key) {
			owners[it.i] = owners[items[j-1].i]
			seedOf[it.i] = seedOf[items[j-1].i]
			continue
		}
		seed := identitySeed{idn: idns[it.i]}
		if v := w.get(it.key); v != nil {
			if len(v) != len(seed.owner) {
				return nil, nil, nil, profile.ErrCorrupt
			}
			copy(seed.owner[:], v)
			seed.found = true
		}
		owners[it.i] = seed.owner
		seedOf[it.i] = int32(len(seeds))
		seeds = append(seeds, seed)
	}
	return owners, seeds, seedOf, nil
}

// readProfiles reads and decodes the profiles ids (zero ids skipped).
func (l *loader) readProfiles(ids []profile.ID) ([]profileSeed, error) {
	ids = slices.Clone(ids)
	slices.SortFunc(ids, func(a, b profile.ID) int { return bytes.Compare(a[:], b[:]) })
	ids = slices.Compact(ids)
	seeds := make([]profileSeed, 0, len(ids))
	w := newWalker(l.profiles)
	var key []byte
	for _, id := range ids {
		if id.IsZero() {
			continue
		}
		key = l.keys.profile(key[:0], id)
		seed := profileSeed{id: id}
		if v := w.get(key); v != nil {
			p, err := profile.DecodeProfile(id, v)
			if err != nil {
				return nil, err
			}
			seed.p = p
		}
		seeds = append(seeds, seed)
	}
	return seeds, nil
}

// readTokens reads the hot parts of the tokens keys[i] (ids[i] is
// keys[i].ID()), then the details of those for which needDetails(i, token)
// says so (nil: none). seeds[seedOf[i]] is the seed of keys[i].
func (l *loader) readTokens(keys []profile.TokenKey, ids []profile.TokenID, needDetails func(i int, t *profile.Token) bool) (seeds []tokenSeed, seedOf []int32, err error) {
	// Sort by the ids' leading bytes as a number (the hash makes ties
	// rare), not by indirect byte comparisons.
	type item struct {
		rank uint64
		i    int
	}
	order := make([]item, len(keys))
	for i := range order {
		order[i] = item{rank: rank(ids[i][:]), i: i}
	}
	slices.SortFunc(order, func(a, b item) int {
		if a.rank != b.rank {
			return cmp.Compare(a.rank, b.rank)
		}
		return bytes.Compare(ids[a.i][:], ids[b.i][:])
	})
	seeds = make([]tokenSeed, 0, len(keys))
	seedOf = make([]int32, len(keys))
	var withDetails []int // indexes into seeds
	w := newWalker(l.tokens)
	var key []byte
	for j, it := range order {
		i := it.i
		if j > 0 && ids[order[j-1].i] == ids[i] {
			seedOf[i] = seedOf[order[j-1].i]
			continue
		}
		seedOf[i] = int32(len(seeds))
		key = l.keys.token(key[:0], ids[i])
		seed := tokenSeed{id: ids[i]}
		if v := w.get(key); v != nil {
			t, err := profile.DecodeHot(keys[i], v)
			if err != nil {
				return nil, nil, err
			}
			seed.t = t
			if needDetails != nil && needDetails(i, t) {
				withDetails = append(withDetails, len(seeds))
			}
		}
		seeds = append(seeds, seed)
	}
	slices.SortFunc(withDetails, func(a, b int) int {
		if c := bytes.Compare(seeds[a].t.Owner[:], seeds[b].t.Owner[:]); c != 0 {
			return c
		}
		return bytes.Compare(seeds[a].id[:], seeds[b].id[:])
	})
	w = newWalker(l.details)
	for _, j := range withDetails {
		s := &seeds[j]
		key = l.keys.details(key[:0], s.t.Owner, &s.id)
		v := w.get(key)
		if v == nil {
			return nil, nil, profile.ErrCorrupt
		}
		if err := profile.DecodeDetails(s.t, v); err != nil {
			return nil, nil, err
		}
	}
	return seeds, seedOf, nil
}

// readTokenCounts counts the tokens of the profiles ids (zero ids
// skipped), up to just past profile.MaxProfileTokens, walking their details
// in key order.
func (l *loader) readTokenCounts(ids []profile.ID) []countSeed {
	slices.SortFunc(ids, func(a, b profile.ID) int { return bytes.Compare(a[:], b[:]) })
	ids = slices.Compact(ids)
	seeds := make([]countSeed, 0, len(ids))
	w := newWalker(l.details)
	var key []byte
	for _, id := range ids {
		if id.IsZero() {
			continue
		}
		key = l.keys.details(key[:0], id, nil)
		seeds = append(seeds, countSeed{id: id, n: w.countPrefix(key, profile.MaxProfileTokens)})
	}
	return seeds
}

// readDevices reads the tokens of the app installs dks.
func (l *loader) readDevices(dks []profile.DeviceKey) []deviceSeed {
	var mem arena
	type item struct {
		key []byte
		dk  profile.DeviceKey
	}
	items := make([]item, len(dks))
	for i, dk := range dks {
		items[i] = item{key: mem.build(func(dst []byte) []byte { return l.keys.device(dst, dk, nil) }), dk: dk}
	}
	slices.SortFunc(items, func(a, b item) int { return bytes.Compare(a.key, b.key) })
	seeds := make([]deviceSeed, 0, len(items))
	c := l.devices.Cursor()
	for j, it := range items {
		if j > 0 && bytes.Equal(items[j-1].key, it.key) {
			continue
		}
		seeds = append(seeds, deviceSeed{dk: it.dk, tokens: deviceTokens(c, it.key)})
	}
	return seeds
}

// prefetched is everything a batch read ahead.
type prefetched struct {
	identities []identitySeed
	profiles   []profileSeed
	tokens     []tokenSeed
	devices    []deviceSeed
	counts     []countSeed
	// For import rows: row i's customer id is identities[identityOf[i]],
	// its token tokens[tokenOf[i]].
	identityOf, tokenOf []int32
}

// seed hands what was read to ws, a fresh workset, and returns the slots of
// the identities and tokens (in the order of p.identities and p.tokens).
func (p *prefetched) seed(ws *profile.Workset) ([]profile.OwnerRef, []profile.TokenRef) {
	owners := make([]profile.OwnerRef, len(p.identities))
	for i, s := range p.identities {
		owners[i] = ws.SeedIdentityOwner(s.idn, s.owner, s.found)
	}
	for _, s := range p.profiles {
		ws.SeedProfile(s.id, s.p)
	}
	for _, s := range p.counts {
		ws.SeedTokenCount(s.id, s.n)
	}
	tokens := make([]profile.TokenRef, len(p.tokens))
	for i, s := range p.tokens {
		tokens[i] = ws.SeedToken(s.id, s.t)
	}
	for _, s := range p.devices {
		ws.SeedDevice(s.dk, s.tokens)
	}
	return owners, tokens
}
