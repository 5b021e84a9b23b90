package journeytest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/buckets"
	"github.com/pushmesh/pushmesh/deliverysvc/internal/testenv"
	"github.com/pushmesh/pushmesh/emulator/apns"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
	"github.com/pushmesh/pushmesh/servicekit/boltdb"
	"github.com/pushmesh/pushmesh/servicekit/grpcclient"
)

// told is what a Send client was told about one message.
type told struct {
	results []*deliveryv1.SendResult
	at      time.Time // when the client read its last result
}

// sendAll streams msgs in batches and returns what the client read, by
// key, until the stream ends (the service may die under it).
func sendAll(ctx context.Context, client deliveryv1.DeliveryServiceClient, msgs []*deliveryv1.Message, onRead func(n int)) (map[string]*told, error) {
	stream, err := client.Send(ctx)
	if err != nil {
		return nil, err
	}
	got := map[string]*told{}
	var mu sync.Mutex
	done := make(chan error, 1)
	go func() {
		for {
			res, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				done <- nil
				return
			}
			if err != nil {
				done <- err
				return
			}
			now := time.Now()
			mu.Lock()
			for _, r := range res.GetResults() {
				k := got[r.GetIdempotencyKey()]
				if k == nil {
					k = &told{}
					got[r.GetIdempotencyKey()] = k
				}
				k.results = append(k.results, r)
				k.at = now
			}
			n := len(got)
			mu.Unlock()
			if onRead != nil {
				onRead(n)
			}
		}
	}()
	for i := 0; i < len(msgs); i += 200 {
		if stream.Send(&deliveryv1.SendRequest{Messages: msgs[i:min(i+200, len(msgs))]}) != nil {
			break
		}
	}
	_ = stream.CloseSend()
	err = <-done
	mu.Lock()
	defer mu.Unlock()
	return got, err
}

// outboxLen counts the keys left in deliverysvc's outbox buckets.
func outboxLen(t *testing.T, dir string) (tracking, feedback int) {
	t.Helper()
	db, err := boltdb.Open(dir, "deliverysvc.db")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.View(func(tx *bolt.Tx) error {
		tracking = tx.Bucket(buckets.TrackingOutbox).Stats().KeyN
		feedback = tx.Bucket(buckets.FeedbackOutbox).Stats().KeyN
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return tracking, feedback
}

var eventStatus = map[trackingv1.EventType]deliveryv1.SendStatus{
	trackingv1.EventType_EVENT_TYPE_SENT:     deliveryv1.SendStatus_SEND_STATUS_SENT,
	trackingv1.EventType_EVENT_TYPE_FAILED:   deliveryv1.SendStatus_SEND_STATUS_FAILED,
	trackingv1.EventType_EVENT_TYPE_EXCLUDED: deliveryv1.SendStatus_SEND_STATUS_EXCLUDED,
}

// kill -9 in the middle of Send traffic while trackingsvc is down, then a
// restart: every outcome a client was told about reaches trackingsvc once
// (ids stable across the restart, so copies collapse), both outboxes
// drain, and resending the keys answers the first outcomes without sending
// again; the few keys whose idempotency record the crash lost are sent
// again with the same collapse id (APNs apns-collapse-id, FCM collapse key
// and tag), so the device replaces rather than duplicates.
func TestKill9MidSendWithTrackingDown(t *testing.T) {
	if testing.Short() {
		t.Skip("runs deliverysvc twice as a child process")
	}
	const (
		n         = 6000
		fcmEvery  = 4
		deadEvery = 50
	)
	// 20 tokens in flight per stream and 10 ms a push: about 2,000
	// pushes/s, so the kill lands mid-traffic after keys were answered
	// long enough before it to be remembered.
	m, child := startWithChild(t, Options{MaxInFlight: 40, APNsConnections: 2})
	ctx := context.Background()
	m.APNs.Reset()
	m.FCM.Reset()
	conn, err := grpcclient.Dial(m.DeliveryAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	client := deliveryv1.NewDeliveryServiceClient(conn)

	msgs := make([]*deliveryv1.Message, n)
	tokenOf := map[string]string{}
	for i := range msgs {
		key := fmt.Sprintf("send-%05d", i)
		target := testenv.APNsTarget(APNsToken(i), ShopApp)
		if i%fcmEvery == 0 {
			target = testenv.FCMTarget(FCMToken(i), ShopApp)
		}
		if i%deadEvery == 1 { // dead tokens: feedback takes its outbox too
			m.APNs.MarkUnregistered(target.GetToken(), time.Now())
		}
		msgs[i] = testenv.TokensMessage(key, &deliveryv1.Notification{Title: "t", Body: "b"}, target)
		tokenOf[key] = target.GetToken()
	}

	m.Events.SetDown(true)
	if err := m.APNs.SetFaults(apns.Faults{Latency: 10 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	var killOnce sync.Once
	killed := make(chan time.Time, 1)
	start := time.Now()
	first, err := sendAll(ctx, client, msgs, func(read int) {
		if time.Since(start) >= 1500*time.Millisecond {
			killOnce.Do(func() {
				// Kill from another goroutine: the reader keeps reading
				// until the connection breaks, as a client would.
				go func() { child.Kill(); killed <- time.Now() }()
			})
		}
	})
	if err == nil {
		t.Fatalf("the stream ended cleanly after %d keys: the kill came too late", len(first))
	}
	killedAt := <-killed
	t.Logf("killed %v after the traffic began", killedAt.Sub(start))
	if len(first) >= n {
		t.Fatalf("all %d keys answered before the kill", n)
	}
	if got := len(m.Events.All()); got != 0 {
		t.Fatalf("tracking down, yet %d events arrived", got)
	}

	child, err = m.StartDeliveryProcess()
	if err != nil {
		t.Fatal(err)
	}
	m.Events.SetDown(false)
	// Every outcome the client was told about reaches trackingsvc.
	want := 0
	for _, k := range first {
		want += len(k.results)
	}
	wait, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := m.Events.WaitFor(wait, want); err != nil {
		t.Fatalf("after tracking came back: %d distinct events, want at least the %d outcomes told: %v", len(m.Events.All()), want, err)
	}

	// Resend every key, those answered and those not, as a client whose
	// stream broke does.
	sentBefore := map[string]int{}
	for key, tok := range tokenOf {
		sentBefore[key] = copies(m, tok)
	}
	second, err := sendAll(ctx, client, msgs, nil)
	if err != nil {
		t.Fatalf("resend after the restart: %v (%d keys answered)", err, len(second))
	}
	if len(second) != n {
		t.Fatalf("resend: %d keys answered, want %d", len(second), n)
	}
	resentReplaced := 0
	var oldest time.Duration // the longest a re-sent key was told before the kill
	for key, k := range first {
		again := second[key].results
		tok := tokenOf[key]
		if len(again) != len(k.results) {
			t.Fatalf("%s: %d results before the kill, %d after", key, len(k.results), len(again))
		}
		if again[0].GetDuplicate() {
			if copies(m, tok) != sentBefore[key] {
				t.Errorf("%s: answered as a duplicate, yet sent again", key)
			}
			if again[0].GetStatus() != k.results[0].GetStatus() || again[0].GetGatewayId() != k.results[0].GetGatewayId() {
				t.Errorf("%s: duplicate answered %v %q, first outcome %v %q", key, again[0].GetStatus(), again[0].GetGatewayId(),
					k.results[0].GetStatus(), k.results[0].GetGatewayId())
			}
			continue
		}
		// Not remembered: its record was in the unflushed batch (written
		// every 250 ms) when the process died. Allowed only within that
		// window of the kill, and only as an invisible replacement.
		resentReplaced++
		oldest = max(oldest, killedAt.Sub(k.at))
		if killedAt.Sub(k.at) > time.Second {
			t.Errorf("%s: told %v before the kill, yet not remembered: sent again", key, killedAt.Sub(k.at))
		}
	}
	// Every copy of every push carries the message's collapse id.
	for key, tok := range tokenOf {
		for _, d := range m.APNs.ReceivedFor(tok) {
			if d.CollapseID != key {
				t.Fatalf("%s: APNs copy with collapse id %q, want %q", key, d.CollapseID, key)
			}
		}
		for _, d := range m.FCM.ReceivedFor(tok) {
			if ck, tag := FCMCollapse(d); ck != key || tag != key {
				t.Fatalf("%s: FCM copy with collapse key %q and tag %q, want %q", key, ck, tag, key)
			}
		}
	}

	// trackingsvc ends with one event per (key, token), of the outcome
	// told: ids are stable across the restart, so re-forwarded and re-sent
	// outcomes collapse.
	wait, cancel = context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := m.Events.WaitFor(wait, n); err != nil {
		t.Fatalf("after the resend: %d distinct events, want %d: %v", len(m.Events.All()), n, err)
	}
	child.Stop()
	perPair := map[string][]trackingv1.EventType{}
	for _, ev := range m.Events.All() {
		pair := ev.GetMessageId() + "\x00" + ev.GetToken()
		perPair[pair] = append(perPair[pair], ev.GetType())
	}
	for key, k := range second {
		types := perPair[key+"\x00"+tokenOf[key]]
		if len(types) != 1 || eventStatus[types[0]] != k.results[0].GetStatus() {
			t.Errorf("%s: events %v, want one of the outcome told (%v)", key, types, k.results[0].GetStatus())
		}
	}
	if len(perPair) != n {
		t.Errorf("trackingsvc has events for %d (key, token) pairs, want %d", len(perPair), n)
	}
	if tr, fb := outboxLen(t, m.DeliveryDir); tr != 0 || fb != 0 {
		t.Errorf("after a clean stop the outboxes hold %d tracking and %d feedback values, want none", tr, fb)
	}
	t.Logf("killed after %d of %d keys answered; %d answered keys re-sent (as replacements) after the restart, told at most %v before the kill; %d events repeated and collapsed",
		len(first), n, resentReplaced, oldest, m.Events.Repeats())
}

// copies counts the pushes the emulators received for tok.
func copies(m *Mesh, tok string) int {
	return len(m.APNs.ReceivedFor(tok)) + len(m.FCM.ReceivedFor(tok))
}
