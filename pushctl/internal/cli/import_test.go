package cli

import (
	"encoding/json"
	"io"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
)

const fullAPNsToken = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9e8"

// crmCSV has good rows, rows the server rejects and rows pushctl rejects.
var crmCSV = strings.Join([]string{
	"token,platform,app_id,customer_id,timestamp,tier,age,vip,zip",
	fullAPNsToken + ",apns,com.acme.shop,C-1,2024-05-01T10:00:00Z,gold,42,true,02134",             // 2
	"zz-not-hex,ios,com.acme.shop,C-2,1714557600,silver,,false,",                                  // 3: the server rejects it
	`"fcmtoken:APA91b_xyz",android,com.acme.shop,"C-3, Jr",1714557600000,"bronze ""plus""",7.5,,`, // 4
	"bad1,apns,com.acme.shop,C-4,yesterday,gold,1,true,1",                                         // 5: timestamp
	`"broken,apns,com.acme.shop,C-5,1714557600,gold,1,true,1"x`,                                   // 6: text after a quote
	"short,apns", // 7: field count
	"fcm2,fcm,com.acme.shop,C-6,1714557600,gold,1,true,1", // 8: the server rejects it
	"",
}, "\n")

// importServer is a fake ImportTokens that keeps every batch and rejects the
// rows at the given stream indexes.
type importServer struct {
	mu      sync.Mutex
	batches [][]*profilev1.ImportRow
	reject  map[int64]string
}

func (s *importServer) serve(stream grpc.ClientStreamingServer[profilev1.ImportTokensRequest, profilev1.ImportTokensResponse]) error {
	resp := &profilev1.ImportTokensResponse{}
	for {
		req, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		s.mu.Lock()
		s.batches = append(s.batches, req.GetRows())
		s.mu.Unlock()
		for range req.GetRows() {
			if reason, ok := s.reject[resp.Rows]; ok {
				resp.Rejected++
				resp.RejectedRows = append(resp.RejectedRows, &profilev1.RejectedRow{Index: resp.Rows, Field: "token", Reason: reason})
			} else {
				resp.Created++
				resp.ProfilesCreated++
			}
			resp.Rows++
		}
	}
	return stream.SendAndClose(resp)
}

func (s *importServer) rows() []*profilev1.ImportRow {
	var all []*profilev1.ImportRow
	for _, b := range s.batches {
		all = append(all, b...)
	}
	return all
}

func TestImportStreamsBatchesAndReportsRejectedLines(t *testing.T) {
	h := newHarness(t)
	srv := &importServer{reject: map[int64]string{1: "must be hex", 3: "must be a registration token"}}
	h.profiles.importRows = srv.serve
	file := writeFile(t, "crm.csv", crmCSV)

	res := h.run(t, "import", file, "--batch", "2")

	if res.code != ExitFailed {
		t.Errorf("exit: got %d, want %d (rows were rejected)", res.code, ExitFailed)
	}
	if got, want := len(srv.batches), 2; got != want {
		t.Fatalf("batches: got %d, want %d", got, want)
	}
	ts := timestamppb.New(mustTime("2024-05-01T10:00:00Z"))
	unix := timestamppb.New(mustTime("2024-05-01T10:00:00Z"))
	want := []*profilev1.ImportRow{
		{Token: fullAPNsToken, Platform: commonv1.Platform_PLATFORM_APNS, AppId: "com.acme.shop", CustomerId: "C-1", SourceTime: ts,
			Attributes: &structpb.Struct{Fields: map[string]*structpb.Value{
				"tier": structpb.NewStringValue("gold"), "age": structpb.NewNumberValue(42),
				"vip": structpb.NewBoolValue(true), "zip": structpb.NewStringValue("02134"),
			}}},
		{Token: "zz-not-hex", Platform: commonv1.Platform_PLATFORM_APNS, AppId: "com.acme.shop", CustomerId: "C-2", SourceTime: unix,
			Attributes: &structpb.Struct{Fields: map[string]*structpb.Value{
				"tier": structpb.NewStringValue("silver"), "vip": structpb.NewBoolValue(false),
			}}},
		{Token: "fcmtoken:APA91b_xyz", Platform: commonv1.Platform_PLATFORM_FCM, AppId: "com.acme.shop", CustomerId: "C-3, Jr", SourceTime: unix,
			Attributes: &structpb.Struct{Fields: map[string]*structpb.Value{
				"tier": structpb.NewStringValue(`bronze "plus"`), "age": structpb.NewNumberValue(7.5),
			}}},
		{Token: "fcm2", Platform: commonv1.Platform_PLATFORM_FCM, AppId: "com.acme.shop", CustomerId: "C-6", SourceTime: unix,
			Attributes: &structpb.Struct{Fields: map[string]*structpb.Value{
				"tier": structpb.NewStringValue("gold"), "age": structpb.NewNumberValue(1),
				"vip": structpb.NewBoolValue(true), "zip": structpb.NewNumberValue(1),
			}}},
	}
	got := srv.rows()
	if len(got) != len(want) {
		t.Fatalf("rows sent: got %d, want %d", len(got), len(want))
	}
	for i := range want {
		if !proto.Equal(got[i], want[i]) {
			t.Errorf("row %d:\n got %v\nwant %v", i, got[i], want[i])
		}
	}

	wantOut := `imported ` + file + `: 7 rows in 0ms (0 rows/s)

created                   2
updated                   0
moved                     0
unchanged                 0
rejected                  5
  by pushctl (malformed)  3
  by profilesvc           2
profiles created          2

first rejected rows:
LINE  FIELD      REASON
   3  token      must be hex
   5  timestamp  cannot read "yesterday": want RFC 3339 (2024-05-01T10:00:00Z) or unix seconds or milliseconds
   6  -          malformed CSV: unexpected text after a closing quote
   7  -          has 2 fields, the header has 9
   8  token      must be a registration token
`
	if res.stdout != wantOut {
		t.Errorf("summary:\n got %s\nwant %s", res.stdout, wantOut)
	}
	if want := "pushctl: 5 of 7 rows were rejected\n"; res.stderr != want {
		t.Errorf("stderr: got %q, want %q", res.stderr, want)
	}
	if strings.Contains(res.stdout+res.stderr, fullAPNsToken) {
		t.Error("a full token was printed")
	}
}

func TestImportJSONParsesBack(t *testing.T) {
	h := newHarness(t)
	srv := &importServer{reject: map[int64]string{1: "must be hex"}}
	h.profiles.importRows = srv.serve
	file := writeFile(t, "crm.csv", crmCSV)

	res := h.run(t, "--json", "import", file)
	if res.code != ExitFailed {
		t.Errorf("exit: got %d, want %d", res.code, ExitFailed)
	}
	var doc struct {
		File      string          `json:"file"`
		Records   int64           `json:"records"`
		Malformed int64           `json:"malformed"`
		Rejected  int64           `json:"rejected"`
		Response  json.RawMessage `json:"response"`
		Rows      []struct {
			Line   int    `json:"line"`
			Field  string `json:"field"`
			Reason string `json:"reason"`
		} `json:"rejectedRows"`
	}
	if err := json.Unmarshal([]byte(res.stdout), &doc); err != nil {
		t.Fatalf("--json output does not parse: %v\n%s", err, res.stdout)
	}
	var resp profilev1.ImportTokensResponse
	if err := protojson.Unmarshal(doc.Response, &resp); err != nil {
		t.Fatalf("response is not an ImportTokensResponse: %v", err)
	}
	if doc.Records != 7 || doc.Malformed != 3 || doc.Rejected != 4 || resp.GetRows() != 4 || resp.GetCreated() != 3 {
		t.Errorf("got records %d malformed %d rejected %d rows %d created %d; want 7 3 4 4 3",
			doc.Records, doc.Malformed, doc.Rejected, resp.GetRows(), resp.GetCreated())
	}
	var lines []int
	for _, r := range doc.Rows {
		lines = append(lines, r.Line)
	}
	if got, want := lines, []int{3, 5, 6, 7}; !equalInts(got, want) {
		t.Errorf("rejected lines: got %v, want %v", got, want)
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestImportCleanFileExitsZero(t *testing.T) {
	h := newHarness(t)
	srv := &importServer{}
	h.profiles.importRows = srv.serve
	file := writeFile(t, "crm.csv", "\ufeffCustomer ID;Token;Platform;App ID;Timestamp;APNs Environment;Device ID\r\n"+
		"C-1;"+fullAPNsToken+";apns;com.acme.shop;1714557600;sandbox;dev-1\r\n")
	res := h.run(t, "import", file)
	if res.code != 0 {
		t.Fatalf("exit %d: %s", res.code, res.stderr)
	}
	got := srv.rows()
	want := &profilev1.ImportRow{Token: fullAPNsToken, Platform: commonv1.Platform_PLATFORM_APNS, AppId: "com.acme.shop", CustomerId: "C-1",
		SourceTime: timestamppb.New(mustTime("2024-05-01T10:00:00Z")), ApnsEnvironment: commonv1.ApnsEnvironment_APNS_ENVIRONMENT_SANDBOX, DeviceId: "dev-1"}
	if len(got) != 1 || !proto.Equal(got[0], want) {
		t.Errorf("rows: got %v, want [%v]", got, want)
	}
}

func TestImportBadFileIsAUsageError(t *testing.T) {
	tests := []struct {
		name    string
		content string
		want    string
	}{
		{"empty", "", "the file is empty"},
		{"missing columns", "token,platform,app\nx,apns,a\n", "the header lacks column(s) app_id, customer_id, timestamp"},
		{"duplicate column", "token,platform,app_id,customer_id,timestamp,Token\n", `column "token" appears twice`},
		{"unnamed column", "token,platform,app_id,customer_id,timestamp,,x\n", "column 6 of the header has no name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			called := false
			h.profiles.importRows = func(grpc.ClientStreamingServer[profilev1.ImportTokensRequest, profilev1.ImportTokensResponse]) error {
				called = true
				return nil
			}
			res := h.run(t, "import", writeFile(t, "crm.csv", tt.content))
			if res.code != ExitUsage || !strings.Contains(res.stderr, tt.want) {
				t.Errorf("got exit %d, stderr %q; want %d and %q", res.code, res.stderr, ExitUsage, tt.want)
			}
			if called {
				t.Error("ImportTokens was called for a bad file")
			}
		})
	}
	res := runCLI(t, nil, mustTime("2024-05-01T00:00:00Z"), "import", "/nonexistent/crm.csv")
	if res.code != ExitUsage || !strings.Contains(res.stderr, "no such file") {
		t.Errorf("missing file: got exit %d, stderr %q", res.code, res.stderr)
	}
	res = runCLI(t, nil, mustTime("2024-05-01T00:00:00Z"), "import", "x.csv", "--batch", "0")
	if res.code != ExitUsage || !strings.Contains(res.stderr, "--batch must be 1 to 10000") {
		t.Errorf("--batch 0: got exit %d, stderr %q", res.code, res.stderr)
	}
}

func TestImportServerFailureMidStream(t *testing.T) {
	h := newHarness(t)
	h.profiles.importRows = func(stream grpc.ClientStreamingServer[profilev1.ImportTokensRequest, profilev1.ImportTokensResponse]) error {
		if _, err := stream.Recv(); err != nil {
			return err
		}
		return status.Error(codes.ResourceExhausted, "import quota exceeded")
	}
	var b strings.Builder
	b.WriteString("token,platform,app_id,customer_id,timestamp\n")
	for i := 0; i < 50; i++ {
		b.WriteString("aa,apns,com.acme.shop,C,1714557600\n")
	}
	res := h.run(t, "import", writeFile(t, "crm.csv", b.String()), "--batch", "1")
	want := "pushctl: profilesvc: resource exhausted: import quota exceeded\n"
	if res.code != ExitFailed || res.stderr != want {
		t.Errorf("got exit %d, stderr %q; want %d, %q", res.code, res.stderr, ExitFailed, want)
	}
}
