package store

import (
	"bytes"
	"slices"

	"github.com/pushmesh/pushmesh/profilesvc/internal/profile"
)

// Batches (imports, feedback) read every key they need up front, each bucket
// in sorted key order, and seed the workset with the results: a sorted walk
// touches each page once, where rows in arrival order would hop around the
// B+tree at random.

type keyed[T any] struct {
	key  []byte
	item T
}

func sortKeyed[T any](items []keyed[T]) {
	slices.SortFunc(items, func(a, b keyed[T]) int { return bytes.Compare(a.key, b.key) })
}

// prefetchTokens loads the owners of keys, then the owners' profiles.
func (l *loader) prefetchTokens(ws *profile.Workset, keys []profile.TokenKey) error {
	var mem arena
	seen := make(map[profile.TokenKey]struct{}, len(keys))
	items := make([]keyed[profile.TokenKey], 0, len(keys))
	for _, k := range keys {
		if _, dup := seen[k]; dup {
			continue
		}
		seen[k] = struct{}{}
		items = append(items, keyed[profile.TokenKey]{key: mem.build(func(dst []byte) []byte { return l.keys.token(dst, k) }), item: k})
	}
	sortKeyed(items)
	owners := make([]profile.ID, 0, len(items))
	for _, it := range items {
		id, found, err := l.owner(l.tokens, it.key)
		if err != nil {
			return err
		}
		ws.SeedTokenOwner(it.item, id, found)
		if found {
			owners = append(owners, id)
		}
	}
	return l.prefetchProfiles(ws, owners)
}

// prefetchIdentities loads the owners of idns and returns their ids.
func (l *loader) prefetchIdentities(ws *profile.Workset, idns []profile.Identity) ([]profile.ID, error) {
	var mem arena
	seen := make(map[profile.Identity]struct{}, len(idns))
	items := make([]keyed[profile.Identity], 0, len(idns))
	for _, idn := range idns {
		if _, dup := seen[idn]; dup {
			continue
		}
		seen[idn] = struct{}{}
		items = append(items, keyed[profile.Identity]{key: mem.build(func(dst []byte) []byte { return l.keys.identity(dst, idn) }), item: idn})
	}
	sortKeyed(items)
	owners := make([]profile.ID, 0, len(items))
	for _, it := range items {
		id, found, err := l.owner(l.identities, it.key)
		if err != nil {
			return nil, err
		}
		ws.SeedIdentityOwner(it.item, id, found)
		if found {
			owners = append(owners, id)
		}
	}
	return owners, nil
}

// prefetchDevices loads the current tokens of dks.
func (l *loader) prefetchDevices(ws *profile.Workset, dks []profile.DeviceKey) {
	var mem arena
	seen := make(map[profile.DeviceKey]struct{}, len(dks))
	items := make([]keyed[profile.DeviceKey], 0, len(dks))
	for _, dk := range dks {
		if _, dup := seen[dk]; dup {
			continue
		}
		seen[dk] = struct{}{}
		items = append(items, keyed[profile.DeviceKey]{key: mem.build(func(dst []byte) []byte { return l.keys.device(dst, dk) }), item: dk})
	}
	sortKeyed(items)
	for _, it := range items {
		v := l.devices.Get(it.key)
		ws.SeedDeviceToken(it.item, string(v), v != nil)
	}
}

// prefetchProfiles loads and decodes the profiles ids, in id order.
func (l *loader) prefetchProfiles(ws *profile.Workset, ids []profile.ID) error {
	slices.SortFunc(ids, func(a, b profile.ID) int { return bytes.Compare(a[:], b[:]) })
	ids = slices.Compact(ids)
	for _, id := range ids {
		p, err := l.LoadProfile(id)
		if err != nil {
			return err
		}
		ws.SeedProfile(id, p)
	}
	return nil
}
