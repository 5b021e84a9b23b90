package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	"github.com/pushmesh/pushmesh/profilesvc/internal/profile"
	"github.com/pushmesh/pushmesh/profilesvc/server"
	"github.com/pushmesh/pushmesh/servicekit/boltdb"
	"github.com/pushmesh/pushmesh/servicekit/grpctest"
	"github.com/pushmesh/pushmesh/servicekit/proctest"
)

func TestMain(m *testing.M) {
	proctest.RunChildIfAsked(func(ctx context.Context, s *grpc.Server, spec proctest.Spec, log *slog.Logger) (func() error, error) {
		var cfg server.Config
		if err := json.Unmarshal(spec.Config, &cfg); err != nil {
			return nil, err
		}
		server.TuneRuntime() // as the profilesvc binary does
		return server.Start(ctx, s, spec.DataDir, cfg, log)
	})
	os.Exit(m.Run())
}

// crashRows is a CRM export with what makes an import interesting: tokens
// moving between customers (newer rows win), devices rotating their
// tokens, attributes, and customers with several tokens, all timestamped
// so that any prefix applied twice changes nothing.
func crashRows(n int) []*profilev1.ImportRow {
	rng := rand.New(rand.NewPCG(42, 7))
	base := time.Now().Add(-30 * 24 * time.Hour).Truncate(time.Second)
	rows := make([]*profilev1.ImportRow, n)
	for i := range rows {
		tok := i
		if i > 100 && rng.IntN(5) == 0 {
			tok = rng.IntN(i) // an earlier token again: a move or a refresh
		}
		r := &profilev1.ImportRow{
			Token:      fmt.Sprintf("%064x", 0xc0ffee0000+tok),
			Platform:   commonv1.Platform_PLATFORM_APNS,
			AppId:      "com.example.shop",
			CustomerId: fmt.Sprintf("C%d", rng.IntN(n/4)),
			SourceTime: timestamppb.New(base.Add(time.Duration(rng.IntN(20*86400)) * time.Second)),
		}
		if rng.IntN(3) == 0 {
			r.DeviceId = fmt.Sprintf("dev-%d", rng.IntN(n/8))
		}
		if rng.IntN(4) == 0 {
			r.Attributes = &structpb.Struct{Fields: map[string]*structpb.Value{
				"tier": structpb.NewStringValue([]string{"gold", "silver", "bronze"}[rng.IntN(3)]),
			}}
		}
		rows[i] = r
	}
	return rows
}

// sendRows streams rows in messages of 500; it returns the response, or the
// stream's error.
func sendRows(ctx context.Context, c profilev1.ProfileServiceClient, rows []*profilev1.ImportRow) (*profilev1.ImportTokensResponse, error) {
	stream, err := c.ImportTokens(ctx)
	if err != nil {
		return nil, err
	}
	proctest.SendChunks(rows, 500, func(chunk []*profilev1.ImportRow) error {
		return stream.Send(&profilev1.ImportTokensRequest{Rows: chunk})
	})
	return stream.CloseAndRecv()
}

// TestKill9MidImport kills profilesvc with SIGKILL at random points of
// a CRM import, and checks after each restart that the file holds whole
// batches only (every index agrees with the records, every cap holds);
// then the import run again from the start (what pushctl's README says
// to do) converges to the state of an uninterrupted import, and what a
// completed import answered survives a kill right after the answer.
func TestKill9MidImport(t *testing.T) {
	if testing.Short() {
		t.Skip("runs profilesvc as a child process, killed three times")
	}
	const n = 24_000
	rows := crashRows(n)
	ctx := context.Background()
	cfg := server.Config{ImportBatchRows: 2000}

	// The reference: one uninterrupted import, in process.
	refDir := t.TempDir()
	func() {
		var stop func() error
		conn := grpctest.Start(t, func(s *grpc.Server) {
			var err error
			if stop, err = server.Start(ctx, s, refDir, cfg, nil); err != nil {
				t.Fatal(err)
			}
		})
		resp, err := sendRows(ctx, profilev1.NewProfileServiceClient(conn), rows)
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetRejected() != 0 || resp.GetMoved() == 0 || resp.GetCreated() == 0 {
			t.Fatalf("reference import: got %v, want creations and moves and no rejects", resp)
		}
		conn.Close()
		if err := stop(); err != nil {
			t.Fatal(err)
		}
	}()
	want := storeState(t, filepath.Join(refDir, server.DBFile))

	dir := t.TempDir()
	addr, conn := proctest.Target(t)
	client := profilev1.NewProfileServiceClient(conn)
	rawCfg, _ := json.Marshal(cfg)
	start := func() *proctest.Process {
		t.Helper()
		p, err := proctest.Start(proctest.Spec{Name: "profilesvc", Listen: addr, DataDir: dir, Config: rawCfg}, proctest.Options{}, func(ctx context.Context) error {
			_, err := client.GetProfile(ctx, &profilev1.GetProfileRequest{Profile: &profilev1.ProfileRef{Ref: &profilev1.ProfileRef_Identity{
				Identity: &profilev1.Identity{Namespace: "customer_id", Value: "nobody"}}}})
			if status.Code(err) == codes.NotFound {
				return nil // it answers
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}

	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	for round := range 2 {
		p := start()
		// Kill once a random share of the rows is sent, while earlier
		// batches are being prepared and written.
		sent := n/5 + rng.IntN(n*3/5)
		sctx, cancel := context.WithCancel(ctx)
		stream, err := client.ImportTokens(sctx)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < sent; i += 500 {
			if err := stream.Send(&profilev1.ImportTokensRequest{Rows: rows[i:min(i+500, sent)]}); err != nil {
				break
			}
		}
		time.Sleep(time.Duration(rng.IntN(300)) * time.Millisecond)
		p.Kill()
		cancel()
		tokens := checkStore(t, filepath.Join(dir, server.DBFile))
		t.Logf("round %d: killed after %d rows sent; %d tokens stored", round, sent, tokens)
		if t.Failed() {
			t.FailNow()
		}
	}

	// Resume: the whole file again.
	p := start()
	resp, err := sendRows(ctx, client, rows)
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetRows() != n || resp.GetRejected() != 0 {
		t.Fatalf("resumed import: got %v, want %d rows and no rejects", resp, n)
	}
	// Answered means committed: a kill right after the answer loses nothing.
	p.Kill()
	checkStore(t, filepath.Join(dir, server.DBFile))
	if got := storeState(t, filepath.Join(dir, server.DBFile)); got != want {
		t.Fatalf("interrupted, then resumed from the start: state differs from an uninterrupted import:\n%s", lineDiff(got, want))
	}

	// And the same file once more changes nothing.
	p = start()
	defer p.Stop()
	resp, err = sendRows(ctx, client, rows)
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetUnchanged() != n || resp.GetProfilesCreated() != 0 {
		t.Errorf("the same file again: got %v, want all %d rows unchanged", resp, n)
	}
}

// tenantPrefix is the key prefix of the default tenant, the only one the
// crash tests use.
var tenantPrefix = boltdb.TenantPrefix("default")

// viewStore opens the bbolt file read-only (the service must not hold it).
func viewStore(t testing.TB, path string, fn func(tx *bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.View(fn); err != nil {
		t.Fatal(err)
	}
}

// checkStore checks that the indexes of a profilesvc file agree with its
// records, the way a half-written change would break them, and returns how
// many tokens it holds:
//   - every identity names a profile that lists it, and every identity a
//     profile lists is indexed to it;
//   - every token's hot record names an existing profile with the token's
//     details under it (the same token), with the same active state, and
//     every details record has a hot record naming its profile;
//   - no profile owns more than MaxProfileTokens tokens;
//   - every device entry names a stored token of that app and device,
//     every token with a device has its entry, and each device with
//     tokens has exactly one current (not replaced) token.
func checkStore(t testing.TB, path string) int {
	t.Helper()
	pl := len(tenantPrefix)
	var idLen = len(profile.ID{})
	var tidLen = len(profile.TokenID{})
	tokens := 0
	viewStore(t, path, func(tx *bolt.Tx) error {
		profiles := map[profile.ID]*profile.Profile{}
		err := eachProfile(tx, func(p *profile.Profile) error {
			profiles[p.ID] = p
			return nil
		})
		if err != nil {
			return err
		}
		idx := tx.Bucket([]byte("identities"))
		err = idx.ForEach(func(k, v []byte) error {
			ns, val, _ := bytes.Cut(k[pl:], []byte{0})
			var owner profile.ID
			copy(owner[:], v)
			p := profiles[owner]
			if p == nil || !p.HasIdentity(profile.Identity{Namespace: string(ns), Value: string(val)}) {
				t.Errorf("identity %s=%s: indexed to %s, which does not list it", ns, val, owner)
			}
			return nil
		})
		if err != nil {
			return err
		}
		for id, p := range profiles {
			for _, idn := range p.Identities {
				v := idx.Get(append(append(append(slices.Clone(tenantPrefix), idn.Namespace...), 0), idn.Value...))
				if !bytes.Equal(v, id[:]) {
					t.Errorf("profile %s lists identity %s=%s, indexed to %x", id, idn.Namespace, idn.Value, v)
				}
			}
		}

		hot := tx.Bucket([]byte("tokens"))
		details := tx.Bucket([]byte("profile_tokens"))
		byID := map[profile.TokenID]*profile.Token{}
		perOwner := map[profile.ID]int{}
		err = details.ForEach(func(k, v []byte) error {
			var owner profile.ID
			var tid profile.TokenID
			copy(owner[:], k[pl:])
			copy(tid[:], k[pl+idLen:])
			tok := &profile.Token{}
			if err := profile.DecodeFullDetails(tok, v); err != nil {
				return err
			}
			h := hot.Get(append(slices.Clone(tenantPrefix), tid[:]...))
			if h == nil {
				t.Errorf("details of token %x under %s: no hot record", tid[:4], owner)
				return nil
			}
			if err := profile.DecodeHotInto(tok, h); err != nil {
				return err
			}
			if tok.Owner != owner {
				t.Errorf("details of token %x under %s: the hot record names %s", tid[:4], owner, tok.Owner)
			}
			if tok.Key().ID() != tid {
				t.Errorf("details of token %x hold another token", tid[:4])
			}
			if active := v[2] == 1; active != tok.Active() {
				t.Errorf("token %x: details say active=%v, the hot record %v", tid[:4], active, tok.Active())
			}
			if profiles[owner] == nil {
				t.Errorf("token %x: owner %s has no profile", tid[:4], owner)
			}
			perOwner[owner]++
			byID[tid] = tok
			return nil
		})
		if err != nil {
			return err
		}
		tokens = len(byID)
		if n := hot.Stats().KeyN; n != len(byID) {
			t.Errorf("%d hot records, %d details records", n, len(byID))
		}
		for owner, n := range perOwner {
			if n > profile.MaxProfileTokens {
				t.Errorf("profile %s owns %d tokens, over the cap of %d", owner, n, profile.MaxProfileTokens)
			}
		}

		type devKey struct{ app, device string }
		current := map[devKey]int{}
		listed := map[profile.TokenID]bool{}
		err = tx.Bucket([]byte("devices")).ForEach(func(k, v []byte) error {
			rest := k[pl+1 : len(k)-tidLen-1]
			app, device, _ := bytes.Cut(rest, []byte{0})
			var tid profile.TokenID
			copy(tid[:], k[len(k)-tidLen:])
			tok := byID[tid]
			if tok == nil || tok.Token != string(v) {
				t.Errorf("device %s lists token %.12s…, not stored", device, v)
				return nil
			}
			if tok.AppID != string(app) || tok.DeviceID != string(device) {
				t.Errorf("device %s/%s lists token %.12s… of device %s/%s", app, device, v, tok.AppID, tok.DeviceID)
			}
			listed[tid] = true
			if _, ok := current[devKey{string(app), string(device)}]; !ok {
				current[devKey{string(app), string(device)}] = 0
			}
			if !tok.Replaced {
				current[devKey{string(app), string(device)}]++
			}
			return nil
		})
		if err != nil {
			return err
		}
		for dk, n := range current {
			if n != 1 {
				t.Errorf("device %s/%s: %d current tokens, want exactly one", dk.app, dk.device, n)
			}
		}
		for tid, tok := range byID {
			if tok.DeviceID != "" && !listed[tid] {
				t.Errorf("token %.12s… of device %s: not in the device index", tok.Token, tok.DeviceID)
			}
		}
		return nil
	})
	return tokens
}

// storeState renders what an import decides, with profiles named by their
// customer id (ids and server times differ between runs).
func storeState(t testing.TB, path string) string {
	t.Helper()
	pl := len(tenantPrefix)
	var lines []string
	viewStore(t, path, func(tx *bolt.Tx) error {
		names := map[profile.ID]string{}
		err := eachProfile(tx, func(p *profile.Profile) error {
			var idns, attrs []string
			for _, idn := range p.Identities {
				idns = append(idns, idn.Namespace+"="+idn.Value)
			}
			for _, a := range p.Attributes {
				attrs = append(attrs, fmt.Sprintf("%s=%v@%d", a.Key, a.Value, a.Time))
			}
			names[p.ID] = strings.Join(idns, ",")
			lines = append(lines, fmt.Sprintf("%s consent=%d attrs=%v", names[p.ID], p.Consent, attrs))
			return nil
		})
		if err != nil {
			return err
		}
		hot := tx.Bucket([]byte("tokens"))
		return tx.Bucket([]byte("profile_tokens")).ForEach(func(k, v []byte) error {
			tok := &profile.Token{}
			if err := profile.DecodeFullDetails(tok, v); err != nil {
				return err
			}
			if err := profile.DecodeHotInto(tok, hot.Get(append(slices.Clone(tenantPrefix), k[pl+len(profile.ID{}):]...))); err != nil {
				return err
			}
			lines = append(lines, fmt.Sprintf("  %s %s/%s source=%v active=%v replaced=%v reason=%d env=%d device=%q",
				names[tok.Owner], tok.AppID, tok.Token, tok.SourceStamp, tok.Active(), tok.Replaced, tok.Reason, tok.Env, tok.DeviceID))
			return nil
		})
	})
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// lineDiff lists the first lines only in got or only in want.
func lineDiff(got, want string) string {
	in := func(s string) map[string]bool {
		m := map[string]bool{}
		for _, l := range strings.Split(s, "\n") {
			m[l] = true
		}
		return m
	}
	g, w := in(got), in(want)
	var out []string
	for _, l := range strings.Split(got, "\n") {
		if !w[l] && len(out) < 20 {
			out = append(out, "+ "+l)
		}
	}
	for _, l := range strings.Split(want, "\n") {
		if !g[l] && len(out) < 40 {
			out = append(out, "- "+l)
		}
	}
	return strings.Join(out, "\n")
}

// eachProfile decodes every profile of the test tenant's store and calls fn.
func eachProfile(tx *bolt.Tx, fn func(*profile.Profile) error) error {
	pl := len(tenantPrefix)
	return tx.Bucket([]byte("profiles")).ForEach(func(k, v []byte) error {
		var id profile.ID
		copy(id[:], k[pl:])
		p, err := profile.DecodeProfile(id, v)
		if err != nil {
			return err
		}
		return fn(p)
	})
}
