package delivery

import (
	"context"
	"strconv"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// BenchmarkPipeline measures the pipeline's own cost per message: one
// session, batches of 1000 single-token messages, a gateway that accepts at
// once and in-memory collaborators, with a recording (SDK) tracer as in
// production. Gateways, gRPC and storage are measured elsewhere
// (cmd/deliverybench).
func BenchmarkPipeline(b *testing.B) {
	t := &testing.T{}
	h := newHarness(t)
	h.cfg.TracerProvider = sdktrace.NewTracerProvider()
	h.recorder.RecordFunc = func(context.Context, []Result) error { return nil }
	h.dedupe.RememberFunc = func(context.Context, string, []Result) {}
	h.sender.SendFunc = func(_ context.Context, pushes []Push) []Attempt {
		out := make([]Attempt, len(pushes))
		for i := range out {
			out[i].GatewayID = "ok"
		}
		return out
	}
	p := h.pipeline()
	n := Notification{Title: "Hello", Body: "A benchmark notification", Data: map[string]string{"offer": "spring"}}
	var batches [][]Message
	for i := 0; i < b.N; i += MaxBatchMessages {
		var batch []Message
		for j := i; j < min(i+MaxBatchMessages, b.N); j++ {
			target := apnsTarget(j)
			if j%2 == 1 {
				target = fcmTarget("fcm-" + strconv.Itoa(j))
			}
			batch = append(batch, Message{IdempotencyKey: "k" + strconv.Itoa(j), Tokens: []Target{target}, Notification: n})
		}
		batches = append(batches, batch)
	}
	b.ReportAllocs()
	b.ResetTimer()
	s := p.Open(context.Background(), func(Result) {})
	for _, batch := range batches {
		if err := s.Submit(batch); err != nil {
			b.Fatal(err)
		}
	}
	s.Close()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "messages/s")
}
