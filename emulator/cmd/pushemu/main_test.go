package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	firebase "firebase.google.com/go/v4"
	"firebase.google.com/go/v4/messaging"
	"github.com/sideshow/apns2"
	"github.com/sideshow/apns2/token"
	"golang.org/x/net/http2"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/google"
	"google.golang.org/api/option"

	"github.com/pushmesh/pushmesh/servicekit/logtest"
)

// TestBinaryEndToEnd runs pushemu as a user would, then drives both
// emulators with the real clients using only the files it wrote: the CA
// certificate, the .p8 key and the service-account JSON.
func TestBinaryEndToEnd(t *testing.T) {
	dir := t.TempDir()
	infoPath := filepath.Join(dir, "info.json")
	ctx, cancel := context.WithCancel(context.Background())
	var stdout, stderr logtest.Buffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{
			"--apns-addr", "127.0.0.1:0", "--fcm-addr", "127.0.0.1:0",
			"--ca-file", filepath.Join(dir, "ca.pem"), "--info-out", infoPath,
			"--apns-team", "TEAM000001", "--apns-key-id", "KEY0000001", "--apns-topics", "com.example.app, com.example.other",
			"--apns-p8-out", filepath.Join(dir, "apns.p8"),
			"--fcm-project", "demo-project", "--fcm-sa-out", filepath.Join(dir, "sa.json"),
		}, &stdout, &stderr)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})

	var inf info
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(infoPath)
		if err == nil && json.Unmarshal(b, &inf) == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no info file after 10s; stderr:\n%s", stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, want := range []string{"APNs  " + inf.APNsURL, "FCM   " + inf.FCMURL, "CA    " + inf.CAFile} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("stdout %q does not contain %q", stdout.String(), want)
		}
	}

	pem, err := os.ReadFile(inf.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatal("CA file holds no certificate")
	}
	// Each transport gets its own copy: net/http adds its ALPN protocols to
	// the config it is given.
	tlsConf := &tls.Config{RootCAs: pool}

	t.Run("APNs", func(t *testing.T) {
		key, err := token.AuthKeyFromFile(inf.APNsP8File)
		if err != nil {
			t.Fatal(err)
		}
		c := apns2.NewTokenClient(&token.Token{AuthKey: key, KeyID: inf.APNsKeyID, TeamID: inf.APNsTeamID})
		c.Host = inf.APNsURL
		c.HTTPClient = &http.Client{Transport: &http2.Transport{TLSClientConfig: tlsConf.Clone()}}
		res, err := c.Push(&apns2.Notification{DeviceToken: strings.Repeat("ab", 32), Topic: "com.example.other", Payload: []byte(`{"aps":{}}`)})
		if err != nil || res.StatusCode != 200 {
			t.Errorf("push: got %v %+v, want 200", err, res)
		}
	})
	t.Run("FCM", func(t *testing.T) {
		saJSON, err := os.ReadFile(inf.FCMServiceAccount)
		if err != nil {
			t.Fatal(err)
		}
		base := &http.Transport{TLSClientConfig: tlsConf.Clone(), ForceAttemptHTTP2: true}
		tctx := context.WithValue(context.Background(), oauth2.HTTPClient, &http.Client{Transport: base})
		creds, err := google.CredentialsFromJSONWithTypeAndParams(tctx, saJSON, google.ServiceAccount,
			google.CredentialsParams{Scopes: []string{"https://www.googleapis.com/auth/firebase.messaging"}})
		if err != nil {
			t.Fatal(err)
		}
		hc := &http.Client{Transport: &oauth2.Transport{Source: creds.TokenSource, Base: base}}
		app, err := firebase.NewApp(context.Background(), &firebase.Config{ProjectID: inf.FCMProject},
			option.WithHTTPClient(hc), option.WithEndpoint(inf.FCMEndpoint))
		if err != nil {
			t.Fatal(err)
		}
		mc, err := app.Messaging(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := mc.Send(context.Background(), &messaging.Message{Token: "device-1", Data: map[string]string{"k": "v"}}); err != nil {
			t.Errorf("send: %v", err)
		}
	})
	t.Run("admin counts", func(t *testing.T) {
		hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsConf.Clone()}}
		for _, url := range []string{inf.APNsAdminURL + "counts", inf.FCMAdminURL + "counts"} {
			res, err := hc.Get(url)
			if err != nil {
				t.Fatal(err)
			}
			var counts struct{ Received int64 }
			err = json.NewDecoder(res.Body).Decode(&counts)
			res.Body.Close()
			if err != nil || counts.Received != 1 {
				t.Errorf("%s: got %+v (%v), want 1 received", url, counts, err)
			}
		}
	})
}

func TestFlagValidation(t *testing.T) {
	tests := []struct {
		name string
		args []string
	}{
		{"both off", []string{"--apns-addr", "off", "--fcm-addr", "off"}},
		{"team without key", []string{"--apns-team", "T"}},
		{"p8 without team", []string{"--apns-p8-out", "x.p8"}},
		{"sa without project", []string{"--fcm-sa-out", "sa.json"}},
		{"rate above 1", []string{"--error-500", "1.5"}},
		{"bad drop mode", []string{"--drop-mode", "explode"}},
		{"bad log level", []string{"--log-level", "trace"}},
		{"stray argument", []string{"extra"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			if _, err := parseFlags(tt.args, &stderr); err == nil {
				t.Errorf("parseFlags(%q): got nil error, want one", tt.args)
			}
		})
	}
}

// The generated .p8 key and service-account JSON are written mode 0600 even
// when a file of the old fixed temporary name is in the way: a leftover one
// 0644 (its mode used to be kept) or a symlink planted in a shared folder
// (the write used to follow it into another file).
func TestWriteSecretIgnoresTempFilesInTheWay(t *testing.T) {
	dir := t.TempDir()
	secret := []byte("-----BEGIN PRIVATE KEY-----\nsecret\n-----END PRIVATE KEY-----\n")

	leftover := filepath.Join(dir, "apns.p8")
	if err := os.WriteFile(leftover+".tmp", []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(leftover+".tmp", 0o644); err != nil {
		t.Fatal(err)
	}
	if err := writeSecret(leftover, secret); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(leftover); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("with a leftover 0644 temporary file: got %v, %v; want mode 0600", st.Mode().Perm(), err)
	}

	victim := filepath.Join(dir, "victim")
	if err := os.WriteFile(victim, []byte("untouched"), 0o644); err != nil {
		t.Fatal(err)
	}
	planted := filepath.Join(dir, "fcm-sa.json")
	if err := os.Symlink(victim, planted+".tmp"); err != nil {
		t.Fatal(err)
	}
	if err := writeSecret(planted, secret); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(victim); string(got) != "untouched" {
		t.Errorf("the write followed a planted symlink: the other file now holds %q", got)
	}
	if st, err := os.Lstat(planted); err != nil || !st.Mode().IsRegular() || st.Mode().Perm() != 0o600 {
		t.Errorf("with a planted symlink: got %v, %v; want a regular file, mode 0600", st.Mode(), err)
	}
	if got, _ := os.ReadFile(planted); !bytes.Equal(got, secret) {
		t.Errorf("got %q, want the secret", got)
	}
	entries, _ := os.ReadDir(dir)
	for _, en := range entries {
		if strings.HasPrefix(en.Name(), ".") {
			t.Errorf("temporary file %s left behind", en.Name())
		}
	}
}
