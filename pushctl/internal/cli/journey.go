package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
	"github.com/pushmesh/pushmesh/pushctl/internal/enums"
	"github.com/pushmesh/pushmesh/pushctl/internal/journeyfile"
	"github.com/pushmesh/pushmesh/pushctl/internal/progress"
	"github.com/pushmesh/pushmesh/pushctl/internal/render"
)

func journeyCommand() *Command {
	return &Command{
		Name:    "journey",
		Summary: "publish journeys from YAML or JSON files, dry-run, watch, list and cancel them",
		Sub: []*Command{
			journeyPublishCommand(),
			journeyGetCommand(),
			journeyListCommand(),
			journeyWatchCommand(),
			journeyCancelCommand(),
		},
	}
}

// intervalFlag is the minimum time between watch updates.
func intervalFlag(fs *flag.FlagSet, p *time.Duration) {
	fs.DurationVar(p, "interval", 500*time.Millisecond, "minimum time between progress updates")
}

func journeyPublishCommand() *Command {
	var (
		dryRun    bool
		watch     bool
		samples   int
		requestID string
		interval  time.Duration
	)
	cmd := &Command{
		Name:    "publish",
		Args:    "FILE.yaml|FILE.json [--dry-run] [--watch]",
		Summary: "publish a journey from a file, or dry-run it",
		Help: `The file is a Journey in protojson field names, as YAML or JSON (see
examples/journey.yaml). Enum values may be short ("apns", "high") and
durations Go's form ("24h"). A mistake in the file is reported with its line
and field path (exit code 2).

--dry-run asks deliverysvc what the journey would do: audience size,
exclusions by reason and a few rendered samples; nothing is sent or stored.
--watch follows the published journey until it ends, like 'journey watch'.`,
		MinArgs: 1, MaxArgs: 1,
		Flags: func(fs *flag.FlagSet) {
			fs.BoolVar(&dryRun, "dry-run", false, "only report what the journey would do")
			fs.BoolVar(&watch, "watch", false, "watch the journey until it ends")
			fs.IntVar(&samples, "samples", 3, "rendered samples in a dry run (at most 20)")
			fs.StringVar(&requestID, "request-id", "", "idempotency key: publishing again with it returns the first journey")
			intervalFlag(fs, &interval)
		},
	}
	cmd.Run = func(ctx context.Context, e *Env, args []string) error {
		if dryRun && watch {
			return usagef(cmd, "--dry-run and --watch do not go together: a dry run sends nothing")
		}
		if samples < 0 || samples > 20 {
			return usagef(cmd, "--samples must be 0 to 20")
		}
		j, err := readJourney(cmd, args[0])
		if err != nil {
			return err
		}
		journeys, err := e.Journeys()
		if err != nil {
			return err
		}
		resp, err := unary(ctx, e, deliverySvc, journeys.PublishJourney, &deliveryv1.PublishJourneyRequest{
			Journey: j, DryRun: dryRun, SampleSize: int32(samples), RequestId: requestID,
		})
		if err != nil {
			return err
		}
		switch {
		case e.Global.JSON && watch:
			if err := e.printJSONLine(resp); err != nil {
				return err
			}
		case e.Global.JSON:
			return e.printJSON(resp)
		case dryRun:
			e.print(dryRunText(j, resp.GetDryRun()))
			return nil
		default:
			pj := resp.GetJourney()
			e.printf("published journey %s %q (message %s): %s\n", pj.GetJourneyId(), pj.GetName(), render.Text(pj.GetMessageId()), enums.Label(pj.GetState()))
		}
		if !watch {
			return nil
		}
		return watchJourney(ctx, e, resp.GetJourney().GetJourneyId(), interval)
	}
	return cmd
}

// readJourney reads and checks a journey file; any problem is a usage error
// naming the line and field.
func readJourney(cmd *Command, name string) (*deliveryv1.Journey, error) {
	data, err := os.ReadFile(name)
	if err != nil {
		return nil, usagef(cmd, "%v", err)
	}
	j, err := journeyfile.Parse(name, data)
	if err != nil {
		var fe *journeyfile.Error
		if errors.As(err, &fe) {
			return nil, usagef(cmd, "%v", fe)
		}
		return nil, usagef(cmd, "%s: %v", name, err)
	}
	return j, nil
}

// dryRunText renders what a journey would do.
func dryRunText(j *deliveryv1.Journey, d *deliveryv1.DryRunResult) string {
	var b strings.Builder
	fmt.Fprintf(&b, "dry run of %q: nothing was sent or stored\n\n", j.GetName())
	var kv render.KeyValues
	kv.Number(0, "profiles scanned", render.Count(d.GetProfilesScanned()))
	kv.Number(0, "qualified", render.Count(d.GetQualified()))
	addExclusions(&kv, d.GetExcluded())
	kv.Number(0, "tokens targeted", render.Count(d.GetTokensTargeted()))
	b.WriteString(kv.String())
	if len(d.GetSamples()) == 0 {
		b.WriteString("\nno rendered samples\n")
		return b.String()
	}
	for i, s := range d.GetSamples() {
		fmt.Fprintf(&b, "\nsample %d: profile %s, %s, locale %s, %s token(s)\n", i+1, s.GetProfileId(),
			enums.Label(s.GetPlatform()), render.Text(s.GetLocale()), render.Count(int64(s.GetTokens())))
		b.WriteString(indent(notificationText(s.GetNotification()), "  "))
	}
	return b.String()
}

// notificationText lists the non-empty fields of a rendered notification.
func notificationText(n *deliveryv1.Notification) string {
	var kv render.KeyValues
	add := func(k, v string) {
		if v != "" {
			kv.Add(k, v)
		}
	}
	add("title", n.GetTitle())
	add("subtitle", n.GetSubtitle())
	add("body", n.GetBody())
	add("image", n.GetImageUrl())
	add("deep link", n.GetDeepLink())
	add("sound", n.GetSound())
	if n.Badge != nil {
		kv.Add("badge", fmt.Sprint(n.GetBadge()))
	}
	add("category", n.GetCategory())
	add("thread", n.GetThreadId())
	keys := make([]string, 0, len(n.GetData()))
	for k := range n.GetData() {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		kv.Add("data."+k, n.GetData()[k])
	}
	if kv.Len() == 0 {
		return "(empty notification)\n"
	}
	return kv.String()
}

func indent(s, prefix string) string {
	lines := strings.SplitAfter(s, "\n")
	var b strings.Builder
	for _, l := range lines {
		if l != "" {
			b.WriteString(prefix + l)
		}
	}
	return b.String()
}

// addExclusions adds the excluded total and its breakdown by reason.
func addExclusions(kv *render.KeyValues, ex []*commonv1.ExclusionCount) {
	var total int64
	for _, c := range ex {
		total += c.GetCount()
	}
	kv.Number(0, "excluded", render.Count(total))
	for _, c := range ex {
		kv.Number(1, enums.Label(c.GetReason()), render.Count(c.GetCount()))
	}
}

// addFailures adds the failed total and its breakdown by reason.
func addFailures(kv *render.KeyValues, total int64, fails []*commonv1.FailureCount) {
	kv.Number(0, "failed", render.Count(total))
	for _, c := range fails {
		kv.Number(1, enums.Label(c.GetReason()), render.Count(c.GetCount()))
	}
}

func sumFailed(fails []*commonv1.FailureCount) int64 {
	var n int64
	for _, c := range fails {
		n += c.GetCount()
	}
	return n
}

func sumExcluded(ex []*commonv1.ExclusionCount) int64 {
	var n int64
	for _, c := range ex {
		n += c.GetCount()
	}
	return n
}

func journeyGetCommand() *Command {
	cmd := &Command{Name: "get", Args: "ID", Summary: "show a journey and its progress", MinArgs: 1, MaxArgs: 1}
	cmd.Run = func(ctx context.Context, e *Env, args []string) error {
		journeys, err := e.Journeys()
		if err != nil {
			return err
		}
		resp, err := unary(ctx, e, deliverySvc, journeys.GetJourney, &deliveryv1.GetJourneyRequest{JourneyId: args[0]})
		if err != nil {
			return err
		}
		if e.Global.JSON {
			return e.printJSON(resp)
		}
		e.print(journeyDetails(resp.GetJourney()))
		return nil
	}
	return cmd
}

// journeyDetails renders a journey's definition and progress.
func journeyDetails(j *deliveryv1.Journey) string {
	var kv render.KeyValues
	kv.Add("journey", j.GetJourneyId())
	kv.Add("name", j.GetName())
	kv.Add("state", enums.Label(j.GetState()))
	if j.GetError() != "" {
		kv.Add("error", j.GetError())
	}
	kv.Add("message id", render.Text(j.GetMessageId()))
	kv.Add("apps", render.Text(strings.Join(j.GetAppIds(), ", ")))
	cond := j.GetAudience().GetCondition()
	if cond == "" {
		cond = "(every profile)"
	}
	kv.Add("audience", cond)
	var platforms []string
	for _, p := range j.GetAudience().GetPlatforms() {
		platforms = append(platforms, enums.Label(p))
	}
	if len(platforms) == 0 {
		platforms = []string{"all"}
	}
	kv.Add("platforms", strings.Join(platforms, ", "))
	if j.GetAudience().GetRequireExplicitConsent() {
		kv.Add("consent", "explicit opt-in required")
	}
	start := "on publish"
	if j.GetStartTime() != nil {
		start = render.Time(j.GetStartTime())
	}
	kv.Add("start", start)
	kv.Add("created", render.Time(j.GetCreateTime()))
	kv.Add("updated", render.Time(j.GetUpdateTime()))
	var b strings.Builder
	b.WriteString(kv.String())
	if t := j.GetTemplate(); t != nil {
		b.WriteString("\ntemplate:\n")
		b.WriteString(indent(templateText(t), "  "))
	}
	if len(j.GetVariants()) > 0 {
		fmt.Fprintf(&b, "variants: %d (locale/platform overrides; see --json)\n", len(j.GetVariants()))
	}
	b.WriteString("\nprogress:\n")
	b.WriteString(indent(progressSummary(j.GetProgress()), "  "))
	return b.String()
}

func templateText(t *deliveryv1.MessageTemplate) string {
	n := &deliveryv1.Notification{
		Title: t.GetTitle(), Subtitle: t.GetSubtitle(), Body: t.GetBody(), ImageUrl: t.GetImageUrl(),
		DeepLink: t.GetDeepLink(), Sound: t.GetSound(), Badge: t.Badge, Category: t.GetCategory(),
		ThreadId: t.GetThreadId(), Data: t.GetData(),
	}
	return notificationText(n)
}

// progressSummary lists a journey's counters with breakdowns by reason.
func progressSummary(p *deliveryv1.JourneyProgress) string {
	var kv render.KeyValues
	kv.Number(0, "profiles scanned", render.Count(p.GetProfilesScanned()))
	kv.Number(0, "qualified", render.Count(p.GetQualified()))
	addExclusions(&kv, p.GetExcluded())
	kv.Number(0, "tokens targeted", render.Count(p.GetTokensTargeted()))
	kv.Number(0, "sent", render.Count(p.GetSent()))
	addFailures(&kv, sumFailed(p.GetFailed()), p.GetFailed())
	kv.Number(0, "tokens deactivated", render.Count(p.GetTokensDeactivated()))
	if p.GetStartTime() != nil {
		kv.Add("started", render.Time(p.GetStartTime()))
	}
	if p.GetEndTime() != nil {
		kv.Add("ended", render.Time(p.GetEndTime()))
	}
	return kv.String()
}

func journeyListCommand() *Command {
	var (
		states stringList
		limit  int
	)
	cmd := &Command{
		Name:    "list",
		Args:    "[--state S]... [--limit N]",
		Summary: "list journeys, newest first",
		Flags: func(fs *flag.FlagSet) {
			fs.Var(&states, "state", "only journeys in this state (repeatable): "+words(deliveryv1.JourneyState(0).Descriptor()))
			fs.IntVar(&limit, "limit", 50, "at most this many; 0 for all")
		},
	}
	cmd.Run = func(ctx context.Context, e *Env, args []string) error {
		if limit < 0 {
			return usagef(cmd, "--limit must not be negative")
		}
		req := &deliveryv1.ListJourneysRequest{PageSize: 500}
		for _, s := range states {
			n, err := parseEnum(cmd, "state", deliveryv1.JourneyState(0).Descriptor(), s)
			if err != nil {
				return err
			}
			req.States = append(req.States, deliveryv1.JourneyState(n))
		}
		if limit > 0 && limit < 500 {
			req.PageSize = int32(limit)
		}
		journeys, err := e.Journeys()
		if err != nil {
			return err
		}
		all := &deliveryv1.ListJourneysResponse{}
		for {
			resp, err := unary(ctx, e, deliverySvc, journeys.ListJourneys, req)
			if err != nil {
				return err
			}
			all.Journeys = append(all.Journeys, resp.GetJourneys()...)
			all.NextPageToken = resp.GetNextPageToken()
			if limit > 0 && len(all.Journeys) >= limit {
				all.Journeys = all.Journeys[:limit]
				break
			}
			if resp.GetNextPageToken() == "" || resp.GetNextPageToken() == req.PageToken {
				break
			}
			req.PageToken = resp.GetNextPageToken()
		}
		if e.Global.JSON {
			return e.printJSON(all)
		}
		if len(all.Journeys) == 0 {
			e.print("no journeys\n")
			return nil
		}
		t := render.NewTable("JOURNEY", "NAME", "STATE", "APPS", "TARGETED", "SENT", "FAILED", "EXCLUDED", "CREATED").AlignRight(4, 5, 6, 7)
		for _, j := range all.Journeys {
			p := j.GetProgress()
			t.Row(j.GetJourneyId(), j.GetName(), enums.Label(j.GetState()), strings.Join(j.GetAppIds(), ","),
				render.Count(p.GetTokensTargeted()), render.Count(p.GetSent()), render.Count(sumFailed(p.GetFailed())),
				render.Count(sumExcluded(p.GetExcluded())), render.Time(j.GetCreateTime()))
		}
		e.print(t.String())
		if all.NextPageToken != "" && limit > 0 {
			e.printf("(showing the newest %d; --limit 0 lists all)\n", limit)
		}
		return nil
	}
	return cmd
}

func journeyWatchCommand() *Command {
	var interval time.Duration
	cmd := &Command{
		Name:    "watch",
		Args:    "ID [--interval 500ms]",
		Summary: "follow a journey's progress until it ends",
		Help: `Shows a live progress bar on a terminal (plain lines every few seconds
otherwise, JSON lines with --json) and a summary when the journey ends.
Exit code 1 when it ends failed or cancelled.`,
		MinArgs: 1, MaxArgs: 1,
		Flags: func(fs *flag.FlagSet) { intervalFlag(fs, &interval) },
	}
	cmd.Run = func(ctx context.Context, e *Env, args []string) error {
		return watchJourney(ctx, e, args[0], interval)
	}
	return cmd
}

// watchJourney follows WatchJourney until the journey ends, then prints a
// summary. The stream is not bound by --timeout: a journey takes as long as
// it takes; Ctrl-C stops watching (not the journey).
func watchJourney(ctx context.Context, e *Env, id string, interval time.Duration) error {
	journeys, err := e.Journeys()
	if err != nil {
		return err
	}
	req := &deliveryv1.WatchJourneyRequest{JourneyId: id}
	if interval > 0 {
		req.Interval = durationpb.New(interval)
	}
	stream, err := journeys.WatchJourney(ctx, req)
	if err != nil {
		return e.rpcError(deliverySvc, err)
	}
	meter := progress.New(e.Stderr, e.Terminal, e.Now)
	var last *deliveryv1.Journey
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			meter.Done("")
			return e.rpcError(deliverySvc, err)
		}
		j := resp.GetJourney()
		if e.Global.JSON {
			if err := e.printJSONLine(resp); err != nil {
				return err
			}
		} else if last == nil || last.GetState() != j.GetState() {
			meter.Now(watchLine(j, e.Terminal))
		} else {
			meter.Update(func() string { return watchLine(j, e.Terminal) })
		}
		last = j
	}
	if last == nil {
		return &exitError{code: ExitFailed, msg: fmt.Sprintf("the watch of journey %s ended without any update", id)}
	}
	if !e.Global.JSON {
		meter.Done(watchLine(last, e.Terminal))
		e.print(journeyOutcome(last))
	}
	switch last.GetState() {
	case deliveryv1.JourneyState_JOURNEY_STATE_COMPLETED:
		return nil
	case deliveryv1.JourneyState_JOURNEY_STATE_FAILED, deliveryv1.JourneyState_JOURNEY_STATE_CANCELLED:
		return &exitError{code: ExitFailed, msg: fmt.Sprintf("journey %s ended %s", id, enums.Label(last.GetState()))}
	}
	return &exitError{code: ExitFailed, msg: fmt.Sprintf("the watch of journey %s ended while it was still %s", id, enums.Label(last.GetState()))}
}

// watchLine is one progress line: a bar with the share of the audience done
// when the audience size is known, counts, rate and ETA.
func watchLine(j *deliveryv1.Journey, terminal bool) string {
	p := j.GetProgress()
	var b strings.Builder
	if !terminal {
		fmt.Fprintf(&b, "journey %s: ", j.GetJourneyId())
	}
	b.WriteString(enums.Label(j.GetState()))
	final := isFinal(j.GetState())
	if p.GetQualified() > 0 && (p.GetEta() != nil || final) {
		fraction := float64(p.GetProfilesDone()) / float64(p.GetQualified())
		if terminal {
			fmt.Fprintf(&b, "  %s", progress.Bar(fraction, 24))
		}
		fmt.Fprintf(&b, " %3.0f%%", 100*min(fraction, 1))
	} else {
		fmt.Fprintf(&b, "  qualified %s", render.Count(p.GetQualified()))
	}
	fmt.Fprintf(&b, "  sent %s  failed %s  excluded %s", render.Count(p.GetSent()), render.Count(sumFailed(p.GetFailed())), render.Count(sumExcluded(p.GetExcluded())))
	if !final {
		fmt.Fprintf(&b, "  %s", render.Rate(p.GetRatePerSecond(), "msg"))
		if p.GetEta() != nil {
			fmt.Fprintf(&b, "  ETA %s", render.ProtoDuration(p.GetEta()))
		}
	}
	return b.String()
}

func isFinal(s deliveryv1.JourneyState) bool {
	switch s {
	case deliveryv1.JourneyState_JOURNEY_STATE_COMPLETED, deliveryv1.JourneyState_JOURNEY_STATE_CANCELLED, deliveryv1.JourneyState_JOURNEY_STATE_FAILED:
		return true
	}
	return false
}

// journeyOutcome is the summary printed when a watch ends.
func journeyOutcome(j *deliveryv1.Journey) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\njourney %s %q %s", j.GetJourneyId(), j.GetName(), enums.Label(j.GetState()))
	p := j.GetProgress()
	if p.GetStartTime() != nil && p.GetEndTime() != nil {
		fmt.Fprintf(&b, " in %s", render.Duration(p.GetEndTime().AsTime().Sub(p.GetStartTime().AsTime())))
	}
	b.WriteString("\n")
	if j.GetError() != "" {
		fmt.Fprintf(&b, "error: %s\n", j.GetError())
	}
	b.WriteString("\n")
	b.WriteString(progressSummary(p))
	return b.String()
}

func journeyCancelCommand() *Command {
	cmd := &Command{Name: "cancel", Args: "ID", Summary: "stop a journey; sending stops within a second", MinArgs: 1, MaxArgs: 1}
	cmd.Run = func(ctx context.Context, e *Env, args []string) error {
		journeys, err := e.Journeys()
		if err != nil {
			return err
		}
		resp, err := unary(ctx, e, deliverySvc, journeys.CancelJourney, &deliveryv1.CancelJourneyRequest{JourneyId: args[0]})
		if err != nil {
			return err
		}
		if e.Global.JSON {
			return e.printJSON(resp)
		}
		j := resp.GetJourney()
		e.printf("journey %s %q: %s\n\n", j.GetJourneyId(), j.GetName(), enums.Label(j.GetState()))
		e.print(progressSummary(j.GetProgress()))
		return nil
	}
	return cmd
}
