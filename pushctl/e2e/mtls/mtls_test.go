// Package mtls runs the three services as their binaries do (server.Spec
// through servicekit/service.Run, with command-line flags) in one process,
// every gRPC listener requiring mutual TLS and deliverysvc dialing its peers
// with a client certificate, and drives them through the real apns2 and
// firebase clients to the gateway emulators and through pushctl.
//
// It is its own test binary: service.Run installs the process's global
// tracer provider, which the tracing tests of package e2e own.
package mtls

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	deliveryserver "github.com/pushmesh/pushmesh/deliverysvc/server"
	"github.com/pushmesh/pushmesh/emulator/apns"
	"github.com/pushmesh/pushmesh/emulator/fcm"
	"github.com/pushmesh/pushmesh/emulator/tlsca"
	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
	profileserver "github.com/pushmesh/pushmesh/profilesvc/server"
	"github.com/pushmesh/pushmesh/pushctl/internal/cli"
	"github.com/pushmesh/pushmesh/pushctl/internal/demo"
	"github.com/pushmesh/pushmesh/servicekit/grpcclient"
	"github.com/pushmesh/pushmesh/servicekit/logtest"
	"github.com/pushmesh/pushmesh/servicekit/proctest"
	"github.com/pushmesh/pushmesh/servicekit/service/servicetest"
	"github.com/pushmesh/pushmesh/servicekit/tlsconfig"
	"github.com/pushmesh/pushmesh/servicekit/tlsconfig/tlstest"
	trackingserver "github.com/pushmesh/pushmesh/trackingsvc/server"
)

// timeout bounds every wait of the test: generous, for a loaded 2-core
// machine.
const timeout = 2 * time.Minute

func TestJourneyOverMutualTLS(t *testing.T) {
	pki := tlstest.NewCA(t, "mesh")
	profileCert, trackingCert, deliveryCert := pki.Server(t, "profilesvc"), pki.Server(t, "trackingsvc"), pki.Server(t, "deliverysvc")
	deliveryClient, operator := pki.Client(t, "deliverysvc-client"), pki.Client(t, "operator")

	gatewayCA, err := tlsca.New()
	if err != nil {
		t.Fatal(err)
	}
	gatewayCAFile := filepath.Join(t.TempDir(), "gateway-ca.pem")
	if err := gatewayCA.WriteCertFile(gatewayCAFile); err != nil {
		t.Fatal(err)
	}
	apnsEmu, err := apns.Start(apns.Options{CA: gatewayCA})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { apnsEmu.Close() })
	fcmEmu, err := fcm.Start(fcm.Options{CA: gatewayCA})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fcmEmu.Close() })

	profileAddr, trackingAddr, deliveryAddr := proctest.MustFreeAddr(t), proctest.MustFreeAddr(t), proctest.MustFreeAddr(t)
	serve := func(addr string, cert tlstest.Pair) []string {
		return []string{"--listen", addr, "--data-dir", t.TempDir(), "--log-format", "json",
			"--tls-cert", cert.CertFile, "--tls-key", cert.KeyFile, "--tls-client-ca", pki.CertFile}
	}
	var logs logtest.Buffer
	if os.Getenv("PUSHMESH_E2E_LOG") != "" {
		t.Cleanup(func() { fmt.Fprint(os.Stderr, logs.String()) })
	}
	servicetest.Run(t, profileserver.Spec(), serve(profileAddr, profileCert), &logs)
	servicetest.Run(t, trackingserver.Spec(), append(serve(trackingAddr, trackingCert), "--http-listen="), &logs)
	servicetest.Run(t, deliveryserver.Spec(), append(serve(deliveryAddr, deliveryCert),
		"--profile-addr", profileAddr, "--tracking-addr", trackingAddr,
		"--peer-tls-ca", pki.CertFile, "--peer-tls-cert", deliveryClient.CertFile, "--peer-tls-key", deliveryClient.KeyFile,
		"--apns-url", apnsEmu.URL(), "--fcm-endpoint", fcmEmu.URL()+"/v1", "--gateway-ca-file", gatewayCAFile,
		"--dev-insecure-generate-key"), &logs)

	// The operator is a mesh member too: its own client certificate.
	clientTLS, err := tlsconfig.NewClient(tlsconfig.Client{CAFile: pki.CertFile, CertFile: operator.CertFile, KeyFile: operator.KeyFile}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	dial := func(addr string) *grpc.ClientConn {
		conn, err := grpcclient.Dial(addr, grpcclient.TransportCredentials(clientTLS))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		// Wait until it serves (Run may still be starting).
		if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true)); err != nil {
			t.Fatalf("health of %s over mutual TLS: %v", addr, err)
		}
		return conn
	}
	profiles := profilev1.NewProfileServiceClient(dial(profileAddr))
	deliveryConn := dial(deliveryAddr)
	apps, journeys := deliveryv1.NewAppServiceClient(deliveryConn), deliveryv1.NewJourneyServiceClient(deliveryConn)
	tracking := trackingv1.NewTrackingServiceClient(dial(trackingAddr))

	reqs, err := demo.AppRequests(apnsEmu, fcmEmu)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range reqs {
		if _, err := apps.RegisterApp(ctx, r); err != nil {
			t.Fatalf("register %v: %v", r.GetKey(), err)
		}
	}
	attrs, _ := structpb.NewStruct(map[string]any{"tier": "gold"})
	tokens := map[string]commonv1.Platform{}
	for i := range 3 {
		customer := fmt.Sprintf("C-%d", i)
		if _, err := profiles.UpsertProfile(ctx, &profilev1.UpsertProfileRequest{
			Identities: []*profilev1.Identity{{Namespace: "customer_id", Value: customer}}, Attributes: attrs,
		}); err != nil {
			t.Fatal(err)
		}
		apnsToken := fmt.Sprintf("%064x", i+1)
		fcmToken := fmt.Sprintf("fcm-%d:%0100d", i, i)
		tokens[apnsToken], tokens[fcmToken] = commonv1.Platform_PLATFORM_APNS, commonv1.Platform_PLATFORM_FCM
		for token, platform := range map[string]commonv1.Platform{apnsToken: commonv1.Platform_PLATFORM_APNS, fcmToken: commonv1.Platform_PLATFORM_FCM} {
			if _, err := profiles.RegisterPushToken(ctx, &profilev1.RegisterPushTokenRequest{
				Profile: &profilev1.ProfileRef{Ref: &profilev1.ProfileRef_Identity{Identity: &profilev1.Identity{Namespace: "customer_id", Value: customer}}},
				Token:   token, Platform: platform, AppId: demo.ShopApp, SourceTime: timestamppb.New(time.Now().Add(-time.Minute)),
				DeviceId: fmt.Sprintf("device-%d-%d", i, platform), Source: "mtls",
			}); err != nil {
				t.Fatalf("register token: %v", err)
			}
		}
	}

	// The journey streams its audience from profilesvc and forwards its
	// outcomes to trackingsvc: both over deliverysvc's mutual TLS.
	pub, err := journeys.PublishJourney(ctx, &deliveryv1.PublishJourneyRequest{Journey: &deliveryv1.Journey{
		Name:     "mtls",
		AppIds:   []string{demo.ShopApp},
		Audience: &deliveryv1.Audience{Condition: `attributes.tier == "gold"`},
		Template: &deliveryv1.MessageTemplate{Title: "Hello", Body: "over mutual TLS"},
	}})
	if err != nil {
		t.Fatalf("publish: %v", err)
	}
	id := pub.GetJourney().GetJourneyId()
	watch, err := journeys.WatchJourney(ctx, &deliveryv1.WatchJourneyRequest{JourneyId: id})
	if err != nil {
		t.Fatal(err)
	}
	var last *deliveryv1.Journey
	for {
		resp, err := watch.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("watch: %v", err)
		}
		last = resp.GetJourney()
	}
	if last.GetState() != deliveryv1.JourneyState_JOURNEY_STATE_COMPLETED || last.GetProgress().GetSent() != int64(len(tokens)) {
		t.Fatalf("journey: got %v with progress %v (%s), want COMPLETED with %d sent", last.GetState(), last.GetProgress(), last.GetError(), len(tokens))
	}
	for token, platform := range tokens {
		got := len(apnsEmu.ReceivedFor(token))
		if platform == commonv1.Platform_PLATFORM_FCM {
			got = len(fcmEmu.ReceivedFor(token))
		}
		if got != 1 {
			t.Errorf("%v token %s…: got %d deliveries, want 1", platform, token[:8], got)
		}
	}

	// The outcomes reach trackingsvc (forwarded in the background); pushctl
	// reads them with the operator's certificate.
	pushctl := func(args ...string) (string, string, int) {
		var stdout, stderr bytes.Buffer
		all := append([]string{"--tracking-addr", trackingAddr, "--timeout", "1m"}, args...)
		code := cli.Report(cli.Run(ctx, all, &stdout, &stderr), &stderr)
		return stdout.String(), stderr.String(), code
	}
	mtlsFlags := []string{"--tls-ca", pki.CertFile, "--tls-cert", operator.CertFile, "--tls-key", operator.KeyFile}
	var sent int64
	for {
		stdout, stderr, code := pushctl(append(mtlsFlags, "metrics", "--journey", id, "--json")...)
		if code != cli.ExitOK {
			t.Fatalf("pushctl metrics over mutual TLS: exit %d: %s", code, stderr)
		}
		var m trackingv1.GetMetricsResponse
		if err := protojson.Unmarshal([]byte(stdout), &m); err != nil {
			t.Fatalf("pushctl metrics --json: %v\n%s", err, stdout)
		}
		if sent = m.GetTotal().GetSent(); sent == int64(len(tokens)) || ctx.Err() != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if sent != int64(len(tokens)) {
		t.Errorf("trackingsvc sent count: got %d, want %d", sent, len(tokens))
	}
	if m, err := tracking.GetMetrics(ctx, &trackingv1.GetMetricsRequest{Filter: &trackingv1.MetricsFilter{JourneyId: id}}); err != nil || m.GetTotal().GetTargeted() != int64(len(tokens)) {
		t.Errorf("GetMetrics over mutual TLS: got %v, %v, want %d targeted", m.GetTotal(), err, len(tokens))
	}

	if !bytes.Contains([]byte(logs.String()), []byte(`"msg":"peer connections","profilesvc":"`+profileAddr+`","trackingsvc":"`+trackingAddr+`","tls":"mutual"`)) {
		t.Errorf("deliverysvc logs: want its peer connections logged as mutual TLS, got:\n%s", logs.String())
	}

	// pushctl without a client certificate is refused, and says why.
	_, stderr, code := pushctl("--tls-ca", pki.CertFile, "metrics", "--journey", id)
	if code != cli.ExitUnavailable || !bytes.Contains([]byte(stderr), []byte("it requires a client certificate (mutual TLS)")) {
		t.Errorf("pushctl without a client certificate: got exit %d, %q; want %d saying a client certificate is required", code, stderr, cli.ExitUnavailable)
	}
}
