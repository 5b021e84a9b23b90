package server_test

import (
	"context"
	"testing"

	"google.golang.org/grpc"

	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	"github.com/pushmesh/pushmesh/profilesvc/server"
	"github.com/pushmesh/pushmesh/servicekit/grpctest"
)

// TestStartServesProfileService starts the service the way the binary and
// pushctl dev do, registers a token and reads it back after a restart on
// the same data directory.
func TestStartServesProfileService(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	serve := func(t *testing.T) profilev1.ProfileServiceClient {
		conn := grpctest.Start(t, func(s *grpc.Server) {
			stop, err := server.Start(ctx, s, dir, server.Config{}, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := stop(); err != nil {
					t.Error(err)
				}
			})
		})
		return profilev1.NewProfileServiceClient(conn)
	}
	ref := &profilev1.ProfileRef{Ref: &profilev1.ProfileRef_Identity{Identity: &profilev1.Identity{Namespace: "customer_id", Value: "C1"}}}
	t.Run("register", func(t *testing.T) {
		c := serve(t)
		if _, err := c.RegisterPushToken(ctx, &profilev1.RegisterPushTokenRequest{Profile: ref, Token: "abcd", Platform: 1, AppId: "com.example"}); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("after restart", func(t *testing.T) {
		c := serve(t)
		l, err := c.ListPushTokens(ctx, &profilev1.ListPushTokensRequest{Profile: ref})
		if err != nil {
			t.Fatal(err)
		}
		if len(l.GetTokens()) != 1 || l.GetTokens()[0].GetToken() != "abcd" {
			t.Fatalf("got %v after a restart, want the token registered before", l.GetTokens())
		}
	})
}

func TestStartRejectsBadConfig(t *testing.T) {
	if _, err := server.Start(context.Background(), grpc.NewServer(), t.TempDir(), server.Config{ImportBatchRows: -1}, nil); err == nil {
		t.Fatalf("got no error for a negative batch size")
	}
}
