package store

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"

	bolt "go.etcd.io/bbolt"
)

func TestSortedIDsFindsExactlyItsMembers(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, n := range []int{0, 1, 2, 7, 100, 5000} {
		members := map[uint64]bool{}
		if n > 2 {
			members[0], members[^uint64(0)] = true, true // the extremes
		}
		for len(members) < n {
			members[rng.Uint64()] = true
		}
		fps := make([]uint64, 0, n)
		for fp := range members {
			fps = append(fps, fp)
		}
		slices.Sort(fps)
		set := newSortedIDs(fps)
		for fp := range members {
			if !set.has(fp) {
				t.Errorf("n=%d: member %x not found", n, fp)
			}
		}
		for range 2000 {
			fp := rng.Uint64()
			if got := set.has(fp); got != members[fp] {
				t.Errorf("n=%d: has(%x) = %v, want %v", n, fp, got, members[fp])
			}
		}
	}
}

func TestMergeIDsKeepsOrderAndFirstDay(t *testing.T) {
	fps, days := mergeIDs([]uint64{1, 5, 9}, []int32{1, 1, 1}, []uint64{2, 5, 10}, 2)
	if fmt.Sprint(fps, days) != "[1 2 5 9 10] [1 2 1 1 2]" {
		t.Errorf("got %v %v, want [1 2 5 9 10] [1 2 1 1 2]", fps, days)
	}
}

func TestSealingKeepsTheWindowAndDropsExpiredDays(t *testing.T) {
	var s idSet
	rng := rand.New(rand.NewPCG(5, 6))
	byDay := map[int64][]uint64{}
	add := func(day int64, n int) {
		for range n {
			fp := rng.Uint64()
			s.openSet(day, 0)[fp] = struct{}{}
			byDay[day] = append(byDay[day], fp)
		}
	}
	add(10, 3000)
	add(11, 200)
	add(12, 100)

	if _, ok := s.startSeal(10, 10); ok {
		t.Fatal("sealed 3,300 ids of today: want them left in hash sets (too few, no day ended)")
	}
	job, ok := s.startSeal(12, 10)
	if !ok || len(job.frozen) != 3 {
		t.Fatalf("got %v with %d frozen days, want a job for days 10 to 12 (days 10 and 11 ended)", ok, len(job.frozen))
	}
	if _, again := s.startSeal(12, 10); again {
		t.Fatal("a second seal started while one runs")
	}
	// While the job runs, new ids land in a fresh set and the frozen ids
	// are still found.
	late := rng.Uint64()
	s.openSet(12, 0)[late] = struct{}{}
	if !s.has(byDay[10][0]) || !s.has(late) {
		t.Fatal("ids lost while sealing")
	}
	s.finishSeal(job.run())
	for day, fps := range byDay {
		for _, fp := range fps {
			if !s.has(fp) {
				t.Fatalf("day %d: id %x lost by sealing", day, fp)
			}
		}
	}
	if got, want := s.size(), 3000+200+100+1; got != want {
		t.Errorf("got size %d, want %d", got, want)
	}
	if got := len(s.past.ids.fps); got != 3300 {
		t.Errorf("got %d sealed ids, want 3300", got)
	}

	// Day 11 becomes the first kept: day 10 goes, the late id is sealed.
	job, ok = s.startSeal(13, 11)
	if !ok {
		t.Fatal("no job to expire day 10")
	}
	s.finishSeal(job.run())
	if s.has(byDay[10][0]) {
		t.Error("day 10 still remembered after it expired")
	}
	for _, fp := range append(append(byDay[11], byDay[12]...), late) {
		if !s.has(fp) {
			t.Fatalf("id %x of a kept day lost", fp)
		}
	}
	if s.past.oldest != 11 || len(s.open) != 0 {
		t.Errorf("got oldest past day %d and %d open sets, want 11 and none", s.past.oldest, len(s.open))
	}
}

func TestLoadPastMergesDays(t *testing.T) {
	var s idSet
	s.loadPast(map[int64][]uint64{3: {30, 10, 20}, 4: {15, 10}})
	if fmt.Sprint(s.past.ids.fps, s.past.days) != "[10 15 20 30] [3 4 3 3]" && fmt.Sprint(s.past.ids.fps, s.past.days) != "[10 15 20 30] [4 4 3 3]" {
		t.Errorf("got %v %v, want [10 15 20 30] with their days", s.past.ids.fps, s.past.days)
	}
	if !s.has(15) || s.has(11) {
		t.Error("loaded past answers wrongly")
	}
}

// BenchmarkSortedIDsHas looks up random ids among 10 million.
func BenchmarkSortedIDsHas(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 1))
	fps := make([]uint64, 10_000_000)
	for i := range fps {
		fps[i] = rng.Uint64()
	}
	slices.Sort(fps)
	set := newSortedIDs(slices.Compact(fps))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		set.has(rng.Uint64())
	}
}

// BenchmarkMapHas is the comparison that chose sortedIDs for sealed days.
func BenchmarkMapHas(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 1))
	m := make(map[uint64]struct{}, 10_000_000)
	for range 10_000_000 {
		m[rng.Uint64()] = struct{}{}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		_ = m[rng.Uint64()]
	}
}

// TestRunFindsExactlyItsIDs writes a day's run bigger than one build
// transaction and looks up its members, the extremes, chunk boundaries and
// strangers.
func TestRunFindsExactlyItsIDs(t *testing.T) {
	st := newStore(t, &clock{now: t0})
	rng := rand.New(rand.NewPCG(5, 6))
	const day = 20000
	n := runChunk*runChunksPerTx + 3*runChunk + 7
	members := map[uint64]bool{0: true, ^uint64(0): true}
	for len(members) < n {
		members[rng.Uint64()] = true
	}
	fresh := map[uint64]struct{}{}
	for fp := range members {
		fresh[fp] = struct{}{}
	}
	err := st.db.Update(func(tx *bolt.Tx) error {
		// Two batches of the day, one id in both (it cannot happen, but a
		// run must not mind).
		if err := appendFingerprints(tx.Bucket(bucketDedupe), day, "acme", 1, fresh); err != nil {
			return err
		}
		return appendFingerprints(tx.Bucket(bucketDedupe), day, "acme", 2, map[uint64]struct{}{0: {}})
	})
	if err != nil {
		t.Fatal(err)
	}
	if built, err := st.buildRun(day); err != nil || !built {
		t.Fatalf("buildRun: got %v, %v, want built", built, err)
	}
	sorted := slices.Sorted(maps.Keys(members))
	probes := []uint64{1, ^uint64(0) - 1}
	for i := 0; i < len(sorted); i += runChunk {
		probes = append(probes, sorted[i], sorted[i]-1, sorted[i]+1)
	}
	for range 5000 {
		probes = append(probes, rng.Uint64())
	}
	err = st.db.View(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketDedupeStaging).Bucket(dayKey(day)) != nil {
			return fmt.Errorf("the staged run is still there")
		}
		c := tx.Bucket(bucketDedupeRuns).Bucket(dayKey(day)).Cursor()
		for fp := range members {
			if ok, err := runHas(c, fp); err != nil || !ok {
				return fmt.Errorf("member %x: got %v, %v", fp, ok, err)
			}
		}
		for _, fp := range probes {
			if ok, err := runHas(c, fp); err != nil || ok != members[fp] {
				return fmt.Errorf("probe %x: got %v, %v, want %v", fp, ok, err, members[fp])
			}
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
}
