package cli

import (
	"bufio"
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
)

const journeyYAML = `
name: Spring sale
appIds: [com.acme.shop]
audience:
  condition: attributes.tier == "gold"
  platforms: [apns]
template:
  title: 'Hi {{firstName | default "there"}}'
  body: 20% off today
delivery:
  ttl: 1h
  priority: high
`

const journeyJSON = `{
  "name": "Spring sale",
  "app_ids": ["com.acme.shop"],
  "audience": {"condition": "attributes.tier == \"gold\"", "platforms": ["PLATFORM_APNS"]},
  "template": {"title": "Hi {{firstName | default \"there\"}}", "body": "20% off today"},
  "delivery": {"ttl": "3600s", "priority": "FCM_PRIORITY_HIGH"}
}`

func wantJourney() *deliveryv1.Journey {
	return &deliveryv1.Journey{
		Name:     "Spring sale",
		AppIds:   []string{"com.acme.shop"},
		Audience: &deliveryv1.Audience{Condition: `attributes.tier == "gold"`, Platforms: []commonv1.Platform{commonv1.Platform_PLATFORM_APNS}},
		Template: &deliveryv1.MessageTemplate{Title: `Hi {{firstName | default "there"}}`, Body: "20% off today"},
		Delivery: &deliveryv1.DeliveryOptions{Ttl: durationpb.New(time.Hour), Priority: deliveryv1.FcmPriority_FCM_PRIORITY_HIGH},
	}
}

func progressAt(done, sent int64, state deliveryv1.JourneyState) *deliveryv1.Journey {
	j := &deliveryv1.Journey{
		JourneyId: "j-42", Name: "Spring sale", State: state, MessageId: "m-42", AppIds: []string{"com.acme.shop"},
		Progress: &deliveryv1.JourneyProgress{
			ProfilesScanned: 10000, Qualified: 1000, ProfilesDone: done, TokensTargeted: sent + 2, Sent: sent,
			Failed:        []*commonv1.FailureCount{{Reason: commonv1.FailureReason_FAILURE_REASON_UNREGISTERED, Count: 2}},
			Excluded:      []*commonv1.ExclusionCount{{Reason: commonv1.ExclusionReason_EXCLUSION_REASON_NO_ACTIVE_TOKEN, Count: 5}},
			RatePerSecond: 1234.4,
			StartTime:     timestamppb.New(mustTime("2024-05-01T12:00:00Z")),
		},
	}
	if state == deliveryv1.JourneyState_JOURNEY_STATE_RUNNING {
		j.Progress.Eta = durationpb.New(65 * time.Second)
	} else {
		j.Progress.EndTime = timestamppb.New(mustTime("2024-05-01T12:01:02Z"))
		j.Progress.TokensDeactivated = 2
	}
	return j
}

func TestJourneyPublishYAMLAndJSONSendTheSameJourney(t *testing.T) {
	h := newHarness(t)
	var got []*deliveryv1.PublishJourneyRequest
	h.journeys.publish = func(_ context.Context, r *deliveryv1.PublishJourneyRequest) (*deliveryv1.PublishJourneyResponse, error) {
		got = append(got, r)
		j := proto.Clone(r.GetJourney()).(*deliveryv1.Journey)
		j.JourneyId, j.MessageId, j.State = "j-42", "m-42", deliveryv1.JourneyState_JOURNEY_STATE_SCHEDULED
		return &deliveryv1.PublishJourneyResponse{Journey: j}, nil
	}
	for _, f := range []string{writeFile(t, "j.yaml", journeyYAML), writeFile(t, "j.json", journeyJSON)} {
		res := h.run(t, "journey", "publish", f, "--request-id", "req-1")
		if res.code != 0 {
			t.Fatalf("%s: exit %d: %s", f, res.code, res.stderr)
		}
		if want := "published journey j-42 \"Spring sale\" (message m-42): scheduled\n"; res.stdout != want {
			t.Errorf("stdout: got %q, want %q", res.stdout, want)
		}
	}
	for i, r := range got {
		want := &deliveryv1.PublishJourneyRequest{Journey: wantJourney(), SampleSize: 3, RequestId: "req-1"}
		if !proto.Equal(r, want) {
			t.Errorf("request %d:\n got %v\nwant %v", i, r, want)
		}
	}
}

func TestJourneyPublishBadFileIsAUsageError(t *testing.T) {
	h := newHarness(t)
	called := false
	h.journeys.publish = func(context.Context, *deliveryv1.PublishJourneyRequest) (*deliveryv1.PublishJourneyResponse, error) {
		called = true
		return &deliveryv1.PublishJourneyResponse{}, nil
	}
	file := writeFile(t, "j.yaml", "name: x\ntemplate:\n  titel: hi\n")
	res := h.run(t, "journey", "publish", file)
	want := "pushctl: " + file + ":3: template.titel: unknown field, did you mean title?"
	if res.code != ExitUsage || !strings.HasPrefix(res.stderr, want) {
		t.Errorf("got exit %d, stderr %q; want %d and %q", res.code, res.stderr, ExitUsage, want)
	}
	res = h.run(t, "journey", "publish", file+".missing")
	if res.code != ExitUsage || !strings.Contains(res.stderr, "no such file") {
		t.Errorf("missing file: got exit %d, stderr %q", res.code, res.stderr)
	}
	res = h.run(t, "journey", "publish", file, "--dry-run", "--watch")
	if res.code != ExitUsage || !strings.Contains(res.stderr, "--dry-run and --watch do not go together") {
		t.Errorf("--dry-run --watch: got exit %d, stderr %q", res.code, res.stderr)
	}
	if called {
		t.Error("PublishJourney was called")
	}
}

func TestJourneyDryRun(t *testing.T) {
	h := newHarness(t)
	var got *deliveryv1.PublishJourneyRequest
	h.journeys.publish = func(_ context.Context, r *deliveryv1.PublishJourneyRequest) (*deliveryv1.PublishJourneyResponse, error) {
		got = r
		return &deliveryv1.PublishJourneyResponse{DryRun: &deliveryv1.DryRunResult{
			ProfilesScanned: 10000, Qualified: 2500, TokensTargeted: 6100,
			Excluded: []*commonv1.ExclusionCount{
				{Reason: commonv1.ExclusionReason_EXCLUSION_REASON_NO_ACTIVE_TOKEN, Count: 30},
				{Reason: commonv1.ExclusionReason_EXCLUSION_REASON_NO_CONSENT, Count: 10},
			},
			Samples: []*deliveryv1.RenderedSample{{
				ProfileId: "p-0001", Platform: commonv1.Platform_PLATFORM_APNS, Locale: "en-GB", Tokens: 2,
				Notification: &deliveryv1.Notification{Title: "Hi Ada", Body: "20% off today", Badge: proto.Int32(1), Data: map[string]string{"b": "2", "a": "1"}},
			}},
		}}, nil
	}
	res := h.run(t, "journey", "publish", writeFile(t, "j.yaml", journeyYAML), "--dry-run", "--samples", "5")
	if res.code != 0 {
		t.Fatalf("exit %d: %s", res.code, res.stderr)
	}
	if !got.GetDryRun() || got.GetSampleSize() != 5 {
		t.Errorf("request: dry_run %v sample_size %d, want true 5", got.GetDryRun(), got.GetSampleSize())
	}
	want := `dry run of "Spring sale": nothing was sent or stored

profiles scanned   10,000
qualified           2,500
excluded               40
  no active token      30
  no consent           10
tokens targeted     6,100

sample 1: profile p-0001, apns, locale en-GB, 2 token(s)
  title   Hi Ada
  body    20% off today
  badge   1
  data.a  1
  data.b  2
`
	if res.stdout != want {
		t.Errorf("stdout:\n got %s\nwant %s", res.stdout, want)
	}
}

// watchUpdates streams the journeys in order, as WatchJourney does.
func watchUpdates(updates ...*deliveryv1.Journey) func(*deliveryv1.WatchJourneyRequest, grpc.ServerStreamingServer[deliveryv1.WatchJourneyResponse]) error {
	return func(_ *deliveryv1.WatchJourneyRequest, s grpc.ServerStreamingServer[deliveryv1.WatchJourneyResponse]) error {
		for _, j := range updates {
			if err := s.Send(&deliveryv1.WatchJourneyResponse{Journey: j}); err != nil {
				return err
			}
		}
		return nil
	}
}

func TestJourneyWatchUntilCompleted(t *testing.T) {
	h := newHarness(t)
	var gotReq *deliveryv1.WatchJourneyRequest
	updates := watchUpdates(
		progressAt(0, 0, deliveryv1.JourneyState_JOURNEY_STATE_RUNNING),
		progressAt(500, 1200, deliveryv1.JourneyState_JOURNEY_STATE_RUNNING),
		progressAt(1000, 2400, deliveryv1.JourneyState_JOURNEY_STATE_COMPLETED),
	)
	h.journeys.watch = func(r *deliveryv1.WatchJourneyRequest, s grpc.ServerStreamingServer[deliveryv1.WatchJourneyResponse]) error {
		gotReq = r
		return updates(r, s)
	}
	res := h.run(t, "journey", "watch", "j-42", "--interval", "2s")
	if res.code != 0 {
		t.Fatalf("exit %d: %s", res.code, res.stderr)
	}
	if gotReq.GetJourneyId() != "j-42" || gotReq.GetInterval().AsDuration() != 2*time.Second {
		t.Errorf("request: got %v", gotReq)
	}
	// Not a terminal: one line per state change, no bar, no escape codes.
	wantErr := `journey j-42: running   0%  sent 0  failed 2  excluded 5  1,234 msg/s  ETA 1m05s
journey j-42: completed 100%  sent 2,400  failed 2  excluded 5
`
	if res.stderr != wantErr {
		t.Errorf("stderr:\n got %q\nwant %q", res.stderr, wantErr)
	}
	want := `
journey j-42 "Spring sale" completed in 1m02s

profiles scanned    10,000
qualified            1,000
excluded                 5
  no active token        5
tokens targeted      2,402
sent                 2,400
failed                   2
  unregistered           2
tokens deactivated       2
started             2024-05-01T12:00:00Z
ended               2024-05-01T12:01:02Z
`
	if res.stdout != want {
		t.Errorf("stdout:\n got %s\nwant %s", res.stdout, want)
	}
}

func TestJourneyWatchExitCodeOfFinalState(t *testing.T) {
	tests := []struct {
		state    deliveryv1.JourneyState
		wantCode int
		wantErr  string
	}{
		{deliveryv1.JourneyState_JOURNEY_STATE_COMPLETED, ExitOK, ""},
		{deliveryv1.JourneyState_JOURNEY_STATE_FAILED, ExitFailed, "pushctl: journey j-42 ended failed\n"},
		{deliveryv1.JourneyState_JOURNEY_STATE_CANCELLED, ExitFailed, "pushctl: journey j-42 ended cancelled\n"},
		{deliveryv1.JourneyState_JOURNEY_STATE_RUNNING, ExitFailed, "pushctl: the watch of journey j-42 ended while it was still running\n"},
	}
	for _, tt := range tests {
		t.Run(tt.state.String(), func(t *testing.T) {
			h := newHarness(t)
			final := progressAt(1000, 2400, tt.state)
			if tt.state == deliveryv1.JourneyState_JOURNEY_STATE_FAILED {
				final.Error = "app com.acme.shop suspended: invalid credentials"
			}
			h.journeys.watch = watchUpdates(final)
			res := h.run(t, "journey", "watch", "j-42")
			if res.code != tt.wantCode {
				t.Errorf("exit: got %d, want %d", res.code, tt.wantCode)
			}
			if !strings.HasSuffix(res.stderr, tt.wantErr) {
				t.Errorf("stderr: got %q, want it to end with %q", res.stderr, tt.wantErr)
			}
			if final.Error != "" && !strings.Contains(res.stdout, "error: "+final.Error) {
				t.Errorf("stdout: got %q, want the journey's error", res.stdout)
			}
		})
	}
}

func TestJourneyPublishWatchJSONLines(t *testing.T) {
	h := newHarness(t)
	h.journeys.publish = func(_ context.Context, r *deliveryv1.PublishJourneyRequest) (*deliveryv1.PublishJourneyResponse, error) {
		return &deliveryv1.PublishJourneyResponse{Journey: progressAt(0, 0, deliveryv1.JourneyState_JOURNEY_STATE_SCHEDULED)}, nil
	}
	h.journeys.watch = watchUpdates(
		progressAt(500, 1200, deliveryv1.JourneyState_JOURNEY_STATE_RUNNING),
		progressAt(1000, 2400, deliveryv1.JourneyState_JOURNEY_STATE_COMPLETED),
	)
	res := h.run(t, "--json", "journey", "publish", writeFile(t, "j.yaml", journeyYAML), "--watch")
	if res.code != 0 {
		t.Fatalf("exit %d: %s", res.code, res.stderr)
	}
	sc := bufio.NewScanner(strings.NewReader(res.stdout))
	var lines []string
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if len(lines) != 3 {
		t.Fatalf("got %d lines, want 3 (publish + 2 updates):\n%s", len(lines), res.stdout)
	}
	var pub deliveryv1.PublishJourneyResponse
	if err := protojson.Unmarshal([]byte(lines[0]), &pub); err != nil || pub.GetJourney().GetJourneyId() != "j-42" {
		t.Errorf("line 1: %v, %v", err, lines[0])
	}
	var last deliveryv1.WatchJourneyResponse
	for _, l := range lines[1:] {
		if err := protojson.Unmarshal([]byte(l), &last); err != nil {
			t.Errorf("line does not parse: %v: %s", err, l)
		}
	}
	if last.GetJourney().GetState() != deliveryv1.JourneyState_JOURNEY_STATE_COMPLETED || last.GetJourney().GetProgress().GetSent() != 2400 {
		t.Errorf("last update: got %v", last.GetJourney())
	}
	if res.stderr != "" {
		t.Errorf("stderr: got %q, want nothing with --json", res.stderr)
	}
}

func TestJourneyGetListCancel(t *testing.T) {
	h := newHarness(t)
	h.journeys.get = func(_ context.Context, r *deliveryv1.GetJourneyRequest) (*deliveryv1.GetJourneyResponse, error) {
		j := progressAt(500, 1200, deliveryv1.JourneyState_JOURNEY_STATE_RUNNING)
		j.Audience, j.Template = wantJourney().Audience, wantJourney().Template
		j.CreateTime = testTime
		return &deliveryv1.GetJourneyResponse{Journey: j}, nil
	}
	res := h.run(t, "journey", "get", "j-42")
	if res.code != 0 {
		t.Fatalf("get: exit %d: %s", res.code, res.stderr)
	}
	for _, want := range []string{
		"journey     j-42\n", "state       running\n", "audience    attributes.tier == \"gold\"\n", "platforms   apns\n",
		"template:\n  title  Hi {{firstName | default \"there\"}}\n", "progress:\n  profiles scanned    10,000\n",
	} {
		if !strings.Contains(res.stdout, want) {
			t.Errorf("get: stdout lacks %q:\n%s", want, res.stdout)
		}
	}

	var listReqs []*deliveryv1.ListJourneysRequest
	h.journeys.list = func(_ context.Context, r *deliveryv1.ListJourneysRequest) (*deliveryv1.ListJourneysResponse, error) {
		listReqs = append(listReqs, r)
		a := progressAt(1000, 2400, deliveryv1.JourneyState_JOURNEY_STATE_COMPLETED)
		a.CreateTime = testTime
		b := progressAt(10, 20, deliveryv1.JourneyState_JOURNEY_STATE_RUNNING)
		b.JourneyId, b.Name, b.CreateTime = "j-43", "Welcome", testTime
		if r.GetPageToken() == "" {
			return &deliveryv1.ListJourneysResponse{Journeys: []*deliveryv1.Journey{b}, NextPageToken: "next"}, nil
		}
		return &deliveryv1.ListJourneysResponse{Journeys: []*deliveryv1.Journey{a}}, nil
	}
	res = h.run(t, "journey", "list", "--state", "running", "--state", "completed", "--limit", "0")
	if res.code != 0 {
		t.Fatalf("list: exit %d: %s", res.code, res.stderr)
	}
	want := `JOURNEY  NAME         STATE      APPS           TARGETED   SENT  FAILED  EXCLUDED  CREATED
j-43     Welcome      running    com.acme.shop        22     20       2         5  2024-04-30T09:15:00Z
j-42     Spring sale  completed  com.acme.shop     2,402  2,400       2         5  2024-04-30T09:15:00Z
`
	if res.stdout != want {
		t.Errorf("list:\n got %s\nwant %s", res.stdout, want)
	}
	if len(listReqs) != 2 || len(listReqs[0].GetStates()) != 2 || listReqs[0].GetStates()[0] != deliveryv1.JourneyState_JOURNEY_STATE_RUNNING {
		t.Errorf("list requests: got %v", listReqs)
	}

	var cancelled string
	h.journeys.cancel = func(_ context.Context, r *deliveryv1.CancelJourneyRequest) (*deliveryv1.CancelJourneyResponse, error) {
		cancelled = r.GetJourneyId()
		return &deliveryv1.CancelJourneyResponse{Journey: progressAt(500, 1200, deliveryv1.JourneyState_JOURNEY_STATE_CANCELLED)}, nil
	}
	res = h.run(t, "journey", "cancel", "j-42")
	if res.code != 0 || cancelled != "j-42" || !strings.HasPrefix(res.stdout, "journey j-42 \"Spring sale\": cancelled\n") {
		t.Errorf("cancel: exit %d, id %q, stdout %q", res.code, cancelled, res.stdout)
	}
}

func TestExampleJourneyPublishes(t *testing.T) {
	h := newHarness(t)
	var got *deliveryv1.Journey
	h.journeys.publish = func(_ context.Context, r *deliveryv1.PublishJourneyRequest) (*deliveryv1.PublishJourneyResponse, error) {
		got = r.GetJourney()
		return &deliveryv1.PublishJourneyResponse{DryRun: &deliveryv1.DryRunResult{}}, nil
	}
	if _, err := os.Stat("../../examples/journey.yaml"); err != nil {
		t.Fatal(err)
	}
	res := h.run(t, "journey", "publish", "../../examples/journey.yaml", "--dry-run")
	if res.code != 0 {
		t.Fatalf("exit %d: %s", res.code, res.stderr)
	}
	if got.GetName() != "Spring sale, gold customers" || got.GetDelivery().GetTtl().AsDuration() != 24*time.Hour {
		t.Errorf("journey: got %v", got)
	}
}
