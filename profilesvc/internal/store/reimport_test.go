package store

import (
	"context"
	"fmt"
	"testing"

	"github.com/pushmesh/pushmesh/profilesvc/internal/profile"
)

// TestReimportAfterEvictionsChangesNothing: the README promises that
// importing the same file again reports every row unchanged and writes
// nothing, which is also what makes "rerun the file" the way to resume an
// import a crash interrupted. A full profile's import evicts a token its
// device had already replaced; before, the row of that token, imported
// again, found it gone and created it afresh (replaced on arrival),
// evicting another inactive token of the profile for it: every rerun
// wrote, reported rows created, and could end in another state than the
// first import (here U1 evicted instead of T1).
func TestReimportAfterEvictionsChangesNothing(t *testing.T) {
	ctx := context.Background()
	tok := func(kind, i int) string { return fmt.Sprintf("%08x%056x", kind, i) }
	row := func(token, device string, at int64) profile.ImportRow {
		return profile.ImportRow{CustomerID: "P", Reg: profile.Registration{Key: apns(token), Time: base + at*sec, DeviceID: device, Source: "import"}}
	}
	rows := []profile.ImportRow{
		// Device d2 rotates U1 → U2, then device d1 T1 → T2: U1 and T1
		// are replaced, T1 seen least recently.
		row(tok(1, 0), "d2", 3), row(tok(1, 1), "d2", 6),
		row(tok(2, 0), "d1", 1), row(tok(2, 1), "d1", 5),
	}
	for i := 0; i < profile.MaxProfileTokens-4; i++ {
		rows = append(rows, row(tok(3, i), "", 100))
	}
	// A new token for the full profile evicts T1.
	rows = append(rows, row(tok(4, 0), "", 200))

	for _, batch := range []int{1000, 7} {
		t.Run(fmt.Sprintf("batches of %d", batch), func(t *testing.T) {
			st, _ := openStore(t, t.TempDir(), Options{ImportBatchRows: batch})
			if c := importRows(t, ctx, st, rows); c.Created != int64(len(rows)) {
				t.Fatalf("first import: got %+v, want every row created", c)
			}
			want := dump(t, ctx, st)
			for run := 2; run <= 3; run++ {
				if c := importRows(t, ctx, st, rows); c.Unchanged != int64(len(rows)) {
					t.Errorf("import %d of the same rows: got %+v, want all %d unchanged", run, c, len(rows))
				}
				if got := dump(t, ctx, st); got != want {
					t.Fatalf("import %d of the same rows changed the state:\n%s", run, diff(got, want))
				}
			}
		})
	}
}
