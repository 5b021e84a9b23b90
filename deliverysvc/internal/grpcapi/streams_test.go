package grpcapi_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/journeytest"
	"github.com/pushmesh/pushmesh/deliverysvc/internal/testenv"
	"github.com/pushmesh/pushmesh/deliverysvc/server"
	"github.com/pushmesh/pushmesh/emulator/apns"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
	"github.com/pushmesh/pushmesh/servicekit/grpcclient"
)

// openSend opens a Send stream, sends one message and reads the first
// response: the service took the stream, or err is its refusal.
func openSend(t *testing.T, env *testenv.Env, key string) (stream deliveryv1.DeliveryService_SendClient, cancel context.CancelFunc, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	stream, err = env.Delivery.Send(ctx)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	msg := testenv.TokensMessage(key, note(), testenv.APNsTarget(testenv.APNsToken(1), bundleID))
	if err := stream.Send(&deliveryv1.SendRequest{Messages: []*deliveryv1.Message{msg}}); err != nil && !errors.Is(err, io.EOF) {
		cancel()
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		cancel()
		return nil, nil, err
	}
	return stream, cancel, nil
}

// The Send streams open at once are bounded: the next is refused with
// ResourceExhausted at its start, and closing one lets a new one in.
func TestSendStreamsAreBounded(t *testing.T) {
	env := testenv.Start(t, testenv.Options{})
	if err := env.StopService(); err != nil {
		t.Fatal(err)
	}
	env.Config.MaxSendStreams = 2
	if err := env.StartService(); err != nil {
		t.Fatal(err)
	}
	if _, err := env.RegisterAPNsApp(context.Background(), bundleID, 0); err != nil {
		t.Fatal(err)
	}
	var streams []deliveryv1.DeliveryService_SendClient
	for i := range 2 {
		s, cancel, err := openSend(t, env, fmt.Sprint("open", i))
		if err != nil {
			t.Fatalf("stream %d of 2: %v", i+1, err)
		}
		defer cancel()
		streams = append(streams, s)
	}
	_, _, err := openSend(t, env, "over")
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "too many concurrent Send streams") {
		t.Fatalf("third stream: got %v, want ResourceExhausted naming the bound", err)
	}

	// Closing a stream gives its slot back.
	if err := streams[0].CloseSend(); err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := streams[0].Recv(); err != nil {
			if !errors.Is(err, io.EOF) {
				t.Fatalf("closing stream: %v", err)
			}
			break
		}
	}
	s, cancel, err := openSend(t, env, "again")
	if err != nil {
		t.Fatalf("after one closed: %v", err)
	}
	defer cancel()
	_ = s.CloseSend()
}

// scheduledJourney starts a mesh whose deliverysvc runs with the config
// configure makes, and publishes a journey scheduled an hour ahead, whose
// watches stay open; it returns the mesh and the journey's id.
func scheduledJourney(t *testing.T, configure func(*server.Config)) (*journeytest.Mesh, string) {
	t.Helper()
	m := journeytest.Start(t, journeytest.Options{})
	configure(&m.Config)
	if err := m.StartDelivery(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := m.RegisterApps(ctx); err != nil {
		t.Fatal(err)
	}
	resp, err := m.Journeys.PublishJourney(ctx, &deliveryv1.PublishJourneyRequest{Journey: &deliveryv1.Journey{
		Name: "later", AppIds: []string{journeytest.ShopApp},
		Audience:  &deliveryv1.Audience{Condition: `attributes.tier == "gold"`},
		Template:  &deliveryv1.MessageTemplate{Title: "Hi", Body: "x"},
		StartTime: timestamppb.New(time.Now().Add(time.Hour)),
	}})
	if err != nil {
		t.Fatal(err)
	}
	return m, resp.GetJourney().GetJourneyId()
}

// The WatchJourney streams open at once are bounded the same way.
func TestWatchStreamsAreBounded(t *testing.T) {
	m, id := scheduledJourney(t, func(c *server.Config) { c.MaxWatchStreams = 2 })
	watch := func() (deliveryv1.JourneyService_WatchJourneyClient, context.CancelFunc, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		s, err := m.Journeys.WatchJourney(ctx, &deliveryv1.WatchJourneyRequest{JourneyId: id, Interval: durationpb.New(time.Second)})
		if err == nil {
			_, err = s.Recv() // the first update, or the refusal
		}
		if err != nil {
			cancel()
			return nil, nil, err
		}
		return s, cancel, nil
	}
	var cancels []context.CancelFunc
	for i := range 2 {
		_, cancel, err := watch()
		if err != nil {
			t.Fatalf("watch %d of 2: %v", i+1, err)
		}
		defer cancel()
		cancels = append(cancels, cancel)
	}
	_, _, err := watch()
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "too many concurrent WatchJourney streams") {
		t.Fatalf("third watch: got %v, want ResourceExhausted naming the bound", err)
	}

	// A watch that ends gives its slot back (once the service has seen the
	// cancel).
	cancels[0]()
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, cancel, err := watch()
		if err == nil {
			cancel()
			break
		}
		if status.Code(err) != codes.ResourceExhausted || time.Now().After(deadline) {
			t.Fatalf("after one watch ended: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A WatchJourney stream ends when deliverysvc begins to shut down, with
// Unavailable: it would otherwise hold the graceful stop for its whole
// timeout (5 s in journeytest) and then be cut off by the hard stop, along
// with the Send streams still draining.
func TestWatchEndsWhenTheServiceStops(t *testing.T) {
	m, id := scheduledJourney(t, func(*server.Config) {})
	watchCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	watch, err := m.Journeys.WatchJourney(watchCtx, &deliveryv1.WatchJourneyRequest{JourneyId: id})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := watch.Recv(); err != nil {
		t.Fatal(err)
	}

	begin := time.Now()
	if err := m.StopDelivery(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if took := time.Since(begin); took > 3*time.Second {
		t.Errorf("stop took %v: the graceful stop waited for the watch", took)
	}
	if _, err := watch.Recv(); status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "shutting down") {
		t.Errorf("watch: got %v, want Unavailable saying the service is shutting down", err)
	}
}

// A Send stream ends when deliverysvc begins to shut down, with
// Unavailable, once the messages it admitted have their results: kept open
// between batches, it would otherwise hold the graceful stop for its whole
// timeout (5 s in testenv) and then be cut off.
func TestSendEndsWhenTheServiceStops(t *testing.T) {
	env := testenv.Start(t, testenv.Options{})
	ctx := context.Background()
	if _, err := env.RegisterAPNsApp(ctx, bundleID, 0); err != nil {
		t.Fatal(err)
	}
	// A connection of the test's own: testenv closes its client's first.
	conn, err := grpcclient.Dial(env.Conn.Target())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := deliveryv1.NewDeliveryServiceClient(conn)
	streamCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	send := func(keys ...string) deliveryv1.DeliveryService_SendClient {
		t.Helper()
		stream, err := client.Send(streamCtx)
		if err != nil {
			t.Fatal(err)
		}
		var msgs []*deliveryv1.Message
		for i, k := range keys {
			msgs = append(msgs, testenv.TokensMessage(k, note(), testenv.APNsTarget(testenv.APNsToken(100+i), bundleID)))
		}
		if err := stream.Send(&deliveryv1.SendRequest{Messages: msgs}); err != nil {
			t.Fatal(err)
		}
		return stream
	}
	// An idle stream: one batch answered, then nothing.
	idle := send("idle")
	if _, err := idle.Recv(); err != nil {
		t.Fatal(err)
	}
	// A busy one: 20 messages the gateway holds for 300 ms each.
	if err := env.APNs.SetFaults(apns.Faults{Latency: 300 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	var keys []string
	for i := range 20 {
		keys = append(keys, fmt.Sprint("busy", i))
	}
	busy := send(keys...)
	time.Sleep(100 * time.Millisecond) // admitted and at the gateway

	begin := time.Now()
	if err := env.StopService(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if took := time.Since(begin); took > 3*time.Second {
		t.Errorf("stop took %v: the graceful stop waited for the open Send streams", took)
	}
	if _, err := idle.Recv(); status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "shutting down") {
		t.Errorf("idle stream: got %v, want Unavailable saying deliverysvc is shutting down", err)
	}
	sent := 0
	for {
		resp, err := busy.Recv()
		if err != nil {
			if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "shutting down") {
				t.Errorf("busy stream: ended with %v, want Unavailable saying deliverysvc is shutting down", err)
			}
			break
		}
		for _, r := range resp.GetResults() {
			if r.GetStatus() == deliveryv1.SendStatus_SEND_STATUS_SENT {
				sent++
			}
		}
	}
	if sent != 20 {
		t.Errorf("busy stream: %d of 20 admitted messages reported sent before the stream ended", sent)
	}
}
