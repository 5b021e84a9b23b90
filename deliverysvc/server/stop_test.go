package server_test

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/journeytest"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
	"github.com/pushmesh/pushmesh/servicekit/logtest"
)

// breakDisk makes every write to the named file fail (EBADF) by replacing
// this process's descriptors of it with read-only ones; reads through
// bbolt's mmap keep working. It is how a dead disk looks to bbolt.
func breakDisk(t *testing.T, name string) {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	n := 0
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err != nil || !strings.HasSuffix(target, name) {
			continue
		}
		fd := 0
		for _, c := range e.Name() {
			fd = fd*10 + int(c-'0')
		}
		ro, err := syscall.Open(target, syscall.O_RDONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := syscall.Dup2(ro, fd); err != nil {
			t.Fatal(err)
		}
		syscall.Close(ro)
		n++
	}
	if n == 0 {
		t.Fatalf("no descriptor of %s", name)
	}
}

// A journey mid-run while the disk fails (its outcome writes retry until
// the outboxes close) does not hang the stop: journeys get StopTimeout,
// then the outboxes close, and the stop returns.
func TestStopWithAJourneyMidRunAndADeadDisk(t *testing.T) {
	var logs logtest.Buffer
	m := journeytest.Start(t, journeytest.Options{JourneyWindow: 300, MaxInFlight: 500,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	const stopTimeout = time.Second
	m.Config.StopTimeout = stopTimeout
	if err := m.StartDelivery(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := m.RegisterApps(ctx); err != nil {
		t.Fatal(err)
	}
	if _, _, err := journeytest.Import(ctx, m, 2000, 4, 0); err != nil {
		t.Fatal(err)
	}
	m.APNs.Reset()
	m.FCM.Reset()
	if _, err := m.Journeys.PublishJourney(ctx, &deliveryv1.PublishJourneyRequest{Journey: &deliveryv1.Journey{
		Name: "dead disk", AppIds: []string{journeytest.ShopApp},
		Audience: &deliveryv1.Audience{Condition: `attributes.tier == "gold"`},
		Template: &deliveryv1.MessageTemplate{Title: "Hi", Body: "x"},
		Delivery: &deliveryv1.DeliveryOptions{MaxMessagesPerSecond: 200},
	}}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); m.APNs.Count().Accepted < 50; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the journey did not start sending")
		}
	}
	breakDisk(t, "deliverysvc.db")
	// Let outcome writes fail and start retrying.
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(logs.String(), "holding the message"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("outcome writes did not fail")
		}
	}

	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- m.StopDelivery() }()
	// The gRPC server's graceful stop, StopTimeout, the outboxes' close and
	// the wait after it, with room for a slow machine.
	budget := 5*time.Second + stopTimeout + stopTimeout + 10*time.Second
	select {
	case err := <-done:
		t.Logf("stopped in %s: %v", time.Since(start).Round(time.Millisecond), err)
	case <-time.After(budget):
		t.Fatalf("stop still blocked after %s", budget)
	}
	if l := logs.String(); !strings.Contains(l, "closing the outboxes") {
		t.Errorf("the stop did not log the journeys it waited for; logs:\n%s", l)
	}
}
