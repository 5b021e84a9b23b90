package store

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/pushmesh/pushmesh/profilesvc/internal/profile"
	"github.com/pushmesh/pushmesh/servicekit/fault"
)

// wideRow is an import row carrying about 60 KB of attributes, measured
// the way the gRPC adapter measures them.
func wideRow(i int) profile.ImportRow {
	attrs := map[string]any{}
	for k := 0; k < 60; k++ {
		attrs[fmt.Sprintf("attribute_%02d", k)] = strings.Repeat(string(rune('a'+i%26)), 1000)
	}
	var v fault.ValidationError
	size := profile.ValidateAttributes(&v, "attributes", attrs)
	return profile.ImportRow{
		CustomerID: fmt.Sprintf("C%d", i),
		Reg:        profile.Registration{Key: apns(fmt.Sprintf("%04x", i)), Time: base, Source: "import"},
		Attributes: attrs,
		AttrSize:   size,
	}
}

// TestImportBatchesEndAtTheirByteBudget: a batch of wide rows is handed on
// once its rows take ImportBatchBytes, long before its row count; before,
// only the row count ended a batch, and 100,000 rows of wide CRM profiles
// held gigabytes in each of the batches the pipeline keeps.
func TestImportBatchesEndAtTheirByteBudget(t *testing.T) {
	ctx := context.Background()
	st, _ := openStore(t, t.TempDir(), Options{ImportBatchRows: 8000, ImportBatchBytes: 1 << 20})
	im := st.StartImport(ctx)
	const rows = 100
	first := wideRow(0)
	perRow := first.MemSize()
	if perRow < 60_000 {
		t.Fatalf("a row of 60 KB of attributes is estimated at %d bytes", perRow)
	}
	for i := 0; i < rows; i++ {
		if err := im.Add(wideRow(i)); err != nil {
			t.Fatal(err)
		}
		// The first batch would hold 1,000 rows (8,000 >> rampBatches).
		if im.pendingBytes >= 1<<20 || len(im.pending)*perRow > 1<<20+perRow {
			t.Fatalf("after %d rows: %d rows of %d bytes pending, want a batch handed on at 1 MiB", i+1, len(im.pending), im.pendingBytes)
		}
	}
	perBatch := (1<<20 + perRow - 1) / perRow
	if want := rows / perBatch; im.flushed != want {
		t.Errorf("got %d batches handed on, want %d of %d rows", im.flushed, want, perBatch)
	}
	c, err := im.Finish()
	if err != nil {
		t.Fatal(err)
	}
	if c.Created != rows || c.ProfilesCreated != rows {
		t.Fatalf("got %+v, want every row imported", c)
	}
	p, err := st.Get(ctx, cust("C99"), "profile")
	if err != nil || len(p.Profile.Attributes) != 60 {
		t.Fatalf("got %v, %v, want C99 with its 60 attributes", p.Profile, err)
	}
}

// TestRowsWithoutAttributesFillWholeBatches: the byte budget does not
// shorten the batches of ordinary rows (a few hundred bytes each).
func TestRowsWithoutAttributesFillWholeBatches(t *testing.T) {
	// A typical FCM registration token is 163 characters.
	row := profile.ImportRow{CustomerID: "C1234567", Reg: profile.Registration{
		Key:  profile.TokenKey{Platform: profile.PlatformFCM, AppID: "com.example.android", Token: strings.Repeat("t", 163)},
		Time: base, Source: "import"}}
	if n := DefaultImportBatchBytes / row.MemSize(); n < DefaultImportBatchRows*5/4 {
		t.Fatalf("a batch of rows of %d bytes ends at %d rows, want well over %d", row.MemSize(), n, DefaultImportBatchRows)
	}
}
