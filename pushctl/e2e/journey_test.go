package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	deliveryserver "github.com/pushmesh/pushmesh/deliverysvc/server"
	"github.com/pushmesh/pushmesh/emulator/fault"
	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	"github.com/pushmesh/pushmesh/pushctl/internal/demo"
	"github.com/pushmesh/pushmesh/pushctl/internal/mesh"
	"github.com/pushmesh/pushmesh/servicekit/grpcclient"
	"github.com/pushmesh/pushmesh/servicekit/grpcserver"
)

func excludedBy(p *deliveryv1.JourneyProgress, reason commonv1.ExclusionReason) int64 {
	for _, e := range p.GetExcluded() {
		if e.GetReason() == reason {
			return e.GetCount()
		}
	}
	return 0
}

func TestConditionConsentAndRenderErrors(t *testing.T) {
	m := startMesh(t)
	ctx := context.Background()
	at := time.Now().Add(-time.Hour)
	tokens := map[string]string{}
	for _, c := range []struct {
		customer string
		attrs    map[string]any
	}{
		{"named", map[string]any{"tier": "gold", "firstName": "Ada"}},
		{"nameless", map[string]any{"tier": "gold"}},
		{"optout", map[string]any{"tier": "gold", "firstName": "Bo"}},
		{"silver", map[string]any{"tier": "silver", "firstName": "Cy"}},
	} {
		setAttributes(t, m, c.customer, c.attrs)
		tokens[c.customer] = apnsToken(t)
		register(t, m, c.customer, tokens[c.customer], commonv1.Platform_PLATFORM_APNS, demo.ShopApp, at)
	}
	if _, err := m.Profiles.UpsertProfile(ctx, &profilev1.UpsertProfileRequest{
		Identities: []*profilev1.Identity{{Namespace: "customer_id", Value: "optout"}},
		Consent:    &profilev1.PushConsent{State: profilev1.ConsentState_CONSENT_STATE_OPTED_OUT, UpdateTime: timestamppb.Now()},
	}); err != nil {
		t.Fatal(err)
	}

	j := runJourney(t, m, `attributes.tier == "gold"`, "Hi {{firstName | required}}")
	p := j.GetProgress()
	if p.GetQualified() != 3 || p.GetSent() != 1 {
		t.Errorf("got qualified %d sent %d, want 3 and 1", p.GetQualified(), p.GetSent())
	}
	if excludedBy(p, commonv1.ExclusionReason_EXCLUSION_REASON_RENDER_ERROR) != 1 || excludedBy(p, commonv1.ExclusionReason_EXCLUSION_REASON_NO_CONSENT) != 1 {
		t.Errorf("exclusions: got %v, want one render error and one without consent", p.GetExcluded())
	}
	for customer, want := range map[string]int{"named": 1, "nameless": 0, "optout": 0, "silver": 0} {
		if got := len(m.APNs.ReceivedFor(tokens[customer])); got != want {
			t.Errorf("%s: got %d deliveries, want %d", customer, got, want)
		}
	}

	// Ada is demoted: the next gold journey does not reach her.
	setAttributes(t, m, "named", map[string]any{"tier": "bronze"})
	runJourney(t, m, `attributes.tier == "gold"`, "Hi again {{firstName | default \"you\"}}")
	if got := len(m.APNs.ReceivedFor(tokens["named"])); got != 1 {
		t.Errorf("demoted profile: got %d deliveries in total, want still 1", got)
	}
}

func TestPublishRejectsBadJourneys(t *testing.T) {
	m := startMesh(t)
	ctx := context.Background()
	good := func() *deliveryv1.Journey {
		return &deliveryv1.Journey{Name: "j", AppIds: []string{demo.ShopApp}, Template: &deliveryv1.MessageTemplate{Title: "hi"}}
	}
	tests := []struct {
		name  string
		edit  func(*deliveryv1.Journey)
		code  codes.Code
		field string
	}{
		{"no name", func(j *deliveryv1.Journey) { j.Name = "" }, codes.InvalidArgument, "journey.name"},
		{"no apps", func(j *deliveryv1.Journey) { j.AppIds = nil }, codes.InvalidArgument, "journey.app_ids"},
		{"bad template", func(j *deliveryv1.Journey) { j.Template.Title = "{{x | shout}}" }, codes.InvalidArgument, "journey.template.title"},
		{"bad condition", func(j *deliveryv1.Journey) { j.Audience = &deliveryv1.Audience{Condition: "attributes.tier =="} }, codes.InvalidArgument, "journey.audience.condition"},
		{"unknown app", func(j *deliveryv1.Journey) { j.AppIds = []string{"com.nobody"} }, codes.FailedPrecondition, "journey.app_ids[0]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j := good()
			tt.edit(j)
			_, err := m.Journeys.PublishJourney(ctx, &deliveryv1.PublishJourneyRequest{Journey: j})
			if status.Code(err) != tt.code {
				t.Fatalf("got %v, want %v", err, tt.code)
			}
			if f := badRequestFields(err); len(f) == 0 || f[0] != tt.field {
				t.Errorf("got fields %v, want %s first", f, tt.field)
			}
		})
	}
}

func TestDryRunSendsNothing(t *testing.T) {
	m := startMesh(t)
	setAttributes(t, m, "d1", map[string]any{"tier": "gold", "firstName": "Di", "locale": "fr-FR"})
	tok := apnsToken(t)
	register(t, m, "d1", tok, commonv1.Platform_PLATFORM_APNS, demo.ShopApp, time.Now().Add(-time.Hour))
	j := demo.Journey()
	resp, err := m.Journeys.PublishJourney(context.Background(), &deliveryv1.PublishJourneyRequest{Journey: j, DryRun: true, SampleSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	dr := resp.GetDryRun()
	if dr.GetQualified() != 1 || dr.GetTokensTargeted() != 1 || len(dr.GetSamples()) != 1 {
		t.Fatalf("dry run: got %v, want 1 qualified, 1 token, 1 sample", dr)
	}
	if got := dr.GetSamples()[0].GetNotification().GetTitle(); got != "Bonjour Di !" {
		t.Errorf("sample title: got %q, want the French variant", got)
	}
	if n := len(m.APNs.ReceivedFor(tok)); n != 0 {
		t.Errorf("dry run sent %d notifications, want none", n)
	}
}

// importGold imports n gold customers with one APNs token each.
func importGold(t *testing.T, m *mesh.Mesh, n int) []string {
	t.Helper()
	stream, err := m.Profiles.ImportTokens(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	attrs, _ := structAttrs(map[string]any{"tier": "gold"})
	var tokens []string
	var rows []*profilev1.ImportRow
	for i := range n {
		tok := fmt.Sprintf("%064x", i+1)
		tokens = append(tokens, tok)
		rows = append(rows, &profilev1.ImportRow{Token: tok, Platform: commonv1.Platform_PLATFORM_APNS, AppId: demo.ShopApp,
			CustomerId: fmt.Sprintf("K-%05d", i), SourceTime: timestamppb.New(time.Now().Add(-time.Hour)), Attributes: attrs})
	}
	if err := stream.Send(&profilev1.ImportTokensRequest{Rows: rows}); err != nil {
		t.Fatal(err)
	}
	if res, err := stream.CloseAndRecv(); err != nil || res.GetRejected() != 0 {
		t.Fatalf("import: %v %v", res, err)
	}
	return tokens
}

func TestCancelStopsSendingWithinASecond(t *testing.T) {
	m := startMesh(t)
	ctx := context.Background()
	importGold(t, m, 2000)
	j := &deliveryv1.Journey{Name: "slow", AppIds: []string{demo.ShopApp}, Template: &deliveryv1.MessageTemplate{Title: "hi"},
		Delivery: &deliveryv1.DeliveryOptions{MaxMessagesPerSecond: 200}}
	pub, err := m.Journeys.PublishJourney(ctx, &deliveryv1.PublishJourneyRequest{Journey: j})
	if err != nil {
		t.Fatal(err)
	}
	for m.APNs.Count().Accepted < 50 {
		time.Sleep(20 * time.Millisecond)
	}
	start := time.Now()
	resp, err := m.Journeys.CancelJourney(ctx, &deliveryv1.CancelJourneyRequest{JourneyId: pub.GetJourney().GetJourneyId()})
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("cancel took %s, want under a second", took)
	}
	if resp.GetJourney().GetState() != deliveryv1.JourneyState_JOURNEY_STATE_CANCELLED {
		t.Errorf("state: got %v, want CANCELLED", resp.GetJourney().GetState())
	}
	// Requests already on the wire when the runner stopped may still land.
	time.Sleep(300 * time.Millisecond)
	after := m.APNs.Count().Accepted
	time.Sleep(500 * time.Millisecond)
	if later := m.APNs.Count().Accepted; later != after {
		t.Errorf("sends went on after cancel: %d then %d", after, later)
	}
	if after >= 2000 {
		t.Errorf("the journey finished (%d sends) before it could be cancelled", after)
	}
	if _, err := m.Journeys.CancelJourney(ctx, &deliveryv1.CancelJourneyRequest{JourneyId: pub.GetJourney().GetJourneyId()}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("second cancel: got %v, want FailedPrecondition", err)
	}
}

// The child process of TestJourneyResumesAfterKill9: a deliverysvc that the
// parent kills with SIGKILL mid-journey, then starts again.
func TestDeliveryChildProcess(t *testing.T) {
	if os.Getenv("PUSHMESH_DELIVERY_CHILD") == "" {
		t.Skip("run by TestJourneyResumesAfterKill9")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	caPEM, err := os.ReadFile(os.Getenv("PUSHMESH_CA_FILE"))
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := grpcserver.New(grpcserver.Config{Name: "deliverysvc", Listen: os.Getenv("PUSHMESH_LISTEN"), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	stopSvc, err := deliveryserver.Start(ctx, srv.GRPC(), os.Getenv("PUSHMESH_DATA_DIR"), deliveryserver.Config{
		ProfileAddr: os.Getenv("PUSHMESH_PROFILE_ADDR"), TrackingAddr: os.Getenv("PUSHMESH_TRACKING_ADDR"),
		APNsURL: os.Getenv("PUSHMESH_APNS_URL"), FCMEndpoint: os.Getenv("PUSHMESH_FCM_URL"), GatewayCAPEM: caPEM,
		DevInsecureGenerateKey: true, APNsConnections: 2, MaxInFlight: 500,
	}, log)
	if err != nil {
		t.Fatal(err)
	}
	_ = srv.Serve(ctx)
	_ = stopSvc()
}

func TestJourneyResumesAfterKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("starts deliverysvc twice as a child process")
	}
	m := startMesh(t)
	ctx := context.Background()
	const n = 3000
	tokens := importGold(t, m, n)
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	if err := m.CA.WriteCertFile(caFile); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	start := func() *exec.Cmd {
		cmd := exec.Command(os.Args[0], "-test.run=^TestDeliveryChildProcess$")
		cmd.Env = append(os.Environ(), "PUSHMESH_DELIVERY_CHILD=1", "PUSHMESH_CA_FILE="+caFile, "PUSHMESH_LISTEN="+addr,
			"PUSHMESH_DATA_DIR="+filepath.Join(dir, "deliverysvc"), "PUSHMESH_PROFILE_ADDR="+m.ProfileAddr,
			"PUSHMESH_TRACKING_ADDR="+m.TrackingAddr, "PUSHMESH_APNS_URL="+m.APNs.URL(), "PUSHMESH_FCM_URL="+m.FCM.URL()+"/v1")
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd
	}
	child := start()
	t.Cleanup(func() { _ = child.Process.Kill(); _, _ = child.Process.Wait() })
	conn, err := grpcclient.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	apps := deliveryv1.NewAppServiceClient(conn)
	journeys := deliveryv1.NewJourneyServiceClient(conn)
	reqs, err := demo.AppRequests(m.APNs, m.FCM)
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 20*time.Second, func() bool {
		_, err := apps.RegisterApp(ctx, reqs[0])
		return err == nil
	})

	// Slow the gateway down so the kill lands mid-journey.
	if err := m.APNs.SetFaults(fault.Faults{Latency: 2 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	pub, err := journeys.PublishJourney(ctx, &deliveryv1.PublishJourneyRequest{Journey: &deliveryv1.Journey{
		Name: "resume", AppIds: []string{demo.ShopApp}, Template: &deliveryv1.MessageTemplate{Title: "hi"},
		Delivery: &deliveryv1.DeliveryOptions{MaxMessagesPerSecond: 1500},
	}})
	if err != nil {
		t.Fatal(err)
	}
	id := pub.GetJourney().GetJourneyId()
	waitUntil(t, 20*time.Second, func() bool { return m.APNs.Count().Accepted >= n/3 })
	if err := child.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_, _ = child.Process.Wait()
	atKill := m.APNs.Count().Accepted
	if atKill >= n {
		t.Fatalf("the journey finished (%d sends) before the kill", atKill)
	}

	child = start()
	var final *deliveryv1.Journey
	waitUntil(t, 60*time.Second, func() bool {
		resp, err := journeys.GetJourney(ctx, &deliveryv1.GetJourneyRequest{JourneyId: id})
		if err != nil {
			return false
		}
		final = resp.GetJourney()
		return final.GetState() == deliveryv1.JourneyState_JOURNEY_STATE_COMPLETED
	})

	// Every token got the notification; re-sends stayed within the
	// in-flight window and carried the same collapse id.
	resent := 0
	for _, tok := range tokens {
		got := m.APNs.ReceivedFor(tok)
		if len(got) == 0 {
			t.Fatalf("token %s… never received the notification", tok[:8])
		}
		resent += len(got) - 1
		for _, d := range got[1:] {
			if d.CollapseID != got[0].CollapseID || d.CollapseID == "" {
				t.Errorf("token %s…: collapse ids %q and %q, want one non-empty id", tok[:8], got[0].CollapseID, d.CollapseID)
			}
		}
	}
	// The window: the child's MaxInFlight, one submit batch, and what the
	// throughput cap lets complete between two checkpoints (500 ms).
	const window = 500 + 500 + 1500/2
	if resent > window {
		t.Errorf("re-sent %d notifications, want at most the in-flight window (%d)", resent, window)
	}
	if got := final.GetProgress().GetSent(); got != n {
		t.Errorf("progress sent: got %d, want %d (each token counted once)", got, n)
	}
	t.Logf("killed after %d of %d sends; %d re-sent after the restart", atKill, n, resent)
}

func waitUntil(t *testing.T, limit time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s", limit)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func structAttrs(m map[string]any) (*structpb.Struct, error) { return structpb.NewStruct(m) }

func badRequestFields(err error) []string {
	var fields []string
	for _, d := range status.Convert(err).Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				fields = append(fields, v.GetField())
			}
		}
	}
	return fields
}
