package cli

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
)

func mustTime(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		panic(err)
	}
	return t
}

func TestExitCodePerGRPCCode(t *testing.T) {
	tests := []struct {
		code codes.Code
		want int
	}{
		{codes.NotFound, ExitNotFound},
		{codes.InvalidArgument, ExitInvalid},
		{codes.OutOfRange, ExitInvalid},
		{codes.AlreadyExists, ExitConflict},
		{codes.FailedPrecondition, ExitConflict},
		{codes.Aborted, ExitConflict},
		{codes.Unavailable, ExitUnavailable},
		{codes.ResourceExhausted, ExitFailed},
		{codes.Internal, ExitFailed},
		{codes.PermissionDenied, ExitFailed},
		{codes.Unimplemented, ExitFailed},
	}
	h := newHarness(t)
	for _, tt := range tests {
		t.Run(tt.code.String(), func(t *testing.T) {
			h.journeys.get = func(context.Context, *deliveryv1.GetJourneyRequest) (*deliveryv1.GetJourneyResponse, error) {
				return nil, status.Error(tt.code, "the fake says no")
			}
			res := h.run(t, "journey", "get", "j-1")
			if res.code != tt.want {
				t.Errorf("exit: got %d, want %d (stderr %q)", res.code, tt.want, res.stderr)
			}
			if res.stdout != "" {
				t.Errorf("stdout: got %q, want nothing on failure", res.stdout)
			}
		})
	}
}

func TestErrorDetailsArePrinted(t *testing.T) {
	h := newHarness(t)
	h.profiles.importRows = nil
	h.profiles.get = func(context.Context, *profilev1.GetProfileRequest) (*profilev1.GetProfileResponse, error) {
		st, err := status.New(codes.InvalidArgument, "2 invalid fields").WithDetails(
			&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
				{Field: "profile.identity.namespace", Description: "must be lowercase letters, digits, '_' or '-'"},
				{Field: "profile.identity.value", Description: "must not be empty"},
			}},
		)
		if err != nil {
			t.Fatal(err)
		}
		return nil, st.Err()
	}
	res := h.run(t, "profile", "get", "--identity", "Customer=x")
	want := `pushctl: profilesvc: invalid argument: 2 invalid fields
  field profile.identity.namespace: must be lowercase letters, digits, '_' or '-'
  field profile.identity.value: must not be empty
`
	if res.stderr != want {
		t.Errorf("stderr:\n got %q\nwant %q", res.stderr, want)
	}
	if res.code != ExitInvalid {
		t.Errorf("exit: got %d, want %d", res.code, ExitInvalid)
	}

	h.apps.register = func(context.Context, *deliveryv1.RegisterAppRequest) (*deliveryv1.RegisterAppResponse, error) {
		st, _ := status.New(codes.FailedPrecondition, "credentials rejected by APNs").WithDetails(
			&errdetails.PreconditionFailure{Violations: []*errdetails.PreconditionFailure_Violation{
				{Type: "CREDENTIALS", Subject: "apns/com.acme.shop", Description: "403 InvalidProviderToken"},
			}},
		)
		return nil, st.Err()
	}
	sa := writeFile(t, "sa.json", serviceAccountJSON)
	res = h.run(t, "app", "register", "--platform", "fcm", "--app-id", "com.acme.shop", "--service-account", sa)
	want = `pushctl: deliverysvc: failed precondition: credentials rejected by APNs
  precondition CREDENTIALS apns/com.acme.shop: 403 InvalidProviderToken
`
	if res.stderr != want || res.code != ExitConflict {
		t.Errorf("got exit %d, stderr %q; want %d, %q", res.code, res.stderr, ExitConflict, want)
	}

	h.journeys.cancel = func(context.Context, *deliveryv1.CancelJourneyRequest) (*deliveryv1.CancelJourneyResponse, error) {
		st, _ := status.New(codes.ResourceExhausted, "too many requests").WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(2 * time.Second)})
		return nil, st.Err()
	}
	res = h.run(t, "journey", "cancel", "j-1")
	want = "pushctl: deliverysvc: resource exhausted: too many requests\n  retry after 2s\n"
	if res.stderr != want || res.code != ExitFailed {
		t.Errorf("got exit %d, stderr %q; want %d, %q", res.code, res.stderr, ExitFailed, want)
	}
}

func TestUnavailableNamesTheServiceAndHowToStartIt(t *testing.T) {
	addr := closedAddr(t)
	tests := []struct {
		args    []string
		service string
	}{
		{[]string{"--profile-addr", addr, "profile", "get", "--id", "p-1"}, "profilesvc"},
		{[]string{"--delivery-addr", addr, "journey", "list"}, "deliverysvc"},
		{[]string{"--tracking-addr", addr, "metrics", "--journey", "j-1"}, "trackingsvc"},
	}
	for _, tt := range tests {
		t.Run(tt.service, func(t *testing.T) {
			res := runCLI(t, nil, time.Now(), tt.args...)
			if res.code != ExitUnavailable {
				t.Errorf("exit: got %d, want %d", res.code, ExitUnavailable)
			}
			want := "pushctl: cannot reach " + tt.service + " at " + addr + ": is it running? (`pushctl dev` starts everything)\n"
			if !strings.HasPrefix(res.stderr, want) {
				t.Errorf("stderr: got %q, want it to start with %q", res.stderr, want)
			}
		})
	}
}

func TestImportUnavailable(t *testing.T) {
	addr := closedAddr(t)
	csv := writeFile(t, "crm.csv", "token,platform,app_id,customer_id,timestamp\naa,apns,a,c,1714557600\n")
	res := runCLI(t, nil, time.Now(), "--profile-addr", addr, "import", csv)
	if res.code != ExitUnavailable || !strings.Contains(res.stderr, "cannot reach profilesvc") {
		t.Errorf("got exit %d, stderr %q; want %d and the service named", res.code, res.stderr, ExitUnavailable)
	}
}

func TestTimeoutBoundsEachRequest(t *testing.T) {
	h := newHarness(t)
	h.journeys.get = func(ctx context.Context, _ *deliveryv1.GetJourneyRequest) (*deliveryv1.GetJourneyResponse, error) {
		<-ctx.Done() // the client's deadline travels with the call
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	res := h.run(t, "--timeout", "50ms", "journey", "get", "j-1")
	want := "pushctl: deliverysvc did not answer within 50ms; raise --timeout if the request is big\n"
	if res.stderr != want || res.code != ExitFailed {
		t.Errorf("got exit %d, stderr %q; want %d, %q", res.code, res.stderr, ExitFailed, want)
	}
}

func TestInterruptedExitCode(t *testing.T) {
	if got := ExitCode(context.Canceled); got != ExitInterrupted {
		t.Errorf("ExitCode(context.Canceled): got %d, want %d", got, ExitInterrupted)
	}
	err := (&Env{Global: Globals{ProfileAddr: "x:1"}}).rpcError(profileSvc, status.Error(codes.Canceled, "context canceled"))
	if got := ExitCode(err); got != ExitInterrupted {
		t.Errorf("ExitCode(Canceled status): got %d, want %d", got, ExitInterrupted)
	}
	if got := ExitCode(errors.New("boom")); got != ExitFailed {
		t.Errorf("ExitCode(other): got %d, want %d", got, ExitFailed)
	}
}

func TestUsageErrorsAndHelp(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{"help", []string{"help"}, ExitOK, "exit codes:", ""},
		{"help lists every exit code", []string{"help"}, ExitOK, "130  interrupted (Ctrl-C)", ""},
		{"help of a command", []string{"help", "journey", "publish"}, ExitOK, "usage: pushctl journey publish FILE.yaml|FILE.json [--dry-run] [--watch]", ""},
		{"-h on a leaf", []string{"import", "-h"}, ExitOK, "--batch int", ""},
		{"--help on a group", []string{"profile", "--help"}, ExitOK, "tokens  list a profile's push tokens", ""},
		{"no command", nil, ExitUsage, "", "usage: pushctl [global flags] COMMAND"},
		{"unknown command", []string{"sned"}, ExitUsage, "", `unknown command "sned" for pushctl`},
		{"group without subcommand", []string{"journey"}, ExitUsage, "", "journey needs a subcommand: publish, get, list, watch, cancel"},
		{"help of unknown", []string{"help", "nope"}, ExitUsage, "", `no help for "nope"`},
		{"bad global flag", []string{"--timeout", "soon", "app", "list"}, ExitUsage, "", `invalid value "soon" for --timeout`},
		{"bad tenant", []string{"--tenant", "Acme", "app", "list"}, ExitUsage, "", "--tenant: tenant id \"Acme\""},
		{"bad address", []string{"--profile-addr", "localhost", "profile", "get", "--id", "p"}, ExitUsage, "", `--profile-addr "localhost": want host:port`},
		{"missing argument", []string{"journey", "get"}, ExitUsage, "", "journey get takes exactly 1 argument(s): ID"},
		{"too many arguments", []string{"journey", "cancel", "a", "b"}, ExitUsage, "", "journey cancel takes exactly 1 argument(s)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := runCLI(t, nil, time.Now(), tt.args...)
			if res.code != tt.wantCode {
				t.Errorf("exit: got %d, want %d (stderr %q)", res.code, tt.wantCode, res.stderr)
			}
			if !strings.Contains(res.stdout, tt.wantStdout) {
				t.Errorf("stdout: got %q, want it to contain %q", res.stdout, tt.wantStdout)
			}
			if !strings.Contains(res.stderr, tt.wantStderr) {
				t.Errorf("stderr: got %q, want it to contain %q", res.stderr, tt.wantStderr)
			}
		})
	}
}

func TestGlobalsFromEnvironmentAndFlags(t *testing.T) {
	h := newHarness(t)
	h.journeys.get = func(ctx context.Context, r *deliveryv1.GetJourneyRequest) (*deliveryv1.GetJourneyResponse, error) {
		h.sawTenant(ctx)
		return &deliveryv1.GetJourneyResponse{Journey: &deliveryv1.Journey{JourneyId: r.GetJourneyId(), Name: "n"}}, nil
	}
	h.env["PUSHCTL_TENANT"] = "from-env"
	h.env["PUSHCTL_JSON"] = "true"
	res := h.run(t, "journey", "get", "j-1")
	if res.code != 0 || !strings.HasPrefix(res.stdout, "{") {
		t.Errorf("PUSHCTL_JSON=true: got exit %d, stdout %q; want a JSON document", res.code, res.stdout)
	}
	// A flag after the command wins over one before it, which wins over the
	// environment.
	res = h.run(t, "--tenant", "before", "journey", "get", "j-1", "--tenant", "after", "--json=false")
	if res.code != 0 || strings.HasPrefix(res.stdout, "{") {
		t.Errorf("--json=false: got exit %d, stdout %q; want text", res.code, res.stdout)
	}
	if got, want := strings.Join(h.tenants, ","), "from-env,after"; got != want {
		t.Errorf("tenants: got %q, want %q", got, want)
	}

	h.env["PUSHCTL_TIMEOUT"] = "later"
	res = h.run(t, "journey", "get", "j-1")
	if res.code != ExitUsage || !strings.Contains(res.stderr, `PUSHCTL_TIMEOUT="later"`) {
		t.Errorf("bad PUSHCTL_TIMEOUT: got exit %d, stderr %q", res.code, res.stderr)
	}
}

func TestDefaultAddressesFromEnvironment(t *testing.T) {
	h := newHarness(t)
	h.journeys.get = func(_ context.Context, r *deliveryv1.GetJourneyRequest) (*deliveryv1.GetJourneyResponse, error) {
		return &deliveryv1.GetJourneyResponse{Journey: &deliveryv1.Journey{JourneyId: r.GetJourneyId()}}, nil
	}
	env := map[string]string{"PUSHCTL_DELIVERY_ADDR": h.addr}
	res := runCLI(t, env, time.Now(), "journey", "get", "j-9")
	if res.code != 0 || !strings.Contains(res.stdout, "j-9") {
		t.Errorf("PUSHCTL_DELIVERY_ADDR: got exit %d, stdout %q, stderr %q", res.code, res.stdout, res.stderr)
	}
}

func TestCodeIsNotRepeated(t *testing.T) {
	h := newHarness(t)
	h.journeys.get = func(context.Context, *deliveryv1.GetJourneyRequest) (*deliveryv1.GetJourneyResponse, error) {
		return nil, status.Error(codes.InvalidArgument, "invalid argument: journey_id: must not be empty")
	}
	res := h.run(t, "journey", "get", "x")
	if want := "pushctl: deliverysvc: invalid argument: journey_id: must not be empty\n"; res.stderr != want {
		t.Errorf("stderr: got %q, want %q", res.stderr, want)
	}
}

// A service that is up but answers Unavailable (deliverysvc when profilesvc
// or a gateway is down) is not reported as unreachable itself: its message,
// naming what is down, is.
func TestUnavailableAnsweredByTheServiceKeepsItsMessage(t *testing.T) {
	h := newHarness(t)
	const msg = "cannot reach profilesvc at 127.0.0.1:7101 (--profile-addr of deliverysvc): connection refused"
	h.journeys.get = func(context.Context, *deliveryv1.GetJourneyRequest) (*deliveryv1.GetJourneyResponse, error) {
		return nil, status.Error(codes.Unavailable, msg)
	}
	res := h.run(t, "journey", "get", "j-1")
	want := "pushctl: deliverysvc: unavailable: " + msg + "\n"
	if res.stderr != want || res.code != ExitUnavailable {
		t.Errorf("unary: got exit %d, stderr %q; want %d, %q", res.code, res.stderr, ExitUnavailable, want)
	}
	h.journeys.watch = func(*deliveryv1.WatchJourneyRequest, grpc.ServerStreamingServer[deliveryv1.WatchJourneyResponse]) error {
		return status.Error(codes.Unavailable, msg)
	}
	res = h.run(t, "journey", "watch", "j-1")
	if res.stderr != want || res.code != ExitUnavailable {
		t.Errorf("stream: got exit %d, stderr %q; want %d, %q", res.code, res.stderr, ExitUnavailable, want)
	}
}
