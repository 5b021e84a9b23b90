package store

import (
	"slices"
)

// idSet holds the fingerprints of the event ids received within the dedupe
// window, by receive day (UTC).
//
// Today's ids are in a hash set that takes inserts. The days before are
// merged into one sorted array with a bucket index (past): about 13 bytes an
// id (fingerprint, day, index) instead of 20 or more in a hash set, and one probe for all past days together,
// where a set per day would cost a cache miss per day on every new event.
// Each past id carries its day, so expiring a day is a sequential filter,
// not a rebuild by hashing.
//
// Sealing (moving finished days into past and dropping expired ones) sorts
// and merges millions of ids: it runs outside the store's lock from data no
// writer touches any more (see startSeal), and meanwhile those ids are still
// found in their frozen hash sets. The store's mutex guards everything else.
type idSet struct {
	past pastIDs
	// frozen are the hash sets of finished days being sealed: read-only.
	frozen []daySet
	// open are the hash sets taking inserts, one per receive day (today's,
	// and yesterday's just after midnight).
	open []daySet
	// sealing is set while a seal job runs: one at a time.
	sealing bool
}

type daySet struct {
	day int64
	fps map[uint64]struct{}
}

func (s *idSet) has(fp uint64) bool {
	// Newest first: a retry usually comes soon after the original.
	for i := len(s.open) - 1; i >= 0; i-- {
		if _, ok := s.open[i].fps[fp]; ok {
			return true
		}
	}
	for _, d := range s.frozen {
		if _, ok := d.fps[fp]; ok {
			return true
		}
	}
	return s.past.ids.has(fp)
}

// pastIDs are the ids of the sealed days.
type pastIDs struct {
	ids sortedIDs
	// days[i] is the receive day of ids.fps[i]; oldest the oldest of them.
	days   []int32
	oldest int64
}

func newPastIDs(fps []uint64, days []int32) pastIDs {
	p := pastIDs{ids: newSortedIDs(fps), days: days}
	if len(days) > 0 {
		p.oldest = int64(slices.Min(days))
	}
	return p
}

// openSet returns the hash set taking day's new ids, with room for n if it
// must be created.
func (s *idSet) openSet(day int64, n int) map[uint64]struct{} {
	for _, d := range s.open {
		if d.day == day {
			return d.fps
		}
	}
	d := daySet{day: day, fps: make(map[uint64]struct{}, n)}
	s.open = append(s.open, d)
	slices.SortFunc(s.open, func(a, b daySet) int { return int(a.day - b.day) })
	return d.fps
}

// size is how many ids are remembered.
func (s *idSet) size() int {
	n := len(s.past.ids.fps)
	for _, d := range s.frozen {
		n += len(d.fps)
	}
	for _, d := range s.open {
		n += len(d.fps)
	}
	return n
}

// sealJob rebuilds past: the old past without the days before firstKept,
// merged with the frozen days from firstKept on.
type sealJob struct {
	past      pastIDs
	frozen    []daySet
	firstKept int64
}

// minSeal and sealRatio decide when the hash sets are worth merging into
// past: a merge copies all of past, so it waits until the sets hold a good
// share of it (amortized, each id is copied a few times), unless a day ended
// or expired.
const (
	minSeal   = 100_000
	sealRatio = 4
)

// startSeal freezes the hash sets, if it is time, and returns the job that
// merges them into past, dropping the days before firstKept. Run it without
// the lock, then install the result with finishSeal under the lock.
// Meanwhile new ids go to fresh hash sets. It returns false when there is
// nothing to do.
func (s *idSet) startSeal(today, firstKept int64) (sealJob, bool) {
	if s.sealing {
		return sealJob{}, false
	}
	openIDs, dayEnded := 0, false
	for _, d := range s.open {
		openIDs += len(d.fps)
		dayEnded = dayEnded || d.day < today
	}
	expired := len(s.past.days) > 0 && s.past.oldest < firstKept
	due := openIDs >= minSeal && openIDs >= len(s.past.ids.fps)/sealRatio
	if !expired && !dayEnded && !due {
		return sealJob{}, false
	}
	for _, d := range s.open {
		if d.day >= firstKept && len(d.fps) > 0 {
			s.frozen = append(s.frozen, d)
		}
	}
	s.open = nil
	s.sealing = true
	return sealJob{past: s.past, frozen: s.frozen, firstKept: firstKept}, true
}

// run builds the new past. It reads only data no writer touches.
func (j *sealJob) run() pastIDs {
	// Days in the window, from the old past...
	fps := make([]uint64, 0, len(j.past.ids.fps))
	days := make([]int32, 0, len(j.past.ids.fps))
	for i, fp := range j.past.ids.fps {
		if int64(j.past.days[i]) >= j.firstKept {
			fps = append(fps, fp)
			days = append(days, j.past.days[i])
		}
	}
	// ...merged with each frozen day, sorted on its own first.
	for _, d := range j.frozen {
		add := make([]uint64, 0, len(d.fps))
		for fp := range d.fps {
			add = append(add, fp)
		}
		slices.Sort(add)
		fps, days = mergeIDs(fps, days, add, int32(d.day))
	}
	return newPastIDs(fps, days)
}

// finishSeal installs a job's result (under the lock).
func (s *idSet) finishSeal(past pastIDs) {
	s.past, s.frozen, s.sealing = past, nil, false
}

// loadPast sets past from whole days of ids read at start-up.
func (s *idSet) loadPast(byDay map[int64][]uint64) {
	var fps []uint64
	var days []int32
	for day, add := range byDay {
		slices.Sort(add)
		fps, days = mergeIDs(fps, days, add, int32(day))
	}
	s.past = newPastIDs(fps, days)
}

// mergeIDs merges the sorted ids b, all of day, into the sorted ids a with
// their days. An id in both keeps its first day.
func mergeIDs(a []uint64, aDays []int32, b []uint64, day int32) ([]uint64, []int32) {
	out := make([]uint64, 0, len(a)+len(b))
	outDays := make([]int32, 0, len(a)+len(b))
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case j == len(b) || (i < len(a) && a[i] < b[j]):
			out, outDays = append(out, a[i]), append(outDays, aDays[i])
			i++
		case i == len(a) || b[j] < a[i]:
			if len(out) == 0 || out[len(out)-1] != b[j] {
				out, outDays = append(out, b[j]), append(outDays, day)
			}
			j++
		default: // equal
			out, outDays = append(out, a[i]), append(outDays, aDays[i])
			i++
			j++
		}
	}
	return out, outDays
}

// sortedIDs is a sorted array of distinct fingerprints with an index of where
// each bucket of leading bits starts; fingerprints are uniform, so a bucket
// holds about idsPerBucket of them and a lookup reads one or two cache lines
// of the array.
type sortedIDs struct {
	fps   []uint64
	start []uint32 // start[b]: first index with fp>>shift >= b; one extra at the end
	shift uint
}

const idsPerBucket = 4

// newSortedIDs indexes fps, which must be sorted and distinct.
func newSortedIDs(fps []uint64) sortedIDs {
	bits := uint(0)
	for (len(fps)>>bits)/idsPerBucket > 1 {
		bits++
	}
	s := sortedIDs{fps: fps, start: make([]uint32, (1<<bits)+1), shift: 64 - bits}
	b := 0
	for i, fp := range fps {
		// With one bucket the shift is 64, which in Go yields 0.
		for ; uint64(b) <= fp>>s.shift; b++ {
			s.start[b] = uint32(i)
		}
	}
	for ; b < len(s.start); b++ {
		s.start[b] = uint32(len(fps))
	}
	return s
}

func (s *sortedIDs) has(fp uint64) bool {
	if len(s.fps) == 0 {
		return false
	}
	b := fp >> s.shift
	for _, f := range s.fps[s.start[b]:s.start[b+1]] {
		if f >= fp {
			return f == fp
		}
	}
	return false
}
