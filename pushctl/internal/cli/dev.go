package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	"github.com/pushmesh/pushmesh/pushctl/internal/demo"
	"github.com/pushmesh/pushmesh/pushctl/internal/mesh"
	"github.com/pushmesh/pushmesh/pushctl/internal/render"
	trackingserver "github.com/pushmesh/pushmesh/trackingsvc/server"
)

// devOptions are the flags of `pushctl dev`.
type devOptions struct {
	dataDir   string
	profiles  int
	seed      uint64
	apnsAddr  string
	fcmAddr   string
	httpAddr  string
	keepAlive bool
}

func devCommand() *Command {
	var o devOptions
	cmd := &Command{
		Name:    "dev",
		Args:    "[--data-dir DIR] [--profiles N] [--seed N] [--keep-running=false] [--tracking-http-addr ADDR]",
		Summary: "run all of pushmesh locally with the gateway emulators and a demo journey",
		Help: `Starts profilesvc, deliverysvc and trackingsvc on the --profile-addr,
--delivery-addr and --tracking-addr addresses (trackingsvc's HTTP endpoint
for SDKs, POST /v1/events, on --tracking-http-addr), and the APNs and FCM
gateway emulators on loopback, with their data in --data-dir. That folder is emptied
at each start, but only if pushctl dev made it (it holds a .pushctl-dev file):
a non-empty folder without that file is refused (exit 2), never wiped.
It registers three demo apps with generated credentials, imports a demo CRM
population (customers with 1-4 devices, iOS and Android, a few dead tokens,
opted-out and device-less customers), publishes a demo journey, prints its
outcome, and keeps running so you can explore with pushctl and grpcurl
(--keep-running=false exits after the outcome instead).
Ctrl-C stops everything cleanly. Service logs go to DIR/services.log.
The services serve plaintext on loopback: --tls-ca, --tls-cert, --tls-key
and --tls-server-name are ignored here.`,
		MaxArgs: 0,
		Flags: func(fs *flag.FlagSet) {
			fs.StringVar(&o.dataDir, "data-dir", defaultDevDataDir, "folder for the services' data and logs; emptied at start if pushctl dev made it, refused if it holds anything else")
			fs.IntVar(&o.profiles, "profiles", 10_000, "demo customers with devices")
			fs.Uint64Var(&o.seed, "seed", 1, "seed of the demo population")
			fs.StringVar(&o.apnsAddr, "apns-addr", "127.0.0.1:7443", "APNs emulator address")
			fs.StringVar(&o.fcmAddr, "fcm-addr", "127.0.0.1:7444", "FCM emulator address")
			fs.StringVar(&o.httpAddr, "tracking-http-addr", trackingserver.DefaultHTTPListen, "trackingsvc's HTTP/JSON endpoint for mobile SDKs (POST /v1/events); empty disables it")
			fs.BoolVar(&o.keepAlive, "keep-running", true, "keep serving after the demo journey until Ctrl-C; --keep-running=false exits")
		},
	}
	cmd.Run = func(ctx context.Context, e *Env, _ []string) error {
		if o.profiles < 1 {
			return usagef(cmd, "--profiles must be at least 1")
		}
		return runDev(ctx, e, cmd, o)
	}
	return cmd
}

func runDev(ctx context.Context, e *Env, cmd *Command, o devOptions) error {
	// The local mesh serves plaintext on loopback, and the demo dials it
	// through e: TLS flags (or PUSHCTL_TLS_* left in the environment) would
	// only make those calls fail.
	if e.Global.tlsFiles().Enabled() {
		fmt.Fprintln(e.Stderr, "pushctl dev: the local mesh serves plaintext on loopback; ignoring --tls-ca, --tls-cert, --tls-key and --tls-server-name")
		e.Global.TLSCA, e.Global.TLSCert, e.Global.TLSKey, e.Global.TLSServerName = "", "", "", ""
	}
	if err := prepareDevDataDir(cmd, o.dataDir); err != nil {
		return err
	}
	logFile, err := os.OpenFile(filepath.Join(o.dataDir, "services.log"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer logFile.Close()

	started := time.Now()
	m, err := mesh.Start(ctx, mesh.Options{
		DataDir:            o.dataDir,
		ProfileListen:      e.Global.ProfileAddr,
		DeliveryListen:     e.Global.DeliveryAddr,
		TrackingListen:     e.Global.TrackingAddr,
		APNsListen:         o.apnsAddr,
		FCMListen:          o.fcmAddr,
		TrackingHTTPListen: o.httpAddr,
		Logger:             slog.New(slog.NewTextHandler(logFile, nil)),
		Seed:               int64(o.seed),
	})
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return fmt.Errorf("start the mesh: %w\n  is another pushctl dev running? Free addresses can be given with --profile-addr, --delivery-addr, --tracking-addr, --tracking-http-addr, --apns-addr and --fcm-addr", err)
		}
		return fmt.Errorf("start the mesh: %w", err)
	}
	defer func() {
		e.print("\nstopping…")
		if err := m.Close(); err != nil {
			e.print("\n")
			fmt.Fprintf(e.Stderr, "pushctl dev: stop: %v\n", err)
			return
		}
		e.print(" stopped\n")
	}()
	// The addresses the services really listen on (a :0 port is chosen at
	// start): the watch below and error messages dial through e.
	e.Global.ProfileAddr, e.Global.DeliveryAddr, e.Global.TrackingAddr = m.ProfileAddr, m.DeliveryAddr, m.TrackingAddr
	caFile := filepath.Join(o.dataDir, "emulator-ca.pem")
	if err := m.CA.WriteCertFile(caFile); err != nil {
		return err
	}
	fmt.Fprintf(e.Stdout, "pushmesh is up in %s\n", render.Duration(time.Since(started)))
	fmt.Fprintf(e.Stdout, "  profilesvc   %s\n  deliverysvc  %s\n  trackingsvc  %s", m.ProfileAddr, m.DeliveryAddr, m.TrackingAddr)
	if m.TrackingHTTPAddr != "" {
		fmt.Fprintf(e.Stdout, "   HTTP %s (POST /v1/events)", m.TrackingHTTPAddr)
	}
	fmt.Fprintln(e.Stdout)
	fmt.Fprintf(e.Stdout, "  APNs emulator %s   FCM emulator %s   CA %s\n\n", m.APNs.URL(), m.FCM.URL(), caFile)

	if err := seedDemo(ctx, e, m, o); err != nil {
		return err
	}

	j, err := unary(ctx, e, deliverySvc, m.Journeys.PublishJourney, &deliveryv1.PublishJourneyRequest{Journey: demo.Journey()})
	if err != nil {
		return err
	}
	id := j.GetJourney().GetJourneyId()
	fmt.Fprintf(e.Stdout, "published journey %s %q\n", id, j.GetJourney().GetName())
	if err := watchJourney(ctx, e, id, 250*time.Millisecond); err != nil {
		return err
	}
	apnsCount, fcmCount := m.APNs.Count(), m.FCM.Count()
	fmt.Fprintf(e.Stdout, "\nthe emulators received: APNs %+v\n                       FCM  %+v\n", apnsCount, fcmCount)

	if !o.keepAlive {
		return nil
	}
	fmt.Fprintf(e.Stdout, `
pushmesh keeps running; try, in another terminal:
  go run ./pushctl/cmd/pushctl journey list
  go run ./pushctl/cmd/pushctl metrics --journey %s
  go run ./pushctl/cmd/pushctl profile tokens --identity customer_id=C-000001 --history --inactive
  grpcurl -plaintext %s list
Press Ctrl-C to stop.
`, id, m.ProfileAddr)
	<-ctx.Done()
	return nil
}

// devMarker is the file pushctl dev writes in its data dir. Only a folder
// holding it is emptied at start: --data-dir pointed at anything else (a
// service's real data dir, a home folder) is refused, not wiped.
const devMarker = ".pushctl-dev"

// defaultDevDataDir is the default --data-dir, the one `make dev` uses.
var defaultDevDataDir = filepath.Join(".pushmesh", "dev")

// prepareDevDataDir makes dir ready for a fresh run: created if missing,
// emptied if pushctl dev made it, and marked. A non-empty folder without the
// marker is a usage error and is left untouched.
func prepareDevDataDir(cmd *Command, dir string) error {
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
	case err != nil:
		return err
	case !fi.IsDir():
		return usagef(cmd, "--data-dir %s is not a folder", dir)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	if len(entries) > 0 && !isDevDataDir(dir, entries) {
		return usagef(cmd, "refusing to wipe --data-dir %s: it is not empty and pushctl dev did not make it (no %s file); give a new or empty folder", dir, devMarker)
	}
	// Empty the folder rather than replace it, so a symlinked folder stays
	// one; the marker stays, so an interrupted wipe leaves a folder that is
	// still recognized.
	for _, en := range entries {
		if en.Name() == devMarker {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, en.Name())); err != nil {
			return fmt.Errorf("wipe %s: %w", dir, err)
		}
	}
	return os.WriteFile(filepath.Join(dir, devMarker),
		[]byte("Made by `pushctl dev`, which empties this folder each time it starts.\n"), 0o600)
}

// isDevDataDir reports whether the non-empty folder dir was made by pushctl
// dev: it holds the marker file, or it is the default folder with exactly
// the layout pushctl dev left there before it wrote markers.
func isDevDataDir(dir string, entries []fs.DirEntry) bool {
	if fi, err := os.Lstat(filepath.Join(dir, devMarker)); err == nil && fi.Mode().IsRegular() {
		return true
	}
	if filepath.Clean(dir) != defaultDevDataDir {
		return false
	}
	log := false
	for _, en := range entries {
		switch en.Name() {
		case "services.log":
			log = en.Type().IsRegular()
		case "emulator-ca.pem":
			if !en.Type().IsRegular() {
				return false
			}
		case "profilesvc", "deliverysvc", "trackingsvc":
			if !en.IsDir() {
				return false
			}
		default:
			return false
		}
	}
	return log
}

// seedDemo registers the demo apps and imports the demo population.
func seedDemo(ctx context.Context, e *Env, m *mesh.Mesh, o devOptions) error {
	reqs, err := demo.AppRequests(m.APNs, m.FCM)
	if err != nil {
		return err
	}
	for _, r := range reqs {
		if _, err := unary(ctx, e, deliverySvc, m.Apps.RegisterApp, r); err != nil {
			return err
		}
	}
	fmt.Fprintf(e.Stdout, "registered %d apps (credentials validated live against the emulators)\n", len(reqs))

	registered := time.Now().Add(-24 * time.Hour)
	pop := demo.NewPopulation(o.profiles, o.seed, registered)
	pop.MarkDead(m.APNs, m.FCM, time.Now().Add(-time.Hour))

	start := time.Now()
	stream, err := m.Profiles.ImportTokens(ctx)
	if err != nil {
		return e.rpcError(profileSvc, err)
	}
	const batch = 5000
	for i := 0; i < len(pop.Rows); i += batch {
		if err := stream.Send(&profilev1.ImportTokensRequest{Rows: pop.Rows[i:min(i+batch, len(pop.Rows))]}); err != nil && !errors.Is(err, io.EOF) {
			return e.rpcError(profileSvc, err)
		}
	}
	res, err := stream.CloseAndRecv()
	if err != nil {
		return e.rpcError(profileSvc, err)
	}
	fmt.Fprintf(e.Stdout, "imported %s CRM rows in %s: %s profiles created, %s tokens (%d will turn out dead), %s rejected\n",
		render.Count(res.GetRows()), render.Duration(time.Since(start)), render.Count(res.GetProfilesCreated()),
		render.Count(res.GetCreated()), len(pop.Dead), render.Count(res.GetRejected()))

	optOut := &profilev1.PushConsent{State: profilev1.ConsentState_CONSENT_STATE_OPTED_OUT, UpdateTime: timestamppb.Now()}
	for _, c := range pop.OptedOut {
		if _, err := unary(ctx, e, profileSvc, m.Profiles.UpsertProfile, &profilev1.UpsertProfileRequest{
			Identities: []*profilev1.Identity{{Namespace: "customer_id", Value: c}}, Consent: optOut,
		}); err != nil {
			return err
		}
	}
	for _, c := range pop.Tokenless {
		if _, err := unary(ctx, e, profileSvc, m.Profiles.UpsertProfile, &profilev1.UpsertProfileRequest{
			Identities: []*profilev1.Identity{{Namespace: "customer_id", Value: c}},
			Attributes: goldAttributes(),
		}); err != nil {
			return err
		}
	}
	fmt.Fprintf(e.Stdout, "%d customers opted out of push, %d gold customers have no device\n", len(pop.OptedOut), len(pop.Tokenless))
	return nil
}

func goldAttributes() *structpb.Struct {
	s, _ := structpb.NewStruct(map[string]any{"tier": "gold", "locale": "en-US", "firstName": "Sam"})
	return s
}
