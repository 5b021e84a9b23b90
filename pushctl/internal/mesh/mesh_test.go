package mesh

import (
	"context"
	"net"
	"strings"
	"testing"
)

// freeAddr is a loopback address that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

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
		APNsListen:     freeAddr(t),
		FCMListen:      freeAddr(t),
		ProfileListen:  freeAddr(t),
		TrackingListen: freeAddr(t),
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
