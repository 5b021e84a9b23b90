package grpcapi_test

import (
	"context"
	"strconv"
	"testing"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/testenv"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
)

// BenchmarkSendAPNs drives one Send stream with single-token APNs messages
// in batches of 1000 through the real apns2 client to the emulator, all in
// one process. Use cmd/deliverybench for the figures with deliverysvc in
// its own process.
func BenchmarkSendAPNs(b *testing.B) {
	env := testenv.Start(b, testenv.Options{MaxInFlight: 2048})
	ctx := context.Background()
	if _, err := env.RegisterAPNsApp(ctx, "com.example.bench", 1_000_000); err != nil {
		b.Fatal(err)
	}
	n := &deliveryv1.Notification{Title: "Hello", Body: "A benchmark notification"}
	var batches [][]*deliveryv1.Message
	for i := 0; i < b.N; i += 1000 {
		var batch []*deliveryv1.Message
		for j := i; j < min(i+1000, b.N); j++ {
			batch = append(batch, testenv.TokensMessage("b-"+strconv.Itoa(j), n, testenv.APNsTarget(testenv.APNsToken(j), "com.example.bench")))
		}
		batches = append(batches, batch)
	}
	b.ResetTimer()
	out, err := env.Send(ctx, batches...)
	if err != nil || out.Err != nil {
		b.Fatal(err, out.Err)
	}
	b.StopTimer()
	if len(out.Results) != b.N {
		b.Fatalf("got %d results, want %d", len(out.Results), b.N)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "notifications/s")
}
