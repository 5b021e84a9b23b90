package grpcapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	"github.com/pushmesh/pushmesh/profilesvc/internal/profile"
	"github.com/pushmesh/pushmesh/profilesvc/internal/store"
	"github.com/pushmesh/pushmesh/servicekit/boltdb"
	"github.com/pushmesh/pushmesh/servicekit/logtest"
)

// The stress test hammers one profilesvc (real bbolt, real loopback gRPC)
// from many goroutines with interleaved mutations and readers, then checks
// the final state through the API and the buckets themselves. It runs in
// two phases:
//
//   - convergence: only operations whose outcome the rules make order
//     independent (registrations and import rows with source times,
//     gateway verdicts with gateway times, consent with its time), over a
//     universe small enough that no profile reaches a cap. The same
//     operations are then replayed in another order on a fresh store: both
//     must end in the same state, and that state must be the one the rules
//     predict (the newest registration owns each token; a token is active
//     exactly when its newest registration is newer than the newest
//     verdict).
//   - chaos: the same plus deletions, unregistrations, identity conflicts,
//     attribute writes, registrations by (possibly deleted) profile id and
//     one customer driven past its 100-token cap; only structural
//     invariants are checked.
//
// Every call must end in a code the API documents for it: OK, NotFound,
// AlreadyExists, FailedPrecondition. Never Internal, Aborted, Unavailable
// or Unknown.

// stressEnv is an env whose service log is kept, to show why a call failed
// with Internal.
type stressEnv struct {
	*env
	log *logtest.Buffer
}

func newStressEnv(t testing.TB, opts store.Options) *stressEnv {
	t.Helper()
	logs := &logtest.Buffer{}
	return &stressEnv{env: newEnvLogging(t, opts, logs), log: logs}
}

// atMs is base plus ms milliseconds.
func atMs(ms int) *timestamppb.Timestamp {
	return timestamppb.New(base.Add(time.Duration(ms) * time.Millisecond))
}

// stressToken is token number i of the convergence universe: FCM tokens,
// then APNs tokens (which carry an environment).
func stressToken(i int) (string, commonv1.Platform) {
	if i%4 == 3 {
		return fmt.Sprintf("%064x", 0xa000+i), apns
	}
	return fmt.Sprintf("stress-token-%03d", i), fcm
}

func stressCustomer(i int) string { return fmt.Sprintf("stress-c%d", i) }

// stressOp is one call; run performs it and returns its error.
type stressOp struct {
	name string
	run  func(ctx context.Context, c profilev1.ProfileServiceClient) error
	// For the oracle of the convergence phase (register and import rows:
	// token, customer, time; feedback: token, time).
	regs     []stressReg
	verdicts []stressVerdict
}

type stressReg struct {
	token    int
	customer int
	ms       int
}

type stressVerdict struct {
	token int
	ms    int
}

const (
	stressTokens    = 40
	stressCustomers = 8
	stressDevices   = 6
)

// stressTime draws a source or gateway time, in milliseconds after base,
// from few enough values that registrations and verdicts often tie (ties
// are where arrival order could leak into the result).
func stressTime(rng *rand.Rand) int { return 1000 * (1 + rng.IntN(*stressTimes)) }

// convergentOps makes n order-independent operations with rng.
func convergentOps(rng *rand.Rand, n int) []stressOp {
	ops := make([]stressOp, 0, n)
	device := func() string {
		if rng.IntN(2) == 0 {
			return ""
		}
		return fmt.Sprintf("dev-%d", rng.IntN(stressDevices))
	}
	env := func(p commonv1.Platform) commonv1.ApnsEnvironment {
		if p != apns {
			return commonv1.ApnsEnvironment_APNS_ENVIRONMENT_UNSPECIFIED
		}
		return commonv1.ApnsEnvironment(1 + rng.IntN(2))
	}
	for range n {
		switch k := rng.IntN(10); {
		case k < 4: // RegisterPushToken
			ti, ci, ms := rng.IntN(stressTokens), rng.IntN(stressCustomers), stressTime(rng)
			tok, p := stressToken(ti)
			req := &profilev1.RegisterPushTokenRequest{Profile: byCustomer(stressCustomer(ci)), Token: tok, Platform: p, AppId: "app",
				ApnsEnvironment: env(p), DeviceId: device(), SourceTime: atMs(ms)}
			ops = append(ops, stressOp{name: "register", regs: []stressReg{{ti, ci, ms}},
				run: func(ctx context.Context, c profilev1.ProfileServiceClient) error {
					_, err := c.RegisterPushToken(ctx, req)
					return err
				}})
		case k < 6: // ReportTokenFeedback
			var fb []*profilev1.TokenFeedback
			var vs []stressVerdict
			for range 1 + rng.IntN(4) {
				ti, ms := rng.IntN(stressTokens), stressTime(rng)
				tok, p := stressToken(ti)
				reason := profilev1.FeedbackReason(1 + rng.IntN(4))
				fb = append(fb, &profilev1.TokenFeedback{Token: tok, Platform: p, AppId: "app", Reason: reason, GatewayTime: atMs(ms)})
				vs = append(vs, stressVerdict{ti, ms})
			}
			ops = append(ops, stressOp{name: "feedback", verdicts: vs,
				run: func(ctx context.Context, c profilev1.ProfileServiceClient) error {
					_, err := c.ReportTokenFeedback(ctx, &profilev1.ReportTokenFeedbackRequest{Feedback: fb})
					return err
				}})
		case k < 8: // ImportTokens
			var rows []*profilev1.ImportRow
			var regs []stressReg
			for range 5 + rng.IntN(40) {
				ti, ci, ms := rng.IntN(stressTokens), rng.IntN(stressCustomers), stressTime(rng)
				tok, p := stressToken(ti)
				row := &profilev1.ImportRow{Token: tok, Platform: p, AppId: "app", CustomerId: stressCustomer(ci),
					SourceTime: atMs(ms), ApnsEnvironment: env(p), DeviceId: device()}
				if rng.IntN(3) == 0 { // merged as of the row's time: order independent too
					key := fmt.Sprintf("a%d", rng.IntN(3))
					row.Attributes = &structpb.Struct{Fields: map[string]*structpb.Value{key: structpb.NewNumberValue(float64(rng.IntN(5)))}}
					if rng.IntN(4) == 0 {
						row.Attributes.Fields[key] = structpb.NewNullValue()
					}
				}
				rows = append(rows, row)
				regs = append(regs, stressReg{ti, ci, ms})
			}
			ops = append(ops, stressOp{name: "import", regs: regs,
				run: func(ctx context.Context, c profilev1.ProfileServiceClient) error {
					return importRows(ctx, c, rows, 7)
				}})
		default: // consent, dated by the source
			ci, ms := rng.IntN(stressCustomers), stressTime(rng)
			req := &profilev1.UpsertProfileRequest{
				Identities: []*profilev1.Identity{{Namespace: "customer_id", Value: stressCustomer(ci)}},
				Consent:    &profilev1.PushConsent{State: profilev1.ConsentState(1 + rng.IntN(2)), UpdateTime: atMs(ms)},
			}
			ops = append(ops, stressOp{name: "consent",
				run: func(ctx context.Context, c profilev1.ProfileServiceClient) error {
					_, err := c.UpsertProfile(ctx, req)
					return err
				}})
		}
	}
	return ops
}

// importRows streams rows perMsg at a time and returns the call's error.
func importRows(ctx context.Context, c profilev1.ProfileServiceClient, rows []*profilev1.ImportRow, perMsg int) error {
	stream, err := c.ImportTokens(ctx)
	if err != nil {
		return err
	}
	for i := 0; i < len(rows); i += perMsg {
		if err := stream.Send(&profilev1.ImportTokensRequest{Rows: rows[i:min(len(rows), i+perMsg)]}); err != nil {
			break // the status comes from CloseAndRecv
		}
	}
	resp, err := stream.CloseAndRecv()
	if err == nil && resp.GetRejected() > 0 {
		// Only a row over a cap is rejected here (every row is valid).
		return status.Errorf(codes.FailedPrecondition, "import rejected rows: %v", resp.GetRejectedRows())
	}
	return err
}

// readerOps are calls that only read; they run alongside the mutations.
func readerOp(rng *rand.Rand, customers int) stressOp {
	ci := rng.IntN(customers)
	switch rng.IntN(3) {
	case 0:
		return stressOp{name: "query", run: func(ctx context.Context, c profilev1.ProfileServiceClient) error {
			return drainAudience(ctx, c, &profilev1.QueryAudienceRequest{BatchSize: 3})
		}}
	case 1:
		return stressOp{name: "list", run: func(ctx context.Context, c profilev1.ProfileServiceClient) error {
			_, err := c.ListPushTokens(ctx, &profilev1.ListPushTokensRequest{Profile: byCustomer(stressCustomer(ci)), IncludeInactive: true, IncludeHistory: true})
			return err
		}}
	}
	return stressOp{name: "get", run: func(ctx context.Context, c profilev1.ProfileServiceClient) error {
		_, err := c.GetProfile(ctx, &profilev1.GetProfileRequest{Profile: byCustomer(stressCustomer(ci))})
		return err
	}}
}

// runConcurrently runs each worker's ops in turn, the workers at once,
// with readers alongside until the workers are done; allowed says which
// codes an op may end with. It returns the failures.
func runConcurrently(ctx context.Context, logf func(string, ...any), c profilev1.ProfileServiceClient, work [][]stressOp, readers int, seed uint64,
	allowed func(op string, code codes.Code) bool) []string {
	var (
		mu       sync.Mutex
		failures []string
	)
	codeCounts := map[string]int{}
	check := func(op stressOp, err error) {
		code := status.Code(err)
		mu.Lock()
		defer mu.Unlock()
		codeCounts[fmt.Sprintf("%s %s", op.name, code)]++
		if allowed(op.name, code) {
			return
		}
		if len(failures) < 20 {
			failures = append(failures, fmt.Sprintf("%s: %v", op.name, err))
		}
	}
	done := make(chan struct{})
	var readersWG sync.WaitGroup
	for r := range readers {
		readersWG.Go(func() {
			rng := rand.New(rand.NewPCG(seed, uint64(1000+r)))
			for {
				select {
				case <-done:
					return
				default:
				}
				op := readerOp(rng, stressCustomers)
				check(op, op.run(ctx, c))
			}
		})
	}
	var wg sync.WaitGroup
	for _, ops := range work {
		wg.Go(func() {
			for _, op := range ops {
				check(op, op.run(ctx, c))
			}
		})
	}
	wg.Wait()
	close(done)
	readersWG.Wait()
	logf("calls by outcome: %v", codeCounts)
	return failures
}

// deal splits ops among n workers in the order given.
func deal(ops []stressOp, n int) [][]stressOp {
	work := make([][]stressOp, n)
	for i, op := range ops {
		work[i%n] = append(work[i%n], op)
	}
	return work
}

// okOnly allows only success: the convergence phase never reaches a cap
// and every profile and token it names exists.
func okOnly(_ string, code codes.Code) bool { return code == codes.OK }

// preregister stores every token of the universe on a profile at time 0,
// so that no verdict finds a token unknown (a verdict on an unknown token
// is dropped, which would make the order matter).
func preregister(t testing.TB, ctx context.Context, c profilev1.ProfileServiceClient) {
	t.Helper()
	for i := range stressTokens {
		tok, p := stressToken(i)
		if _, err := c.RegisterPushToken(ctx, &profilev1.RegisterPushTokenRequest{Profile: byCustomer(stressCustomer(i % stressCustomers)),
			Token: tok, Platform: p, AppId: "app", SourceTime: atMs(0)}); err != nil {
			t.Fatal(err)
		}
	}
}

// convergedState describes what the API shows of every customer of the
// universe, with owners named by customer (profile ids differ between
// stores) and without what depends on arrival order (histories, update
// times).
func convergedState(t testing.TB, ctx context.Context, c profilev1.ProfileServiceClient) string {
	t.Helper()
	var b strings.Builder
	for ci := range stressCustomers {
		cust := stressCustomer(ci)
		p, err := c.GetProfile(ctx, &profilev1.GetProfileRequest{Profile: byCustomer(cust)})
		if err != nil {
			t.Fatalf("GetProfile %s: %v", cust, err)
		}
		attrs, err := json.Marshal(p.GetProfile().GetAttributes().AsMap())
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s consent=%v@%v active=%d attributes=%s\n", cust, p.GetProfile().GetConsent().GetState(),
			p.GetProfile().GetConsent().GetUpdateTime().AsTime().UnixMilli(), p.GetProfile().GetActiveTokenCount(), attrs)
		list, err := c.ListPushTokens(ctx, &profilev1.ListPushTokensRequest{Profile: byCustomer(cust), IncludeInactive: true})
		if err != nil {
			t.Fatalf("ListPushTokens %s: %v", cust, err)
		}
		for _, tok := range list.GetTokens() {
			if tok.GetProfileId() != p.GetProfile().GetProfileId() {
				t.Errorf("%s: token %s listed under %s names owner %s", cust, tok.GetToken(), p.GetProfile().GetProfileId(), tok.GetProfileId())
			}
			fmt.Fprintf(&b, "  %s %v %v src=%d gw=%d env=%v dev=%q\n", tok.GetToken(), tok.GetState(), tok.GetInactiveReason(),
				tok.GetSourceTime().AsTime().UnixMilli(), gwMs(tok), tok.GetApnsEnvironment(), tok.GetDeviceId())
		}
	}
	return b.String()
}

func gwMs(tok *profilev1.PushToken) int64 {
	if tok.GetGatewayInvalidTime() == nil {
		return 0
	}
	return tok.GetGatewayInvalidTime().AsTime().UnixMilli()
}

// checkOracle checks what the rules predict for each token from the
// operations alone: the newest registration decides the owner, and a token
// is active (unless a newer token replaced it on its device) exactly when
// that registration is newer than the newest gateway verdict.
func checkOracle(t testing.TB, ctx context.Context, c profilev1.ProfileServiceClient, ops []stressOp) {
	t.Helper()
	type want struct {
		ms, owner int
		tie       bool
		verdict   int
	}
	wants := make([]want, stressTokens)
	for i := range wants {
		wants[i] = want{ms: 0, owner: i % stressCustomers}
	}
	for _, op := range ops {
		for _, r := range op.regs {
			w := &wants[r.token]
			switch {
			case r.ms > w.ms:
				w.ms, w.owner, w.tie = r.ms, r.customer, false
			case r.ms == w.ms && r.customer != w.owner:
				w.tie = true // decided by the tie-break hash
			}
		}
		for _, v := range op.verdicts {
			wants[v.token].verdict = max(wants[v.token].verdict, v.ms)
		}
	}
	got := map[string]*profilev1.PushToken{}
	owners := map[string]int{}
	for ci := range stressCustomers {
		list, err := c.ListPushTokens(ctx, &profilev1.ListPushTokensRequest{Profile: byCustomer(stressCustomer(ci)), IncludeInactive: true})
		if err != nil {
			t.Fatal(err)
		}
		for _, tok := range list.GetTokens() {
			if _, dup := got[tok.GetToken()]; dup {
				t.Errorf("token %s listed under two customers", tok.GetToken())
			}
			got[tok.GetToken()], owners[tok.GetToken()] = tok, ci
		}
	}
	for i, w := range wants {
		name, _ := stressToken(i)
		tok, ok := got[name]
		if !ok {
			t.Errorf("token %d is listed under no customer", i)
			continue
		}
		if src := int(tok.GetSourceTime().AsTime().Sub(base).Milliseconds()); src != w.ms {
			t.Errorf("token %d: source time %d ms, want the newest registration's %d", i, src, w.ms)
		}
		if !w.tie && owners[name] != w.owner {
			t.Errorf("token %d: owned by customer %d, want %d (newest registration at %d ms)", i, owners[name], w.owner, w.ms)
		}
		active := tok.GetState() == profilev1.TokenState_TOKEN_STATE_ACTIVE
		replaced := tok.GetInactiveReason() == profilev1.InactiveReason_INACTIVE_REASON_REPLACED
		if wantActive := w.ms > w.verdict; active != wantActive && !(replaced && !active) {
			t.Errorf("token %d: %v %v, want active=%v (registration %d ms, verdict %d ms)", i, tok.GetState(), tok.GetInactiveReason(), wantActive, w.ms, w.verdict)
		}
		if w.verdict > 0 && gwMs(tok)-base.UnixMilli() != int64(w.verdict) {
			t.Errorf("token %d: gateway_invalid_time %d ms, want the newest verdict's %d", i, gwMs(tok)-base.UnixMilli(), w.verdict)
		}
	}
}

// chaosOps makes n operations of every kind, over the convergence universe
// plus a customer ("whale") given more tokens than a profile keeps.
func chaosOps(rng *rand.Rand, n int, ids []string) []stressOp {
	ops := convergentOps(rng, n)
	for i := range ops {
		switch k := rng.IntN(16); {
		case k == 0: // DeleteProfile
			ci := rng.IntN(stressCustomers)
			ops[i] = stressOp{name: "delete", run: func(ctx context.Context, c profilev1.ProfileServiceClient) error {
				_, err := c.DeleteProfile(ctx, &profilev1.DeleteProfileRequest{Profile: byCustomer(stressCustomer(ci))})
				return err
			}}
		case k < 3: // UnregisterPushToken
			tok, p := stressToken(rng.IntN(stressTokens))
			ops[i] = stressOp{name: "unregister", run: func(ctx context.Context, c profilev1.ProfileServiceClient) error {
				_, err := c.UnregisterPushToken(ctx, &profilev1.UnregisterPushTokenRequest{Token: tok, Platform: p, AppId: "app"})
				return err
			}}
		case k < 5: // UpsertProfile: shared emails conflict, attributes at server time
			ci := rng.IntN(stressCustomers)
			req := &profilev1.UpsertProfileRequest{
				Identities: []*profilev1.Identity{
					{Namespace: "customer_id", Value: stressCustomer(ci)},
					{Namespace: "email", Value: fmt.Sprintf("e%d@example.com", rng.IntN(stressCustomers))},
				},
				Attributes: &structpb.Struct{Fields: map[string]*structpb.Value{"n": structpb.NewNumberValue(float64(rng.IntN(100)))}},
			}
			ops[i] = stressOp{name: "upsert", run: func(ctx context.Context, c profilev1.ProfileServiceClient) error {
				_, err := c.UpsertProfile(ctx, req)
				return err
			}}
		case k < 7: // RegisterPushToken by a profile id that may have been deleted
			tok, p := stressToken(rng.IntN(stressTokens))
			req := &profilev1.RegisterPushTokenRequest{Profile: byID(ids[rng.IntN(len(ids))]), Token: tok, Platform: p, AppId: "app",
				SourceTime: atMs(stressTime(rng)), DeviceId: fmt.Sprintf("dev-%d", rng.IntN(stressDevices))}
			ops[i] = stressOp{name: "register-by-id", run: func(ctx context.Context, c profilev1.ProfileServiceClient) error {
				_, err := c.RegisterPushToken(ctx, req)
				return err
			}}
		case k < 10: // the whale: many tokens, some dead, some moving away
			base := rng.IntN(140)
			var rows []*profilev1.ImportRow
			var fb []*profilev1.TokenFeedback
			for j := range 1 + rng.IntN(12) {
				tok := fmt.Sprintf("whale-%03d", (base+j)%140)
				cust := "whale"
				if rng.IntN(8) == 0 {
					cust = stressCustomer(rng.IntN(stressCustomers))
				}
				rows = append(rows, &profilev1.ImportRow{Token: tok, Platform: fcm, AppId: "app", CustomerId: cust, SourceTime: atMs(stressTime(rng))})
				if rng.IntN(2) == 0 {
					fb = append(fb, &profilev1.TokenFeedback{Token: tok, Platform: fcm, AppId: "app", Reason: profilev1.FeedbackReason_FEEDBACK_REASON_UNREGISTERED,
						GatewayTime: atMs(stressTime(rng))})
				}
			}
			ops[i] = stressOp{name: "whale", run: func(ctx context.Context, c profilev1.ProfileServiceClient) error {
				// Rows over the cap are rejected rows, not errors.
				stream, err := c.ImportTokens(ctx)
				if err != nil {
					return err
				}
				if err := stream.Send(&profilev1.ImportTokensRequest{Rows: rows}); err != nil {
					return err
				}
				if _, err := stream.CloseAndRecv(); err != nil {
					return err
				}
				if len(fb) == 0 {
					return nil
				}
				_, err = c.ReportTokenFeedback(ctx, &profilev1.ReportTokenFeedbackRequest{Feedback: fb})
				return err
			}}
		}
	}
	return ops
}

// chaosAllowed is what each call may answer while profiles are deleted and
// identities contended: a deleted profile or token is NotFound, an email
// owned by another customer AlreadyExists, a full profile
// FailedPrecondition.
func chaosAllowed(op string, code codes.Code) bool {
	switch code {
	case codes.OK:
		return true
	case codes.NotFound:
		// A token or a profile named by id may be gone; profiles named by
		// identity are created when missing, except for reads.
		return op == "unregister" || op == "register-by-id" || op == "delete" || op == "list" || op == "get"
	case codes.AlreadyExists:
		return op == "upsert"
	case codes.FailedPrecondition:
		return op == "register" || op == "register-by-id" || op == "import" || op == "whale"
	}
	return false
}

// checkStore checks the buckets against each other: every token is owned by
// one existing profile and stored under exactly it, with the active flag
// scans read equal to the one its hot record says; no profile owns more
// than the cap; identity index and profiles agree both ways; device
// entries and tokens agree both ways, and each device has exactly one
// current token. It returns the tokens per profile id.
func checkStore(t testing.TB, db *bolt.DB) map[profile.ID]int {
	t.Helper()
	prefix := boltdb.TenantPrefix("default")
	perProfile := map[profile.ID]int{}
	err := db.View(func(tx *bolt.Tx) error {
		profiles := tx.Bucket([]byte("profiles"))
		tokens := tx.Bucket([]byte("tokens"))
		details := tx.Bucket([]byte("profile_tokens"))
		identities := tx.Bucket([]byte("identities"))
		devices := tx.Bucket([]byte("devices"))

		hot := map[profile.TokenID]*profile.Token{}
		_ = tokens.ForEach(func(k, v []byte) error {
			var id profile.TokenID
			copy(id[:], k[len(prefix):])
			tok, err := profile.DecodeHot(profile.TokenKey{}, v)
			if err != nil {
				t.Errorf("token %x: %v", id, err)
				return nil
			}
			hot[id] = tok
			if profiles.Get(append(slices.Clone(prefix), tok.Owner[:]...)) == nil {
				t.Errorf("token %x is owned by %s, which does not exist", id, tok.Owner)
			}
			if details.Get(append(append(slices.Clone(prefix), tok.Owner[:]...), id[:]...)) == nil {
				t.Errorf("token %x is owned by %s but not stored under it", id, tok.Owner)
			}
			return nil
		})

		type devTok struct {
			dk    string
			token *profile.Token
		}
		full := map[profile.TokenID]*profile.Token{}
		_ = details.ForEach(func(k, v []byte) error {
			var owner profile.ID
			var id profile.TokenID
			copy(owner[:], k[len(prefix):])
			copy(id[:], k[len(prefix)+len(owner):])
			perProfile[owner]++
			h, ok := hot[id]
			if !ok {
				t.Errorf("token %x stored under %s has no hot record", id, owner)
				return nil
			}
			if h.Owner != owner {
				t.Errorf("token %x stored under %s, but its hot record names %s", id, owner, h.Owner)
			}
			tok := &profile.Token{}
			if err := profile.DecodeFullDetails(tok, v); err != nil {
				t.Errorf("token %x: %v", id, err)
				return nil
			}
			if tok.Key().ID() != id {
				t.Errorf("token %q stored under the id of another", tok.Token)
			}
			detailsEnv := tok.Env
			if err := profile.DecodeHotInto(tok, tokens.Get(append(slices.Clone(prefix), id[:]...))); err != nil {
				t.Errorf("token %x: %v", id, err)
			}
			if detailsEnv != tok.Env {
				t.Errorf("token %q: details say environment %d, hot record %d", tok.Token, detailsEnv, tok.Env)
			}
			if fp := profile.DeviceFingerprint(tok.DeviceID, tok.Device); fp != tok.DeviceFP {
				t.Errorf("token %q: details hold device %q, hot record another fingerprint", tok.Token, tok.DeviceID)
			}
			if flag := v[2] == 1; flag != tok.Active() {
				t.Errorf("token %q of %s: details say active=%v, hot record says %v (deactivated %d, source %d, replaced %v)",
					tok.Token, owner, flag, tok.Active(), tok.DeactivatedAt, tok.SourceStamp.Time, tok.Replaced)
			}
			full[id] = tok
			return nil
		})
		for id, n := range perProfile {
			if n > profile.MaxProfileTokens {
				t.Errorf("profile %s owns %d tokens, more than %d", id, n, profile.MaxProfileTokens)
			}
		}

		// Device entries: tenant | platform | app | 0 | device | 0 | token id.
		current := map[string]int{}
		listed := map[profile.TokenID]string{}
		_ = devices.ForEach(func(k, v []byte) error {
			rest := k[len(prefix):]
			var id profile.TokenID
			copy(id[:], rest[len(rest)-len(id):])
			app, dev, _ := strings.Cut(string(rest[1:len(rest)-len(id)-1]), "\x00")
			tok, ok := full[id]
			if !ok {
				t.Errorf("device %s/%s lists token %q, which does not exist", app, dev, v)
				return nil
			}
			if tok.DeviceID != dev || tok.AppID != app || tok.Token != string(v) {
				t.Errorf("device %s/%s lists token %q, registered for device %q", app, dev, v, tok.DeviceID)
			}
			listed[id] = dev
			dk := string(rest[:len(rest)-len(id)])
			if _, ok := current[dk]; !ok {
				current[dk] = 0
			}
			if !tok.Replaced {
				current[dk]++
			}
			return nil
		})
		for dk, n := range current {
			if n != 1 {
				t.Errorf("device %q has %d current tokens, want 1", dk, n)
			}
		}
		for id, tok := range full {
			if tok.DeviceID != "" && listed[id] != tok.DeviceID {
				t.Errorf("token %q of device %q is not listed under its device", tok.Token, tok.DeviceID)
			}
			if tok.DeviceID == "" && tok.Replaced {
				t.Errorf("token %q has no device but is replaced", tok.Token)
			}
		}

		// Identities, both ways.
		_ = identities.ForEach(func(k, v []byte) error {
			ns, val, _ := strings.Cut(string(k[len(prefix):]), "\x00")
			var owner profile.ID
			copy(owner[:], v)
			rec := profiles.Get(append(slices.Clone(prefix), owner[:]...))
			if rec == nil {
				t.Errorf("identity %s=%s names %s, which does not exist", ns, val, owner)
				return nil
			}
			p, err := profile.DecodeProfile(owner, rec)
			if err != nil {
				t.Errorf("profile %s: %v", owner, err)
				return nil
			}
			if !p.HasIdentity(profile.Identity{Namespace: ns, Value: val}) {
				t.Errorf("identity %s=%s names %s, which does not have it", ns, val, owner)
			}
			return nil
		})
		return profiles.ForEach(func(k, v []byte) error {
			var id profile.ID
			copy(id[:], k[len(prefix):])
			p, err := profile.DecodeProfile(id, v)
			if err != nil {
				t.Errorf("profile %s: %v", id, err)
				return nil
			}
			for _, idn := range p.Identities {
				key := append(append(append(slices.Clone(prefix), idn.Namespace...), 0), idn.Value...)
				if got := identities.Get(key); !bytes.Equal(got, id[:]) {
					t.Errorf("profile %s has identity %s=%s, which the index gives to %x", id, idn.Namespace, idn.Value, got)
				}
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return perProfile
}

// checkAPI checks, through the API with nothing else running, that every
// profile lists exactly the tokens stored under it, that its active token
// count is the number of its active tokens, and that an audience query
// streams each profile with exactly those active tokens.
func checkAPI(t testing.TB, ctx context.Context, c profilev1.ProfileServiceClient, perProfile map[profile.ID]int) {
	t.Helper()
	stream, err := c.QueryAudience(ctx, &profilev1.QueryAudienceRequest{})
	if err != nil {
		t.Fatal(err)
	}
	streamed := map[string][]string{} // profile → "token env device" of its streamed tokens
	for {
		resp, err := stream.Recv()
		if isEOF(err) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range resp.GetMembers() {
			if m.GetExclusionReason() == commonv1.ExclusionReason_EXCLUSION_REASON_NO_CONSENT {
				continue // streamed without its tokens
			}
			var toks []string
			for _, tok := range m.GetTokens() {
				toks = append(toks, memberKey(tok))
			}
			sort.Strings(toks)
			streamed[m.GetProfileId()] = toks
		}
	}
	seen := map[string]string{}
	for id, n := range perProfile {
		list, err := c.ListPushTokens(ctx, &profilev1.ListPushTokensRequest{Profile: byID(id.String()), IncludeInactive: true})
		if err != nil {
			t.Fatalf("ListPushTokens %s: %v", id, err)
		}
		if len(list.GetTokens()) != n {
			t.Errorf("profile %s lists %d tokens, %d stored under it", id, len(list.GetTokens()), n)
		}
		var active []string
		for _, tok := range list.GetTokens() {
			if other, dup := seen[tok.GetToken()]; dup {
				t.Errorf("token %s listed under %s and %s", tok.GetToken(), other, id)
			}
			seen[tok.GetToken()] = id.String()
			if tok.GetProfileId() != id.String() {
				t.Errorf("token %s listed under %s names owner %s", tok.GetToken(), id, tok.GetProfileId())
			}
			if tok.GetState() == profilev1.TokenState_TOKEN_STATE_ACTIVE {
				active = append(active, memberKey(tok))
			}
		}
		sort.Strings(active)
		p, err := c.GetProfile(ctx, &profilev1.GetProfileRequest{Profile: byID(id.String())})
		if err != nil {
			t.Fatalf("GetProfile %s: %v", id, err)
		}
		if got := int(p.GetProfile().GetActiveTokenCount()); got != len(active) {
			t.Errorf("profile %s: active_token_count %d, %d active tokens listed", id, got, len(active))
		}
		if got, ok := streamed[id.String()]; ok && !slices.Equal(got, active) {
			t.Errorf("profile %s streams tokens %q, lists active %q", id, got, active)
		}
	}
}

// Longer or other runs than the suite's: go test -race -run
// TestConcurrentMutationsConverge -stress.seed N -stress.ops 2000.
var (
	stressSeed      = flag.Uint64("stress.seed", 20261207, "seed of TestConcurrentMutationsConverge")
	stressOps       = flag.Int("stress.ops", 240, "operations per phase of TestConcurrentMutationsConverge")
	stressBatchRows = flag.Int("stress.batch-rows", 16, "import batch rows of TestConcurrentMutationsConverge")
	stressTimes     = flag.Int("stress.times", 300, "distinct source and gateway times (seconds) of TestConcurrentMutationsConverge")
)

// memberKey is what an audience member carries of a token to send to it.
func memberKey(tok *profilev1.PushToken) string {
	return fmt.Sprintf("%s env=%v device=%q", tok.GetToken(), tok.GetApnsEnvironment(), tok.GetDeviceId())
}

func TestConcurrentMutationsConverge(t *testing.T) {
	if testing.Short() {
		t.Skip("stress test")
	}
	const (
		workers = 12
		readers = 3
	)
	seed, nOps := *stressSeed, *stressOps
	t.Logf("seed %d, %d operations per phase", seed, nOps)
	ctx := ctxFor(t)
	// Small import batches, so that imports run several batches, read
	// ahead and overlaid, while registrations commit in between.
	opts := store.Options{ImportBatchRows: *stressBatchRows}
	ops := convergentOps(rand.New(rand.NewPCG(seed, 1)), nOps)

	first := newStressEnv(t, opts)
	preregister(t, ctx, first.client)
	if fails := runConcurrently(ctx, t.Logf, first.client, deal(ops, workers), readers, seed, okOnly); len(fails) > 0 {
		t.Fatalf("calls failed:\n%s\nservice log:\n%s", strings.Join(fails, "\n"), first.log)
	}
	checkOracle(t, ctx, first.client, ops)
	got := convergedState(t, ctx, first.client)

	// The same operations in another order, on a fresh store.
	shuffled := slices.Clone(ops)
	rand.New(rand.NewPCG(seed, 2)).Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
	second := newStressEnv(t, opts)
	preregister(t, ctx, second.client)
	if fails := runConcurrently(ctx, t.Logf, second.client, deal(shuffled, workers/2), 0, seed, okOnly); len(fails) > 0 {
		t.Fatalf("calls failed:\n%s\nservice log:\n%s", strings.Join(fails, "\n"), second.log)
	}
	if want := convergedState(t, ctx, second.client); got != want {
		t.Errorf("the same operations in another order end in another state:\n--- first\n%s\n--- second\n%s", got, want)
	}
	checkAPI(t, ctx, first.client, checkStore(t, first.db))

	// Chaos on the first store.
	var ids []string
	for ci := range stressCustomers {
		p := must[*profilev1.GetProfileResponse](t)(first.client.GetProfile(ctx, &profilev1.GetProfileRequest{Profile: byCustomer(stressCustomer(ci))}))
		ids = append(ids, p.GetProfile().GetProfileId())
	}
	chaos := chaosOps(rand.New(rand.NewPCG(seed, 3)), nOps, ids)
	if fails := runConcurrently(ctx, t.Logf, first.client, deal(chaos, workers), readers, seed+1, chaosAllowed); len(fails) > 0 {
		t.Fatalf("calls failed:\n%s\nservice log:\n%s", strings.Join(fails, "\n"), first.log)
	}
	perProfile := checkStore(t, first.db)
	t.Logf("tokens per profile after chaos: %v", slices.Sorted(maps.Values(perProfile)))
	checkAPI(t, ctx, first.client, perProfile)
	if logs := first.log.String(); strings.Contains(logs, "level=ERROR") {
		t.Errorf("service logged errors:\n%s", logs)
	}
}
