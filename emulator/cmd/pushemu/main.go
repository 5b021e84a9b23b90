// Command pushemu runs the APNs and FCM gateway emulators as a standalone
// process, for integration tests and local runs outside Go.
//
// It prints the emulators' URLs and the CA certificate path, optionally
// creates credentials (an APNs .p8 key, an FCM service-account JSON) and
// writes them to files, and serves each emulator's admin API under
// /_emulator/. See emulator/README.md.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/pushmesh/pushmesh/emulator/apns"
	"github.com/pushmesh/pushmesh/emulator/fault"
	"github.com/pushmesh/pushmesh/emulator/fcm"
	"github.com/pushmesh/pushmesh/emulator/tlsca"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "pushemu:", err)
		os.Exit(2)
	}
}

// config holds the parsed flags.
type config struct {
	apnsAddr, fcmAddr string
	caFile            string
	infoOut           string
	seed              int64
	quota             int
	maxLog            int
	apnsMaxStreams    int
	logLevel          string
	faults            fault.Faults
	dropMode          string

	apnsTeam, apnsKeyID, apnsTopics, apnsP8Out string
	fcmProject, fcmSAOut                       string
}

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	var c config
	fs := flag.NewFlagSet("pushemu", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.apnsAddr, "apns-addr", "127.0.0.1:2197", `APNs emulator listen address ("off" disables it)`)
	fs.StringVar(&c.fcmAddr, "fcm-addr", "127.0.0.1:9443", `FCM emulator listen address ("off" disables it)`)
	fs.StringVar(&c.caFile, "ca-file", filepath.Join(os.TempDir(), "pushemu-ca.pem"), "where to write the CA certificate (PEM) clients must trust")
	fs.StringVar(&c.infoOut, "info-out", "", "optional file to write the addresses and file paths to, as JSON")
	fs.Int64Var(&c.seed, "seed", 1, "seed for deterministic fault injection")
	fs.IntVar(&c.quota, "quota", fcm.DefaultQuotaPerMinute, "FCM sends per project per minute")
	fs.IntVar(&c.maxLog, "max-log", 1_000_000, "requests kept for inspection per emulator (oldest dropped)")
	fs.IntVar(&c.apnsMaxStreams, "apns-max-streams", 1000, "SETTINGS_MAX_CONCURRENT_STREAMS per APNs connection (Apple: 1,000, or 1 after a rejected push)")
	fs.StringVar(&c.logLevel, "log-level", "info", "info or debug (debug logs every rejected request)")

	fs.Float64Var(&c.faults.TooManyRequestsRate, "error-429", 0, "fraction of valid requests answered 429 (APNs TooManyRequests, FCM QUOTA_EXCEEDED)")
	fs.Float64Var(&c.faults.InternalErrorRate, "error-500", 0, "fraction of valid requests answered 500")
	fs.Float64Var(&c.faults.UnavailableRate, "error-503", 0, "fraction of valid requests answered 503")
	fs.DurationVar(&c.faults.RetryAfter, "retry-after", time.Second, "Retry-After sent with 429 and 503")
	fs.DurationVar(&c.faults.Latency, "latency", 0, "latency added to every request")
	fs.DurationVar(&c.faults.Jitter, "jitter", 0, "uniform random latency in [0, jitter) added on top of --latency")
	fs.IntVar(&c.faults.DropEvery, "drop-every", 0, "drop the connection of every Nth valid request (0: never)")
	fs.Float64Var(&c.faults.DropRate, "drop-rate", 0, "fraction of valid requests whose connection is dropped")
	fs.StringVar(&c.dropMode, "drop-mode", "goaway", "how to drop a connection: goaway (graceful) or close (TCP reset)")

	fs.StringVar(&c.apnsTeam, "apns-team", "", "create an APNs provider key for this team ID (with --apns-key-id)")
	fs.StringVar(&c.apnsKeyID, "apns-key-id", "", "key ID of the created APNs provider key")
	fs.StringVar(&c.apnsTopics, "apns-topics", "", "comma-separated bundle IDs to register for --apns-team")
	fs.StringVar(&c.apnsP8Out, "apns-p8-out", "", "file to write the created .p8 key to")
	fs.StringVar(&c.fcmProject, "fcm-project", "", "create an FCM service account for this project ID")
	fs.StringVar(&c.fcmSAOut, "fcm-sa-out", "", "file to write the created service-account JSON to")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	c.faults.DropMode = fault.DropMode(c.dropMode)
	if err := c.faults.Validate(); err != nil {
		return nil, err
	}
	if c.apnsAddr == "off" && c.fcmAddr == "off" {
		return nil, errors.New("both emulators are off: nothing to run")
	}
	if (c.apnsTeam == "") != (c.apnsKeyID == "") {
		return nil, errors.New("--apns-team and --apns-key-id go together")
	}
	if (c.apnsP8Out != "" || c.apnsTopics != "") && c.apnsTeam == "" {
		return nil, errors.New("--apns-p8-out and --apns-topics need --apns-team and --apns-key-id")
	}
	if c.fcmSAOut != "" && c.fcmProject == "" {
		return nil, errors.New("--fcm-sa-out needs --fcm-project")
	}
	switch c.logLevel {
	case "info", "debug":
	default:
		return nil, fmt.Errorf("--log-level %q is neither info nor debug", c.logLevel)
	}
	return &c, nil
}

// info is what pushemu prints and writes to --info-out.
type info struct {
	APNsURL           string `json:"apns_url,omitempty"`
	FCMURL            string `json:"fcm_url,omitempty"`
	FCMEndpoint       string `json:"fcm_endpoint,omitempty"`
	FCMTokenURI       string `json:"fcm_token_uri,omitempty"`
	CAFile            string `json:"ca_file"`
	APNsTeamID        string `json:"apns_team_id,omitempty"`
	APNsKeyID         string `json:"apns_key_id,omitempty"`
	APNsP8File        string `json:"apns_p8_file,omitempty"`
	FCMProject        string `json:"fcm_project,omitempty"`
	FCMServiceAccount string `json:"fcm_service_account_file,omitempty"`
	APNsAdminURL      string `json:"apns_admin_url,omitempty"`
	FCMAdminURL       string `json:"fcm_admin_url,omitempty"`
	StartedUnix       int64  `json:"started_unix"`
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	level := slog.LevelInfo
	if c.logLevel == "debug" {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	ca, err := tlsca.New()
	if err != nil {
		return err
	}
	if err := ca.WriteCertFile(c.caFile); err != nil {
		return err
	}
	inf := info{CAFile: c.caFile, StartedUnix: time.Now().Unix()}

	var stoppers []func(context.Context) error
	defer func() {
		// Stop gracefully: HTTP/2 clients get a GOAWAY, in-flight
		// requests get five seconds.
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for _, stop := range stoppers {
			if err := stop(sctx); err != nil {
				logger.Warn("shutdown", "err", err)
			}
		}
	}()

	if c.apnsAddr != "off" {
		srv, err := apns.Start(apns.Options{Addr: c.apnsAddr, CA: ca, Seed: c.seed, Logger: logger, MaxLog: c.maxLog, MaxConcurrentStreams: c.apnsMaxStreams})
		if err != nil {
			return err
		}
		stoppers = append(stoppers, srv.Shutdown)
		if err := srv.SetFaults(c.faults); err != nil {
			return err
		}
		inf.APNsURL, inf.APNsAdminURL = srv.URL(), srv.URL()+"/_emulator/"
		if c.apnsTeam != "" {
			p8, _, err := srv.NewProviderKey(c.apnsTeam, c.apnsKeyID)
			if err != nil {
				return err
			}
			inf.APNsTeamID, inf.APNsKeyID = c.apnsTeam, c.apnsKeyID
			for _, topic := range strings.Split(c.apnsTopics, ",") {
				if topic = strings.TrimSpace(topic); topic != "" {
					srv.RegisterTopic(c.apnsTeam, topic)
				}
			}
			if c.apnsP8Out != "" {
				if err := writeSecret(c.apnsP8Out, p8); err != nil {
					return err
				}
				inf.APNsP8File = c.apnsP8Out
			}
		}
	}
	if c.fcmAddr != "off" {
		srv, err := fcm.Start(fcm.Options{Addr: c.fcmAddr, CA: ca, Seed: c.seed, Logger: logger, QuotaPerMinute: c.quota, MaxLog: c.maxLog})
		if err != nil {
			return err
		}
		stoppers = append(stoppers, srv.Shutdown)
		if err := srv.SetFaults(c.faults); err != nil {
			return err
		}
		inf.FCMURL, inf.FCMEndpoint, inf.FCMTokenURI = srv.URL(), srv.URL()+"/v1", srv.TokenURL()
		inf.FCMAdminURL = srv.URL() + "/_emulator/"
		if c.fcmProject != "" {
			saJSON, _, err := srv.NewServiceAccount(c.fcmProject)
			if err != nil {
				return err
			}
			inf.FCMProject = c.fcmProject
			if c.fcmSAOut != "" {
				if err := writeSecret(c.fcmSAOut, saJSON); err != nil {
					return err
				}
				inf.FCMServiceAccount = c.fcmSAOut
			}
		}
	}

	if inf.APNsURL != "" {
		fmt.Fprintf(stdout, "pushemu: APNs  %s  (admin %s)\n", inf.APNsURL, inf.APNsAdminURL)
	}
	if inf.FCMURL != "" {
		fmt.Fprintf(stdout, "pushemu: FCM   %s  (endpoint %s, token_uri %s, admin %s)\n", inf.FCMURL, inf.FCMEndpoint, inf.FCMTokenURI, inf.FCMAdminURL)
	}
	fmt.Fprintf(stdout, "pushemu: CA    %s\n", inf.CAFile)
	if inf.APNsP8File != "" {
		fmt.Fprintf(stdout, "pushemu: APNs key  team %s key %s  %s\n", inf.APNsTeamID, inf.APNsKeyID, inf.APNsP8File)
	}
	if inf.FCMServiceAccount != "" {
		fmt.Fprintf(stdout, "pushemu: FCM service account  project %s  %s\n", inf.FCMProject, inf.FCMServiceAccount)
	}
	if c.infoOut != "" {
		b, _ := json.MarshalIndent(inf, "", "  ")
		if err := writeFile(c.infoOut, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}

	<-ctx.Done()
	logger.Info("stopping")
	return nil
}

// writeSecret writes credentials readable by the owner only.
func writeSecret(path string, b []byte) error { return writeFile(path, b, 0o600) }

// writeFile writes b to path with mode, through a new temporary file and a
// rename so a reader never sees half a file. The temporary file is created
// afresh (os.CreateTemp: a random name, O_EXCL, mode 0600) rather than at a
// fixed name: a leftover or planted path+".tmp" would keep its own, looser
// mode, or, as a symlink (the default --ca-file is in the shared temp
// folder), make the write land in another file.
func writeFile(path string, b []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	_, werr := tmp.Write(b)
	merr := tmp.Chmod(mode)
	cerr := tmp.Close()
	if err := errors.Join(werr, merr, cerr); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
