// Command deliverybench measures deliverysvc's Send path end to end: it
// starts the APNs and FCM emulators and fake profilesvc/trackingsvc in its
// own process, runs the real deliverysvc as a child process (this binary in
// "-serve" mode, i.e. server.Spec through servicekit/service.Run), registers
// an APNs and an FCM app, and then, in one run:
//
//  1. measures the raw ceiling: the apns2 client straight at the APNs
//     emulator, with the same connections as deliverysvc and as many pushes
//     at once as deliverysvc may have in flight (-ceiling-concurrency sets
//     another number: over loopback the raw client is fastest with a few
//     hundred, see deliverysvc/README.md);
//  2. drives Send streams over real gRPC to both emulators through the real
//     apns2 and firebase clients, and counts the per-token results.
//
// It prints notifications/s, the ceiling (measured before and after the Send
// phase, and averaged, since the machine may be shared), their ratio, the
// ratio to the same mix of raw client calls (adding a firebase SendEach →
// FCM emulator ceiling), and CPU-seconds per 100,000 pushes: deliverysvc's
// own (the child's utime+stime, the counters getrusage reports, read from
// /proc over the timed window) and the bench process's (emulators, fakes and
// load generator, via syscall.Getrusage). The machine CPU per push of the
// Send phase against that of the raw calls is the figure least disturbed by
// other work on the machine.
//
//	go run ./deliverysvc/cmd/deliverybench               # 100,000 notifications, half APNs, half FCM
//	go run ./deliverysvc/cmd/deliverybench -fcm-share 0  # APNs only
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/debug"
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
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/delivery"
	"github.com/pushmesh/pushmesh/deliverysvc/internal/testenv"
	"github.com/pushmesh/pushmesh/deliverysvc/server"
	"github.com/pushmesh/pushmesh/emulator/apns"
	"github.com/pushmesh/pushmesh/emulator/fcm"
	"github.com/pushmesh/pushmesh/emulator/tlsca"
	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
	"github.com/pushmesh/pushmesh/servicekit/grpcclient"
	"github.com/pushmesh/pushmesh/servicekit/grpcserver"
	"github.com/pushmesh/pushmesh/servicekit/proctest"
	"github.com/pushmesh/pushmesh/servicekit/service"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	if len(os.Args) > 1 && os.Args[1] == "-serve" {
		err = serve(ctx, os.Args[2:])
	} else {
		err = run(ctx, os.Args[1:])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "deliverybench:", err)
		os.Exit(1)
	}
}

// serve runs deliverysvc exactly as cmd/deliverysvc does, optionally under
// the CPU profiler: deliverybench -serve [-cpuprofile f] -- <deliverysvc flags>.
func serve(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	cpuprofile := fs.String("cpuprofile", "", "write deliverysvc's CPU profile here")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	server.TuneRuntime() // as cmd/deliverysvc does
	return service.Run(ctx, server.Spec(), fs.Args(), os.Stderr)
}

type options struct {
	n            int
	streams      int
	batch        int
	fcmShare     float64
	concurrency  int
	ceilingConc  int
	bestConc     int
	connections  int
	ceilingN     int
	cpuprofile   string
	benchprofile string
	keepLogs     bool
	trackingWait time.Duration
}

func run(ctx context.Context, args []string) error {
	var o options
	fs := flag.NewFlagSet("deliverybench", flag.ContinueOnError)
	fs.IntVar(&o.n, "n", 100_000, "notifications to send through deliverysvc")
	fs.IntVar(&o.streams, "streams", 4, "concurrent Send streams")
	fs.IntVar(&o.batch, "batch", 1000, "messages per SendRequest (one token each)")
	fs.Float64Var(&o.fcmShare, "fcm-share", 0.5, "fraction of notifications sent to FCM tokens (the rest to APNs)")
	fs.IntVar(&o.concurrency, "concurrency", 2048, "deliverysvc --max-in-flight, and the ceiling's concurrent pushes unless -ceiling-concurrency")
	fs.IntVar(&o.ceilingConc, "ceiling-concurrency", 0, "the apns2 ceiling's concurrent pushes (default: -concurrency); over loopback the raw client is fastest with a few hundred")
	fs.IntVar(&o.bestConc, "best-ceiling-concurrency", 256, "also measure the apns2 ceiling with this many pushes at once, about the raw client's best over loopback, and print the ratio to it (0: skip)")
	fs.IntVar(&o.connections, "connections", 4, "HTTP/2 connections per APNs app, in deliverysvc and in the ceiling")
	fs.IntVar(&o.ceilingN, "ceiling-n", 100_000, "pushes for the apns2 ceiling")
	fs.StringVar(&o.cpuprofile, "cpuprofile", "", "write deliverysvc's CPU profile (of the whole child run) here")
	fs.StringVar(&o.benchprofile, "benchprofile", "", "write the bench process's CPU profile (the timed Send phase) here")
	fs.BoolVar(&o.keepLogs, "v", false, "show deliverysvc's logs")
	fs.DurationVar(&o.trackingWait, "tracking-wait", time.Minute, "how long to wait for every send event to reach the tracking fake")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.ceilingConc <= 0 {
		o.ceilingConc = o.concurrency
	}
	if o.batch < 1 || o.batch > delivery.MaxBatchMessages {
		return fmt.Errorf("-batch must be 1 to %d (a SendRequest's limit)", delivery.MaxBatchMessages)
	}

	// deliverysvc's GOGC for the emulators and the ceiling, but not its
	// memory limit: this process also holds the fakes' record of the run
	// (every tracking event), over 100 MiB by the end, and under a 160 MiB
	// limit it collected garbage without pause, which halved the ceiling
	// measured after the Send phase.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(server.DefaultGCPercent)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ca, err := tlsca.New()
	if err != nil {
		return err
	}
	apnsEmu, err := apns.Start(apns.Options{CA: ca, MaxLog: 1000})
	if err != nil {
		return err
	}
	defer apnsEmu.Close()
	fcmEmu, err := fcm.Start(fcm.Options{CA: ca, QuotaPerMinute: 1 << 30, MaxLog: 1000})
	if err != nil {
		return err
	}
	defer fcmEmu.Close()

	events := testenv.NewEvents()
	feedback := testenv.NewFeedback()
	profileAddr, stopProfiles, err := serveFake(log, func(s *grpc.Server) {
		profilev1.RegisterProfileServiceServer(s, &testenv.FakeProfiles{ReportTokenFeedbackFunc: feedback.Report})
	})
	if err != nil {
		return err
	}
	defer stopProfiles()
	trackingAddr, stopTracking, err := serveFake(log, func(s *grpc.Server) {
		trackingv1.RegisterTrackingServiceServer(s, &testenv.FakeTracking{IngestFunc: events.Ingest})
	})
	if err != nil {
		return err
	}
	defer stopTracking()

	dir, err := os.MkdirTemp("", "deliverybench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	caFile := filepath.Join(dir, "ca.pem")
	if err := ca.WriteCertFile(caFile); err != nil {
		return err
	}
	svc, err := startDeliverysvc(ctx, o, dir, caFile, apnsEmu.URL(), fcmEmu.URL()+"/v1", profileAddr, trackingAddr)
	if err != nil {
		return err
	}
	defer svc.stop()

	const bundleID, packageName = "com.pushmesh.bench", "com.pushmesh.bench.android"
	p8, key, err := apnsEmu.NewProviderKey(testenv.TeamID, testenv.KeyID)
	if err != nil {
		return err
	}
	apnsEmu.RegisterTopic(testenv.TeamID, bundleID)
	saJSON, _, err := fcmEmu.NewServiceAccount("pushmesh-bench")
	if err != nil {
		return err
	}
	appsClient := deliveryv1.NewAppServiceClient(svc.conn)
	for _, req := range []*deliveryv1.RegisterAppRequest{
		{Key: &deliveryv1.AppKey{Platform: commonv1.Platform_PLATFORM_APNS, AppId: bundleID}, Credentials: testenv.APNsCredentials(p8, testenv.KeyID, testenv.TeamID), RateLimitPerSecond: 1_000_000},
		{Key: &deliveryv1.AppKey{Platform: commonv1.Platform_PLATFORM_FCM, AppId: packageName}, Credentials: testenv.FCMCredentials(saJSON), RateLimitPerSecond: 1_000_000},
	} {
		if _, err := appsClient.RegisterApp(ctx, req); err != nil {
			return fmt.Errorf("register %s: %w", req.GetKey().GetAppId(), err)
		}
	}

	fmt.Printf("deliverybench: %d notifications (%.0f%% FCM), %d streams × batches of %d, max in flight %d, %d APNs connections, GOMAXPROCS=%s\n",
		o.n, 100*o.fcmShare, o.streams, o.batch, o.concurrency, o.connections, gomaxprocs())

	// 1. The ceiling: apns2 straight at the emulator. It is measured again
	// after the pipeline, and the two averaged, so that a neighbour's load
	// on a shared machine skews the ratio less.
	ceilingBefore, ceilingCPU, err := apnsCeiling(ctx, ca, apnsEmu.URL(), key, bundleID, o)
	if err != nil {
		return err
	}
	fmt.Printf("  apns2 → APNs emulator ceiling: %8.0f pushes/s  (%d pushes, %d goroutines, %d connections; %.2f CPU-s per 100k, client and emulator)\n",
		ceilingBefore, o.ceilingN, o.ceilingConc, o.connections, ceilingCPU.Seconds()/float64(o.ceilingN)*100_000)
	// The raw client's best is at far fewer pushes at once over loopback
	// (a few hundred hide its latency; more only cost goroutines).
	best := o
	best.ceilingConc = o.bestConc
	var bestBefore float64
	if o.bestConc > 0 {
		if bestBefore, _, err = apnsCeiling(ctx, ca, apnsEmu.URL(), key, bundleID, best); err != nil {
			return err
		}
		fmt.Printf("  apns2 → APNs emulator ceiling with %d goroutines: %8.0f pushes/s\n", o.bestConc, bestBefore)
	}
	var fcmRate float64
	var fcmCPU time.Duration
	if o.fcmShare > 0 {
		if fcmRate, fcmCPU, err = fcmCeiling(ctx, fcmEmu, ca, saJSON, o.ceilingN/2); err != nil {
			return err
		}
		fmt.Printf("  firebase SendEach → FCM emulator ceiling: %8.0f messages/s  (%d messages, chunks of 500, 8 in flight; %.2f CPU-s per 100k)\n",
			fcmRate, o.ceilingN/2, fcmCPU.Seconds()/float64(o.ceilingN/2)*100_000)
	}

	// Warm-up: connections, provider token, OAuth2 token, JIT-free but
	// allocator and scheduler settle.
	if _, err := sendAll(ctx, svc.conn, o, 2*o.batch, bundleID, packageName, "warmup", func() {}); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	eventsBefore := len(events.All())

	// 2. The pipeline.
	var childBefore, selfBefore time.Duration
	var start time.Time
	var readyErr error
	res, err := sendAll(ctx, svc.conn, o, o.n, bundleID, packageName, "run", func() {
		if o.benchprofile != "" {
			f, err := os.Create(o.benchprofile)
			if err == nil {
				err = pprof.StartCPUProfile(f)
			}
			readyErr = err
		}
		childBefore, err = processCPU(svc.pid)
		if readyErr == nil {
			readyErr = err
		}
		selfBefore = selfCPU()
		start = time.Now()
	})
	if err != nil {
		return err
	}
	if readyErr != nil {
		return readyErr
	}
	elapsed := time.Since(start)
	if o.benchprofile != "" {
		pprof.StopCPUProfile()
	}
	// Idempotency records are written behind the sends: wait for that tail
	// to finish, so its CPU counts for the Send phase and does not slow the
	// second ceiling down.
	settled, err := waitIdle(svc.pid, 15*time.Second)
	if err != nil {
		return err
	}
	childAfter, err := processCPU(svc.pid)
	if err != nil {
		return err
	}
	selfAfter := selfCPU()

	rate := float64(res.sent) / elapsed.Seconds()
	per100k := func(d time.Duration) float64 { return d.Seconds() / float64(res.sent) * 100_000 }
	fmt.Printf("  deliverysvc Send → both emulators: %8.0f notifications/s  (%d sent: %d APNs, %d FCM; %d failed) in %s\n",
		rate, res.sent, res.apns, res.fcm, res.failed, elapsed.Round(time.Millisecond))
	ceilingAfter, _, err := apnsCeiling(ctx, ca, apnsEmu.URL(), key, bundleID, o)
	if err != nil {
		return err
	}
	ceiling := (ceilingBefore + ceilingAfter) / 2
	fmt.Printf("  apns2 → APNs emulator ceiling again (after deliverysvc went idle, %s later): %8.0f pushes/s; mean %.0f\n", settled.Round(10*time.Millisecond), ceilingAfter, ceiling)
	fmt.Printf("  ratio to the apns2 ceiling: %.3f\n", rate/ceiling)
	if o.bestConc > 0 {
		bestAfter, _, err := apnsCeiling(ctx, ca, apnsEmu.URL(), key, bundleID, best)
		if err != nil {
			return err
		}
		bestMean := (bestBefore + bestAfter) / 2
		fmt.Printf("  ratio to the apns2 ceiling with %d goroutines (%.0f/s before, %.0f/s after, mean %.0f): %.3f\n", o.bestConc, bestBefore, bestAfter, bestMean, rate/bestMean)
	}
	apnsShare := float64(res.apns) / float64(max(1, res.sent))
	apnsCeilingCPU := ceilingCPU.Seconds() / float64(o.ceilingN) * 1e6
	mixedCeilingCPU := apnsCeilingCPU
	if o.fcmShare > 0 {
		// The same mix of raw client calls: time per push weighted by
		// the share of each gateway.
		mixed := 1 / (apnsShare/ceiling + (1-apnsShare)/fcmRate)
		fmt.Printf("  ratio to the same mix of raw client calls (%.0f/s): %.3f\n", mixed, rate/mixed)
		mixedCeilingCPU = apnsShare*apnsCeilingCPU + (1-apnsShare)*fcmCPU.Seconds()/float64(o.ceilingN/2)*1e6
	}
	childCPU, selfCPUUsed := per100k(childAfter-childBefore), per100k(selfAfter-selfBefore)
	fmt.Printf("  CPU per 100k pushes: deliverysvc %.2f CPU-s; bench process (emulators, fakes, load) %.2f CPU-s  [gorush: 6.5 CPU-s]\n", childCPU, selfCPUUsed)
	fmt.Printf("  machine CPU per push: pipeline %.0f µs, raw client calls %.0f µs (CPU ratio %.2f: robust to a busy machine)\n",
		(childCPU+selfCPUUsed)*10, mixedCeilingCPU, mixedCeilingCPU/((childCPU+selfCPUUsed)*10))
	if res.failed > 0 {
		fmt.Printf("  first failure: %s\n", res.firstFailure)
	}

	// Every outcome reaches trackingsvc through the outbox.
	waitCtx, cancel := context.WithTimeout(ctx, o.trackingWait)
	defer cancel()
	want := eventsBefore + res.sent + res.failed
	tStart := time.Now()
	if err := events.WaitFor(waitCtx, want); err != nil {
		return fmt.Errorf("tracking events: got %d, want %d: %w", len(events.All()), want, err)
	}
	fmt.Printf("  tracking: all %d send events delivered (%s after the last result), %d repeats\n",
		res.sent+res.failed, time.Since(tStart).Round(time.Millisecond), events.Repeats())
	return nil
}

func gomaxprocs() string {
	if v := os.Getenv("GOMAXPROCS"); v != "" {
		return v
	}
	return "default"
}

// serveFake runs a fake service with the production server bootstrap.
func serveFake(log *slog.Logger, register func(*grpc.Server)) (string, func(), error) {
	srv, err := grpcserver.New(grpcserver.Config{Name: "fake", Listen: "127.0.0.1:0", Logger: log})
	if err != nil {
		return "", nil, err
	}
	register(srv.GRPC())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	return srv.Addr().String(), func() { cancel(); <-done }, nil
}

type child struct {
	cmd  *exec.Cmd
	pid  int
	conn *grpc.ClientConn
}

func (c *child) stop() {
	c.conn.Close()
	_ = c.cmd.Process.Signal(os.Interrupt)
	_ = c.cmd.Wait()
}

// startDeliverysvc runs this binary in -serve mode with deliverysvc's flags
// and waits until it answers health checks.
func startDeliverysvc(ctx context.Context, o options, dir, caFile, apnsURL, fcmEndpoint, profileAddr, trackingAddr string) (*child, error) {
	addr, err := proctest.FreeAddr()
	if err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	args := []string{"-serve"}
	if o.cpuprofile != "" {
		args = append(args, "-cpuprofile", o.cpuprofile)
	}
	args = append(args, "--",
		"--listen", addr,
		"--data-dir", filepath.Join(dir, "data"),
		"--profile-addr", profileAddr,
		"--tracking-addr", trackingAddr,
		"--apns-url", apnsURL,
		"--fcm-endpoint", fcmEndpoint,
		"--gateway-ca-file", caFile,
		"--apns-connections", strconv.Itoa(o.connections),
		"--max-in-flight", strconv.Itoa(o.concurrency),
		"--log-level", "warn",
	)
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, self, args...)
	cmd.Env = append(os.Environ(), server.CredentialsKeyEnv+"="+base64.StdEncoding.EncodeToString(key))
	if o.keepLogs {
		cmd.Stderr = os.Stderr
	}
	// Interrupt, not kill, so the profile and the stores are flushed.
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	conn, err := grpcclient.Dial(addr)
	if err != nil {
		_ = cmd.Process.Kill()
		return nil, err
	}
	health := healthpb.NewHealthClient(conn)
	deadline := time.Now().Add(20 * time.Second)
	for {
		res, err := health.Check(ctx, &healthpb.HealthCheckRequest{})
		if err == nil && res.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			break
		}
		if time.Now().After(deadline) {
			conn.Close()
			_ = cmd.Process.Kill()
			return nil, fmt.Errorf("deliverysvc did not become healthy: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return &child{cmd: cmd, pid: cmd.Process.Pid, conn: conn}, nil
}

// apnsCeiling pushes with apns2 straight at the emulator: o.connections
// clients, o.ceilingConc goroutines, one provider token.
func apnsCeiling(ctx context.Context, ca *tlsca.CA, url string, key any, bundleID string, o options) (float64, time.Duration, error) {
	tok := &token.Token{KeyID: testenv.KeyID, TeamID: testenv.TeamID}
	var err error
	if tok.AuthKey, err = ecdsaKey(key); err != nil {
		return 0, 0, err
	}
	clients := make([]*apns2.Client, o.connections)
	for i := range clients {
		c := apns2.NewTokenClient(tok)
		c.Host = url
		c.HTTPClient = ca.HTTP2Client()
		clients[i] = c
	}
	payload := []byte(`{"aps":{"alert":{"title":"Hello","body":"A benchmark notification"}},"pm":{"m":"ceiling"}}`)
	push := func(i int) error {
		res, err := clients[i%len(clients)].PushWithContext(ctx, &apns2.Notification{
			DeviceToken: testenv.APNsToken(i), Topic: bundleID, Payload: payload, PushType: apns2.PushTypeAlert, Priority: 10,
		})
		if err != nil {
			return err
		}
		if res.StatusCode != 200 {
			return fmt.Errorf("ceiling push: %d %s", res.StatusCode, res.Reason)
		}
		return nil
	}
	for i := range clients { // connect and verify the token outside the timer
		if err := push(i); err != nil {
			return 0, 0, err
		}
	}
	var next atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	cpu0 := selfCPU()
	start := time.Now()
	for w := 0; w < o.ceilingConc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1))
				if i > o.ceilingN {
					return
				}
				if err := push(i); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed, cpu := time.Since(start), selfCPU()-cpu0
	for _, c := range clients {
		c.CloseIdleConnections()
	}
	if err, _ := firstErr.Load().(error); err != nil {
		return 0, 0, err
	}
	return float64(o.ceilingN) / elapsed.Seconds(), cpu, nil
}

// fcmCeiling sends with firebase's SendEach straight at the FCM emulator:
// chunks of 500, 8 in flight (as deliverysvc's FCM gateway), after a real
// OAuth2 token exchange done outside the timer.
func fcmCeiling(ctx context.Context, emu *fcm.Server, ca *tlsca.CA, saJSON []byte, n int) (float64, time.Duration, error) {
	tokenCtx := context.WithValue(context.Background(), oauth2.HTTPClient, ca.HTTPClient())
	creds, err := google.CredentialsFromJSONWithType(tokenCtx, saJSON, google.ServiceAccount, fcm.ScopeFirebaseMessaging)
	if err != nil {
		return 0, 0, err
	}
	hc := &http.Client{Transport: &oauth2.Transport{Source: creds.TokenSource, Base: ca.HTTPClient().Transport}}
	app, err := firebase.NewApp(ctx, &firebase.Config{ProjectID: "pushmesh-bench"}, option.WithHTTPClient(hc), option.WithEndpoint(emu.URL()+"/v1"))
	if err != nil {
		return 0, 0, err
	}
	mc, err := app.Messaging(ctx)
	if err != nil {
		return 0, 0, err
	}
	ttl := 24 * time.Hour
	msg := func(i int) *messaging.Message {
		return &messaging.Message{
			Token:        testenv.FCMToken(i),
			Data:         map[string]string{"offer": "spring", "pm_message_id": "ceiling"},
			Notification: &messaging.Notification{Title: "Hello", Body: "A benchmark notification"},
			Android:      &messaging.AndroidConfig{CollapseKey: "ceiling", TTL: &ttl},
		}
	}
	if _, err := mc.Send(ctx, msg(0)); err != nil { // token exchange and connection
		return 0, 0, err
	}
	const chunk, inFlight = 500, 8
	chunks := make(chan []*messaging.Message, n/chunk+1)
	for i := 0; i < n; i += chunk {
		var c []*messaging.Message
		for j := i; j < min(i+chunk, n); j++ {
			c = append(c, msg(j))
		}
		chunks <- c
	}
	close(chunks)
	var firstErr atomic.Value
	var wg sync.WaitGroup
	cpu0 := selfCPU()
	start := time.Now()
	for w := 0; w < inFlight; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range chunks {
				br, err := mc.SendEach(ctx, c)
				if err == nil && br.FailureCount > 0 {
					err = fmt.Errorf("%d of %d failed", br.FailureCount, len(c))
				}
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed, cpu := time.Since(start), selfCPU()-cpu0
	if err, _ := firstErr.Load().(error); err != nil {
		return 0, 0, fmt.Errorf("FCM ceiling: %w", err)
	}
	return float64(n) / elapsed.Seconds(), cpu, nil
}

type sendResult struct {
	sent, failed, apns, fcm int
	firstFailure            string
}

// sendAll sends n single-token messages over o.streams Send streams and
// counts the results. It opens the streams and encodes every request first
// (grpc.PreparedMsg: the load generator stands for clients elsewhere, so
// their encoding is kept out of the measurement), then calls ready, then
// sends.
func sendAll(ctx context.Context, conn *grpc.ClientConn, o options, n int, bundleID, packageName, prefix string, ready func()) (sendResult, error) {
	client := deliveryv1.NewDeliveryServiceClient(conn)
	fcmEvery := 0
	if o.fcmShare > 0 {
		fcmEvery = int(1 / o.fcmShare)
	}
	notification := &deliveryv1.Notification{Title: "Hello", Body: "A benchmark notification", Data: map[string]string{"offer": "spring"}}
	type streamRun struct {
		stream   grpc.BidiStreamingClient[deliveryv1.SendRequest, deliveryv1.SendResponse]
		requests []*grpc.PreparedMsg
	}
	var runs []*streamRun
	per := (n + o.streams - 1) / o.streams
	for s := 0; s < o.streams; s++ {
		first, last := s*per, min((s+1)*per, n)
		if first >= last {
			break
		}
		stream, err := client.Send(ctx)
		if err != nil {
			return sendResult{}, err
		}
		run := &streamRun{stream: stream}
		for i := first; i < last; i += o.batch {
			msgs := make([]*deliveryv1.Message, 0, o.batch)
			for j := i; j < min(i+o.batch, last); j++ {
				var target *deliveryv1.TokenTarget
				if fcmEvery > 0 && j%fcmEvery == 0 {
					target = testenv.FCMTarget(testenv.FCMToken(j), packageName)
				} else {
					target = testenv.APNsTarget(testenv.APNsToken(j), bundleID)
				}
				msgs = append(msgs, testenv.TokensMessage(prefix+"-"+strconv.Itoa(j), notification, target))
			}
			pm := &grpc.PreparedMsg{}
			if err := pm.Encode(stream, &deliveryv1.SendRequest{Messages: msgs}); err != nil {
				return sendResult{}, err
			}
			run.requests = append(run.requests, pm)
		}
		runs = append(runs, run)
	}
	ready()

	var mu sync.Mutex
	var total sendResult
	var wg sync.WaitGroup
	for _, run := range runs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			recvDone := make(chan sendResult, 1)
			go func() {
				var r sendResult
				for {
					res, err := run.stream.Recv()
					if err != nil {
						if !errors.Is(err, io.EOF) {
							r.firstFailure = "stream: " + err.Error()
							r.failed++
						}
						recvDone <- r
						return
					}
					for _, x := range res.GetResults() {
						if x.GetStatus() != deliveryv1.SendStatus_SEND_STATUS_SENT {
							r.failed++
							if r.firstFailure == "" {
								r.firstFailure = x.GetStatus().String() + " " + x.GetReason().String() + ": " + x.GetDetail()
							}
							continue
						}
						r.sent++
						if x.GetPlatform() == commonv1.Platform_PLATFORM_APNS {
							r.apns++
						} else {
							r.fcm++
						}
					}
				}
			}()
			for _, req := range run.requests {
				if err := run.stream.SendMsg(req); err != nil {
					break // Recv reports why
				}
			}
			_ = run.stream.CloseSend()
			r := <-recvDone
			mu.Lock()
			total.sent += r.sent
			total.failed += r.failed
			total.apns += r.apns
			total.fcm += r.fcm
			if total.firstFailure == "" {
				total.firstFailure = r.firstFailure
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	return total, nil
}

// selfCPU is this process's user+system CPU time.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// waitIdle waits until process pid uses under a tenth of a core over a
// quarter second, or timeout passes; it returns how long it waited.
func waitIdle(pid int, timeout time.Duration) (time.Duration, error) {
	const tick = 250 * time.Millisecond
	start := time.Now()
	prev, err := processCPU(pid)
	if err != nil {
		return 0, err
	}
	for time.Since(start) < timeout {
		time.Sleep(tick)
		now, err := processCPU(pid)
		if err != nil {
			return 0, err
		}
		if now-prev < tick/10 {
			break
		}
		prev = now
	}
	return time.Since(start), nil
}

// processCPU is another process's user+system CPU time, from
// /proc/<pid>/stat (the counters getrusage reports for that process).
func processCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("child CPU time (Linux /proc only): %w", err)
	}
	// Fields after the command name, which is in parentheses and may hold
	// spaces: state is field 3, utime 14, stime 15.
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(fields) < 13 {
		return 0, errors.New("unexpected /proc stat format")
	}
	utime, err1 := strconv.ParseInt(fields[11], 10, 64)
	stime, err2 := strconv.ParseInt(fields[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	const ticksPerSecond = 100 // USER_HZ on Linux
	return time.Duration(utime+stime) * time.Second / ticksPerSecond, nil
}

func ecdsaKey(key any) (*ecdsa.PrivateKey, error) {
	k, ok := key.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("provider key is %T, want *ecdsa.PrivateKey", key)
	}
	return k, nil
}
