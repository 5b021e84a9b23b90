package store

import (
	"context"
	"fmt"
	"sync"

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
//   - a reader reads everything the batch needs (sorted, in a read
//     transaction) while the previous batch is being written;
//   - a writer applies each batch in one write transaction.
//
// The reader reads batch N+1 before batch N commits, so the writer checks
// bbolt's transaction ids: if batch N was the only commit in between, the
// keys N wrote are dropped from N+1's reads and read again; if anything else
// committed, N+1 is read again inside its write transaction. Correctness
// never depends on the read-ahead, only speed does.
//
// Because every rule is a last-writer-wins merge ordered by the rows' own
// timestamps, the result does not depend on how rows fall into batches or in
// which order they come.
type Import struct {
	s         *Store
	ctx       context.Context
	tenant    string
	batchRows int

	pending []profile.ImportRow
	rows    int64
	rejects []RejectedRow
	nReject int64

	batches chan []profile.ImportRow
	reads   chan *readBatch
	failed  chan struct{} // closed on the first error
	done    chan struct{} // closed when the writer exits

	mu      sync.Mutex // guards applied and err
	applied ImportCounts
	err     error
}

// readBatch is a batch with the workset the reader seeded for it.
type readBatch struct {
	rows []profile.ImportRow
	ws   *profile.Workset
	txID int // the read transaction's id: the last commit it saw
}

// lastCommit is the writer's previous batch.
type lastCommit struct {
	txID    int
	changes *profile.Changes
}

// StartImport starts an import for ctx's tenant. Finish or Abort must be
// called to release its goroutines.
func (s *Store) StartImport(ctx context.Context) *Import {
	im := &Import{
		s:         s,
		ctx:       ctx,
		tenant:    tenant.FromContext(ctx),
		batchRows: s.opts.ImportBatchRows,
		batches:   make(chan []profile.ImportRow, 1),
		reads:     make(chan *readBatch), // unbuffered: read at most one batch ahead
		failed:    make(chan struct{}),
		done:      make(chan struct{}),
	}
	im.pending = make([]profile.ImportRow, 0, im.batchRows)
	go im.reader()
	go im.writer()
	return im
}

// Add queues a valid row; it returns an error when the import cannot go on
// (the store failed or ctx ended).
func (im *Import) Add(row profile.ImportRow) error {
	im.rows++
	im.pending = append(im.pending, row)
	if len(im.pending) < im.batchRows {
		return nil
	}
	return im.flush()
}

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
	im.pending = make([]profile.ImportRow, 0, im.batchRows)
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
	im.mu.Lock()
	counts := im.applied
	if err == nil {
		err = im.err
	}
	im.mu.Unlock()
	counts.Rows = im.rows
	counts.Rejected = im.nReject
	counts.RejectedRows = im.rejects
	return counts, err
}

// Abort stops the import after the batch being written; queued rows are
// dropped.
func (im *Import) Abort() {
	im.pending = nil
	im.fail(context.Canceled)
	close(im.batches)
	<-im.done
}

func (im *Import) stopped() bool {
	select {
	case <-im.failed:
		return true
	default:
		return im.ctx.Err() != nil
	}
}

func (im *Import) reader() {
	defer close(im.reads)
	for rows := range im.batches {
		if im.stopped() {
			continue // drain; the caller learns the error from flush or Finish
		}
		for i := range rows {
			rows[i].Reg.ID = rows[i].Reg.Key.ID()
		}
		rb := &readBatch{rows: rows}
		_, span := im.s.tracer.Start(im.ctx, "store.import.read", trace.WithAttributes(attribute.Int("import.rows", len(rows))))
		err := im.s.db.View(func(tx *bolt.Tx) error {
			rb.txID = tx.ID()
			pre, err := readImport(newLoader(tx, im.tenant), rows)
			if err != nil {
				return err
			}
			// Seeding the workset is map work the writer would otherwise
			// do while holding the write lock.
			rb.ws = profile.NewWorkset(nil, im.s.ids.New, 0)
			rb.ws.Reserve(len(rows))
			pre.seed(rb.ws)
			return nil
		})
		span.End()
		if err != nil {
			im.fail(fmt.Errorf("import read-ahead: %w", err))
			continue
		}
		select {
		case im.reads <- rb:
		case <-im.failed:
		case <-im.ctx.Done():
		}
	}
}

func (im *Import) writer() {
	defer close(im.done)
	var prev lastCommit
	for rb := range im.reads {
		if im.stopped() {
			continue
		}
		c, err := im.s.importBatch(im.ctx, im.tenant, rb, &prev)
		if err != nil {
			im.fail(err)
			continue
		}
		im.mu.Lock()
		im.applied.Created += c.Created
		im.applied.Updated += c.Updated
		im.applied.Moved += c.Moved
		im.applied.Unchanged += c.Unchanged
		im.applied.ProfilesCreated += c.ProfilesCreated
		im.mu.Unlock()
	}
	if err := im.ctx.Err(); err != nil {
		im.fail(err)
	}
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
	owners, seeds, err := ld.readIdentities(idns)
	if err != nil {
		return nil, err
	}
	pre.identities = seeds
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
	if pre.tokens, err = ld.readTokens(keys, ids, needDetails); err != nil {
		return nil, err
	}
	pre.devices = ld.readDevices(devices)
	return pre, nil
}

// importBatch applies a batch in one write transaction.
func (s *Store) importBatch(ctx context.Context, tenantID string, rb *readBatch, prev *lastCommit) (ImportCounts, error) {
	_, span := s.tracer.Start(ctx, "store.import.batch", trace.WithAttributes(attribute.Int("import.rows", len(rb.rows))))
	defer span.End()
	var (
		counts ImportCounts
		commit lastCommit
		reread bool
	)
	err := s.db.Update(func(tx *bolt.Tx) error {
		counts = ImportCounts{}
		ld := newLoader(tx, tenantID)
		ws := rb.ws
		switch {
		case rb.txID == tx.ID()-1:
			// Nothing committed since the read.
		case rb.txID == tx.ID()-2 && prev.txID == tx.ID()-1:
			ws.Forget(prev.changes) // only our previous batch did
		default:
			// Another writer committed in between: read again, here.
			reread = true
			s.importRereads.Add(1)
			pre, err := readImport(ld, rb.rows)
			if err != nil {
				return err
			}
			ws = profile.NewWorkset(nil, s.ids.New, 0)
			ws.Reserve(len(rb.rows))
			pre.seed(ws)
		}
		ws.Bind(ld, s.clock())
		for _, r := range rb.rows {
			outcome, created, err := ws.Import(r)
			if err != nil {
				return err
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
		ch := ws.Changes()
		commit = lastCommit{txID: tx.ID(), changes: &ch}
		return persist(tx, tenantID, ch)
	})
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		return ImportCounts{}, fmt.Errorf("import batch of %d rows: %w", len(rb.rows), err)
	}
	*prev = commit
	span.SetAttributes(
		attribute.Bool("import.reread", reread),
		attribute.Int64("import.created", counts.Created),
		attribute.Int64("import.moved", counts.Moved),
		attribute.Int64("import.profiles_created", counts.ProfilesCreated))
	return counts, nil
}
