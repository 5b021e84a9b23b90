package cli

import (
	"context"
	"flag"
	"fmt"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
	"github.com/pushmesh/pushmesh/pushctl/internal/enums"
	"github.com/pushmesh/pushmesh/pushctl/internal/render"
)

func metricsCommand() *Command {
	var (
		journey, message, app, platform string
		since                           time.Duration
		from, to                        string
		granularity                     string
	)
	cmd := &Command{
		Name:    "metrics",
		Args:    "--journey ID [--message ID] [--app ID] [--platform apns|fcm] [--since DUR | --from T --to T] [--granularity minute|hour|day]",
		Summary: "show delivery and engagement metrics as a table",
		Help: `Totals (targeted, sent, failed and excluded by reason, received, opened,
unique opens, dismissed, actions by id, unique actions, open and action rates) for the
filter, and one row per time bucket with --granularity. Filters left out
match everything. Times are event times: --since 24h, or --from/--to in RFC
3339 or unix time (--to defaults to now).`,
		Flags: func(fs *flag.FlagSet) {
			fs.StringVar(&journey, "journey", "", "journey id")
			fs.StringVar(&message, "message", "", "message id")
			fs.StringVar(&app, "app", "", "app id")
			fs.StringVar(&platform, "platform", "", "apns or fcm")
			fs.DurationVar(&since, "since", 0, "only the last `duration`, e.g. 24h")
			fs.StringVar(&from, "from", "", "inclusive start `time`")
			fs.StringVar(&to, "to", "", "exclusive end `time`")
			fs.StringVar(&granularity, "granularity", "", "bucket size: "+words(trackingv1.Granularity(0).Descriptor()))
		},
	}
	cmd.Run = func(ctx context.Context, e *Env, args []string) error {
		req := &trackingv1.GetMetricsRequest{Filter: &trackingv1.MetricsFilter{JourneyId: journey, MessageId: message, AppId: app}}
		if platform != "" {
			p, err := parsePlatform(cmd, platform)
			if err != nil {
				return err
			}
			req.Filter.Platform = p
		}
		switch {
		case since < 0:
			return usagef(cmd, "--since must be positive")
		case since > 0 && (from != "" || to != ""):
			return usagef(cmd, "give --since or --from/--to, not both")
		case since > 0:
			req.StartTime = timestamppb.New(e.Now().Add(-since))
		}
		var err error
		if from != "" {
			if req.StartTime, err = parseTime(cmd, "from", from); err != nil {
				return err
			}
		}
		if to != "" {
			if req.EndTime, err = parseTime(cmd, "to", to); err != nil {
				return err
			}
		}
		if req.StartTime != nil && req.EndTime != nil && !req.EndTime.AsTime().After(req.StartTime.AsTime()) {
			return usagef(cmd, "--to must be after --from")
		}
		g, err := parseEnum(cmd, "granularity", trackingv1.Granularity(0).Descriptor(), granularity)
		if err != nil {
			return err
		}
		req.Granularity = trackingv1.Granularity(g)
		tracking, err := e.Tracking()
		if err != nil {
			return err
		}
		resp, err := unary(ctx, e, trackingSvc, tracking.GetMetrics, req)
		if err != nil {
			return err
		}
		if e.Global.JSON {
			return e.printJSON(resp)
		}
		e.print(metricsText(req, resp))
		return nil
	}
	return cmd
}

// metricsText renders the totals, then the buckets when there are any.
func metricsText(req *trackingv1.GetMetricsRequest, resp *trackingv1.GetMetricsResponse) string {
	var b strings.Builder
	fmt.Fprintf(&b, "metrics for %s, %s\n\n", scopeText(req.GetFilter()), rangeText(req))
	m := resp.GetTotal()
	var kv render.KeyValues
	kv.Number(0, "targeted", render.Count(m.GetTargeted()))
	kv.Number(0, "sent", render.Count(m.GetSent()))
	addFailures(&kv, m.GetFailed(), m.GetFailedByReason())
	kv.Number(0, "excluded", render.Count(m.GetExcluded()))
	for _, c := range m.GetExcludedByReason() {
		kv.Number(1, enums.Label(c.GetReason()), render.Count(c.GetCount()))
	}
	kv.Number(0, "received", render.Count(m.GetReceived()))
	kv.Number(0, "opened", render.Count(m.GetOpened()))
	kv.Number(0, "unique opens", render.Count(m.GetUniqueOpens()))
	kv.Number(0, "dismissed", render.Count(m.GetDismissed()))
	kv.Number(0, "actions", render.Count(m.GetActions()))
	for _, a := range m.GetActionsById() {
		kv.Number(1, a.GetActionId(), render.Count(a.GetCount()))
	}
	kv.Number(0, "unique actions", render.Count(m.GetUniqueActions()))
	kv.Number(0, "open rate", render.Percent(m.GetOpenRate()))
	kv.Number(0, "action rate", render.Percent(m.GetActionRate()))
	kv.Number(0, "unique action rate", render.Percent(m.GetUniqueActionRate()))
	b.WriteString(kv.String())
	if len(resp.GetBuckets()) > 0 {
		b.WriteString("\n")
		t := render.NewTable("BUCKET", "TARGETED", "SENT", "FAILED", "EXCLUDED", "RECEIVED", "OPENED", "UNIQUE OPENS", "DISMISSED", "ACTIONS", "UNIQUE ACTIONS", "OPEN RATE", "ACTION RATE").
			AlignRight(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12)
		for _, bk := range resp.GetBuckets() {
			bm := bk.GetMetrics()
			t.Row(render.Time(bk.GetStartTime()),
				render.Count(bm.GetTargeted()), render.Count(bm.GetSent()), render.Count(bm.GetFailed()),
				render.Count(bm.GetExcluded()), render.Count(bm.GetReceived()), render.Count(bm.GetOpened()),
				render.Count(bm.GetUniqueOpens()), render.Count(bm.GetDismissed()), render.Count(bm.GetActions()),
				render.Count(bm.GetUniqueActions()), render.Percent(bm.GetOpenRate()), render.Percent(bm.GetActionRate()))
		}
		b.WriteString(t.String())
	}
	return b.String()
}

func scopeText(f *trackingv1.MetricsFilter) string {
	var parts []string
	if f.GetJourneyId() != "" {
		parts = append(parts, "journey "+f.GetJourneyId())
	}
	if f.GetMessageId() != "" {
		parts = append(parts, "message "+f.GetMessageId())
	}
	if f.GetAppId() != "" {
		parts = append(parts, "app "+f.GetAppId())
	}
	if f.GetPlatform() != commonv1.Platform_PLATFORM_UNSPECIFIED {
		parts = append(parts, enums.Label(f.GetPlatform()))
	}
	if len(parts) == 0 {
		return "everything"
	}
	return strings.Join(parts, ", ")
}

func rangeText(req *trackingv1.GetMetricsRequest) string {
	switch {
	case req.GetStartTime() == nil && req.GetEndTime() == nil:
		return "all time"
	case req.GetEndTime() == nil:
		return "from " + render.Time(req.GetStartTime()) + " to now"
	case req.GetStartTime() == nil:
		return "until " + render.Time(req.GetEndTime())
	}
	return "from " + render.Time(req.GetStartTime()) + " to " + render.Time(req.GetEndTime())
}
