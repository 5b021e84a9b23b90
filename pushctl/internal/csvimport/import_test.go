package csvimport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	"github.com/pushmesh/pushmesh/servicekit/grpctest"
)

// fakeStream is an in-memory ImportTokens client stream.
type fakeStream struct {
	batches []int
	rows    []*profilev1.ImportRow
	sendErr func(n int) error // error for the n-th Send (0-based), or nil
	resp    *profilev1.ImportTokensResponse
	respErr error
	closed  int
}

func (f *fakeStream) Send(r *profilev1.ImportTokensRequest) error {
	if f.sendErr != nil {
		if err := f.sendErr(len(f.batches)); err != nil {
			return err
		}
	}
	f.batches = append(f.batches, len(r.GetRows()))
	f.rows = append(f.rows, r.GetRows()...)
	return nil
}

func (f *fakeStream) CloseAndRecv() (*profilev1.ImportTokensResponse, error) {
	f.closed++
	if f.respErr != nil {
		return nil, f.respErr
	}
	if f.resp != nil {
		return f.resp, nil
	}
	return &profilev1.ImportTokensResponse{Rows: int64(len(f.rows)), Created: int64(len(f.rows))}, nil
}

const header = "token,platform,app_id,customer_id,timestamp\n"

func csvRows(n int) string {
	var b strings.Builder
	b.WriteString(header)
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "%064x,apns,com.acme.shop,C-%d,%d\n", i, i, 1714557600+i)
	}
	return b.String()
}

func TestRunBatchesRowsAndReportsProgress(t *testing.T) {
	im, err := NewImporter(strings.NewReader(csvRows(12)))
	if err != nil {
		t.Fatal(err)
	}
	stream := &fakeStream{}
	var seen []int64
	res, err := im.Run(context.Background(), stream, 5, func(p Progress) { seen = append(seen, p.Sent) })
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fmt.Sprint(stream.batches), "[5 5 2]"; got != want {
		t.Errorf("batches: got %s, want %s", got, want)
	}
	if got, want := fmt.Sprint(seen), "[5 10 12]"; got != want {
		t.Errorf("progress: got %s, want %s", got, want)
	}
	if res.Records != 12 || res.Malformed != 0 || res.TotalRejected() != 0 || stream.closed != 1 {
		t.Errorf("result: records %d malformed %d rejected %d closed %d", res.Records, res.Malformed, res.TotalRejected(), stream.closed)
	}
	// Batches reuse their slice: every row sent must still be distinct.
	if stream.rows[0].GetCustomerId() != "C-0" || stream.rows[11].GetCustomerId() != "C-11" {
		t.Errorf("rows: got %s … %s", stream.rows[0].GetCustomerId(), stream.rows[11].GetCustomerId())
	}
}

func TestRunMapsServerRejectionsToLines(t *testing.T) {
	input := header +
		"t0,apns,a,c,1714557600\n" + // line 2, index 0
		"t1,apns,a,c,never\n" + // line 3, rejected locally
		"\"t2\nstill t2\",apns,a,c,1714557600\n" + // lines 4-5, index 1
		"\n" + // line 6, blank
		"t3,apns,a,c,1714557600\n" // line 7, index 2
	im, err := NewImporter(strings.NewReader(input))
	if err != nil {
		t.Fatal(err)
	}
	stream := &fakeStream{resp: &profilev1.ImportTokensResponse{Rows: 3, Rejected: 2, RejectedRows: []*profilev1.RejectedRow{
		{Index: 2, Field: "token", Reason: "r2"}, {Index: 1, Field: "token", Reason: "r1"}, {Index: 99, Reason: "unknown index"},
	}}}
	res, err := im.Run(context.Background(), stream, 100, nil)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range res.Rejected {
		got = append(got, fmt.Sprintf("%d:%s", r.Line, r.Field))
	}
	if want := "[0: 3:timestamp 4:token 7:token]"; fmt.Sprint(got) != want {
		t.Errorf("rejections: got %v, want %s", got, want)
	}
	if res.TotalRejected() != 3 {
		t.Errorf("total rejected: got %d, want 3", res.TotalRejected())
	}
}

func TestRunKeepsAtMostMaxRejections(t *testing.T) {
	var b strings.Builder
	b.WriteString(header)
	for i := 0; i < MaxRejections+50; i++ {
		b.WriteString("t,apns,a,c,never\n")
	}
	im, err := NewImporter(strings.NewReader(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	res, err := im.Run(context.Background(), &fakeStream{}, 10, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Rejected) != MaxRejections || res.Malformed != MaxRejections+50 {
		t.Errorf("got %d kept, %d malformed; want %d, %d", len(res.Rejected), res.Malformed, MaxRejections, MaxRejections+50)
	}
}

func TestRunReturnsTheServerStatusWhenSendFails(t *testing.T) {
	im, err := NewImporter(strings.NewReader(csvRows(10)))
	if err != nil {
		t.Fatal(err)
	}
	quota := status.Error(codes.ResourceExhausted, "quota")
	stream := &fakeStream{
		sendErr: func(n int) error {
			if n == 1 {
				return io.EOF // what gRPC returns when the server ended the stream
			}
			return nil
		},
		respErr: quota,
	}
	_, err = im.Run(context.Background(), stream, 3, nil)
	if !errors.Is(err, quota) {
		t.Errorf("got %v, want the server's status %v", err, quota)
	}
}

type failingReader struct{ err error }

func (f failingReader) Read([]byte) (int, error) { return 0, f.err }

func TestRunReadError(t *testing.T) {
	broken := errors.New("disk on fire")
	im, err := NewImporter(io.MultiReader(strings.NewReader(header+"t,apns,a,c,1\n"), failingReader{broken}))
	if err != nil {
		t.Fatal(err)
	}
	stream := &fakeStream{}
	_, err = im.Run(context.Background(), stream, 10, nil)
	var re *ReadError
	if !errors.As(err, &re) || !errors.Is(err, broken) {
		t.Errorf("got %v, want a ReadError wrapping %v", err, broken)
	}
	if stream.closed != 1 {
		t.Errorf("stream closed %d times, want 1", stream.closed)
	}
}

func TestLineIndex(t *testing.T) {
	var l lineIndex
	// indexes 0..2 on lines 2..4, then a gap (a skipped line), 3..4 on 6..7,
	// then a multi-line record: index 5 on line 10.
	for i, line := range []int{2, 3, 4, 6, 7, 10} {
		l.add(int64(i), line)
	}
	for i, want := range []int{2, 3, 4, 6, 7, 10} {
		if got := l.line(int64(i)); got != want {
			t.Errorf("line(%d): got %d, want %d", i, got, want)
		}
	}
	for _, i := range []int64{-1, 6, 100} {
		if got := l.line(i); got != 0 {
			t.Errorf("line(%d): got %d, want 0 (unknown)", i, got)
		}
	}
	if len(l.from) != 3 {
		t.Errorf("runs: got %d, want 3", len(l.from))
	}
}

// BenchmarkParseRows measures pushctl's own cost per row: reading the CSV
// and building ImportRows (with two attributes), without any network.
func BenchmarkParseRows(b *testing.B) {
	var sb strings.Builder
	sb.WriteString("token,platform,app_id,customer_id,timestamp,tier,visits\n")
	const rows = 100_000
	for i := 0; i < rows; i++ {
		fmt.Fprintf(&sb, "%064x,apns,com.acme.shop,C-%d,2024-05-01T10:00:%02dZ,gold,%d\n", i, i, i%60, i%100)
	}
	input := sb.String()
	b.SetBytes(int64(len(input)))
	b.ResetTimer()
	for b.Loop() {
		im, err := NewImporter(strings.NewReader(input))
		if err != nil {
			b.Fatal(err)
		}
		res, err := im.Run(context.Background(), discardStream{}, DefaultBatchSize, nil)
		if err != nil || res.Records != rows {
			b.Fatalf("records %d, err %v", res.Records, err)
		}
	}
	b.ReportMetric(float64(rows)*float64(b.N)/b.Elapsed().Seconds(), "rows/s")
}

type discardStream struct{}

func (discardStream) Send(*profilev1.ImportTokensRequest) error { return nil }
func (discardStream) CloseAndRecv() (*profilev1.ImportTokensResponse, error) {
	return &profilev1.ImportTokensResponse{}, nil
}

// BenchmarkImportOverGRPC streams rows over real loopback gRPC to a server
// that only counts them: the client-side ceiling of `pushctl import`
// (parsing, protobuf encoding, HTTP/2 flow control), independent of
// profilesvc's storage.
func BenchmarkImportOverGRPC(b *testing.B) {
	const rows = 100_000
	input := csvRows(rows)
	conn := grpctest.Start(b, func(s *grpc.Server) {
		profilev1.RegisterProfileServiceServer(s, countingServer{})
	})
	client := profilev1.NewProfileServiceClient(conn)
	b.SetBytes(int64(len(input)))
	b.ResetTimer()
	for b.Loop() {
		im, err := NewImporter(strings.NewReader(input))
		if err != nil {
			b.Fatal(err)
		}
		stream, err := client.ImportTokens(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		res, err := im.Run(context.Background(), stream, DefaultBatchSize, nil)
		if err != nil || res.Response.GetRows() != rows {
			b.Fatalf("rows %d, err %v", res.Response.GetRows(), err)
		}
	}
	b.ReportMetric(float64(rows)*float64(b.N)/b.Elapsed().Seconds(), "rows/s")
}

type countingServer struct {
	profilev1.UnimplementedProfileServiceServer
}

func (countingServer) ImportTokens(s grpc.ClientStreamingServer[profilev1.ImportTokensRequest, profilev1.ImportTokensResponse]) error {
	var n int64
	for {
		req, err := s.Recv()
		if err == io.EOF {
			return s.SendAndClose(&profilev1.ImportTokensResponse{Rows: n, Created: n})
		}
		if err != nil {
			return err
		}
		n += int64(len(req.GetRows()))
	}
}
