package mesh

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pushmesh/pushmesh/servicekit/proctest"
)

// A busy port is an ordinary error naming the address, and whatever had
// already started (emulators, profilesvc, trackingsvc: deliverysvc starts
// last) is stopped: the same options work once the port is free.
func TestStartWithABusyPortFailsAndStopsWhatStarted(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{
		DataDir:        t.TempDir(),
		APNsListen:     proctest.MustFreeAddr(t),
		FCMListen:      proctest.MustFreeAddr(t),
		ProfileListen:  proctest.MustFreeAddr(t),
		TrackingListen: proctest.MustFreeAddr(t),
		DeliveryListen: busy.Addr().String(),
	}
	m, err := Start(context.Background(), opts)
	if err == nil {
		m.Close()
		t.Fatal("Start succeeded on a busy port")
	}
	if m != nil {
		t.Errorf("Start returned a mesh with its error %v", err)
	}
	if msg := err.Error(); !strings.Contains(msg, busy.Addr().String()) || !strings.Contains(msg, "address already in use") {
		t.Errorf("error %q does not name the busy address", msg)
	}

	// Every listener and data file of the failed start was released.
	for _, addr := range []string{opts.APNsListen, opts.FCMListen, opts.ProfileListen, opts.TrackingListen} {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Errorf("%s still held after the failed start: %v", addr, err)
			continue
		}
		l.Close()
	}
	busy.Close()
	m, err = Start(context.Background(), opts)
	if err != nil {
		t.Fatalf("second start with the port free: %v", err)
	}
	if err := m.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
}

// With TrackingHTTPListen, trackingsvc's HTTP endpoint for SDKs serves too
// (the READMEs' curl example runs against `pushctl dev`), on the port
// reported in TrackingHTTPAddr; without it, nothing listens for HTTP.
func TestTrackingHTTPEndpoint(t *testing.T) {
	m, err := Start(context.Background(), Options{DataDir: t.TempDir(), TrackingHTTPListen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if m.TrackingHTTPAddr == "" || strings.HasSuffix(m.TrackingHTTPAddr, ":0") {
		t.Fatalf("TrackingHTTPAddr: got %q, want the port listened on", m.TrackingHTTPAddr)
	}
	body := `{"events":[{"eventId":"e-1","type":"EVENT_TYPE_OPENED","eventTime":"` +
		time.Now().UTC().Format(time.RFC3339) + `","profileId":"p-1","journeyId":"jrn_1","messageId":"msg_1"}]}`
	resp, err := http.Post("http://"+m.TrackingHTTPAddr+"/v1/events", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(got), `"accepted":"1"`) {
		t.Errorf("POST /v1/events: got %d %s, want 200 with one event accepted", resp.StatusCode, got)
	}

	off, err := Start(context.Background(), Options{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer off.Close()
	if off.TrackingHTTPAddr != "" {
		t.Errorf("TrackingHTTPAddr without TrackingHTTPListen: got %q, want none", off.TrackingHTTPAddr)
	}
}
