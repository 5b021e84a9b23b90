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

// Import is one running CRM import. The caller adds valid rows (and reports
// invalid ones) from the stream; full batches go to a writer goroutine that
// applies each in one transaction while the caller keeps decoding the next,
// so network decoding and bbolt overlap on two cores.
//
// Each batch is resolved as a whole: its keys are read sorted, its rows
// applied in memory, its changes written sorted. Because every rule is a
// last-writer-wins merge ordered by the rows' own timestamps, the result
// does not depend on how rows fall into batches or in which order they come.
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
	failed  chan struct{} // closed when the writer fails
	done    chan struct{} // closed when the writer exits

	mu     sync.Mutex // guards applied and err, written by the writer
	applied ImportCounts
	err     error
}

// StartImport starts an import for ctx's tenant. Finish or Abort must be
// called to release its writer.
func (s *Store) StartImport(ctx context.Context) *Import {
	im := &Import{
		s:         s,
		ctx:       ctx,
		tenant:    tenant.FromContext(ctx),
		batchRows: s.opts.ImportBatchRows,
		batches:   make(chan []profile.ImportRow, 1),
		failed:    make(chan struct{}),
		done:      make(chan struct{}),
	}
	im.pending = make([]profile.ImportRow, 0, im.batchRows)
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

// Rows is how many rows were added or rejected so far.
func (im *Import) Rows() int64 { return im.rows }

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
		return im.writerErr()
	case <-im.ctx.Done():
		return im.ctx.Err()
	}
}

func (im *Import) writerErr() error {
	im.mu.Lock()
	defer im.mu.Unlock()
	return im.err
}

// Finish writes the remaining rows, waits for the writer and returns the
// totals. Rows of batches committed before an error stay committed.
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
	close(im.batches)
	<-im.done
}

func (im *Import) writer() {
	defer close(im.done)
	for batch := range im.batches {
		if im.writerErr() != nil || im.ctx.Err() != nil {
			continue // drain; the caller learns the error from flush or Finish
		}
		c, err := im.s.importBatch(im.ctx, im.tenant, batch)
		im.mu.Lock()
		if err != nil {
			im.err = err
			close(im.failed)
		} else {
			im.applied.Created += c.Created
			im.applied.Updated += c.Updated
			im.applied.Moved += c.Moved
			im.applied.Unchanged += c.Unchanged
			im.applied.ProfilesCreated += c.ProfilesCreated
		}
		im.mu.Unlock()
	}
}

// importBatch applies rows in one write transaction.
func (s *Store) importBatch(ctx context.Context, tenantID string, rows []profile.ImportRow) (ImportCounts, error) {
	_, span := s.tracer.Start(ctx, "store.import.batch", trace.WithAttributes(attribute.Int("import.rows", len(rows))))
	defer span.End()
	var counts ImportCounts
	err := s.db.Update(func(tx *bolt.Tx) error {
		counts = ImportCounts{}
		ld := newLoader(tx, tenantID)
		ws := profile.NewWorkset(ld, s.ids.New, s.clock())

		idns := make([]profile.Identity, len(rows))
		keys := make([]profile.TokenKey, len(rows))
		var devices []profile.DeviceKey
		for i, r := range rows {
			idns[i] = profile.Identity{Namespace: profile.CustomerIDNamespace, Value: r.CustomerID}
			keys[i] = r.Reg.Key
			if r.Reg.DeviceID != "" {
				devices = append(devices, profile.DeviceKey{Platform: r.Reg.Key.Platform, AppID: r.Reg.Key.AppID, DeviceID: r.Reg.DeviceID})
			}
		}
		owners, err := ld.prefetchIdentities(ws, idns)
		if err != nil {
			return err
		}
		if err := ld.prefetchProfiles(ws, owners); err != nil {
			return err
		}
		if err := ld.prefetchTokens(ws, keys); err != nil {
			return err
		}
		ld.prefetchDevices(ws, devices)

		for _, r := range rows {
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
		return persist(tx, tenantID, ws.Changes())
	})
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		return ImportCounts{}, fmt.Errorf("import batch of %d rows: %w", len(rows), err)
	}
	span.SetAttributes(
		attribute.Int64("import.created", counts.Created),
		attribute.Int64("import.moved", counts.Moved),
		attribute.Int64("import.profiles_created", counts.ProfilesCreated))
	return counts, nil
}
