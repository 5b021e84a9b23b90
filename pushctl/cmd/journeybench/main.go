// Command journeybench runs a journey end to end — profilesvc streaming the
// audience, deliverysvc rendering and sending, both gateway emulators over
// real HTTP/2 with the real apns2 and firebase clients, trackingsvc counting
// outcomes — and prints notifications/s next to the raw apns2→emulator
// ceiling measured in the same run, their ratio, and the peak resident
// memory of deliverysvc, which runs as a child process (this binary in
// -serve-delivery mode) so its memory is its own.
//
//	go run ./pushctl/cmd/journeybench -profiles 100000
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sideshow/apns2"
	"github.com/sideshow/apns2/payload"
	"github.com/sideshow/apns2/token"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	deliveryserver "github.com/pushmesh/pushmesh/deliverysvc/server"
	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	"github.com/pushmesh/pushmesh/pushctl/internal/demo"
	"github.com/pushmesh/pushmesh/pushctl/internal/mesh"
	"github.com/pushmesh/pushmesh/servicekit/grpcclient"
	"github.com/pushmesh/pushmesh/servicekit/grpcserver"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-serve-delivery" {
		// Child mode: deliverysvc alone in this process, so its memory is
		// measured apart from profilesvc, trackingsvc and the emulators.
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
		defer stop()
		if err := serveDelivery(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "journeybench deliverysvc:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(context.Background(), os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "journeybench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("journeybench", flag.ContinueOnError)
	profiles := fs.Int("profiles", 100_000, "profiles in the audience (2 tokens each: one APNs, one FCM)")
	fcmShare := fs.Float64("fcm-share", 0.5, "share of tokens on FCM")
	ceilingN := fs.Int("ceiling", 50_000, "pushes for the raw apns2 ceiling")
	cpuProfile := fs.String("cpuprofile", "", "CPU profile of the journey phase")
	blockProfile := fs.String("blockprofile", "", "blocking profile of the journey phase")
	if err := fs.Parse(args); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "journeybench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	m, err := mesh.Start(ctx, mesh.Options{DataDir: dir})
	if err != nil {
		return err
	}
	defer m.Close()
	child, journeys, apps, err := startDelivery(ctx, m, dir)
	if err != nil {
		return err
	}
	defer child.stop()
	reqs, err := demo.AppRequests(m.APNs, m.FCM)
	if err != nil {
		return err
	}
	for _, r := range reqs {
		if _, err := apps.RegisterApp(ctx, r); err != nil {
			return err
		}
	}

	// Seed the audience through the real import stream.
	t0 := time.Now()
	stream, err := m.Profiles.ImportTokens(ctx)
	if err != nil {
		return err
	}
	attrs, _ := structpb.NewStruct(map[string]any{"tier": "gold", "firstName": "Ada", "locale": "en-US"})
	at := timestamppb.New(time.Now().Add(-time.Hour))
	fcmEvery := 0
	if *fcmShare > 0 {
		fcmEvery = int(1 / *fcmShare)
	}
	tokens := 0
	batch := make([]*profilev1.ImportRow, 0, 5000)
	for i := range *profiles {
		platform, tok := commonv1.Platform_PLATFORM_APNS, fmt.Sprintf("%064x", i+1)
		if fcmEvery > 0 && i%fcmEvery == 0 {
			platform, tok = commonv1.Platform_PLATFORM_FCM, "bench:"+strconv.Itoa(i)+strings.Repeat("x", 120)
		}
		batch = append(batch, &profilev1.ImportRow{Token: tok, Platform: platform, AppId: demo.ShopApp,
			CustomerId: "B-" + strconv.Itoa(i), SourceTime: at, Attributes: attrs})
		tokens++
		if len(batch) == cap(batch) || i == *profiles-1 {
			if err := stream.Send(&profilev1.ImportTokensRequest{Rows: batch}); err != nil {
				return err
			}
			batch = batch[:0]
		}
	}
	if _, err := stream.CloseAndRecv(); err != nil {
		return err
	}
	fmt.Printf("seeded %d profiles (%d tokens) in %s\n", *profiles, tokens, time.Since(t0).Round(time.Millisecond))

	ceiling, err := apnsCeiling(ctx, m, *ceilingN)
	if err != nil {
		return err
	}
	m.APNs.Reset()
	m.FCM.Reset()

	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		_ = pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	if *blockProfile != "" {
		runtime.SetBlockProfileRate(int(time.Millisecond))
		defer func() {
			if f, err := os.Create(*blockProfile); err == nil {
				_ = pprof.Lookup("block").WriteTo(f, 0)
				f.Close()
			}
		}()
	}
	start := time.Now()
	pub, err := journeys.PublishJourney(ctx, &deliveryv1.PublishJourneyRequest{Journey: &deliveryv1.Journey{
		Name: "bench", AppIds: []string{demo.ShopApp},
		Audience: &deliveryv1.Audience{Condition: `attributes.tier == "gold"`},
		Template: &deliveryv1.MessageTemplate{Title: `Hi {{firstName | default "there"}}`, Body: "Your {{tier}} offer is waiting", DeepLink: "app://offers/{{profile_id}}"},
	}})
	if err != nil {
		return err
	}
	watch, err := journeys.WatchJourney(ctx, &deliveryv1.WatchJourneyRequest{JourneyId: pub.GetJourney().GetJourneyId()})
	if err != nil {
		return err
	}
	var last *deliveryv1.Journey
	for {
		resp, err := watch.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		last = resp.GetJourney()
	}
	elapsed := time.Since(start)
	p := last.GetProgress()
	rate := float64(p.GetSent()) / elapsed.Seconds()
	fmt.Printf("journey %s: %d profiles → %d notifications sent (%d failed) in %s\n",
		last.GetState(), p.GetQualified(), p.GetSent(), p.GetTokensTargeted()-p.GetSent(), elapsed.Round(time.Millisecond))
	fmt.Printf("\n%-44s %12s\n", "figure", "value")
	fmt.Printf("%-44s %12.0f\n", "journey notifications/s (end to end)", rate)
	fmt.Printf("%-44s %12.0f\n", "raw apns2→emulator ceiling, same run (/s)", ceiling)
	fmt.Printf("%-44s %12.2f\n", "ratio to the ceiling", rate/ceiling)
	pid := child.cmd.Process.Pid
	fmt.Printf("%-44s %12s\n", "deliverysvc peak RSS (VmHWM, own process)", procStatus(pid, "VmHWM"))
	fmt.Printf("%-44s %12s\n", "  of which now anonymous (heap, stacks)", procStatus(pid, "RssAnon"))
	fmt.Printf("%-44s %12s\n", "  of which now file-backed (bbolt mmap)", procStatus(pid, "RssFile"))
	return nil
}

// apnsCeiling is the raw apns2 client straight at the APNs emulator: the
// most the APNs leg can do on this machine, now.
func apnsCeiling(ctx context.Context, m *mesh.Mesh, n int) (float64, error) {
	_, key, err := m.APNs.NewProviderKey("CEILTEAM01", "CEILKEY001")
	if err != nil {
		return 0, err
	}
	m.APNs.RegisterTopic("CEILTEAM01", "com.pushmesh.ceiling")
	c := apns2.NewTokenClient(&token.Token{AuthKey: key, KeyID: "CEILKEY001", TeamID: "CEILTEAM01"})
	c.Host, c.HTTPClient = m.APNs.URL(), m.CA.HTTP2Client()
	body := payload.NewPayload().AlertTitle("Hi Ada").AlertBody("Your gold offer is waiting")
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range 128 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1); i <= int64(n); i = next.Add(1) {
				n := &apns2.Notification{DeviceToken: fmt.Sprintf("%064x", i), Topic: "com.pushmesh.ceiling", Payload: body}
				if _, err := c.PushWithContext(ctx, n); err != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	return float64(n) / time.Since(start).Seconds(), nil
}

// procStatus reads one field of /proc/PID/status, e.g. "VmHWM".
func procStatus(pid int, field string) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "?"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, field+":") {
			return strings.TrimSpace(strings.TrimPrefix(line, field+":"))
		}
	}
	return "?"
}

type childProc struct{ cmd *exec.Cmd }

func (c *childProc) stop() {
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	_ = c.cmd.Wait()
}

// startDelivery runs deliverysvc as a child process wired to the mesh's
// profilesvc, trackingsvc and emulators.
func startDelivery(ctx context.Context, m *mesh.Mesh, dir string) (*childProc, deliveryv1.JourneyServiceClient, deliveryv1.AppServiceClient, error) {
	caFile := filepath.Join(dir, "ca.pem")
	if err := m.CA.WriteCertFile(caFile); err != nil {
		return nil, nil, nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, nil, err
	}
	addr := l.Addr().String()
	l.Close()
	cmd := exec.Command(os.Args[0], "-serve-delivery")
	cmd.Env = append(os.Environ(), "JB_LISTEN="+addr, "JB_DATA_DIR="+filepath.Join(dir, "child-deliverysvc"), "JB_CA_FILE="+caFile,
		"JB_PROFILE_ADDR="+m.ProfileAddr, "JB_TRACKING_ADDR="+m.TrackingAddr, "JB_APNS_URL="+m.APNs.URL(), "JB_FCM_URL="+m.FCM.URL()+"/v1")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, nil, nil, err
	}
	child := &childProc{cmd: cmd}
	conn, err := grpcclient.Dial(addr)
	if err != nil {
		child.stop()
		return nil, nil, nil, err
	}
	apps := deliveryv1.NewAppServiceClient(conn)
	for deadline := time.Now().Add(30 * time.Second); ; {
		if _, err := apps.ListApps(ctx, &deliveryv1.ListAppsRequest{}); err == nil {
			break
		} else if time.Now().After(deadline) {
			child.stop()
			return nil, nil, nil, fmt.Errorf("deliverysvc did not start: %w", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return child, deliveryv1.NewJourneyServiceClient(conn), apps, nil
}

func serveDelivery(ctx context.Context) error {
	caPEM, err := os.ReadFile(os.Getenv("JB_CA_FILE"))
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := grpcserver.New(grpcserver.Config{Name: "deliverysvc", Listen: os.Getenv("JB_LISTEN"), Logger: log})
	if err != nil {
		return err
	}
	stop, err := deliveryserver.Start(ctx, srv.GRPC(), os.Getenv("JB_DATA_DIR"), deliveryserver.Config{
		ProfileAddr: os.Getenv("JB_PROFILE_ADDR"), TrackingAddr: os.Getenv("JB_TRACKING_ADDR"),
		APNsURL: os.Getenv("JB_APNS_URL"), FCMEndpoint: os.Getenv("JB_FCM_URL"), GatewayCAPEM: caPEM,
		DevInsecureGenerateKey: true, APNsConnections: 4, MaxInFlight: 10_000,
	}, log)
	if err != nil {
		return err
	}
	serveErr := srv.Serve(ctx)
	return errors.Join(serveErr, stop())
}
