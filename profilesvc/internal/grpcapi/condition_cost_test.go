package grpcapi_test

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	"github.com/pushmesh/pushmesh/profilesvc/internal/store"
)

// A condition that may cost too much on one profile is refused before the
// scan starts: InvalidArgument naming condition, saying why.
func TestQueryAudienceRefusesCostlyCondition(t *testing.T) {
	e := newEnv(t, store.Options{})
	ctx := ctxFor(t)
	must[*profilev1.RegisterPushTokenResponse](t)(e.client.RegisterPushToken(ctx, registerReq("C1", "aa01", 1, "")))
	// The audit's: five nested .all over 40-element lists, 6 s a profile.
	lst := "[" + strings.TrimSuffix(strings.Repeat("1,", 40), ",") + "]"
	cond := "e == 1"
	for _, v := range []string{"e", "d", "c", "b", "a"} {
		cond = lst + ".all(" + v + ", " + cond + ")"
	}
	start := time.Now()
	stream, err := e.client.QueryAudience(ctx, &profilev1.QueryAudienceRequest{Condition: cond})
	if err == nil {
		_, err = stream.Recv()
	}
	wantStatus(t, err, codes.InvalidArgument, "condition")
	if !strings.Contains(err.Error(), "more than the limit of 1000000") {
		t.Errorf("got %v, want it to say the cost is over the limit", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("refused after %v", d)
	}
}
