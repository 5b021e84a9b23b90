package cli

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"os"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
	"github.com/pushmesh/pushmesh/pushctl/internal/enums"
	"github.com/pushmesh/pushmesh/pushctl/internal/render"
)

func appCommand() *Command {
	return &Command{
		Name:    "app",
		Summary: "register apps and their APNs/FCM credentials, list, validate, rotate, delete",
		Sub: []*Command{
			appRegisterCommand(),
			appListCommand(),
			appGetCommand(),
			appValidateCommand(),
			appUpdateCredentialsCommand(),
			appDeleteCommand(),
		},
	}
}

// credentialFlags are the flags naming an app's credentials files.
type credentialFlags struct {
	p8, keyID, teamID, serviceAccount string
}

func (c *credentialFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.p8, "p8", "", "APNs: the .p8 signing key `file`")
	fs.StringVar(&c.keyID, "key-id", "", "APNs: the 10-character Key ID")
	fs.StringVar(&c.teamID, "team-id", "", "APNs: the 10-character Team ID")
	fs.StringVar(&c.serviceAccount, "service-account", "", "FCM: the service-account JSON key `file`")
}

// load reads the credential files for platform. Files are checked enough to
// catch a wrong file early; deliverysvc validates the keys themselves.
func (c *credentialFlags) load(cmd *Command, platform commonv1.Platform) (*deliveryv1.Credentials, error) {
	switch platform {
	case commonv1.Platform_PLATFORM_APNS:
		if c.serviceAccount != "" {
			return nil, usagef(cmd, "--service-account is for FCM apps; an APNs app takes --p8, --key-id and --team-id")
		}
		if err := required(cmd, "p8", c.p8, "key-id", c.keyID, "team-id", c.teamID); err != nil {
			return nil, err
		}
		key, err := os.ReadFile(c.p8)
		if err != nil {
			return nil, usagef(cmd, "--p8: %v", err)
		}
		if block, _ := pem.Decode(key); block == nil || block.Type != "PRIVATE KEY" {
			return nil, usagef(cmd, "--p8 %s: not a .p8 key (want a PEM block \"PRIVATE KEY\")", c.p8)
		}
		return &deliveryv1.Credentials{Kind: &deliveryv1.Credentials_ApnsToken{ApnsToken: &deliveryv1.ApnsTokenCredentials{
			PrivateKeyPem: string(key), KeyId: c.keyID, TeamId: c.teamID,
		}}}, nil
	case commonv1.Platform_PLATFORM_FCM:
		if c.p8 != "" || c.keyID != "" || c.teamID != "" {
			return nil, usagef(cmd, "--p8, --key-id and --team-id are for APNs apps; an FCM app takes --service-account")
		}
		if err := required(cmd, "service-account", c.serviceAccount); err != nil {
			return nil, err
		}
		sa, err := os.ReadFile(c.serviceAccount)
		if err != nil {
			return nil, usagef(cmd, "--service-account: %v", err)
		}
		var probe struct {
			Type      string `json:"type"`
			ProjectID string `json:"project_id"`
		}
		if err := json.Unmarshal(sa, &probe); err != nil || probe.ProjectID == "" {
			return nil, usagef(cmd, "--service-account %s: not a service-account JSON key file (want type, project_id, private_key, client_email)", c.serviceAccount)
		}
		return &deliveryv1.Credentials{Kind: &deliveryv1.Credentials_FcmServiceAccount{FcmServiceAccount: &deliveryv1.FcmServiceAccount{
			ServiceAccountJson: string(sa),
		}}}, nil
	}
	return nil, usagef(cmd, "--platform must be apns or fcm")
}

// appKeyFlags are --platform and --app-id.
type appKeyFlags struct {
	platform, appID string
}

func (k *appKeyFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&k.platform, "platform", "", "apns or fcm")
	fs.StringVar(&k.appID, "app-id", "", "bundle id (APNs) or package name (FCM)")
}

func (k *appKeyFlags) key(cmd *Command) (*deliveryv1.AppKey, error) {
	if err := required(cmd, "platform", k.platform, "app-id", k.appID); err != nil {
		return nil, err
	}
	p, err := parsePlatform(cmd, k.platform)
	if err != nil {
		return nil, err
	}
	return &deliveryv1.AppKey{Platform: p, AppId: k.appID}, nil
}

func appRegisterCommand() *Command {
	var (
		key   appKeyFlags
		creds credentialFlags
		name  string
		env   string
		rate  int
	)
	cmd := &Command{
		Name:    "register",
		Args:    "--platform apns|fcm --app-id ID [--name N] [--env sandbox|production] (--p8 FILE --key-id K --team-id T | --service-account FILE) [--rate N]",
		Summary: "register an app; deliverysvc validates its credentials first",
		Help: `APNs apps authenticate with a .p8 signing key (token-based authentication):
  pushctl app register --platform apns --app-id com.acme.shop --name "Acme iOS" \
    --env production --p8 AuthKey_ABC123DEFG.p8 --key-id ABC123DEFG --team-id TEAM123456
FCM apps authenticate with a Google service-account key:
  pushctl app register --platform fcm --app-id com.acme.shop --service-account acme-firebase.json

Invalid credentials are refused (exit code 6) with the gateway's reason.`,
		Flags: func(fs *flag.FlagSet) {
			key.register(fs)
			creds.register(fs)
			fs.StringVar(&name, "name", "", "a human-readable name")
			fs.StringVar(&env, "env", "", "APNs gateway: sandbox or production (default production)")
			fs.IntVar(&rate, "rate", 0, "send rate limit in messages per second; 0 for the default")
		},
	}
	cmd.Run = func(ctx context.Context, e *Env, args []string) error {
		k, err := key.key(cmd)
		if err != nil {
			return err
		}
		apnsEnv, err := parseEnum(cmd, "env", commonv1.ApnsEnvironment(0).Descriptor(), env)
		if err != nil {
			return err
		}
		if apnsEnv != 0 && k.Platform != commonv1.Platform_PLATFORM_APNS {
			return usagef(cmd, "--env is for APNs apps only")
		}
		if rate < 0 {
			return usagef(cmd, "--rate must not be negative")
		}
		c, err := creds.load(cmd, k.Platform)
		if err != nil {
			return err
		}
		apps, err := e.Apps()
		if err != nil {
			return err
		}
		resp, err := unary(ctx, e, deliverySvc, apps.RegisterApp, &deliveryv1.RegisterAppRequest{
			Key: k, DisplayName: name, ApnsEnvironment: commonv1.ApnsEnvironment(apnsEnv),
			Credentials: c, RateLimitPerSecond: int32(rate),
		})
		if err != nil {
			return err
		}
		if e.Global.JSON {
			return e.printJSON(resp)
		}
		e.printf("registered %s app %s\n\n", enums.Label(k.Platform), k.AppId)
		e.print(appDetails(resp.GetApp()))
		return nil
	}
	return cmd
}

func appListCommand() *Command {
	cmd := &Command{Name: "list", Summary: "list the tenant's apps"}
	cmd.Run = func(ctx context.Context, e *Env, args []string) error {
		apps, err := e.Apps()
		if err != nil {
			return err
		}
		all := &deliveryv1.ListAppsResponse{}
		req := &deliveryv1.ListAppsRequest{PageSize: 1000}
		for {
			resp, err := unary(ctx, e, deliverySvc, apps.ListApps, req)
			if err != nil {
				return err
			}
			all.Apps = append(all.Apps, resp.GetApps()...)
			if resp.GetNextPageToken() == "" || resp.GetNextPageToken() == req.PageToken {
				break
			}
			req.PageToken = resp.GetNextPageToken()
		}
		if e.Global.JSON {
			return e.printJSON(all)
		}
		if len(all.Apps) == 0 {
			e.print("no apps registered; add one with 'pushctl app register'\n")
			return nil
		}
		e.print(appTable(all.Apps))
		return nil
	}
	return cmd
}

// appTable renders apps, one per row.
func appTable(apps []*deliveryv1.App) string {
	t := render.NewTable("PLATFORM", "APP", "NAME", "ENV", "STATE", "CREDENTIALS", "VALIDATED")
	for _, a := range apps {
		t.Row(
			enums.Label(a.GetKey().GetPlatform()),
			a.GetKey().GetAppId(),
			render.Text(a.GetDisplayName()),
			appEnv(a),
			enums.Label(a.GetState()),
			credentialsSummary(a.GetCredentials()),
			render.Time(a.GetValidateTime()),
		)
	}
	return t.String()
}

func appEnv(a *deliveryv1.App) string {
	if a.GetKey().GetPlatform() != commonv1.Platform_PLATFORM_APNS {
		return "-"
	}
	if a.GetApnsEnvironment() == commonv1.ApnsEnvironment_APNS_ENVIRONMENT_UNSPECIFIED {
		return "production"
	}
	return enums.Label(a.GetApnsEnvironment())
}

func credentialsSummary(c *deliveryv1.CredentialsInfo) string {
	switch {
	case c == nil:
		return "-"
	case c.GetKeyId() != "":
		return fmt.Sprintf("key %s team %s", c.GetKeyId(), c.GetTeamId())
	case c.GetProjectId() != "":
		s := "project " + c.GetProjectId()
		if c.GetClientEmail() != "" {
			s += " " + c.GetClientEmail()
		}
		return s
	}
	return render.Text(c.GetFingerprint())
}

// appDetails renders one app as labelled lines.
func appDetails(a *deliveryv1.App) string {
	var kv render.KeyValues
	kv.Add("app", a.GetKey().GetAppId())
	kv.Add("platform", enums.Label(a.GetKey().GetPlatform()))
	kv.Add("name", render.Text(a.GetDisplayName()))
	if a.GetKey().GetPlatform() == commonv1.Platform_PLATFORM_APNS {
		kv.Add("environment", appEnv(a))
	}
	kv.Add("state", enums.Label(a.GetState()))
	if a.GetState() == deliveryv1.AppState_APP_STATE_SUSPENDED {
		kv.Add("suspended", fmt.Sprintf("%s: %s", enums.Label(a.GetSuspendedReason()), render.Text(a.GetSuspendedDetail())))
	}
	kv.Add("credentials", credentialsSummary(a.GetCredentials()))
	kv.Add("fingerprint", render.Text(a.GetCredentials().GetFingerprint()))
	rate := "default"
	if a.GetRateLimitPerSecond() > 0 {
		rate = render.Count(int64(a.GetRateLimitPerSecond())) + "/s"
	}
	kv.Add("rate limit", rate)
	kv.Add("created", render.Time(a.GetCreateTime()))
	kv.Add("updated", render.Time(a.GetUpdateTime()))
	kv.Add("validated", render.Time(a.GetValidateTime()))
	return kv.String()
}

func appGetCommand() *Command {
	var key appKeyFlags
	cmd := &Command{
		Name:    "get",
		Args:    "--platform apns|fcm --app-id ID",
		Summary: "show one app and its credential fingerprints",
		Flags:   key.register,
	}
	cmd.Run = func(ctx context.Context, e *Env, args []string) error {
		k, err := key.key(cmd)
		if err != nil {
			return err
		}
		apps, err := e.Apps()
		if err != nil {
			return err
		}
		resp, err := unary(ctx, e, deliverySvc, apps.GetApp, &deliveryv1.GetAppRequest{Key: k})
		if err != nil {
			return err
		}
		if e.Global.JSON {
			return e.printJSON(resp)
		}
		e.print(appDetails(resp.GetApp()))
		return nil
	}
	return cmd
}

func appValidateCommand() *Command {
	var key appKeyFlags
	cmd := &Command{
		Name:    "validate",
		Args:    "--platform apns|fcm --app-id ID",
		Summary: "re-check an app's credentials against the gateway (a passing suspended app resumes)",
		Help:    "Exits with code 1 when the credentials do not pass.",
		Flags:   key.register,
	}
	cmd.Run = func(ctx context.Context, e *Env, args []string) error {
		k, err := key.key(cmd)
		if err != nil {
			return err
		}
		apps, err := e.Apps()
		if err != nil {
			return err
		}
		resp, err := unary(ctx, e, deliverySvc, apps.ValidateApp, &deliveryv1.ValidateAppRequest{Key: k})
		if reason, refused := credentialsRefusal(err); refused {
			return &exitError{code: ExitFailed, msg: fmt.Sprintf("credentials of %s app %s are not valid: %s", enums.Label(k.Platform), k.AppId, render.Text(reason))}
		}
		if err != nil {
			return err
		}
		if e.Global.JSON {
			if err := e.printJSON(resp); err != nil {
				return err
			}
		} else if resp.GetValid() {
			e.printf("credentials of %s app %s are valid\n\n", enums.Label(k.Platform), k.AppId)
			e.print(appDetails(resp.GetApp()))
		}
		if !resp.GetValid() {
			// A deliverysvc from before refusals answered FailedPrecondition.
			return &exitError{code: ExitFailed, msg: fmt.Sprintf("credentials of %s app %s are not valid: %s", enums.Label(k.Platform), k.AppId, render.Text(resp.GetDetail()))}
		}
		return nil
	}
	return cmd
}

// credentialsRefusal returns the gateway's reason when err is deliverysvc
// refusing an app's credentials: FailedPrecondition with a
// PreconditionFailure on "credentials". ValidateApp answers so; it is the
// command's "not valid" (exit 1), not a conflict.
func credentialsRefusal(err error) (string, bool) {
	var re *rpcError
	if !errors.As(err, &re) {
		return "", false
	}
	st, ok := status.FromError(re.err)
	if !ok || st.Code() != codes.FailedPrecondition {
		return "", false
	}
	for _, d := range st.Details() {
		if pf, ok := d.(*errdetails.PreconditionFailure); ok {
			for _, v := range pf.GetViolations() {
				if v.GetSubject() == "credentials" {
					return v.GetDescription(), true
				}
			}
		}
	}
	return "", false
}

func appUpdateCredentialsCommand() *Command {
	var (
		key   appKeyFlags
		creds credentialFlags
	)
	cmd := &Command{
		Name:    "update-credentials",
		Args:    "--platform apns|fcm --app-id ID (--p8 FILE --key-id K --team-id T | --service-account FILE)",
		Summary: "validate new credentials and swap them in without downtime",
		Flags: func(fs *flag.FlagSet) {
			key.register(fs)
			creds.register(fs)
		},
	}
	cmd.Run = func(ctx context.Context, e *Env, args []string) error {
		k, err := key.key(cmd)
		if err != nil {
			return err
		}
		c, err := creds.load(cmd, k.Platform)
		if err != nil {
			return err
		}
		apps, err := e.Apps()
		if err != nil {
			return err
		}
		resp, err := unary(ctx, e, deliverySvc, apps.UpdateAppCredentials, &deliveryv1.UpdateAppCredentialsRequest{Key: k, Credentials: c})
		if err != nil {
			return err
		}
		if e.Global.JSON {
			return e.printJSON(resp)
		}
		e.printf("updated the credentials of %s app %s\n\n", enums.Label(k.Platform), k.AppId)
		e.print(appDetails(resp.GetApp()))
		return nil
	}
	return cmd
}

func appDeleteCommand() *Command {
	var key appKeyFlags
	cmd := &Command{
		Name:    "delete",
		Args:    "--platform apns|fcm --app-id ID",
		Summary: "remove an app and its credentials",
		Flags:   key.register,
	}
	cmd.Run = func(ctx context.Context, e *Env, args []string) error {
		k, err := key.key(cmd)
		if err != nil {
			return err
		}
		apps, err := e.Apps()
		if err != nil {
			return err
		}
		resp, err := unary(ctx, e, deliverySvc, apps.DeleteApp, &deliveryv1.DeleteAppRequest{Key: k})
		if err != nil {
			return err
		}
		if e.Global.JSON {
			return e.printJSON(resp)
		}
		e.printf("deleted %s app %s\n", enums.Label(k.Platform), k.AppId)
		return nil
	}
	return cmd
}
