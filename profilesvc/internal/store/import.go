package store

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	bolt "go.etcd.io/bbolt"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/pushmesh/pushmesh/profilesvc/internal/profile"
	"github.com/pushmesh/pushmesh/servicekit/tenant"
)

// MaxRejectedRows is how many rejected rows an import reports in detail.
const MaxRejectedRows = 100

// RejectedRow says why one row was not imported.
type RejectedRow struct {
	Index  int64
	Field  string
	Reason string
}

// ImportCounts sums an import.
type ImportCounts struct {
	Rows            int64
	Created         int64
	Updated         int64
	Moved           int64
	Unchanged       int64
	Rejected        int64
	ProfilesCreated int64
	// RejectedRows are the first MaxRejectedRows rejected rows.
	RejectedRows []RejectedRow
}

// Import is one running CRM import, a pipeline of three goroutines:
//
//   - the caller decodes the stream and adds valid rows (and reports
//     invalid ones) until a batch is full;
//   - a preparer reads everything the batch needs (sorted, in a read
//     transaction), applies the rows to that state in memory and builds
//     the sorted writes, while the previous batch is being written;
//   - a writer writes each prepared batch in one write transaction.
//
// The preparer works on batch N+1 before batch N commits, so it applies
// N+1 on top of what N changed (Workset.Overlay), and the writer checks
// bbolt's transaction ids: N+1's prepared writes are used only if nothing
// but N committed since N+1's read and N's own prepared writes were used.
// Otherwise (a registration committed in between) N+1 is read and applied
// again inside its write transaction, and the preparer starts afresh after
// the writer caught up. Correctness never depends on the read-ahead, only
// speed does.
//
// Because every rule is a last-writer-wins merge ordered by the rows' own
// timestamps, the result does not depend on how rows fall into batches or in
// which order they come.
type Import struct {
	s          *Store
	ctx        context.Context
	tenant     string
	batchRows  int
	batchBytes int
	// limit is the size of the batch being filled: the first batches are
	// smaller (see rampBatches).
	limit int

	pending []profile.ImportRow
	// flushed counts the batches handed to the preparer.
	flushed int
	// pendingBytes is the memory pending's rows take (ImportRow.MemSize).
	pendingBytes int
	rows         int64
	rejects      []RejectedRow
	nReject      int64

	batches chan []profile.ImportRow
	reads   chan *readBatch
	failed  chan struct{} // closed on the first error
	done    chan struct{} // closed when the writer exits

	// resync is set by the writer when a batch had to be applied again in
	// its write transaction: the batch prepared on top of it is stale too,
	// and the preparer must wait for the writer and start afresh.
	resync atomic.Bool
	// written counts the batches the writer is done with (committed,
	// failed or skipped); wrote is signalled at each.
	writtenMu sync.Mutex
	wrote     *sync.Cond
	written   int

	mu      sync.Mutex // guards applied and err
	applied ImportCounts
	err     error
}

// readBatch is a batch as the preparer hands it to the writer.
type readBatch struct {
	rows []profile.ImportRow
	txID int // the read transaction's id: the last commit it saw
	// overlaid says the rows were applied on top of the previous batch's
	// changes (Workset.Overlay), which must then be what it committed.
	overlaid bool
	counts   ImportCounts
	puts     []bucketPuts
}

// lastCommit is the writer's previous batch.
type lastCommit struct {
	txID int
	// prepared says the batch committed its prepared writes, so the
	// changes the next batch was prepared on top of are the committed ones.
	prepared bool
}

// StartImport starts an import for ctx's tenant. Finish or Abort must be
// called to release its goroutines.
func (s *Store) StartImport(ctx context.Context) *Import {
	im := &Import{
		s:          s,
		ctx:        ctx,
		tenant:     tenant.FromContext(ctx),
		batchRows:  s.opts.ImportBatchRows,
		batchBytes: s.opts.ImportBatchBytes,
		batches:    make(chan []profile.ImportRow, 1),
		reads:      make(chan *readBatch), // unbuffered: read at most one batch ahead
		failed:     make(chan struct{}),
		done:       make(chan struct{}),
	}
	im.wrote = sync.NewCond(&im.writtenMu)
	im.limit = max(1, im.batchRows>>rampBatches)
	im.pending = make([]profile.ImportRow, 0, im.limit)
	go im.prepare()
	go im.writer()
	return im
}

// Add queues a valid row; it returns an error when the import cannot go on
// (the store failed or ctx ended). A batch is handed on when it holds its
// number of rows or its rows take ImportBatchBytes of memory, whichever
// comes first: rows with many attributes take a hundred times the memory
// of rows without.
func (im *Import) Add(row profile.ImportRow) error {
	row.Index = im.rows
	im.rows++
	im.pending = append(im.pending, row)
	im.pendingBytes += row.MemSize()
	if len(im.pending) < im.limit && im.pendingBytes < im.batchBytes {
		return nil
	}
	return im.flush()
}

// rampBatches is how many times an import's batch size doubles before it
// reaches batchRows: the writer can only start once the first batch has
// arrived and been prepared (about a second for 100,000 rows), so the first
// batches are 1/8, 1/4 and 1/2 of the full size. Small batches into a
// store that has barely grown yet are cheap.
const rampBatches = 3

// Reject counts an invalid row at index (zero-based, across the stream).
func (im *Import) Reject(index int64, field, reason string) {
	im.rows++
	im.nReject++
	if len(im.rejects) < MaxRejectedRows {
		im.rejects = append(im.rejects, RejectedRow{Index: index, Field: field, Reason: reason})
	}
}

func (im *Import) flush() error {
	if len(im.pending) == 0 {
		return nil
	}
	batch := im.pending
	im.limit = min(im.batchRows, 2*im.limit)
	im.pending = make([]profile.ImportRow, 0, im.limit)
	im.pendingBytes = 0
	im.flushed++
	select {
	case im.batches <- batch:
		return nil
	case <-im.failed:
		return im.firstErr()
	case <-im.ctx.Done():
		return im.ctx.Err()
	}
}

func (im *Import) fail(err error) {
	im.mu.Lock()
	defer im.mu.Unlock()
	if im.err == nil {
		im.err = err
		close(im.failed)
	}
}

func (im *Import) firstErr() error {
	im.mu.Lock()
	defer im.mu.Unlock()
	return im.err
}

// Finish writes the remaining rows, waits for the pipeline and returns the
// totals. Batches committed before an error stay committed.
func (im *Import) Finish() (ImportCounts, error) {
	err := im.flush()
	close(im.batches)
	<-im.done
	if err == nil {
		err = im.firstErr()
	}
	return im.totals(), err
}

// totals sums the batches written and the rows rejected, once the writer
// is done.
func (im *Import) totals() ImportCounts {
	im.mu.Lock()
	counts := im.applied
	im.mu.Unlock()
	counts.Rows = im.rows
	// Rows rejected by validation and rows rejected as they were applied
	// (over a profile's caps), in index order.
	counts.Rejected += im.nReject
	counts.RejectedRows = appendRejects(slices.Clone(im.rejects), counts.RejectedRows)
	slices.SortStableFunc(counts.RejectedRows, func(a, b RejectedRow) int { return cmp.Compare(a.Index, b.Index) })
	counts.RejectedRows = counts.RejectedRows[:min(len(counts.RejectedRows), MaxRejectedRows)]
	return counts
}

// appendRejects appends rejected rows to dst, keeping at most
// MaxRejectedRows.
func appendRejects(dst, rows []RejectedRow) []RejectedRow {
	return append(dst, rows[:min(len(rows), MaxRejectedRows-min(len(dst), MaxRejectedRows))]...)
}

// Abort stops the import after the batch being written; queued rows are
// dropped. It returns what was done by then: the batches written (they
// stay) and the rows rejected.
func (im *Import) Abort() ImportCounts {
	im.pending = nil
	im.fail(context.Canceled)
	close(im.batches)
	<-im.done
	return im.totals()
}

func (im *Import) stopped() bool {
	select {
	case <-im.failed:
		return true
	default:
		return im.ctx.Err() != nil
	}
}

// prepare reads and applies each batch and builds its writes.
func (im *Import) prepare() {
	defer close(im.reads)
	var (
		prev   *profile.Workset // the batch handed over last, applied
		handed int
	)
	for rows := range im.batches {
		if im.stopped() {
			continue // drain; the caller learns the error from flush or Finish
		}
		for i := range rows {
			rows[i].Reg.ID = rows[i].Reg.Key.ID()
		}
		if im.resync.Load() {
			im.waitWritten(handed)
			im.resync.Store(false)
			prev = nil
		}
		rb := &readBatch{rows: rows, overlaid: prev != nil}
		_, span := im.s.tracer.Start(im.ctx, "store.import.prepare", trace.WithAttributes(attribute.Int("import.rows", len(rows))))
		var ws *profile.Workset
		err := im.s.db.View(func(tx *bolt.Tx) error {
			rb.txID = tx.ID()
			ld := newLoader(tx, im.tenant)
			var err error
			ws, rb.counts, err = applyBatch(ld, rows, prev, im.s.ids.New, im.s.clock())
			if err != nil {
				return err
			}
			rb.puts = buildPuts(im.tenant, ws.Changes())
			ws.Bind(nil, ws.Now()) // the transaction ends here
			return nil
		})
		span.End()
		if err != nil {
			im.fail(fmt.Errorf("import read-ahead: %w", err))
			continue
		}
		prev = ws
		select {
		case im.reads <- rb:
			handed++
		case <-im.failed:
		case <-im.ctx.Done():
		}
	}
}

// waitWritten waits until the writer is done with n batches.
func (im *Import) waitWritten(n int) {
	im.writtenMu.Lock()
	defer im.writtenMu.Unlock()
	for im.written < n {
		im.wrote.Wait()
	}
}

func (im *Import) writer() {
	defer close(im.done)
	var prev lastCommit
	for rb := range im.reads {
		if !im.stopped() {
			c, err := im.s.importBatch(im.ctx, im.tenant, rb, &prev)
			if err != nil {
				im.fail(err)
			} else {
				im.mu.Lock()
				im.applied.Created += c.Created
				im.applied.Updated += c.Updated
				im.applied.Moved += c.Moved
				im.applied.Unchanged += c.Unchanged
				im.applied.ProfilesCreated += c.ProfilesCreated
				im.applied.Rejected += c.Rejected
				im.applied.RejectedRows = appendRejects(im.applied.RejectedRows, c.RejectedRows)
				im.mu.Unlock()
				if !prev.prepared {
					im.resync.Store(true)
				}
			}
		}
		im.writtenMu.Lock()
		im.written++
		im.wrote.Broadcast()
		im.writtenMu.Unlock()
	}
	if err := im.ctx.Err(); err != nil {
		im.fail(err)
	}
}

// applyBatch reads what rows need through ld (on top of prev's changes
// when prev is not nil) and applies them; it returns the workset holding
// their changes.
func applyBatch(ld *loader, rows []profile.ImportRow, prev *profile.Workset, newID func() profile.ID, now int64) (*profile.Workset, ImportCounts, error) {
	var counts ImportCounts
	pre, err := readImport(ld, rows)
	if err != nil {
		return nil, counts, err
	}
	ws := profile.NewWorkset(ld, newID, now)
	ws.Reserve(len(rows))
	owners, tokens := pre.seed(ws)
	if prev != nil {
		ws.Overlay(prev)
	}
	for i, r := range rows {
		outcome, created, err := ws.ImportSeeded(r, owners[pre.identityOf[i]], tokens[pre.tokenOf[i]])
		if err != nil {
			// A row that would take its profile past a cap is rejected
			// like an invalid one; it changed nothing.
			var le *profile.LimitError
			if !errors.As(err, &le) {
				return nil, counts, err
			}
			counts.Rejected++
			if len(counts.RejectedRows) < MaxRejectedRows {
				counts.RejectedRows = append(counts.RejectedRows, RejectedRow{Index: r.Index, Field: le.Field(), Reason: le.Reason()})
			}
			continue
		}
		if created {
			counts.ProfilesCreated++
		}
		switch outcome {
		case profile.OutcomeCreated:
			counts.Created++
		case profile.OutcomeUpdated:
			counts.Updated++
		case profile.OutcomeMoved:
			counts.Moved++
		case profile.OutcomeUnchanged:
			counts.Unchanged++
		}
	}
	return ws, counts, nil
}

// readImport reads everything a batch of rows needs, each bucket in key
// order.
func readImport(ld *loader, rows []profile.ImportRow) (*prefetched, error) {
	idns := make([]profile.Identity, len(rows))
	keys := make([]profile.TokenKey, len(rows))
	ids := make([]profile.TokenID, len(rows))
	var devices []profile.DeviceKey
	var withAttrs []int
	for i, r := range rows {
		idns[i] = profile.Identity{Namespace: profile.CustomerIDNamespace, Value: r.CustomerID}
		keys[i], ids[i] = r.Reg.Key, r.Reg.ID
		if r.Reg.DeviceID != "" {
			devices = append(devices, profile.DeviceKey{Platform: r.Reg.Key.Platform, AppID: r.Reg.Key.AppID, DeviceID: r.Reg.DeviceID})
		}
		if len(r.Attributes) > 0 {
			withAttrs = append(withAttrs, i)
		}
	}
	pre := &prefetched{}
	owners, seeds, seedOf, err := ld.readIdentities(idns)
	if err != nil {
		return nil, err
	}
	pre.identities, pre.identityOf = seeds, seedOf
	// Rows with attributes rewrite their profile.
	heads := make([]profile.ID, 0, len(withAttrs))
	for _, i := range withAttrs {
		heads = append(heads, owners[i])
	}
	if pre.profiles, err = ld.readProfiles(heads); err != nil {
		return nil, err
	}
	// A token whose owner is not the row's customer is about to move: its
	// details will be rewritten under the new owner.
	needDetails := func(i int, t *profile.Token) bool { return t.Owner != owners[i] }
	if pre.tokens, pre.tokenOf, err = ld.readTokens(keys, ids, needDetails); err != nil {
		return nil, err
	}
	pre.devices = ld.readDevices(devices)
	// Rows that add a token to an existing profile (a new token, or one
	// about to move from another profile) check the profile's token count,
	// and a move lowers the count of the profile it leaves.
	var counted []profile.ID
	for i := range rows {
		t := pre.tokens[pre.tokenOf[i]].t
		if t != nil && t.Owner == owners[i] {
			continue
		}
		if !owners[i].IsZero() {
			counted = append(counted, owners[i])
		}
		if t != nil {
			counted = append(counted, t.Owner)
		}
	}
	pre.counts = ld.readTokenCounts(counted)
	return pre, nil
}

// importBatch writes a prepared batch in one write transaction, or reads
// and applies it again there when its preparation may be stale.
func (s *Store) importBatch(ctx context.Context, tenantID string, rb *readBatch, prev *lastCommit) (ImportCounts, error) {
	_, span := s.tracer.Start(ctx, "store.import.batch", trace.WithAttributes(attribute.Int("import.rows", len(rb.rows))))
	defer span.End()
	var (
		counts ImportCounts
		commit lastCommit
		// After the puts, while bbolt commits them, the file's dirty pages
		// are written back ahead of the commit's fdatasync.
		stopWriteback = func() {}
	)
	defer func() { stopWriteback() }()
	err := s.db.Update(func(tx *bolt.Tx) error {
		id := tx.ID()
		// The prepared state is current when nothing committed since the
		// batch's read or, for a batch prepared on top of the previous one,
		// when that one committed its prepared writes right before this
		// transaction and after or right after this batch's read.
		fresh := rb.txID == id-1
		if rb.overlaid {
			fresh = prev.prepared && prev.txID == id-1 && (rb.txID == id-1 || rb.txID == id-2)
		}
		commit = lastCommit{txID: id, prepared: fresh}
		if fresh {
			counts = rb.counts
			if err := writeBuckets(tx, rb.puts); err != nil {
				return err
			}
			stopWriteback = startWriteback(s.db.Path())
			return nil
		}
		s.importRereads.Add(1)
		ld := newLoader(tx, tenantID)
		ws, c, err := applyBatch(ld, rb.rows, nil, s.ids.New, s.clock())
		if err != nil {
			return err
		}
		counts = c
		if err := persist(tx, tenantID, ws.Changes()); err != nil {
			return err
		}
		stopWriteback = startWriteback(s.db.Path())
		return nil
	})
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		return ImportCounts{}, fmt.Errorf("import batch of %d rows: %w", len(rb.rows), err)
	}
	*prev = commit
	span.SetAttributes(
		attribute.Bool("import.reread", !commit.prepared),
		attribute.Int64("import.created", counts.Created),
		attribute.Int64("import.moved", counts.Moved),
		attribute.Int64("import.profiles_created", counts.ProfilesCreated))
	return counts, nil
}
