// Command profilebench measures profilesvc end to end: it starts the real
// service in-process (server.Start on the production gRPC bootstrap, a real
// bbolt file), drives it through a real loopback gRPC client, and prints the
// figures.
//
//	go run ./profilesvc/cmd/profilebench -import-rows 1000000
//	go run ./profilesvc/cmd/profilebench -audience-profiles 1000000
//	go run ./profilesvc/cmd/profilebench -register-clients 50 -register-rate 2000
//
// Each phase runs on its own fresh data directory (removed afterwards unless
// -keep).
package main

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	"github.com/pushmesh/pushmesh/profilesvc/server"
	"github.com/pushmesh/pushmesh/servicekit/grpcclient"
	"github.com/pushmesh/pushmesh/servicekit/grpcserver"
)

type options struct {
	dir              string
	keep             bool
	importRows       int
	importBatchRows  int
	audienceProfiles int
	audienceCond     string
	registerClients  int
	registerRate     int
	registerDuration time.Duration
	rowsPerMessage   int
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "profilebench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, out io.Writer) error {
	var o options
	fs := flag.NewFlagSet("profilebench", flag.ContinueOnError)
	fs.StringVar(&o.dir, "dir", "", "parent of the data directories (default: a temporary directory)")
	fs.BoolVar(&o.keep, "keep", false, "keep the data directories")
	fs.IntVar(&o.importRows, "import-rows", 0, "CRM import: rows to import (half new profiles, half updates and moves); 0 skips")
	fs.IntVar(&o.importBatchRows, "import-batch-rows", 0, "rows per write transaction (0: the service default)")
	fs.IntVar(&o.rowsPerMessage, "rows-per-message", 1000, "CRM import: rows per stream message")
	fs.IntVar(&o.audienceProfiles, "audience-profiles", 0, "QueryAudience: profiles (2 tokens each) to load and query; 0 skips")
	fs.StringVar(&o.audienceCond, "audience-condition", `attributes.tier == "gold" && attributes.locale.startsWith("en")`, "QueryAudience: the condition")
	fs.IntVar(&o.registerClients, "register-clients", 0, "RegisterPushToken: concurrent clients; 0 skips")
	fs.IntVar(&o.registerRate, "register-rate", 2000, "RegisterPushToken: requests per second in the paced run")
	fs.DurationVar(&o.registerDuration, "register-duration", 10*time.Second, "RegisterPushToken: length of each run")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	server.TuneRuntime() // as cmd/profilesvc does
	if o.importRows == 0 && o.audienceProfiles == 0 && o.registerClients == 0 {
		return errors.New("nothing to do: give -import-rows, -audience-profiles and/or -register-clients")
	}
	if o.dir == "" {
		d, err := os.MkdirTemp("", "profilebench-")
		if err != nil {
			return err
		}
		o.dir = d
		if !o.keep {
			defer os.RemoveAll(d)
		}
	}
	gogc := debug.SetGCPercent(-1) // reads the setting, which has to be put back
	debug.SetGCPercent(gogc)
	fmt.Fprintf(out, "profilebench: GOMAXPROCS=%d, GOGC=%d, GOMEMLIMIT=%s, %s\n", runtime.GOMAXPROCS(0), gogc, mib(uint64(debug.SetMemoryLimit(-1))), runtime.Version())
	if o.importRows > 0 {
		if err := benchImport(ctx, o, out); err != nil {
			return fmt.Errorf("import: %w", err)
		}
	}
	if o.audienceProfiles > 0 {
		if err := benchAudience(ctx, o, out); err != nil {
			return fmt.Errorf("audience: %w", err)
		}
	}
	if o.registerClients > 0 {
		if err := benchRegister(ctx, o, out); err != nil {
			return fmt.Errorf("register: %w", err)
		}
	}
	return nil
}

// service is profilesvc served in-process, with a client.
type service struct {
	client profilev1.ProfileServiceClient
	close  func() error
}

func startService(ctx context.Context, dataDir string, o options) (*service, error) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := grpcserver.New(grpcserver.Config{Name: "profilesvc", Listen: "127.0.0.1:0", Logger: log})
	if err != nil {
		return nil, err
	}
	stop, err := server.Start(ctx, srv.GRPC(), dataDir, server.Config{ImportBatchRows: o.importBatchRows}, log)
	if err != nil {
		return nil, err
	}
	serveCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(serveCtx) }()
	conn, err := grpcclient.Dial(srv.Addr().String(), grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20)))
	if err != nil {
		cancel()
		return nil, err
	}
	return &service{
		client: profilev1.NewProfileServiceClient(conn),
		close: func() error {
			conn.Close()
			cancel()
			return errors.Join(<-done, stop())
		},
	}, nil
}

// Deterministic test data.

// The generator runs in the benchmark's process, sharing its two cores with
// the service, so it allocates little: the figures should measure the
// service, not the generator.

// tokenBytes fills b with pseudo-random bytes determined by seed and i.
func tokenBytes(b []byte, seed uint64, i int) {
	var g rand.PCG
	g.Seed(seed, uint64(i))
	var word [8]byte
	for j := 0; j < len(b); j += 8 {
		binary.LittleEndian.PutUint64(word[:], g.Uint64())
		copy(b[j:], word[:])
	}
}

func apnsToken(i int) string {
	var raw [32]byte
	var out [64]byte
	tokenBytes(raw[:], 1, i)
	hex.Encode(out[:], raw[:])
	return string(out[:])
}

// fcmToken looks like a real FCM registration token (about 160 characters).
func fcmToken(i int) string {
	enc := base64.RawURLEncoding
	var raw [112]byte
	tokenBytes(raw[:], 2, i)
	out := make([]byte, 0, 160)
	out = enc.AppendEncode(out, raw[:16])
	out = append(out, ":APA91b"...)
	out = enc.AppendEncode(out, raw[16:])
	return string(out)
}

func customerID(i int) string {
	var buf, digitBuf [20]byte
	out := append(buf[:0], "C-"...)
	digits := strconv.AppendInt(digitBuf[:0], int64(i), 10)
	for n := len(digits); n < 8; n++ {
		out = append(out, '0')
	}
	return string(append(out, digits...))
}

var base = time.Now().Add(-30 * 24 * time.Hour).Truncate(time.Second)

// stamps holds the source timestamps rows use (ts), made once and shared:
// marshalling only reads them.
var stamps = func() []*timestamppb.Timestamp {
	t := make([]*timestamppb.Timestamp, 3000)
	for sec := range t {
		t[sec] = timestamppb.New(base.Add(time.Duration(sec) * time.Second))
	}
	return t
}()

func ts(sec int) *timestamppb.Timestamp {
	if sec < len(stamps) {
		return stamps[sec]
	}
	return timestamppb.New(base.Add(time.Duration(sec) * time.Second))
}

// importRow fills r with row i of an n-row CRM file: the first half
// registers a new token for a new customer (APNs and FCM alternating); in
// the second half, even rows re-register an existing token for its customer
// with a newer time (update) and odd rows register an existing token for
// another, random existing customer with a newer time (move).
func importRow(r *profilev1.ImportRow, i, n int) {
	half := n / 2
	if i < half {
		tokenRow(r, i, i, 1+i%1000)
		return
	}
	j := i - half
	owner := j
	if j%2 == 1 {
		var g rand.PCG
		g.Seed(uint64(j), 7)
		owner = int(rand.New(&g).IntN(half))
	}
	tokenRow(r, j, owner, 2000+j%1000)
}

func tokenRow(r *profilev1.ImportRow, token, customer, sec int) {
	r.CustomerId, r.AppId, r.SourceTime = customerID(customer), "com.example.app", ts(sec)
	if token%2 == 0 {
		r.Platform, r.Token = commonv1.Platform_PLATFORM_APNS, apnsToken(token)
		r.ApnsEnvironment = commonv1.ApnsEnvironment_APNS_ENVIRONMENT_PRODUCTION
	} else {
		r.Platform, r.Token = commonv1.Platform_PLATFORM_FCM, fcmToken(token)
	}
}

// importRows streams rows [0, n), filled by fill, rowsPerMessage per
// message, and returns the response. The rows of a message are reused for
// the next one: Send has marshalled them when it returns.
func importRows(ctx context.Context, c profilev1.ProfileServiceClient, n, perMsg int, fill func(r *profilev1.ImportRow, i int)) (*profilev1.ImportTokensResponse, error) {
	stream, err := c.ImportTokens(ctx)
	if err != nil {
		return nil, err
	}
	rows := make([]profilev1.ImportRow, perMsg)
	req := &profilev1.ImportTokensRequest{Rows: make([]*profilev1.ImportRow, 0, perMsg)}
	for i := 0; i < n; i += perMsg {
		req.Rows = req.Rows[:0]
		for j := i; j < min(n, i+perMsg); j++ {
			r := &rows[j-i]
			r.Reset()
			fill(r, j)
			req.Rows = append(req.Rows, r)
		}
		if err := stream.Send(req); err != nil {
			_, rerr := stream.CloseAndRecv()
			return nil, errors.Join(err, rerr)
		}
	}
	return stream.CloseAndRecv()
}

func benchImport(ctx context.Context, o options, out io.Writer) error {
	dir := filepath.Join(o.dir, "import")
	svc, err := startService(ctx, dir, o)
	if err != nil {
		return err
	}
	defer svc.close()
	n := o.importRows
	fmt.Fprintf(out, "\nCRM import: %d rows through the ImportTokens stream (%d rows/message) into a fresh bbolt file\n", n, o.rowsPerMessage)
	cpu0 := cpuTime()
	start := time.Now()
	resp, err := importRows(ctx, svc.client, n, o.rowsPerMessage, func(r *profilev1.ImportRow, i int) { importRow(r, i, n) })
	if err != nil {
		return err
	}
	elapsed := time.Since(start)
	cpu := cpuTime() - cpu0
	fmt.Fprintf(out, "  rows %d: created %d, updated %d, moved %d, unchanged %d, rejected %d; profiles created %d\n",
		resp.GetRows(), resp.GetCreated(), resp.GetUpdated(), resp.GetMoved(), resp.GetUnchanged(), resp.GetRejected(), resp.GetProfilesCreated())
	fmt.Fprintf(out, "  %.2fs: %.0f rows/s (process CPU %.1fs, client included)\n", elapsed.Seconds(), float64(n)/elapsed.Seconds(), cpu.Seconds())
	fmt.Fprintf(out, "  file %s, peak RSS %s\n", fileSize(filepath.Join(dir, server.DBFile)), mib(peakRSS()))

	start = time.Now()
	resp, err = importRows(ctx, svc.client, n, o.rowsPerMessage, func(r *profilev1.ImportRow, i int) { importRow(r, i, n) })
	if err != nil {
		return err
	}
	elapsed = time.Since(start)
	fmt.Fprintf(out, "  same file again: unchanged %d of %d rows in %.2fs: %.0f rows/s\n", resp.GetUnchanged(), resp.GetRows(), elapsed.Seconds(), float64(n)/elapsed.Seconds())
	return nil
}

var tiers = []string{"gold", "silver", "bronze", "platinum"}
var locales = []string{"en-GB", "en-US", "fr-FR", "de-DE", "es-ES", "en-AU", "it-IT", "nl-NL"}

// audienceRow fills row i of n profiles with two tokens each (APNs and FCM) and four
// attributes.
func audienceRow(r *profilev1.ImportRow, i int) {
	c := i / 2
	tokenRow(r, i, c, 1+c%1000)
	if i%2 == 0 {
		r.Attributes = &structpb.Struct{Fields: map[string]*structpb.Value{
			"tier":      structpb.NewStringValue(tiers[c%len(tiers)]),
			"locale":    structpb.NewStringValue(locales[(c/4)%len(locales)]),
			"firstName": structpb.NewStringValue("Ada" + strconv.Itoa(c%100)),
			"age":       structpb.NewNumberValue(float64(18 + c%60)),
		}}
	}
}

func benchAudience(ctx context.Context, o options, out io.Writer) error {
	dir := filepath.Join(o.dir, "audience")
	svc, err := startService(ctx, dir, o)
	if err != nil {
		return err
	}
	defer svc.close()
	n := o.audienceProfiles
	fmt.Fprintf(out, "\nQueryAudience: loading %d profiles with 2 tokens each (%d import rows)\n", n, 2*n)
	start := time.Now()
	if _, err := importRows(ctx, svc.client, 2*n, o.rowsPerMessage, audienceRow); err != nil {
		return err
	}
	fmt.Fprintf(out, "  loaded in %.1fs; file %s\n", time.Since(start).Seconds(), fileSize(filepath.Join(dir, server.DBFile)))

	for _, cond := range []string{o.audienceCond, ""} {
		// Two collections: the first only moves sync.Pool contents (bbolt
		// keeps the import's page buffers there) to the pools' victim
		// caches, the second frees them, so the heap figures are the
		// query's own.
		runtime.GC()
		runtime.GC()
		sampler := startHeapSampler()
		var atSmall heapPoint
		small := int64(min(100_000, n/10))
		start = time.Now()
		cpu0 := cpuTime()
		stream, err := svc.client.QueryAudience(ctx, &profilev1.QueryAudienceRequest{Condition: cond, BatchSize: 1000})
		if err != nil {
			return err
		}
		var last *profilev1.AudienceStats
		members := 0
		for {
			resp, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return err
			}
			members += len(resp.GetMembers())
			last = resp.GetStats()
			if atSmall.scanned == 0 && last.GetScanned() >= small {
				atSmall = sampler.point(last.GetScanned())
			}
		}
		elapsed := time.Since(start)
		cpu := cpuTime() - cpu0
		atEnd := sampler.point(last.GetScanned())
		sampler.stop()
		label := cond
		if label == "" {
			label = "(empty: every profile)"
		}
		fmt.Fprintf(out, "  condition %s\n", label)
		fmt.Fprintf(out, "    scanned %d, qualified %d, members streamed %d, tokens %d in %.2fs: %.0f profiles/s (process CPU %.1fs, client included)\n",
			last.GetScanned(), last.GetQualified(), members, last.GetTokens(), elapsed.Seconds(), float64(last.GetScanned())/elapsed.Seconds(), cpu.Seconds())
		fmt.Fprintf(out, "    peak live heap after %d profiles: %s (RSS %s); after %d: %s (RSS %s)\n",
			atSmall.scanned, mib(atSmall.peakHeap), mib(atSmall.rss), atEnd.scanned, mib(atEnd.peakHeap), mib(atEnd.rss))
	}
	return nil
}

func benchRegister(ctx context.Context, o options, out io.Writer) error {
	dir := filepath.Join(o.dir, "register")
	svc, err := startService(ctx, dir, o)
	if err != nil {
		return err
	}
	defer svc.close()
	const customers = 100_000
	fmt.Fprintf(out, "\nRegisterPushToken: %d clients; store preloaded with %d profiles\n", o.registerClients, customers)
	if _, err := importRows(ctx, svc.client, customers, o.rowsPerMessage, func(r *profilev1.ImportRow, i int) { tokenRow(r, i, i, 1) }); err != nil {
		return err
	}
	var next atomic.Int64
	next.Store(customers)
	call := func(rng *rand.Rand) error {
		i := int(next.Add(1))
		c := rng.IntN(customers + customers/10) // about 1 in 11 registrations creates a profile
		_, err := svc.client.RegisterPushToken(ctx, &profilev1.RegisterPushTokenRequest{
			Profile:  &profilev1.ProfileRef{Ref: &profilev1.ProfileRef_Identity{Identity: &profilev1.Identity{Namespace: "customer_id", Value: customerID(c)}}},
			Token:    apnsToken(i),
			Platform: commonv1.Platform_PLATFORM_APNS,
			AppId:    "com.example.app",
			DeviceId: "device-" + strconv.Itoa(i),
			Source:   "bench",
		})
		return err
	}
	for _, rate := range []int{o.registerRate, 0} {
		cpu0 := cpuTime()
		lat, elapsed, err := loadRun(ctx, o.registerClients, rate, o.registerDuration, call)
		cpu := cpuTime() - cpu0
		if err != nil {
			return err
		}
		mode := fmt.Sprintf("paced at %d req/s", rate)
		if rate == 0 {
			mode = "unpaced (each client back to back)"
		}
		slices.Sort(lat)
		fmt.Fprintf(out, "  %s: %d requests in %.1fs = %.0f req/s; latency p50 %s, p99 %s, max %s; CPU %.0f µs/request (client included)\n",
			mode, len(lat), elapsed.Seconds(), float64(len(lat))/elapsed.Seconds(),
			pct(lat, 0.50), pct(lat, 0.99), lat[len(lat)-1].Round(10*time.Microsecond), float64(cpu.Microseconds())/float64(len(lat)))
	}
	return nil
}

// loadRun runs call from clients goroutines for d. With rate > 0 the
// requests are paced open-loop (each client has its own schedule, latency
// counts from the scheduled start, so a stall shows up in the figures);
// with rate 0 each client calls back to back.
func loadRun(ctx context.Context, clients, rate int, d time.Duration, call func(*rand.Rand) error) ([]time.Duration, time.Duration, error) {
	var (
		mu    sync.Mutex
		lat   []time.Duration
		first error
		wg    sync.WaitGroup
	)
	start := time.Now()
	deadline := start.Add(d)
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(c), 1))
			var mine []time.Duration
			var interval time.Duration
			if rate > 0 {
				interval = time.Duration(float64(time.Second) * float64(clients) / float64(rate))
			}
			sched := start.Add(time.Duration(c) * interval / time.Duration(clients))
			for ctx.Err() == nil {
				if rate > 0 {
					if wait := time.Until(sched); wait > 0 {
						time.Sleep(wait)
					}
				} else {
					sched = time.Now()
				}
				if sched.After(deadline) {
					break
				}
				if err := call(rng); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
					return
				}
				mine = append(mine, time.Since(sched))
				sched = sched.Add(interval)
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}(c)
	}
	wg.Wait()
	if first != nil {
		return nil, 0, first
	}
	if len(lat) == 0 {
		return nil, 0, errors.New("no request completed")
	}
	return lat, time.Since(start), nil
}

func pct(sorted []time.Duration, p float64) time.Duration {
	return sorted[min(len(sorted)-1, int(float64(len(sorted))*p))].Round(10 * time.Microsecond)
}

// Resource figures.

type heapSampler struct {
	mu   sync.Mutex
	peak uint64
	quit chan struct{}
	done chan struct{}
}

type heapPoint struct {
	scanned  int64
	peakHeap uint64
	rss      uint64
}

// startHeapSampler tracks the peak of the live heap (as measured by the
// last GC) every 10ms.
func startHeapSampler() *heapSampler {
	s := &heapSampler{quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			metrics.Read(sample)
			s.mu.Lock()
			s.peak = max(s.peak, sample[0].Value.Uint64())
			s.mu.Unlock()
			select {
			case <-s.quit:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *heapSampler) point(scanned int64) heapPoint {
	s.mu.Lock()
	defer s.mu.Unlock()
	return heapPoint{scanned: scanned, peakHeap: s.peak, rss: procStatus("VmRSS")}
}

func (s *heapSampler) stop() {
	close(s.quit)
	<-s.done
}

func peakRSS() uint64 { return procStatus("VmHWM") }

// procStatus reads a memory figure (in kB) of /proc/self/status, in bytes.
func procStatus(field string) uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func mib(b uint64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

func fileSize(path string) string {
	fi, err := os.Stat(path)
	if err != nil {
		return "?"
	}
	return mib(uint64(fi.Size()))
}
