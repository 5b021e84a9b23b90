package audience

import (
	"slices"
	"strings"
	"testing"

	"github.com/pushmesh/pushmesh/profilesvc/internal/profile"
)

// TestBatchesBoundedByBytes: a member that would take a batch past
// MaxBatchBytes starts the next batch, so no batch's members add up to more
// (one member always fits), and each batch's stats and resume point are
// those of its own last profile, so resuming after any batch gives exactly
// the rest. Before, the size was checked only after adding a member, and
// estimated from the stored record, which a google.protobuf.Struct can take
// four times over: a batch of big members went past gRPC's 4 MiB limit and
// the query failed there, every time it was resumed.
func TestBatchesBoundedByBytes(t *testing.T) {
	// Members of about 0.3 to 0.45 MiB (some small ones between), a few
	// not qualifying, one stored before the caps with 2 MiB of attributes.
	sizes := []int{10, 300, 450, 10, 0, 400, 450, 450, 0, 2048, 10, 350, 350, 350, 10}
	f := newFake(len(sizes), func(i int) (map[string]any, profile.Consent, []tok) {
		attrs := map[string]any{"in": sizes[i] > 0}
		if sizes[i] > 0 {
			attrs["blob"] = strings.Repeat("x", sizes[i]<<10)
		}
		return attrs, profile.ConsentOptedIn, []tok{{profile.PlatformFCM, "app", true}}
	})
	cond := mustCompile(t, "attributes['in']")
	batches, members := run(t, f, Query{Condition: cond})
	if len(members) != 13 {
		t.Fatalf("got %d members, want 13", len(members))
	}
	scannedBy := func(id profile.ID) int64 { // profiles scanned up to id
		return int64(slices.IndexFunc(f.profiles, func(p fakeProfile) bool { return p.id == id }) + 1)
	}
	var qualified int64
	for i, b := range batches {
		total := 0
		for j := range b.Members {
			total += MemberSize(&b.Members[j])
		}
		if total > MaxBatchBytes && len(b.Members) > 1 {
			t.Errorf("batch %d: %d members of %d bytes, over %d", i, len(b.Members), total, MaxBatchBytes)
		}
		qualified += int64(len(b.Members))
		if b.Stats.Qualified != qualified || b.Stats.Scanned != scannedBy(b.ResumeAfter) {
			t.Errorf("batch %d: got stats %+v after %x, want %d qualified of %d scanned", i, b.Stats, b.ResumeAfter, qualified, scannedBy(b.ResumeAfter))
		}
		if i < len(batches)-1 && b.ResumeAfter != b.Members[len(b.Members)-1].ID {
			// The profile scanned after the last member is the one held
			// over, so resuming must come back to it.
			next := batches[i+1].Members[0].ID
			if scannedBy(b.ResumeAfter) >= scannedBy(next) {
				t.Errorf("batch %d: resumes after %x, past the next batch's first member %x", i, b.ResumeAfter, next)
			}
		}
		// Resuming after this batch gives exactly the members after it.
		_, rest := run(t, f, Query{Condition: cond, StartAfter: b.ResumeAfter, HasStart: true})
		if len(rest) != len(members)-int(qualified) || (len(rest) > 0 && rest[0].ID != members[qualified].ID) {
			t.Errorf("resumed after batch %d: got %d members, want the %d after it", i, len(rest), len(members)-int(qualified))
		}
	}
	var counts []int
	for _, b := range batches {
		counts = append(counts, len(b.Members))
	}
	// KiB: [10 300 450 10] [400 450] [450 (2048 trimmed) 10 350] [350 350 10]
	if want := []int{4, 2, 4, 3}; !slices.Equal(counts, want) {
		t.Errorf("got batches of %v members, want %v", counts, want)
	}
	// The profile stored before the caps streams with its tokens but
	// without its attributes and identities, alone or with small members.
	big := members[slices.IndexFunc(members, func(m Member) bool { return m.ID == f.profiles[9].id })]
	if len(big.Tokens) != 1 || len(big.Attributes) != 0 || big.Identities != nil || MemberSize(&big) > MaxBatchBytes {
		t.Errorf("oversized member: got %d tokens, %d attributes, %d identities, want its token only", len(big.Tokens), len(big.Attributes), len(big.Identities))
	}
	// Members keep their attributes otherwise.
	if got := members[2].Attributes["blob"].(string); len(got) != 450<<10 {
		t.Errorf("got a blob of %d bytes, want 450 KiB", len(got))
	}

	// A limit reached on a member held over still ends the query with it.
	limitedBatches, limited := run(t, f, Query{Condition: cond, Limit: 5})
	if len(limitedBatches) != 2 || len(limited) != 5 || limited[4].ID != f.profiles[5].id || limitedBatches[1].Stats.Qualified != 5 {
		t.Errorf("limit 5: got %d members in %d batches, want the first 5 in 2", len(limited), len(limitedBatches))
	}
}

// TestMembersCarryAtMostTheTokenCap: a profile stored before the caps with
// more tokens than a profile keeps streams with the first MaxProfileTokens
// of them, and counts that many.
func TestMembersCarryAtMostTheTokenCap(t *testing.T) {
	f := newFake(3, func(i int) (map[string]any, profile.Consent, []tok) {
		n := 1
		if i == 1 {
			n = 3 * profile.MaxProfileTokens
		}
		return nil, profile.ConsentOptedIn, slices.Repeat([]tok{{profile.PlatformFCM, "app", true}}, n)
	})
	_, members := run(t, f, Query{Condition: mustCompile(t, "")})
	if len(members) != 3 || len(members[1].Tokens) != profile.MaxProfileTokens {
		t.Fatalf("got %d members, the second with %d tokens, want 3 and %d", len(members), len(members[1].Tokens), profile.MaxProfileTokens)
	}
	counted, _ := run(t, f, Query{Condition: mustCompile(t, ""), CountOnly: true})
	if got := counted[len(counted)-1].Stats.Tokens; got != 2+profile.MaxProfileTokens {
		t.Fatalf("count only: got %d tokens, want %d", got, 2+profile.MaxProfileTokens)
	}
}
