// Command journeybench runs a journey end to end and prints its throughput
// next to the raw gateway ceiling measured in the same run, and deliverysvc's
// peak memory.
//
// The audience lives in the REAL profilesvc (seeded through ImportTokens:
// customer B-i owns one APNs token of the shop app, and every -fcm-every-th
// customer also an FCM token). deliverysvc runs as a child process (this
// binary, started through server.Start exactly as the service binary does)
// so that its CPU and memory are its own; the APNs and FCM emulators,
// profilesvc and a trackingsvc fake run in this process. The journey streams
// the audience from profilesvc, renders a personalized notification per
// profile, and sends it through the Send pipeline with the real apns2 and
// firebase clients.
//
// The ceilings are the raw clients straight at the same emulators, with the
// same connections and -ceiling-concurrency pushes at once (2,000, as in
// every run since the first; deliverysvc itself pushes with at most 1,024
// workers), measured before and after the journey
// (the machine may be shared) and averaged: apns2 → APNs emulator, firebase
// SendEach → FCM emulator, and their mix in the journey's proportions.
//
//	go run ./deliverysvc/cmd/journeybench -profiles 1000000
//	go run ./deliverysvc/cmd/journeybench -profiles 200000 -cpuprofile /tmp/deliverysvc.prof
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	firebase "firebase.google.com/go/v4"
	"firebase.google.com/go/v4/messaging"
	"github.com/sideshow/apns2"
	"github.com/sideshow/apns2/token"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/google"
	"google.golang.org/api/option"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/journey"
	"github.com/pushmesh/pushmesh/deliverysvc/internal/journeytest"
	"github.com/pushmesh/pushmesh/emulator/fcm"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
	profileserver "github.com/pushmesh/pushmesh/profilesvc/server"
	"github.com/pushmesh/pushmesh/servicekit/proctest"
)

func main() {
	journeytest.RunChildIfAsked() // the deliverysvc child
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "journeybench:", err)
		os.Exit(1)
	}
}

type options struct {
	profiles    int
	fcmEvery    int
	extraAttrs  int
	ceilingN    int
	connections int
	concurrency int
	bestConc    int
	window      int
	maxInFlight int
	cpuprofile  string
	heapprofile string
	benchprof   string
	childEnv    string
	verbose     bool
}

func run(ctx context.Context, args []string) error {
	var o options
	fs := flag.NewFlagSet("journeybench", flag.ContinueOnError)
	fs.IntVar(&o.profiles, "profiles", 100_000, "profiles in the audience (one APNs token each)")
	fs.IntVar(&o.fcmEvery, "fcm-every", 5, "every n-th profile also has an FCM token (0: APNs only)")
	fs.IntVar(&o.extraAttrs, "extra-attributes", 0, "attributes per profile besides the three the journey reads, as a CRM keeps them")
	fs.IntVar(&o.ceilingN, "ceiling-n", 100_000, "pushes per ceiling measurement (longer runs average out a shared machine's noise)")
	fs.IntVar(&o.connections, "connections", 4, "HTTP/2 connections per APNs app, in deliverysvc and in the ceiling")
	fs.IntVar(&o.window, "window", journey.DefaultMaxWindow, "deliverysvc --journey-window")
	fs.IntVar(&o.concurrency, "ceiling-concurrency", 2000, "the ceilings' concurrent pushes")
	fs.IntVar(&o.bestConc, "best-ceiling-concurrency", 256, "also measure the apns2 ceiling with this many pushes at once, about the raw client's best over loopback, and print the ratio to it (0: skip)")
	fs.IntVar(&o.maxInFlight, "max-in-flight", 10_000, "deliverysvc --max-in-flight")
	fs.StringVar(&o.cpuprofile, "cpuprofile", "", "write deliverysvc's CPU profile (of its whole run) here")
	fs.StringVar(&o.heapprofile, "heapprofile", "", "write deliverysvc's heap profile (when it stops) here")
	fs.StringVar(&o.benchprof, "benchprofile", "", "write this process's CPU profile (profilesvc, the emulators, the tracking fake) of the journey phase here")
	fs.StringVar(&o.childEnv, "child-env", "", "comma-separated NAME=value pairs for deliverysvc's environment only, e.g. GOMEMLIMIT=160MiB")
	fs.BoolVar(&o.verbose, "v", false, "show the services' logs")
	if err := fs.Parse(args); err != nil {
		return err
	}
	// This process hosts profilesvc: run it with profilesvc's runtime
	// settings, as its binary does (GOGC 400). The emulators and the
	// ceiling's clients share them, before and after the journey alike.
	profileserver.TuneRuntime()

	opts := journeytest.Options{
		MaxInFlight: o.maxInFlight, JourneyWindow: o.window, APNsConnections: o.connections,
		ChildArgs: []string{}, EmulatorLog: 10_000, CountEventsOnly: true,
	}
	if o.cpuprofile != "" {
		opts.ChildEnv = append(opts.ChildEnv, journeytest.ChildCPUProfileEnv+"="+o.cpuprofile)
	}
	if o.childEnv != "" {
		opts.ChildEnv = append(opts.ChildEnv, strings.Split(o.childEnv, ",")...)
	}
	if o.heapprofile != "" {
		opts.ChildEnv = append(opts.ChildEnv, journeytest.ChildHeapProfileEnv+"="+o.heapprofile)
	}
	if o.verbose {
		opts.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
		opts.ChildEnv = append(opts.ChildEnv, proctest.LogEnv+"=1")
	}
	m, err := journeytest.New(opts)
	if err != nil {
		return err
	}
	defer m.Close()
	child, err := m.StartDeliveryProcess()
	if err != nil {
		return err
	}
	if err := m.RegisterApps(ctx); err != nil {
		return err
	}

	t0 := time.Now()
	apnsTokens, fcmTokens, err := journeytest.Import(ctx, m, o.profiles, o.fcmEvery, o.extraAttrs)
	if err != nil {
		return fmt.Errorf("seed profilesvc: %w", err)
	}
	total := len(apnsTokens) + len(fcmTokens)
	fmt.Printf("seeded %d profiles (%d APNs + %d FCM tokens) in profilesvc in %s\n",
		o.profiles, len(apnsTokens), len(fcmTokens), time.Since(t0).Round(time.Millisecond))
	apnsTokens, fcmTokens = nil, nil

	ceil := &ceilings{m: m, o: o}
	if err := ceil.setup(ctx); err != nil {
		return err
	}
	if err := ceil.measure(ctx); err != nil {
		return err
	}
	m.APNs.Reset()
	m.FCM.Reset()

	pid := child.Pid()
	peak := watchMemory(pid)
	cpu0 := procCPU(pid)
	if o.benchprof != "" {
		f, err := os.Create(o.benchprof)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
	}
	start := time.Now()
	pub, err := m.Journeys.PublishJourney(ctx, &deliveryv1.PublishJourneyRequest{Journey: &deliveryv1.Journey{
		Name: "journeybench", AppIds: []string{journeytest.ShopApp},
		Audience: &deliveryv1.Audience{Condition: `attributes.tier == "gold"`},
		Template: &deliveryv1.MessageTemplate{
			Title: `Hi {{firstName | default "there"}}`, Body: "Your {{tier | title}} offer is waiting",
			DeepLink: "acme://offers/{{identity.customer_id}}",
		},
		Variants: []*deliveryv1.TemplateVariant{{Locale: "fr", Template: &deliveryv1.MessageTemplate{Title: "Bonjour {{firstName}}"}}},
	}})
	if err != nil {
		return err
	}
	final, err := follow(ctx, m, pub.GetJourney().GetJourneyId())
	if err != nil {
		return err
	}
	elapsed := time.Since(start)
	if end := final.GetProgress().GetEndTime(); end.IsValid() {
		// From the publish call to the journey's own end time: the watch
		// stream reports once a second, which would add up to a second.
		elapsed = end.AsTime().Sub(start)
	}
	if o.benchprof != "" {
		pprof.StopCPUProfile()
	}
	cpu := procCPU(pid) - cpu0
	hwm, anon, file := procStatus(pid, "VmHWM"), procStatus(pid, "RssAnon"), procStatus(pid, "RssFile")
	peakAnon, peakFile := peak()
	apnsGot, fcmGot := m.APNs.Count().Accepted, m.FCM.Count().Delivered
	if err := ceil.measure(ctx); err != nil {
		return err
	}

	p := final.GetProgress()
	if final.GetState() != deliveryv1.JourneyState_JOURNEY_STATE_COMPLETED {
		return fmt.Errorf("journey ended %v: %s", final.GetState(), final.GetError())
	}
	if p.GetSent() != int64(total) {
		fmt.Printf("WARNING: %d of %d notifications sent (failed: %v)\n", p.GetSent(), total, p.GetFailed())
	}
	rate := float64(p.GetSent()) / elapsed.Seconds()
	fcmShare := float64(len(fcmTokensOf(o))) / float64(total)
	apnsC, fcmC := ceil.mean()
	mixC := 1 / ((1-fcmShare)/apnsC + fcmShare/fcmC)
	fmt.Printf("journey %s: %d profiles → %d notifications sent (APNs emulator %d, FCM emulator %d) in %s\n\n",
		strings.TrimPrefix(final.GetState().String(), "JOURNEY_STATE_"), p.GetQualified(), p.GetSent(), apnsGot, fcmGot, elapsed.Round(time.Millisecond))
	row := func(name, value string) { fmt.Printf("%-56s %16s\n", name, value) }
	row("figure", "value")
	row("journey notifications/s (end to end)", fmt.Sprintf("%.0f", rate))
	row(fmt.Sprintf("raw apns2 → APNs emulator ceiling /s (%d at once; before, after)", o.concurrency), fmt.Sprintf("%.0f, %.0f", ceil.apns[0], ceil.apns[1]))
	if len(ceil.best) == 2 {
		row(fmt.Sprintf("raw apns2 ceiling /s (%d at once; before, after)", o.bestConc), fmt.Sprintf("%.0f, %.0f", ceil.best[0], ceil.best[1]))
	}
	row("raw firebase → FCM emulator ceiling /s (before, after)", fmt.Sprintf("%.0f, %.0f", ceil.fcm[0], ceil.fcm[1]))
	row(fmt.Sprintf("ceiling of the journey's mix (%.0f%% FCM) /s", fcmShare*100), fmt.Sprintf("%.0f", mixC))
	row("ratio to the apns2 ceiling", fmt.Sprintf("%.3f", rate/apnsC))
	if len(ceil.best) == 2 {
		row(fmt.Sprintf("ratio to the apns2 ceiling with %d at once", o.bestConc), fmt.Sprintf("%.3f", rate/((ceil.best[0]+ceil.best[1])/2)))
	}
	row("ratio to the mix ceiling", fmt.Sprintf("%.3f", rate/mixC))
	row("deliverysvc CPU-seconds per 100k notifications", fmt.Sprintf("%.1f", cpu.Seconds()/float64(p.GetSent())*100_000))
	row("deliverysvc peak RSS (VmHWM)", hwm)
	row("  peak anonymous (heap, stacks), sampled every 200 ms", fmt.Sprintf("%d kB", peakAnon))
	row("  peak file-backed (bbolt mmap), sampled every 200 ms", fmt.Sprintf("%d kB", peakFile))
	row("  at the end: anonymous, file-backed", anon+", "+file)
	row("deliverysvc data file (bbolt) at the end", fileSize(m.DeliveryDir+"/deliverysvc.db"))
	// Every send's event reaches the tracking fake (the outbox forwards
	// them in the background; give it a moment).
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_ = m.Events.WaitFor(wctx, int(p.GetSent()))
	row("tracking events received (sent notifications)", fmt.Sprintf("%d (%d)", m.Events.Received(), p.GetSent()))
	row("load average (1 min) at the end", loadAverage())
	return nil
}

// fcmTokensOf is how many FCM tokens Import made.
func fcmTokensOf(o options) []struct{} {
	if o.fcmEvery <= 0 {
		return nil
	}
	return make([]struct{}, (o.profiles+o.fcmEvery-1)/o.fcmEvery)
}

// follow watches the journey to its end, printing progress every few
// seconds.
func follow(ctx context.Context, m *journeytest.Mesh, id string) (*deliveryv1.Journey, error) {
	stream, err := m.Journeys.WatchJourney(ctx, &deliveryv1.WatchJourneyRequest{JourneyId: id, Interval: durationpb.New(time.Second)})
	if err != nil {
		return nil, err
	}
	var last *deliveryv1.Journey
	printed := time.Now()
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return last, nil
		}
		if err != nil {
			return nil, err
		}
		last = resp.GetJourney()
		if p := last.GetProgress(); time.Since(printed) >= 5*time.Second {
			printed = time.Now()
			eta := "unknown"
			if p.GetEta() != nil {
				eta = p.GetEta().AsDuration().String()
			}
			fmt.Printf("  %s: %d profiles, %d sent, %.0f/s, ETA %s\n", strings.TrimPrefix(last.GetState().String(), "JOURNEY_STATE_"),
				p.GetQualified(), p.GetSent(), p.GetRatePerSecond(), eta)
		}
	}
}

// ceilings measures the raw clients against the emulators.
type ceilings struct {
	m         *journeytest.Mesh
	o         options
	apnsPush  func(i int) error
	fcmClient *messaging.Client
	apns, fcm []float64
	best      []float64 // apns2 with o.bestConc goroutines
}

const ceilingBundle = "com.acme.ceiling"

func (c *ceilings) setup(ctx context.Context) error {
	_, key, err := c.m.APNs.NewProviderKey("CEILTEAM01", "CEILKEY001")
	if err != nil {
		return err
	}
	c.m.APNs.RegisterTopic("CEILTEAM01", ceilingBundle)
	tok := &token.Token{AuthKey: key, KeyID: "CEILKEY001", TeamID: "CEILTEAM01"}
	clients := make([]*apns2.Client, c.o.connections)
	for i := range clients {
		cl := apns2.NewTokenClient(tok)
		cl.Host, cl.HTTPClient = c.m.APNs.URL(), c.m.CA.HTTP2Client()
		clients[i] = cl
	}
	payload := []byte(`{"aps":{"alert":{"title":"Hi Ada","body":"Your Gold offer is waiting"}},"pm":{"j":"jrn_ceiling","m":"msg_ceiling"},"deep_link":"acme://offers/B-0000001"}`)
	c.apnsPush = func(i int) error {
		res, err := clients[i%len(clients)].PushWithContext(ctx, &apns2.Notification{
			DeviceToken: journeytest.APNsToken(i), Topic: ceilingBundle, Payload: payload, PushType: apns2.PushTypeAlert, CollapseID: "msg_ceiling",
		})
		if err != nil {
			return err
		}
		if res.StatusCode != http.StatusOK {
			return fmt.Errorf("ceiling push: %d %s", res.StatusCode, res.Reason)
		}
		return nil
	}
	for i := range clients { // connect and sign outside the timer
		if err := c.apnsPush(i); err != nil {
			return err
		}
	}

	sa, _, err := c.m.FCM.NewServiceAccount("acme-ceiling")
	if err != nil {
		return err
	}
	tokenCtx := context.WithValue(context.Background(), oauth2.HTTPClient, c.m.CA.HTTPClient())
	creds, err := google.CredentialsFromJSONWithType(tokenCtx, sa, google.ServiceAccount, fcm.ScopeFirebaseMessaging)
	if err != nil {
		return err
	}
	hc := &http.Client{Transport: &oauth2.Transport{Source: creds.TokenSource, Base: c.m.CA.HTTPClient().Transport}}
	app, err := firebase.NewApp(ctx, &firebase.Config{ProjectID: "acme-ceiling"}, option.WithHTTPClient(hc), option.WithEndpoint(c.m.FCM.URL()+"/v1"))
	if err != nil {
		return err
	}
	if c.fcmClient, err = app.Messaging(ctx); err != nil {
		return err
	}
	_, err = c.fcmClient.Send(ctx, fcmMessage(0)) // token exchange and connection
	return err
}

func fcmMessage(i int) *messaging.Message {
	ttl := 24 * time.Hour
	return &messaging.Message{
		Token:        journeytest.FCMToken(i),
		Data:         map[string]string{"pm_message_id": "msg_ceiling", "pm_journey_id": "jrn_ceiling", "deep_link": "acme://offers/B-0000001"},
		Notification: &messaging.Notification{Title: "Hi Ada", Body: "Your Gold offer is waiting"},
		Android:      &messaging.AndroidConfig{CollapseKey: "msg_ceiling", TTL: &ttl},
	}
}

// measure runs both ceilings once.
func (c *ceilings) measure(ctx context.Context) error {
	a, err := parallel(c.o.ceilingN, c.o.concurrency, c.apnsPush)
	if err != nil {
		return fmt.Errorf("APNs ceiling: %w", err)
	}
	// firebase's SendEach: chunks of 500, 8 in flight, as deliverysvc's FCM
	// gateway sends; at most 20,000, well within the FCM emulator's quota
	// (FCM's 600,000 per minute per project).
	n := min(c.o.ceilingN, 20_000)
	f, err := parallel(n/500, 8, func(i int) error {
		chunk := make([]*messaging.Message, 500)
		for j := range chunk {
			chunk[j] = fcmMessage(i*500 + j)
		}
		br, err := c.fcmClient.SendEach(ctx, chunk)
		if err == nil && br.FailureCount > 0 {
			err = fmt.Errorf("%d of %d failed", br.FailureCount, len(chunk))
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("FCM ceiling: %w", err)
	}
	c.apns = append(c.apns, a)
	c.fcm = append(c.fcm, f*500)
	if c.o.bestConc > 0 {
		b, err := parallel(c.o.ceilingN, c.o.bestConc, c.apnsPush)
		if err != nil {
			return fmt.Errorf("APNs ceiling: %w", err)
		}
		c.best = append(c.best, b)
	}
	return nil
}

func (c *ceilings) mean() (apns, fcm float64) {
	for i := range c.apns {
		apns += c.apns[i] / float64(len(c.apns))
		fcm += c.fcm[i] / float64(len(c.fcm))
	}
	return apns, fcm
}

// parallel runs do(0..n-1) on workers goroutines and returns calls per
// second.
func parallel(n, workers int, do func(i int) error) (float64, error) {
	var next atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				if err := do(i); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		return 0, err
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// procCPU is a process's user+system CPU time, from /proc/PID/stat.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The fields after the command name (which may hold spaces): utime
	// and stime are the 12th and 13th of them, in clock ticks (100/s).
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fields) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(fields[11], 10, 64)
	st, _ := strconv.ParseInt(fields[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// watchMemory samples the process's anonymous and file-backed resident
// memory every 200 ms until the returned function is called, which returns
// their peaks in kB. VmHWM is their sum's peak; the split says whether it
// is heap and stacks or bbolt's memory map.
func watchMemory(pid int) func() (anon, file int64) {
	stop := make(chan struct{})
	done := make(chan struct{})
	var maxAnon, maxFile int64
	go func() {
		defer close(done)
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			maxAnon = max(maxAnon, kB(procStatus(pid, "RssAnon")))
			maxFile = max(maxFile, kB(procStatus(pid, "RssFile")))
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()
	return func() (int64, int64) {
		close(stop)
		<-done
		return maxAnon, maxFile
	}
}

// kB parses "123 kB".
func kB(s string) int64 {
	n, _ := strconv.ParseInt(strings.TrimSuffix(s, " kB"), 10, 64)
	return n
}

// procStatus reads one field of /proc/PID/status, e.g. "VmHWM".
func procStatus(pid int, field string) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "?"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "?"
}

func fileSize(path string) string {
	fi, err := os.Stat(path)
	if err != nil {
		return "?"
	}
	return fmt.Sprintf("%d kB", fi.Size()/1024)
}

func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Fields(string(b))[0]
}
