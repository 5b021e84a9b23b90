package grpcapi_test

import (
	"context"
	"fmt"
	"io"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/testenv"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
	"github.com/pushmesh/pushmesh/servicekit/grpcclient"
)

// stuckClient opens a Send stream on a connection with small fixed HTTP/2
// windows (no window growth), submits n messages and reads nothing, so
// deliverysvc's writes of results soon block on flow control. It returns
// the stream, to be read later, once every request is written.
func stuckClient(t *testing.T, ctx context.Context, env *testenv.Env, prefix string, n int) deliveryv1.DeliveryService_SendClient {
	t.Helper()
	conn, err := grpcclient.Dial(env.Conn.Target(), grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	stream, err := deliveryv1.NewDeliveryServiceClient(conn).Send(ctx)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for b := 0; b < n/500; b++ {
			var batch []*deliveryv1.Message
			for i := range 500 {
				k := b*500 + i
				batch = append(batch, testenv.TokensMessage(fmt.Sprint(prefix, k), note(), testenv.APNsTarget(testenv.APNsToken(100_000+k), bundleID)))
			}
			if stream.Send(&deliveryv1.SendRequest{Messages: batch}) != nil {
				return
			}
		}
		_ = stream.CloseSend()
	}()
	return stream
}

// waitStuck waits until the emulator's accepted count stops growing: the
// stuck stream holds all it may.
func waitStuck(t *testing.T, env *testenv.Env, atLeast int64) {
	t.Helper()
	last, since := int64(-1), time.Now()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		n := env.APNs.Count().Accepted
		if n != last {
			last, since = n, time.Now()
			continue
		}
		if n >= atLeast && time.Since(since) > 200*time.Millisecond {
			return
		}
	}
	t.Fatalf("the stuck stream never settled (%d pushes accepted)", last)
}

// A client that stops reading holds at most its stream's share of the
// pipeline: other streams go on meanwhile.
func TestStuckReaderHoldsOnlyItsShare(t *testing.T) {
	env := testenv.Start(t, testenv.Options{MaxInFlight: 40, MaxInFlightPerStream: 20, SendStallTimeout: time.Hour})
	if _, err := env.RegisterAPNsApp(context.Background(), bundleID, 0); err != nil {
		t.Fatal(err)
	}
	stuckCtx, cancelStuck := context.WithCancel(context.Background())
	defer cancelStuck()
	stuckClient(t, stuckCtx, env, "stuck", 3000)
	waitStuck(t, env, 500)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var batch []*deliveryv1.Message
	for i := range 30 {
		batch = append(batch, testenv.TokensMessage(fmt.Sprint("other", i), note(), testenv.APNsTarget(testenv.APNsToken(i), bundleID)))
	}
	out := send(t, env, ctx, batch)
	if len(out.Completed) != 30 {
		t.Errorf("beside a stuck reader: %d of 30 messages completed", len(out.Completed))
	}
}

// A stream whose client has not read a response for the stall timeout
// ends with ResourceExhausted, and what its results held is given back.
func TestStalledStreamEnds(t *testing.T) {
	env := testenv.Start(t, testenv.Options{MaxInFlight: 20, MaxInFlightPerStream: 20, SendStallTimeout: 300 * time.Millisecond})
	if _, err := env.RegisterAPNsApp(context.Background(), bundleID, 0); err != nil {
		t.Fatal(err)
	}
	stuckCtx, cancelStuck := context.WithCancel(context.Background())
	defer cancelStuck()
	stream := stuckClient(t, stuckCtx, env, "stalled", 3000)
	waitStuck(t, env, 500)

	// The stuck stream held the whole pipeline; the stall gave it back.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out := send(t, env, ctx, []*deliveryv1.Message{testenv.TokensMessage("after", note(), testenv.APNsTarget(testenv.APNsToken(1), bundleID))})
	if len(out.Completed) != 1 {
		t.Errorf("after the stall: %d of 1 message completed", len(out.Completed))
	}

	// The stalled client, reading at last, gets what was written, then
	// the reason its stream ended.
	var read int
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			t.Fatalf("the stalled stream ended OK after %d results, want ResourceExhausted", read)
		}
		if err != nil {
			if status.Code(err) != codes.ResourceExhausted {
				t.Fatalf("the stalled stream ended with %v, want ResourceExhausted", err)
			}
			break
		}
		read += len(resp.GetResults())
	}
	if read >= 3000 {
		t.Errorf("the stalled stream delivered all %d results, want it cut short", read)
	}
}
