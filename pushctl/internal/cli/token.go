package cli

import (
	"context"
	"flag"
	"strings"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	"github.com/pushmesh/pushmesh/pushctl/internal/enums"
	"github.com/pushmesh/pushmesh/pushctl/internal/render"
)

func tokenCommand() *Command {
	return &Command{
		Name:    "token",
		Summary: "register and unregister single push tokens",
		Sub:     []*Command{tokenRegisterCommand(), tokenUnregisterCommand()},
	}
}

func tokenRegisterCommand() *Command {
	var (
		ref      refFlags
		key      appKeyFlags
		token    string
		deviceID string
		at       string
		env      string
		source   string
	)
	cmd := &Command{
		Name:    "register",
		Args:    "(--profile-id ID | --identity namespace=value) --platform apns|fcm --app-id ID --token TOKEN [--device-id D] [--time T] [--env sandbox|production]",
		Summary: "attach a device's push token to a profile (the newest registration wins)",
		Help: `A profile named by an identity that does not exist yet is created. A token
registered by another profile moves to this one if --time is newer. A new
token for the same app and --device-id replaces the device's old token.`,
		Flags: func(fs *flag.FlagSet) {
			fs.StringVar(&ref.id, "profile-id", "", "the owner's profile id")
			fs.StringVar(&ref.identity, "identity", "", "the owner's identity, `namespace=value`")
			key.register(fs)
			fs.StringVar(&token, "token", "", "the push token")
			fs.StringVar(&deviceID, "device-id", "", "a stable id of the device (app install)")
			fs.StringVar(&at, "time", "", "when the device registered, RFC 3339 or unix time (default now)")
			fs.StringVar(&env, "env", "", "APNs only: sandbox or production (default: the app's)")
			fs.StringVar(&source, "source", "pushctl", "a label kept in the token's history")
		},
	}
	cmd.Run = func(ctx context.Context, e *Env, args []string) error {
		r, err := profileRef(cmd, "profile-id", ref.id, ref.identity)
		if err != nil {
			return err
		}
		k, err := key.key(cmd)
		if err != nil {
			return err
		}
		if err := required(cmd, "token", token); err != nil {
			return err
		}
		apnsEnv, err := parseEnum(cmd, "env", commonv1.ApnsEnvironment(0).Descriptor(), env)
		if err != nil {
			return err
		}
		req := &profilev1.RegisterPushTokenRequest{
			Profile: r, Token: strings.TrimSpace(token), Platform: k.Platform, AppId: k.AppId,
			ApnsEnvironment: commonv1.ApnsEnvironment(apnsEnv), DeviceId: deviceID, Source: source,
		}
		if at != "" {
			if req.SourceTime, err = parseTime(cmd, "time", at); err != nil {
				return err
			}
		}
		profiles, err := e.Profiles()
		if err != nil {
			return err
		}
		resp, err := unary(ctx, e, profileSvc, profiles.RegisterPushToken, req)
		if err != nil {
			return err
		}
		if e.Global.JSON {
			return e.printJSON(resp)
		}
		e.printf("%s: token %s of profile %s\n\n", enums.Label(resp.GetOutcome()), render.Token(resp.GetToken().GetToken()), resp.GetToken().GetProfileId())
		e.print(tokenTable([]*profilev1.PushToken{resp.GetToken()}, false))
		for _, old := range resp.GetReplacedTokens() {
			e.printf("replaced token %s\n", render.Token(old))
		}
		return nil
	}
	return cmd
}

func tokenUnregisterCommand() *Command {
	var (
		key    appKeyFlags
		token  string
		reason string
	)
	cmd := &Command{
		Name:    "unregister",
		Args:    "--platform apns|fcm --app-id ID --token TOKEN [--reason R]",
		Summary: "mark a token inactive (uninstalled, logged out)",
		Flags: func(fs *flag.FlagSet) {
			key.register(fs)
			fs.StringVar(&token, "token", "", "the push token")
			fs.StringVar(&reason, "reason", "", "why: "+words(profilev1.InactiveReason(0).Descriptor())+" (default uninstalled)")
		},
	}
	cmd.Run = func(ctx context.Context, e *Env, args []string) error {
		k, err := key.key(cmd)
		if err != nil {
			return err
		}
		if err := required(cmd, "token", token); err != nil {
			return err
		}
		why, err := parseEnum(cmd, "reason", profilev1.InactiveReason(0).Descriptor(), reason)
		if err != nil {
			return err
		}
		profiles, err := e.Profiles()
		if err != nil {
			return err
		}
		resp, err := unary(ctx, e, profileSvc, profiles.UnregisterPushToken, &profilev1.UnregisterPushTokenRequest{
			Token: strings.TrimSpace(token), Platform: k.Platform, AppId: k.AppId, Reason: profilev1.InactiveReason(why),
		})
		if err != nil {
			return err
		}
		if e.Global.JSON {
			return e.printJSON(resp)
		}
		e.printf("unregistered token %s of profile %s\n\n", render.Token(resp.GetToken().GetToken()), render.Text(resp.GetToken().GetProfileId()))
		e.print(tokenTable([]*profilev1.PushToken{resp.GetToken()}, false))
		return nil
	}
	return cmd
}
