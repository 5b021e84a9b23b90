package cli

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
)

func sampleMetrics() *trackingv1.GetMetricsResponse {
	return &trackingv1.GetMetricsResponse{
		Total: &trackingv1.Metrics{
			Targeted: 12400, Sent: 12300, Failed: 100,
			FailedByReason: []*commonv1.FailureCount{
				{Reason: commonv1.FailureReason_FAILURE_REASON_UNREGISTERED, Count: 80},
				{Reason: commonv1.FailureReason_FAILURE_REASON_BAD_DEVICE_TOKEN, Count: 20},
			},
			Excluded:         40,
			ExcludedByReason: []*commonv1.ExclusionCount{{Reason: commonv1.ExclusionReason_EXCLUSION_REASON_NO_ACTIVE_TOKEN, Count: 40}},
			Received:         11000, Opened: 2000, UniqueOpens: 1800, Dismissed: 500, Actions: 300, UniqueActions: 280,
			ActionsById: []*trackingv1.ActionCount{{ActionId: "reply", Count: 200}, {ActionId: "like", Count: 100}},
			OpenRate:    2000.0 / 12300, ActionRate: 300.0 / 12300, UniqueActionRate: 280.0 / 12300,
		},
		Buckets: []*trackingv1.MetricsBucket{
			{StartTime: timestamppb.New(mustTime("2024-05-01T10:00:00Z")), Metrics: &trackingv1.Metrics{Targeted: 12400, Sent: 12300, Failed: 100, Excluded: 40, Received: 10000, Opened: 1500, UniqueOpens: 1400, Dismissed: 400, Actions: 250, UniqueActions: 230, OpenRate: 1500.0 / 12300, ActionRate: 250.0 / 12300}},
			{StartTime: timestamppb.New(mustTime("2024-05-01T11:00:00Z")), Metrics: &trackingv1.Metrics{Received: 1000, Opened: 500, UniqueOpens: 400, Dismissed: 100, Actions: 50, UniqueActions: 45}},
		},
	}
}

func TestMetricsTable(t *testing.T) {
	h := newHarness(t)
	var got *trackingv1.GetMetricsRequest
	h.tracking.metrics = func(_ context.Context, r *trackingv1.GetMetricsRequest) (*trackingv1.GetMetricsResponse, error) {
		got = r
		return sampleMetrics(), nil
	}
	res := h.run(t, "metrics", "--journey", "j-42", "--app", "com.acme.shop", "--platform", "apns",
		"--from", "2024-05-01T00:00:00Z", "--to", "1714608000", "--granularity", "hour")
	if res.code != 0 {
		t.Fatalf("exit %d: %s", res.code, res.stderr)
	}
	wantReq := &trackingv1.GetMetricsRequest{
		Filter:      &trackingv1.MetricsFilter{JourneyId: "j-42", AppId: "com.acme.shop", Platform: commonv1.Platform_PLATFORM_APNS},
		StartTime:   timestamppb.New(mustTime("2024-05-01T00:00:00Z")),
		EndTime:     timestamppb.New(mustTime("2024-05-02T00:00:00Z")),
		Granularity: trackingv1.Granularity_GRANULARITY_HOUR,
	}
	if !proto.Equal(got, wantReq) {
		t.Errorf("request:\n got %v\nwant %v", got, wantReq)
	}
	want := `metrics for journey j-42, app com.acme.shop, apns, from 2024-05-01T00:00:00Z to 2024-05-02T00:00:00Z

targeted            12,400
sent                12,300
failed                 100
  unregistered          80
  bad device token      20
excluded                40
  no active token       40
received            11,000
opened               2,000
unique opens         1,800
dismissed              500
actions                300
  reply                200
  like                 100
unique actions         280
open rate           16.26%
action rate          2.44%
unique action rate   2.28%

BUCKET                TARGETED    SENT  FAILED  EXCLUDED  RECEIVED  OPENED  UNIQUE OPENS  DISMISSED  ACTIONS  UNIQUE ACTIONS  OPEN RATE  ACTION RATE
2024-05-01T10:00:00Z    12,400  12,300     100        40    10,000   1,500         1,400        400      250             230     12.20%        2.03%
2024-05-01T11:00:00Z         0       0       0         0     1,000     500           400        100       50              45      0.00%        0.00%
`
	if res.stdout != want {
		t.Errorf("stdout:\n got %s\nwant %s", res.stdout, want)
	}

	res = h.run(t, "metrics", "--journey", "j-42", "--json")
	var parsed trackingv1.GetMetricsResponse
	if err := protojson.Unmarshal([]byte(res.stdout), &parsed); err != nil || !proto.Equal(&parsed, sampleMetrics()) {
		t.Errorf("--json: error %v, got %v", err, &parsed)
	}
}

func TestMetricsSinceUsesTheClock(t *testing.T) {
	h := newHarness(t)
	var got *trackingv1.GetMetricsRequest
	h.tracking.metrics = func(_ context.Context, r *trackingv1.GetMetricsRequest) (*trackingv1.GetMetricsResponse, error) {
		got = r
		return &trackingv1.GetMetricsResponse{Total: &trackingv1.Metrics{}}, nil
	}
	res := h.run(t, "metrics", "--message", "m-1", "--since", "24h")
	if res.code != 0 {
		t.Fatalf("exit %d: %s", res.code, res.stderr)
	}
	if want := h.now.Add(-24 * time.Hour); !got.GetStartTime().AsTime().Equal(want) || got.GetEndTime() != nil {
		t.Errorf("range: got %v..%v, want %v..now", got.GetStartTime(), got.GetEndTime(), want)
	}
	if !strings.HasPrefix(res.stdout, "metrics for message m-1, from 2024-04-30T12:00:00Z to now\n") {
		t.Errorf("stdout: got %q", res.stdout)
	}
}

func TestMetricsUsageErrors(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--since", "1h", "--from", "2024-05-01T00:00:00Z"}, "give --since or --from/--to, not both"},
		{[]string{"--from", "2024-05-02T00:00:00Z", "--to", "2024-05-01T00:00:00Z"}, "--to must be after --from"},
		{[]string{"--from", "yesterday"}, `--from cannot read "yesterday"`},
		{[]string{"--granularity", "week"}, `--granularity "week" is not one of minute, hour, day`},
		{[]string{"--platform", "sms"}, `--platform "sms" is not one of apns, fcm`},
		{[]string{"--since", "-1h"}, "--since must be positive"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			res := runCLI(t, nil, mustTime("2024-05-01T00:00:00Z"), append([]string{"metrics", "--journey", "j"}, tt.args...)...)
			if res.code != ExitUsage || !strings.Contains(res.stderr, tt.want) {
				t.Errorf("got exit %d, stderr %q; want %d and %q", res.code, res.stderr, ExitUsage, tt.want)
			}
		})
	}
}
