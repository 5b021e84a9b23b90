package csvimport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"

	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
)

// DefaultBatchSize is the number of rows per ImportTokensRequest. Big
// batches let profilesvc write each in one sorted bbolt transaction.
const DefaultBatchSize = 5000

// MaxBatchSize bounds a request so it stays well under gRPC's default 4 MiB
// message limit with typical rows.
const MaxBatchSize = 10000

// MaxRejections is how many rejected rows a result keeps (the server keeps
// the same number).
const MaxRejections = 100

var tracer = otel.Tracer("github.com/pushmesh/pushmesh/pushctl/internal/csvimport")

// Stream is the client side of ProfileService.ImportTokens.
type Stream interface {
	Send(*profilev1.ImportTokensRequest) error
	CloseAndRecv() (*profilev1.ImportTokensResponse, error)
}

// Progress is reported after every batch sent.
type Progress struct {
	// Rows sent to the server so far.
	Sent int64
	// Malformed rows skipped so far.
	Malformed int64
	// Bytes of the file consumed so far.
	Bytes int64
}

// Result is the outcome of an import.
type Result struct {
	// Response is the server's summary of the rows it received.
	Response *profilev1.ImportTokensResponse
	// Records is the number of data records read from the file.
	Records int64
	// Malformed counts rows rejected by pushctl before sending (bad CSV, an
	// unknown platform, an unreadable timestamp).
	Malformed int64
	// Rejected are the first rejected rows (pushctl's and the server's), by
	// line.
	Rejected []Rejection
}

// TotalRejected is every rejected row, pushctl's and the server's.
func (r *Result) TotalRejected() int64 { return r.Malformed + r.Response.GetRejected() }

// ReadError is a failure to read the file itself (not a malformed line).
type ReadError struct{ Err error }

func (e *ReadError) Error() string { return "read: " + e.Err.Error() }
func (e *ReadError) Unwrap() error { return e.Err }

// Importer reads one CSV file.
type Importer struct {
	reader  *Reader
	columns *Columns
}

// NewImporter reads the header of r. A missing header or column is a
// *FileError.
func NewImporter(r io.Reader) (*Importer, error) {
	reader := NewReader(r)
	header, err := reader.ReadHeader()
	if err != nil {
		var le *LineError
		if errors.As(err, &le) {
			return nil, &FileError{Line: le.Line, Msg: "the header is malformed: " + le.Err.Error()}
		}
		if errors.Is(err, errNoHeader) {
			return nil, &FileError{Msg: err.Error()}
		}
		return nil, fmt.Errorf("read header: %w", err)
	}
	cols, err := ParseHeader(header)
	if err != nil {
		return nil, err
	}
	return &Importer{reader: reader, columns: cols}, nil
}

// Columns is the parsed header.
func (im *Importer) Columns() *Columns { return im.columns }

// Run streams the rows to stream in batches of batchSize, calling progress
// after each batch, and returns the merged result. A read error of the file
// (a *ReadError) or a failed stream (the stream's error, a gRPC status)
// aborts the import.
func (im *Importer) Run(ctx context.Context, stream Stream, batchSize int, progress func(Progress)) (*Result, error) {
	if batchSize <= 0 {
		batchSize = DefaultBatchSize
	}
	res := &Result{}
	var lines lineIndex
	var sent int64
	batch := make([]*profilev1.ImportRow, 0, batchSize)

	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		_, span := tracer.Start(ctx, "csvimport.send_batch")
		span.SetAttributes(attribute.Int("rows", len(batch)))
		err := stream.Send(&profilev1.ImportTokensRequest{Rows: batch})
		span.End()
		if err != nil {
			return err
		}
		sent += int64(len(batch))
		// Send has serialized the request: the slice can be reused.
		clear(batch)
		batch = batch[:0]
		if progress != nil {
			progress(Progress{Sent: sent, Malformed: res.Malformed, Bytes: im.reader.Offset()})
		}
		return nil
	}

	for {
		rec, err := im.reader.Read()
		if err == io.EOF {
			break
		}
		var le *LineError
		if errors.As(err, &le) {
			res.Records++
			res.Malformed++
			res.addLocal(Rejection{Line: le.Line, Reason: "malformed CSV: " + le.Err.Error()})
			continue
		}
		if err != nil {
			stream.CloseAndRecv() // release the stream; the read error is what matters
			return nil, &ReadError{Err: err}
		}
		res.Records++
		row, rej := im.columns.Row(rec)
		if rej != nil {
			res.Malformed++
			res.addLocal(*rej)
			continue
		}
		lines.add(sent+int64(len(batch)), rec.Line)
		batch = append(batch, row)
		if len(batch) == batchSize {
			if err := flush(); err != nil {
				return nil, closeWithStatus(stream, err)
			}
		}
	}
	if err := flush(); err != nil {
		return nil, closeWithStatus(stream, err)
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return nil, err
	}
	res.Response = resp
	for _, rr := range resp.GetRejectedRows() {
		res.Rejected = append(res.Rejected, Rejection{Line: lines.line(rr.GetIndex()), Field: rr.GetField(), Reason: rr.GetReason()})
	}
	sort.SliceStable(res.Rejected, func(i, j int) bool { return res.Rejected[i].Line < res.Rejected[j].Line })
	if len(res.Rejected) > MaxRejections {
		res.Rejected = res.Rejected[:MaxRejections]
	}
	return res, nil
}

// addLocal keeps pushctl's first rejections; the server's (at most
// MaxRejections) are merged after the stream ends and the list is cut.
func (r *Result) addLocal(rej Rejection) {
	if len(r.Rejected) < MaxRejections {
		r.Rejected = append(r.Rejected, rej)
	}
}

// closeWithStatus turns a failed Send into the server's status: Send
// returns io.EOF when the server ended the stream, and the reason is only
// known from CloseAndRecv.
func closeWithStatus(stream Stream, sendErr error) error {
	if _, err := stream.CloseAndRecv(); err != nil {
		return err
	}
	return sendErr
}

// lineIndex maps the stream index of a row sent to the file line it came
// from. Lines grow with indexes, so it stores only the points where the gap
// between them changes (a skipped or multi-line record): a few entries for
// millions of rows.
type lineIndex struct {
	from   []int64 // first index of each run, ascending
	offset []int   // line - index within the run
	count  int64   // indexes added
}

func (l *lineIndex) add(index int64, line int) {
	l.count = index + 1
	off := line - int(index)
	if n := len(l.offset); n > 0 && l.offset[n-1] == off {
		return
	}
	l.from = append(l.from, index)
	l.offset = append(l.offset, off)
}

// line returns the file line of a stream index, or 0 if unknown.
func (l *lineIndex) line(index int64) int {
	i := sort.Search(len(l.from), func(i int) bool { return l.from[i] > index }) - 1
	if i < 0 || index < 0 || index >= l.count {
		return 0
	}
	return int(index) + l.offset[i]
}
