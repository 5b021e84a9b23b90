package remote

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/grpc"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/buckets"
	"github.com/pushmesh/pushmesh/deliverysvc/internal/delivery"
	"github.com/pushmesh/pushmesh/deliverysvc/internal/outbox"
	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
	"github.com/pushmesh/pushmesh/servicekit/boltdb"
	"github.com/pushmesh/pushmesh/servicekit/grpctest"
	"github.com/pushmesh/pushmesh/servicekit/tenant"
)

func openOutboxDB(t *testing.T) *bolt.DB {
	t.Helper()
	db, err := boltdb.Open(t.TempDir(), "deliverysvc.db")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := buckets.Create(db); err != nil {
		t.Fatal(err)
	}
	return db
}

// startOutbox starts an outbox named name in bucket of a fresh data file,
// forwarding with deliver and retrying quickly; the test closes it.
func startOutbox(t *testing.T, bucket []byte, name string, deliver outbox.Deliver) *outbox.Outbox {
	t.Helper()
	box := outbox.New(openOutboxDB(t), bucket, deliver,
		outbox.Config{Name: name, RetryInitial: 20 * time.Millisecond, RetryMax: 100 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	box.Start()
	t.Cleanup(box.Close)
	return box
}

// longFCMToken is an FCM token deliverysvc accepts (at most 4,096 bytes of
// letters, digits and -_:.), long as registration tokens go.
func longFCMToken(i int) string {
	return fmt.Sprintf("fcm-%06d:", i) + strings.Repeat("x", 1500)
}

// waitDrained waits until box holds no record, or fails t.
func waitDrained(t *testing.T, box *outbox.Outbox, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n, err := box.Len()
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d records still in the outbox after 10 s: the batch is stuck at its head", what, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A full outbox batch of outcomes with long (valid) tokens is bigger than
// gRPC's default 4 MiB message limit, which trackingsvc's server keeps. Sent
// as one IngestRequest it is refused (ResourceExhausted) on every try, and
// the outbox, which forwards in order, would be stuck behind it for good.
// Requests are framed by size too, so the batch arrives.
func TestOutboxForwardsBatchesOfLongEvents(t *testing.T) {
	fake := &fakeTracking{}
	conn := grpctest.Start(t, func(s *grpc.Server) { trackingv1.RegisterTrackingServiceServer(s, fake) })
	box := startOutbox(t, buckets.TrackingOutbox, "tracking", Ingest(trackingv1.NewTrackingServiceClient(conn), slog.New(slog.DiscardHandler)))

	const n = 5000 // the outbox's default batch
	results := make([]delivery.Result, n)
	for i := range results {
		results[i] = delivery.Result{
			IdempotencyKey: fmt.Sprintf("key-%d", i), MessageID: fmt.Sprintf("message-%d", i),
			Target: delivery.Target{Token: longFCMToken(i), Platform: commonv1.Platform_PLATFORM_FCM, AppID: "com.acme.shop", ProfileID: "p"},
			Status: delivery.StatusFailed, Reason: commonv1.FailureReason_FAILURE_REASON_BAD_DEVICE_TOKEN, Time: time.Now(),
		}
	}
	tr := &Tracking{Outbox: box}
	if err := tr.Record(tenant.With(context.Background(), "acme"), results); err != nil {
		t.Fatal(err)
	}
	waitDrained(t, box, "outcomes with long tokens")
	if got := len(fake.events()); got != n {
		t.Errorf("trackingsvc got %d events, want %d", got, n)
	}
}

// feedbackProfiles records ReportTokenFeedback calls.
type feedbackProfiles struct {
	profilev1.UnimplementedProfileServiceServer
	mu  sync.Mutex
	got int
}

func (f *feedbackProfiles) ReportTokenFeedback(_ context.Context, req *profilev1.ReportTokenFeedbackRequest) (*profilev1.ReportTokenFeedbackResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.got += len(req.GetFeedback())
	return &profilev1.ReportTokenFeedbackResponse{Unknown: int32(len(req.GetFeedback()))}, nil
}

// The same for dead-token feedback: 5,000 verdicts on long tokens make one
// ReportTokenFeedback request over 4 MiB unless requests are sized.
func TestOutboxForwardsFeedbackOnLongTokens(t *testing.T) {
	fake := &feedbackProfiles{}
	conn := grpctest.Start(t, func(s *grpc.Server) { profilev1.RegisterProfileServiceServer(s, fake) })
	box := startOutbox(t, buckets.FeedbackOutbox, "feedback", ReportFeedback(profilev1.NewProfileServiceClient(conn), slog.New(slog.DiscardHandler)))

	const n = 5000
	dead := make([]delivery.DeadToken, n)
	for i := range dead {
		dead[i] = delivery.DeadToken{
			Target: delivery.Target{Token: longFCMToken(i), Platform: commonv1.Platform_PLATFORM_FCM, AppID: "com.acme.shop"},
			Reason: commonv1.FailureReason_FAILURE_REASON_UNREGISTERED, GatewayTime: time.Now(),
		}
	}
	done := make(chan error, 1)
	(&Feedback{Outbox: box}).ReportDeadAsync(tenant.With(context.Background(), "acme"), dead, func(err error) { done <- err })
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	waitDrained(t, box, "feedback on long tokens")
	fake.mu.Lock()
	defer fake.mu.Unlock()
	if fake.got != n {
		t.Errorf("profilesvc got %d verdicts, want %d", fake.got, n)
	}
}
